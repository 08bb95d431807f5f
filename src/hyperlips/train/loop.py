"""The one training loop shared by the three stages (sync expert, HyperLips-Base, HR decoder).

What it does for every stage: configuration (defaults < stage defaults < YAML file < command line), one process
per GPU under ``torchrun`` (PyTorch DDP; NCCL on GPU, gloo on CPU), AMP on GPU, gradient clipping, a finiteness
check on every loss that stops the run with a message (before anything is written), periodic validation, logging
(TensorBoard when installed, always ``scalars.jsonl`` and PNG image grids), and checkpoints.

Checkpoints (``RUN/checkpoints/step_<n>.pt``) hold the whole training state: weights, optimisers, the AMP scaler,
every rank's RNG states, the step and the data position. They are written to a temporary file that is fsynced and
renamed, so a run killed while writing keeps its previous checkpoint; the last ``keep_last`` are kept, plus
``best.pt`` (best validation metric). The trained network itself is also exported after each checkpoint as
``RUN/model.safetensors`` (and ``RUN/best.safetensors``), which ``hyperlips sync`` loads directly.

Exact resume: data sampling is a pure function of (seed, sample number) (:mod:`hyperlips.data.datasets`), so a
resumed run reads exactly the batches the uninterrupted run would have read; with the RNG states and optimiser
state restored, the losses at step k+m match the uninterrupted run (bit for bit on CPU).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import UserError
from ..models.checkpoint import TRAIN_CKPT_FORMAT

CKPT_DIR = "checkpoints"
CKPT_FORMAT = TRAIN_CKPT_FORMAT
CKPT_VERSION = 1
_STEP_RE = re.compile(r"^step_(\d+)\.pt$")


class TrainingDiverged(UserError):
    """A loss became NaN or infinite: the run stops before writing anything from the broken state."""


# ---------------------------------------------------------------------------------------------- configuration
@dataclass
class TrainConfig:
    """Every training setting. Stage defaults (``STAGE_DEFAULTS``) override these; a YAML file overrides those;
    command-line options override everything. Stored in every checkpoint and in ``RUN/config.yaml``."""

    stage: str = "base"  # sync | base | hr
    data: str = ""  # preprocessed dataset folder (hyperlips preprocess)
    out: str = ""  # run folder: checkpoints, logs, exported model
    # starting points
    init: str | None = None  # weights to start the trained network from (any checkpoint hyperlips loads)
    expert: str | None = None  # base: the sync expert checkpoint (no expert: no sync loss, with a warning)
    base: str | None = None  # hr: the trained HyperLips-Base checkpoint that renders the HR inputs
    hr_size: int = 128  # hr: output size 128, 256 or 512
    # optimisation
    batch_size: int = 8  # windows (sync/base) or frames (hr) per process per step
    lr: float = 1e-4
    disc_lr: float = 5e-4
    betas: tuple[float, float] = (0.5, 0.999)
    max_steps: int = 100_000
    grad_clip: float = 1.0  # max gradient norm per network; 0 = off
    bn_batches: int = 0  # re-estimate BatchNorm running statistics on this many training batches before every
    # validation and checkpoint (0 = off; the sync stage's default is 8, see Trainer._recalibrate_bn)
    amp: str = "auto"  # auto (fp16 on CUDA, off on CPU) | on (fp16, CUDA) | bf16 (CPU or CUDA) | off
    device: str = "auto"  # auto | cpu | cuda | cuda:N (under torchrun: the local rank's GPU)
    seed: int = 0
    workers: int = 2  # DataLoader worker processes per training process
    threads: int = 0  # CPU threads for torch (0: torch's default)
    # losses
    sync_weight: float = 0.03  # base: weight of the sync-expert loss (reference §6.2)
    disc_weight: float = 0.2  # base: weight of the adversarial loss; L1 gets 1 - sync - disc
    adv_weight: float = 1.0  # hr: relativistic GAN
    perceptual_weight: float = 1.0  # hr: VGG19 (fallback: discriminator feature matching + SSIM)
    l1_weight: float = 1.0  # hr: whole-image L1
    lip_l1_weight: float = 1.0  # hr: L1 on the lip box
    lip_lpips_weight: float = 1.0  # hr: LPIPS on the lip box (fallback: SSIM)
    vgg19_weights: str | None = None  # path to vgg19-dcbb9e9d.pth (default: the torch hub cache)
    lpips_heads: str | None = None  # path to LPIPS vgg.pth v0.1 heads (default: lpips package / hub cache)
    vgg16_weights: str | None = None  # path to vgg16-397923af.pth for LPIPS (default: the torch hub cache)
    # sync expert sampling
    min_shift: int = 3  # sync: off-sync training pairs are shifted by at least this many frames
    val_min_shift: int = 5  # sync: off-sync validation pairs are shifted by at least this many frames
    flip: float = 0.5  # sync: probability of mirroring a training window
    # bookkeeping
    log_every: int = 10
    image_every: int = 500
    val_every: int = 1000
    val_samples: int = 256
    val_at_start: bool = False  # also validate before the first step of a fresh run (the starting point)
    ckpt_every: int = 1000
    keep_last: int = 3
    best_metric: str = ""  # metric that picks best.pt ("" = the stage's default)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"unknown training setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        cfg = cls()
        for k, v in d.items():
            setattr(cfg, k, _coerce(k, v))
        return cfg

    def replace(self, **kw) -> "TrainConfig":
        d = self.to_dict()
        d.update(kw)
        return TrainConfig.from_dict(d)


STAGE_DEFAULTS: dict[str, dict[str, Any]] = {
    "sync": {"batch_size": 64, "lr": 1e-4, "betas": (0.9, 0.999), "val_every": 1000, "bn_batches": 8},
    "base": {"batch_size": 28, "lr": 1e-4, "disc_lr": 5e-4, "betas": (0.5, 0.999), "val_every": 1000},
    "hr": {"batch_size": 28, "lr": 1e-4, "disc_lr": 5e-4, "betas": (0.5, 0.999), "ckpt_every": 3000,
           "val_every": 3000},
}


def _field_types() -> dict[str, Any]:
    return {f.name: f.type for f in dataclasses.fields(TrainConfig)}


def _coerce(name: str, value: Any) -> Any:
    """Convert a YAML/CLI value to the field's type (strings like '1e-4' become numbers), or raise UserError."""
    kind = str(_field_types()[name])
    try:
        if value is None:
            if "None" in kind:
                return None
            raise ValueError("may not be empty")
        if name == "betas":
            if isinstance(value, str):
                value = [v for v in value.replace("(", "").replace(")", "").split(",") if v.strip()]
            b = tuple(float(v) for v in value)
            if len(b) != 2:
                raise ValueError("needs two numbers")
            return b
        if kind.startswith("int"):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError("must be a whole number")
            return int(float(value)) if isinstance(value, str) else int(value)
        if kind.startswith("bool"):
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError("must be true or false")
            return bool(value)
        if kind.startswith("float"):
            return float(value)
        if kind.startswith("str"):
            return None if ("None" in kind and str(value).lower() in ("", "none", "null")) else str(value)
        return value
    except (TypeError, ValueError) as e:
        raise UserError(f"training setting {name}={value!r}: {e}") from None


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML file of settings (a mapping), checked against :class:`TrainConfig`'s fields."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file not found: {p}")
    try:
        d = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{p}: not valid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(d, dict):
        raise UserError(f"{p}: a training config must be a mapping of setting: value")
    TrainConfig.from_dict(d)  # unknown names fail here, with the file named by the caller
    return d


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["lr=1e-4", "amp=off"]`` -> dict (values parsed as YAML scalars)."""
    import yaml

    out = {}
    for it in items or []:
        if "=" not in it:
            raise UserError(f"--set expects NAME=VALUE, got {it!r}")
        k, v = it.split("=", 1)
        out[k.strip().replace("-", "_")] = yaml.safe_load(v) if v.strip() else None
    return out


def build_config(stage: str, file: str | os.PathLike | None = None, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """Defaults, then the stage's defaults, then the YAML file, then ``overrides`` (None values are ignored)."""
    d: dict[str, Any] = {"stage": stage, **STAGE_DEFAULTS.get(stage, {})}
    if file is not None:
        d.update(load_config(file))
        d["stage"] = stage
    d.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return TrainConfig.from_dict(d)


# ---------------------------------------------------------------------------------------------- distributed
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

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def all_true(self, flag: bool) -> bool:
        """True on every rank only if ``flag`` is true on every rank (a collective call)."""
        if not self.enabled:
            return bool(flag)
        t = torch.tensor([0.0 if flag else 1.0], device=self.device)
        torch.distributed.all_reduce(t)
        return t.item() == 0.0

    def gather(self, obj: Any) -> list[Any]:
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        if not self.enabled:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]


def setup_distributed(device: str = "auto") -> Dist:
    """Join the torchrun process group when ``WORLD_SIZE`` > 1 (NCCL on CUDA, gloo on CPU) and pick the device."""
    from ..pipeline import resolve_device

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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------- checkpoint files
def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_save(obj: Any, path: Path, save: Callable[[Any, Any], None] = torch.save) -> None:
    """Write ``obj`` to a temporary file in ``path``'s folder, fsync it, rename it to ``path``, fsync the folder.

    If anything fails (or the process is killed) before the rename, ``path`` keeps its old content (or stays
    absent) and the temporary file is removed (or, after a kill, ignored and cleaned on the next start)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _link_or_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` the same file as ``src`` (a hard link; a copy where links are not possible), atomically."""
    import shutil

    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    _fsync_dir(dst.parent)


def list_checkpoints(run: Path) -> list[tuple[int, Path]]:
    """(step, path) of the run's ``step_*.pt`` files, oldest first."""
    d = run / CKPT_DIR
    if not d.is_dir():
        return []
    out = []
    for p in d.iterdir():
        m = _STEP_RE.match(p.name)
        if m:
            out.append((int(m.group(1)), p))
    return sorted(out)


def read_checkpoint(path: Path) -> dict[str, Any]:
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure means "not a usable checkpoint"
        raise UserError(f"{path}: unreadable training checkpoint ({' '.join(str(e).split())[:160]})") from None
    if not isinstance(ck, dict) or ck.get("format") != CKPT_FORMAT:
        raise UserError(f"{path}: not a hyperlips training checkpoint")
    return ck


def latest_checkpoint(run: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest readable checkpoint of a run (an unreadable newest one is reported and passed over)."""
    for step, path in reversed(list_checkpoints(run)):
        try:
            return path, read_checkpoint(path)
        except UserError as e:
            print(f"hyperlips train: skipping {e}", file=sys.stderr)
    return None


def clean_temporaries(run: Path) -> None:
    d = run / CKPT_DIR
    if d.is_dir():
        for p in d.glob(".*.tmp-*"):
            with contextlib.suppress(OSError):
                p.unlink()


# ---------------------------------------------------------------------------------------------- logging
class RunLog:
    """Scalars to ``scalars.jsonl`` (always) and TensorBoard (when installed); image grids as PNG files
    under ``images/`` (always) and in TensorBoard. Only rank 0 writes."""

    _said_no_tb = False

    def __init__(self, run: Path, enabled: bool):
        self.run = run
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        run.mkdir(parents=True, exist_ok=True)
        self._scalars = open(run / "scalars.jsonl", "a", encoding="utf-8")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(run / "tb"))
        except ImportError:
            if not RunLog._said_no_tb:
                RunLog._said_no_tb = True
                print("hyperlips train: tensorboard is not installed, so scalars go to scalars.jsonl and image grids "
                      "to images/*.png in the run folder (pip install tensorboard for TensorBoard)", file=sys.stderr)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        rec = {"step": int(step), "time": round(time.time(), 3), **{k: float(v) for k, v in values.items()}}
        self._scalars.write(json.dumps(rec) + "\n")
        self._scalars.flush()
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, float(v), step)

    def image(self, step: int, tag: str, grid_bgr: np.ndarray) -> None:
        if not self.enabled:
            return
        import cv2

        d = self.run / "images"
        d.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(d / f"step_{step:09d}_{tag.replace('/', '_')}.png"), grid_bgr)
        if self.tb is not None:
            self.tb.add_image(tag, np.ascontiguousarray(grid_bgr[:, :, ::-1]), step, dataformats="HWC")

    def close(self) -> None:
        if self.enabled:
            self._scalars.close()
            if self.tb is not None:
                self.tb.close()


def image_grid(rows: list[list[np.ndarray]], pad: int = 2) -> np.ndarray:
    """Rows of (H, W, 3) uint8 BGR images (all the same size) -> one grid image."""
    h, w = rows[0][0].shape[:2]
    n_cols = max(len(r) for r in rows)
    grid = np.full((len(rows) * (h + pad) + pad, n_cols * (w + pad) + pad, 3), 255, np.uint8)
    for i, r in enumerate(rows):
        for j, img in enumerate(r):
            if img.ndim == 2:
                img = np.repeat(img[:, :, None], 3, axis=2)
            if img.shape[:2] != (h, w):
                import cv2

                img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            grid[y : y + h, x : x + w] = img
    return grid


def to_images(t: Tensor) -> list[np.ndarray]:
    """(N, C, H, W) float in [0, 1] -> N (H, W, C) uint8 images, rounded."""
    a = t.detach().float().clamp(0, 1).mul(255).round().to("cpu").numpy().astype(np.uint8)
    return [np.ascontiguousarray(x.transpose(1, 2, 0)) for x in a]


# ---------------------------------------------------------------------------------------------- the stage interface
class Stage:
    """What one kind of training provides to the loop. Subclasses: sync.SyncStage, base.BaseStage, hr.HRStage."""

    name = ""
    model_name = ""  # registry name of the exported network
    best_metric = ""  # validation metric that picks best.pt (lower is better)

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
    def train_step(self, batch: dict[str, Tensor], step: int) -> dict[str, float]:
        raise NotImplementedError

    def val_batch(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Per-sample values (N,) for :meth:`val_metrics`."""
        raise NotImplementedError

    def val_metrics(self, values: dict[str, np.ndarray]) -> dict[str, float]:
        return {f"val/{k}": float(np.mean(v)) for k, v in values.items() if len(v)}

    def images(self, batch: dict[str, Tensor]) -> np.ndarray:
        raise NotImplementedError

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


# ---------------------------------------------------------------------------------------------- the loop
def _infinite(loader) -> Iterator:
    while True:
        yield from loader


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Tensor]:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, Tensor) else v) for k, v in batch.items()}


@dataclass
class TrainResult:
    run: Path
    step: int
    model: Path  # exported model.safetensors
    best: Path | None
    losses: list[dict[str, float]]  # per logged step (rank 0)
    metrics: dict[str, float]  # last validation
    seconds: float
    samples_per_second: float


class Trainer:
    """Runs a :class:`Stage` to ``cfg.max_steps``, resuming from the run folder's newest checkpoint when asked."""

    def __init__(self, stage_cls: type[Stage], cfg: TrainConfig, *, resume: bool = False, quiet: bool = False,
                 dist: Dist | None = None):
        self.cfg = cfg
        self.stage_cls = stage_cls
        self.resume = resume
        self.quiet = quiet
        self.dist = dist or setup_distributed(cfg.device)
        self.run = Path(cfg.out)
        self.history: list[dict[str, float]] = []
        self.on_step: Callable[[int, dict[str, float]], None] | None = None  # test hook

    def say(self, msg: str) -> None:
        if self.dist.main and not self.quiet:
            print(f"hyperlips train: {msg}", file=sys.stderr, flush=True)

    # -- checkpoints
    def _state(self, stage: Stage, step: int, best: dict[str, Any]) -> dict[str, Any]:
        rngs = self.dist.gather(rng_state())
        return {
            "format": CKPT_FORMAT,
            "version": CKPT_VERSION,
            "stage": stage.name,
            "step": int(step),
            "config": self.cfg.to_dict(),
            "models": {k: {n: t.detach().to("cpu") for n, t in m.state_dict().items()} for k, m in stage.modules().items()},
            "optimizers": {k: o.state_dict() for k, o in stage.optimizers().items()},
            "scaler": self.ctx.scaler.state_dict() if self.ctx.scaler is not None else None,
            "rng": rngs,
            "data": {"samples_per_rank": int(step) * self.cfg.batch_size, "world": self.dist.world},
            "best": dict(best),
        }

    def _check_weights(self, stage: Stage, step: int) -> None:
        for name, m in stage.modules().items():
            for pname, p in m.named_parameters():
                if not torch.isfinite(p.detach()).all():
                    raise TrainingDiverged(f"weight {name}.{pname} became NaN or infinite by step {step}; the "
                                           "checkpoint was NOT written: resume from the last one with a lower learning rate")

    def save(self, stage: Stage, step: int, best: dict[str, Any], is_best: bool = False) -> Path | None:
        """Write ``step_<n>.pt`` (and ``best.pt``), prune old ones, export the model. Collective under DDP."""
        self._check_weights(stage, step)
        state = self._state(stage, step, best)
        path = None
        if self.dist.main:
            path = self.run / CKPT_DIR / f"step_{step:09d}.pt"
            atomic_save(state, path)
            self._export(stage, self.run / "model.safetensors", step)
            if is_best:
                _link_or_copy(path, self.run / CKPT_DIR / "best.pt")
                _link_or_copy(self.run / "model.safetensors", self.run / "best.safetensors")
            for _, old in list_checkpoints(self.run)[: -max(1, self.cfg.keep_last)]:
                with contextlib.suppress(OSError):
                    old.unlink()
        self.dist.barrier()
        return path

    def _export(self, stage: Stage, path: Path, step: int) -> None:
        from ..models import save_checkpoint

        from ..models.registry import default_config

        cfg = default_config(stage.model_name).to_dict()
        cfg["training"] = {"stage": stage.name, "data": self.cfg.data, "run": str(self.run)}
        save_checkpoint(stage.exported(), path, stage.model_name, config=cfg, step=step)

    def _restore(self, stage: Stage, ck: dict[str, Any]) -> None:
        if ck.get("stage") != stage.name:
            raise UserError(f"{self.run}: the checkpoint is from `train {ck.get('stage')}`, not `train {stage.name}`")
        for k, m in stage.modules().items():
            m.load_state_dict(ck["models"][k])
        for k, o in stage.optimizers().items():
            o.load_state_dict(ck["optimizers"][k])
        if self.ctx.scaler is not None and ck.get("scaler"):
            self.ctx.scaler.load_state_dict(ck["scaler"])
        rngs = ck.get("rng") or []
        if len(rngs) == self.dist.world:
            set_rng_state(rngs[self.dist.rank])
        else:
            seed_everything(self.cfg.seed + 1000 * int(ck["step"]) + self.dist.rank)

    # -- main
    def fit(self) -> TrainResult:
        cfg = self.cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if not cfg.out:
            raise UserError("no run folder given (--out RUN)")
        resume_ck = None
        if self.dist.main:
            self.run.mkdir(parents=True, exist_ok=True)
            clean_temporaries(self.run)
        found, problem = None, None
        if self.dist.main:
            if self.resume:
                latest = latest_checkpoint(self.run)
                if latest is None:
                    problem = f"--resume: no checkpoint in {self.run / CKPT_DIR} to resume from"
                else:
                    found = str(latest[0])
            elif list_checkpoints(self.run):
                problem = (f"{self.run} already holds checkpoints of a run: pass --resume to continue it, or choose "
                           "another --out folder")
        found, problem = self.dist.broadcast((found, problem))  # every rank stops, or none does
        if problem:
            raise UserError(problem)
        if found is not None:
            resume_ck = read_checkpoint(Path(found))
        seed_everything(cfg.seed + self.dist.rank)
        amp, amp_dtype, scaler = amp_settings(cfg.amp, self.dist.device)
        self.ctx = Context(cfg, self.dist, amp, scaler, self.say, amp_dtype)
        stage = self.stage = self.stage_cls(cfg, self.ctx)
        start = 0
        best = {"metric": cfg.best_metric or stage.best_metric, "value": None, "step": None}
        if resume_ck is not None:
            self._restore(stage, resume_ck)
            start = int(resume_ck["step"])
            best = dict(resume_ck.get("best") or best)
            self.say(f"resumed {self.run} at step {start}")
        if self.dist.main:
            import yaml

            (self.run / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=True), encoding="utf-8")
        log = RunLog(self.run, self.dist.main)
        try:
            return self._loop(stage, start, best, log)
        finally:
            log.close()

    def _loader(self, dataset, start_samples: int):
        from torch.utils.data import DataLoader

        from ..data.datasets import SampleSampler

        sampler = SampleSampler(start_samples, self.dist.rank, self.dist.world)
        kw = {}
        if self.cfg.workers > 0:
            kw = {"num_workers": self.cfg.workers, "prefetch_factor": 2, "persistent_workers": False}
        # a private generator: creating loaders never draws from the global RNG (exact resume)
        return DataLoader(dataset, batch_size=self.cfg.batch_size, sampler=sampler, drop_last=False,
                          pin_memory=self.dist.device.type == "cuda", generator=torch.Generator(), **kw)

    def _recalibrate_bn(self, stage: Stage, step: int) -> None:
        """Re-estimate the BatchNorm running statistics of the stage's network with its current weights.

        Running statistics are moving averages over past steps; when the weights change quickly (early training,
        high learning rates) they lag behind, and the network in eval mode (validation, ``best``, inference, the
        frozen expert of ``train base``) behaves worse than in training: a sync expert whose batch-statistics AUC on
        held-out windows was 0.75 scored 0.52 in eval mode. Here they are recomputed as the plain average over
        ``bn_batches`` batches of training samples. The samples depend only on (seed, step) and are the same on
        every process, so runs stay exactly resumable and DDP processes agree."""
        n = int(self.cfg.bn_batches)
        if n <= 0:
            return
        module = stage.bn_module()
        if module is None:
            return
        bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
        if not bns:
            return
        from torch.utils.data import default_collate

        ds = stage.train_dataset()
        bs = self.cfg.batch_size
        first = (1 << 40) + step * n * bs  # far from the training stream's sample numbers

        momenta = [m.momentum for m in bns]
        was_training = module.training
        try:
            for m in bns:
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the batches below
            module.train()
            with torch.no_grad(), self.ctx.autocast():
                for k in range(n):
                    batch = default_collate([ds[first + k * bs + i] for i in range(bs)])
                    stage.bn_forward(_to_device(batch, self.dist.device))
        finally:
            for m, mom in zip(bns, momenta):
                m.momentum = mom
            module.train(was_training)

    def _validate(self, stage: Stage) -> dict[str, float]:
        from torch.utils.data import DataLoader

        ds = stage.val_dataset()
        if ds is None:
            return {}
        n = min(self.cfg.val_samples, len(ds))
        mine = list(range(self.dist.rank, n, self.dist.world))
        loader = DataLoader(torch.utils.data.Subset(ds, mine), batch_size=self.cfg.batch_size, shuffle=False,
                            num_workers=0, generator=torch.Generator())
        values: dict[str, list[np.ndarray]] = {}
        mods = stage.modules()
        modes = {k: m.training for k, m in mods.items()}
        for m in mods.values():
            m.eval()
        try:
            with torch.no_grad(), self.ctx.autocast():
                for batch in loader:
                    out = stage.val_batch(_to_device(batch, self.dist.device))
                    for k, v in out.items():
                        values.setdefault(k, []).append(v.detach().float().cpu().numpy().reshape(-1))
        finally:
            for k, m in mods.items():
                m.train(modes[k])
        local = {k: np.concatenate(v) for k, v in values.items()}
        parts = self.dist.gather(local)
        merged = {k: np.concatenate([p[k] for p in parts if k in p]) for k in local}
        return stage.val_metrics(merged)

    def _loop(self, stage: Stage, start: int, best: dict[str, Any], log: RunLog) -> TrainResult:
        cfg = self.cfg
        loader = self._loader(stage.train_dataset(), start * cfg.batch_size)
        batches = _infinite(loader)
        for m in stage.modules().values():
            m.train()
        metrics: dict[str, float] = {}
        t0 = time.perf_counter()
        t_log, n_log = t0, 0
        step = start
        done_steps = 0
        last_saved = start if start > 0 else None
        image_batch = None
        if step >= cfg.max_steps:
            self.say(f"already at step {step} (max_steps {cfg.max_steps}): nothing to do")
        elif step == 0 and cfg.val_at_start:
            self._recalibrate_bn(stage, step)
            metrics = self._validate(stage)
            if metrics:
                log.scalars(0, metrics)
                self.say("validation before training: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        while step < cfg.max_steps:
            batch = _to_device(next(batches), self.dist.device)
            if image_batch is None and self.dist.main:
                image_batch = {k: v[:4] for k, v in batch.items()}
            losses = stage.train_step(batch, step + 1)
            if self.ctx.scaler is not None:
                self.ctx.scaler.update()
            step += 1
            done_steps += 1
            n_log += 1
            rec = {"step": step, **losses}
            self.history.append(rec)
            if self.on_step is not None:
                self.on_step(step, losses)
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                now = time.perf_counter()
                sps = n_log * cfg.batch_size * self.dist.world / max(now - t_log, 1e-9)
                t_log, n_log = now, 0
                log.scalars(step, {**{f"train/{k}": v for k, v in losses.items()}, "train/samples_per_s": sps})
                if self.dist.main and not self.quiet:
                    parts = " ".join(f"{k} {v:.4f}" for k, v in losses.items())
                    print(f"step {step}/{cfg.max_steps} {parts} ({sps:.2f} samples/s)", file=sys.stderr, flush=True)
            if self.dist.main and cfg.image_every and (step % cfg.image_every == 0 or step == 1):
                with torch.no_grad():
                    log.image(step, "train", stage.images(image_batch))
            is_best = False
            validate = bool(cfg.val_every) and (step % cfg.val_every == 0 or step == cfg.max_steps)
            if validate or step % cfg.ckpt_every == 0 or step == cfg.max_steps:
                self._recalibrate_bn(stage, step)  # eval-mode statistics that match the weights validated/saved
            if validate:
                metrics = self._validate(stage)
                if metrics:
                    log.scalars(step, metrics)
                    self.say("validation at step %d: %s" % (step, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())))
                    key = best["metric"]
                    v = metrics.get(key)
                    if v is not None and math.isfinite(v) and (best["value"] is None or v < best["value"]):
                        best = {"metric": key, "value": float(v), "step": step}
                        is_best = True
            if step % cfg.ckpt_every == 0 or step == cfg.max_steps or is_best:
                self.save(stage, step, best, is_best=is_best)
                last_saved = step
        if last_saved != step and step > 0:
            self.save(stage, step, best)
        elapsed = time.perf_counter() - t0
        sps = done_steps * cfg.batch_size * self.dist.world / max(elapsed, 1e-9)
        model = self.run / "model.safetensors"
        best_path = self.run / "best.safetensors"
        return TrainResult(self.run, step, model, best_path if best_path.exists() else None, self.history, metrics,
                           elapsed, sps)
