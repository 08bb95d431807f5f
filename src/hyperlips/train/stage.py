"""The stage interface of the training loop: what one kind of training (sync expert, HyperLips-Base, HR decoder,
HyperLips-Lite, mouth reader) provides (:class:`Stage`), what it gets from the loop (:class:`Context`: device,
distribution, AMP, the backward/step helper) and how ``cfg.amp`` maps to autocast (:func:`amp_settings`)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import UserError
from .config import TrainConfig
from .distributed import Dist


class TrainingDiverged(UserError):
    """A loss became NaN or infinite: the run stops before writing anything from the broken state."""


def amp_settings(amp: str, device: torch.device) -> tuple[bool, torch.dtype, Any]:
    """``cfg.amp`` -> (autocast on, its dtype, GradScaler or None).

    ``auto``: fp16 with a gradient scaler on CUDA, full precision on CPU; ``on``: the same, and an error on CPU;
    ``bf16``: bfloat16 autocast on CPU or CUDA without a scaler (about twice as fast on CPUs with AVX512-BF16 or
    AMX; on older CPUs it can be slower); ``off``: full precision."""
    mode = str(amp).lower()  # YAML reads a bare on/off as a boolean
    if mode in ("false", "no"):
        mode = "off"
    if mode in ("true", "yes"):
        mode = "on"
    if mode not in ("auto", "on", "off", "bf16"):
        raise UserError(f"amp must be auto, on, bf16 or off (got {amp!r})")
    if mode == "bf16":
        return True, torch.bfloat16, None
    fp16 = mode == "on" or (mode == "auto" and device.type == "cuda")
    if fp16 and device.type != "cuda":
        raise UserError("--amp on (fp16) needs a CUDA GPU; on a CPU use --amp bf16 or --amp off")
    return fp16, torch.float16, (torch.amp.GradScaler("cuda") if fp16 else None)


# ---------------------------------------------------------------------------------------------- the stage interface
def init_source(cfg: TrainConfig) -> str:
    """The file to build a run's network from: ``cfg.init``, or where that file is gone (moved, deleted) and the run
    has checkpoints (whose weights a resume loads over it), the network the run exported itself (``model.safetensors``
    in its folder): a resume no longer needs the weights it once started from."""
    from pathlib import Path

    from .checkpoints import list_checkpoints

    own = Path(cfg.out) / "model.safetensors"
    if cfg.init and not Path(cfg.init).is_file() and own.is_file() and list_checkpoints(Path(cfg.out)):
        return str(own)
    return str(cfg.init)


class Stage:
    """What one kind of training provides to the loop. Subclasses: one per module (sync, base, hr, lite, reader)."""

    name = ""
    model_name = ""  # registry name of the exported network
    best_metric = ""  # validation metric that picks best.pt (lower is better, but for loop.HIGHER_IS_BETTER's)

    def __init__(self, cfg: TrainConfig, ctx: "Context"):
        self.cfg = cfg
        self.ctx = ctx

    # set up
    def modules(self) -> dict[str, nn.Module]:
        """Trained networks by name (saved in checkpoints)."""
        raise NotImplementedError

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        raise NotImplementedError

    def train_dataset(self):
        raise NotImplementedError

    def val_dataset(self):
        raise NotImplementedError

    def exported(self) -> nn.Module:
        """The network written to ``model.safetensors``."""
        raise NotImplementedError

    # work
    def prepare(self, seconds: float | None) -> None:
        """Work done once before a fresh run's first step (not when resuming: its outcome is in the checkpoint's
        weights). ``seconds``: what it may take of the run's time budget (None: no budget). Default: nothing."""

    def train_step(self, batch: dict[str, Tensor], step: int) -> dict[str, float]:
        raise NotImplementedError

    def val_batch(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Per-sample values (N,) for :meth:`val_metrics`."""
        raise NotImplementedError

    def val_metrics(self, values: dict[str, np.ndarray]) -> dict[str, float]:
        return {f"val/{k}": float(np.mean(v)) for k, v in values.items() if len(v)}

    def images(self, batch: dict[str, Tensor]) -> np.ndarray:
        raise NotImplementedError

    def preview(self) -> np.ndarray | None:
        """An image of the network on fixed held-out samples, saved as ``RUN/preview.png`` at every validation
        (None: the stage has none)."""
        return None

    def bn_module(self) -> nn.Module | None:
        """The network whose BatchNorm statistics ``bn_batches`` re-estimates (None: not supported)."""
        return None

    def bn_forward(self, batch: dict[str, Tensor]) -> None:
        """Run :meth:`bn_module` (itself, not its DDP wrapper) on a training batch."""
        raise NotImplementedError


@dataclass
class Context:
    """What a stage gets from the loop: device, distribution, AMP, and the backward/step helper."""

    cfg: TrainConfig
    dist: Dist
    amp: bool
    scaler: Any  # torch.amp.GradScaler or None
    say: Callable[[str], None]
    amp_dtype: torch.dtype = torch.float16  # bfloat16 under ``amp: bf16`` (no scaler: bf16 has fp32's range)

    @property
    def device(self) -> torch.device:
        return self.dist.device

    def autocast(self):
        if self.amp:
            return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)
        return contextlib.nullcontext()

    def wrap(self, module: nn.Module) -> nn.Module:
        """DDP-wrap a trained module under torchrun (identity otherwise)."""
        if not self.dist.enabled:
            return module
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DDP(module, device_ids=ids)

    def check_finite(self, what: str, losses: Mapping[str, Tensor], step: int) -> None:
        """Stop the run on every rank if any loss is NaN/inf on any rank (collective)."""
        ok = all(bool(torch.isfinite(v.detach()).all()) for v in losses.values())
        if not self.dist.all_true(ok):
            parts = ", ".join(f"{k}={float(v.detach().float().mean()):.4g}" for k, v in losses.items())
            raise TrainingDiverged(f"the {what} loss became NaN or infinite at step {step} ({parts or 'on another process'}); "
                                   "nothing was saved from this step: resume from the last checkpoint with a lower "
                                   "learning rate (--lr) or gradient clipping (--grad-clip)")

    def backward_step(self, loss: Tensor, optimizer: torch.optim.Optimizer, params) -> float:
        """Backward (scaled under AMP), unscale, clip to ``grad_clip``, step, zero the gradients; returns the
        gradient norm before clipping (inf/NaN under AMP when the scaler skips the step)."""
        params = [p for p in params if p.requires_grad]
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(optimizer)
        else:
            loss.backward()
        if self.cfg.grad_clip and self.cfg.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        else:
            norm = torch.nn.utils.clip_grad_norm_(params, float("inf"))
        if self.scaler is not None:
            self.scaler.step(optimizer)
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(norm)
