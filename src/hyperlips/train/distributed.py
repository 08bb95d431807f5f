"""One training process's place in a run (rank, world, device) under ``torchrun``, and its random states.

Under ``torchrun`` with more than one process the processes join a group (NCCL on GPU, gloo on CPU); alone, every
collective call below is the identity. RNG states are saved as plain types and tensors so checkpoints load with
``weights_only=True``.
"""

from __future__ import annotations

import os
import pickle
import random
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch


@dataclass
class Dist:
    """This process's place in the run: rank, world size, device; ``enabled`` under torchrun with >1 process."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    enabled: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    # The small exchanges below (flags, metrics, RNG states, a state dict) go through the process group's key-value
    # store, not through gloo: gloo's worker threads release a finished call's tensors a moment after the call returns,
    # and when that moment fell into the interpreter's shutdown (the run's last exchange, then exit) the thread could
    # not take the GIL to free the Python tensors and the process aborted (SIGABRT, no message). The store never
    # touches a tensor, and the same code serves NCCL runs. Every rank makes these calls in the same order.
    store: Any = field(default=None, repr=False)  # the process group's store when None
    _calls: int = field(default=0, repr=False)

    def _exchange(self, obj: Any, ranks: range) -> list[Any]:
        """Publish ``obj`` when this rank is in ``ranks``; return the objects of ``ranks``. The last reader clears."""
        from torch.distributed.distributed_c10d import _get_default_store

        store = self.store if self.store is not None else _get_default_store()
        self._calls += 1
        key = f"hyperlips/{self._calls}"
        if self.rank in ranks:
            store.set(f"{key}/{self.rank}", pickle.dumps(obj))
        out = [pickle.loads(store.get(f"{key}/{r}")) for r in ranks]
        if store.add(f"{key}/read", 1) == self.world:  # every rank has read: nothing of this call stays in the store
            for r in ranks:
                store.delete_key(f"{key}/{r}")
            store.delete_key(f"{key}/read")
        return out

    def barrier(self) -> None:
        """Return once every rank has called it."""
        if self.enabled:
            self._exchange(None, range(self.world))

    def all_true(self, flag: bool) -> bool:
        """True on every rank only if ``flag`` is true on every rank (a collective call)."""
        if not self.enabled:
            return bool(flag)
        return all(self._exchange(bool(flag), range(self.world)))

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank (a collective call; tensors come back on the CPU)."""
        if not self.enabled:
            return [obj]
        return self._exchange(obj, range(self.world))

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (a collective call)."""
        if not self.enabled:
            return obj
        return self._exchange(obj, range(1))[0]


def setup_distributed(device: str = "auto") -> Dist:
    """Join the torchrun process group when ``WORLD_SIZE`` > 1 (NCCL on CUDA, gloo on CPU) and pick the device."""
    from ..runtime import resolve_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda" and world > 1:
        dev = torch.device("cuda", local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend)
    return Dist(rank=rank, world=world, local_rank=local, device=dev, enabled=world > 1)


def teardown_distributed(dist: Dist) -> None:
    if dist.enabled and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


# ---------------------------------------------------------------------------------------------- RNG state
def rng_state() -> dict[str, Any]:
    """This process's RNG states as plain types and tensors (loadable with ``weights_only=True``)."""
    np_state = np.random.get_state()
    state = {
        "python": list(random.getstate()[1]) + [random.getstate()[0], random.getstate()[2]],
        "numpy": [np_state[0], torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[-2], tuple(int(v) for v in py[:-2]), py[-1]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), int(n[2]), int(n[3]), float(n[4])))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    torch.manual_seed(seed)


