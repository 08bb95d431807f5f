"""Spies on a lip-sync run, for end-to-end tests that must notice a broken pipeline.

``SyncSpy`` records, while it is active:

- every frame handed to the video encoder (``media.writer.VideoWriter.write``), before H.264 touches it, so tests
  can compare pixels byte for byte with the decoded source frames;
- every top-level network call (a module called while no other module is running): its inputs and output. The
  generator is the call with two tensor arguments ``(audio windows (N, 1, n_mels, steps), faces (N, 6, S, S))``,
  whatever its class (HyperLips-Base or any network with the same forward signature); the HR decoder is the
  one-argument call after it.

Nothing in the pipeline is replaced: the spies only look, so a run under them gives the same file as without.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np


@dataclass
class NetCall:
    module: str  # class name of the called network
    inputs: list  # numpy copies of the tensor arguments
    output: np.ndarray | None = None

    @property
    def is_generator(self) -> bool:
        if len(self.inputs) != 2:
            return False
        audio, faces = self.inputs
        return audio.ndim == 4 and audio.shape[1] == 1 and faces.ndim == 4 and faces.shape[1] == 6


@dataclass
class SyncSpy:
    frames: list = field(default_factory=list)  # uint8 BGR frames in the order they were encoded
    sources: list = field(default_factory=list)  # (decoded picture, changed region) handed with each frame
    calls: list = field(default_factory=list)  # NetCall, top-level only, in call order

    # ------------------------------------------------------------------ views
    @property
    def generator_calls(self) -> list[NetCall]:
        return [c for c in self.calls if c.is_generator]

    def generator_inputs(self) -> tuple[np.ndarray, np.ndarray]:
        """All generator inputs of the run, concatenated in call order: (audio windows, faces)."""
        calls = self.generator_calls
        assert calls, "the generator was never called"
        return np.concatenate([c.inputs[0] for c in calls]), np.concatenate([c.inputs[1] for c in calls])

    def other_calls(self) -> list[NetCall]:
        return [c for c in self.calls if not c.is_generator]


def _to_numpy(x):
    import torch

    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy().copy()
    return None


@contextlib.contextmanager
def spy_on_sync() -> Iterator[SyncSpy]:
    """``with spy_on_sync() as spy: ...``: record encoded frames and top-level network calls inside the block."""
    import torch

    from hyperlips.media import writer as writer_mod

    spy = SyncSpy()
    real_write = writer_mod.VideoWriter.write

    def write(self, frame, *rest, **kw):
        spy.frames.append(np.array(frame, copy=True))
        spy.sources.append(rest[:2] if rest else (kw.get("source"), kw.get("changed")))
        return real_write(self, frame, *rest, **kw)

    local = threading.local()  # per thread (sync may render two batches at once): its top-level (module, call)
    lock = threading.Lock()

    def pre(module, args):
        if getattr(local, "active", None):
            return
        call = NetCall(type(module).__name__, [a for a in map(_to_numpy, args) if a is not None])
        local.active = (module, call)
        with lock:
            spy.calls.append(call)

    def post(module, args, output):
        active = getattr(local, "active", None)
        if active and active[0] is module:
            local.active = None
            if isinstance(output, torch.Tensor):
                active[1].output = _to_numpy(output)

    writer_mod.VideoWriter.write = write
    h1 = torch.nn.modules.module.register_module_forward_pre_hook(pre)
    h2 = torch.nn.modules.module.register_module_forward_hook(post)
    try:
        yield spy
    finally:
        writer_mod.VideoWriter.write = real_write
        h1.remove()
        h2.remove()
