"""The one training loop shared by every stage (sync expert, HyperLips-Base, HR decoder, HyperLips-Lite).

What it does for every stage: one process per GPU under ``torchrun`` (:mod:`.distributed`), AMP, gradient
clipping, a finiteness check on every loss that stops the run with a message (before anything is written),
periodic validation, logging (:mod:`.runlog`), checkpoints (:mod:`.checkpoints`) and an optional wall-clock budget.

Checkpoints (``RUN/checkpoints/step_<n>.pt``) hold the whole training state: weights, optimisers, the AMP scaler,
every rank's RNG states, the step and the data position; the last ``keep_last`` are kept, plus ``best.pt`` (best
validation metric). The trained network itself is also exported after each checkpoint as ``RUN/model.safetensors``
(and ``RUN/best.safetensors``), which ``hyperlips sync`` loads directly.

Exact resume: data sampling is a pure function of (seed, sample number) (:mod:`hyperlips.data.datasets`), so a
resumed run reads exactly the batches the uninterrupted run would have read; with the RNG states and optimiser
state restored, the losses at step k+m match the uninterrupted run (bit for bit on CPU).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import UserError
from .checkpoints import (
    CKPT_DIR,
    CKPT_FORMAT,
    CKPT_VERSION,
    atomic_save,
    clean_temporaries,
    latest_checkpoint,
    link_or_copy,
    list_checkpoints,
    read_checkpoint,
)
from .config import TrainConfig
from .distributed import Dist, rng_state, seed_everything, set_rng_state, setup_distributed
from .runlog import RunLog


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


# ---------------------------------------------------------------------------------------------- schedule and progress
class LRSchedule:
    """Sets every optimiser's learning rates to ``factor x`` their initial values each step: a linear warm-up over
    ``warmup_steps``, then constant, or (``lr_schedule: cosine``) a cosine decay to 10% at the planned last step
    (``max_steps``, or what the time budget allows once planned)."""

    def __init__(self, optimizers: Mapping[str, torch.optim.Optimizer], cfg: TrainConfig):
        if cfg.lr_schedule not in ("constant", "cosine"):
            raise UserError(f"lr_schedule must be constant or cosine (got {cfg.lr_schedule!r})")
        self.cfg = cfg
        self.groups = [(g, float(g.get("initial_lr", g["lr"]))) for o in optimizers.values() for g in o.param_groups]
        for g, lr in self.groups:
            g["initial_lr"] = lr
        self.factor = 1.0

    def apply(self, step: int, planned: int | None) -> None:
        cfg = self.cfg
        f = 1.0
        if cfg.warmup_steps and step < cfg.warmup_steps:
            f = (step + 1) / cfg.warmup_steps
        elif cfg.lr_schedule == "cosine":
            total = min(int(cfg.max_steps), int(planned)) if planned is not None else (
                int(cfg.max_steps) if not cfg.max_minutes else None)
            if total is not None and total > cfg.warmup_steps:
                t = min(1.0, (step - cfg.warmup_steps) / (total - cfg.warmup_steps))
                f = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))
        self.factor = f
        for g, lr in self.groups:
            g["lr"] = lr * f


class Progress:
    """A progress bar (``progress: true``) over the steps, or over the wall-clock budget when there is one, with
    the latest losses and validation figures; and the JSON status file ``progress_file`` for other tools."""

    def __init__(self, trainer: "Trainer", budget: float):
        self.t = trainer
        self.budget = budget
        self.bar = None
        self.last_write = 0.0
        if trainer.dist.main and trainer.cfg.progress and not trainer.quiet:
            from tqdm import tqdm

            total = int(round(budget)) if budget else trainer.max_steps()
            self.bar = tqdm(total=total, unit="s" if budget else "step", desc=f"train {trainer.stage.name}",
                            file=sys.stderr, dynamic_ncols=True, bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} "
                            "[{elapsed}<{remaining}{postfix}]")

    def fraction(self, step: int) -> float:
        if self.budget:
            by_time = self.t.elapsed / self.budget
            by_steps = step / max(1, self.t.max_steps())
            return float(min(1.0, max(by_time, by_steps)))
        return float(min(1.0, step / max(1, self.t.max_steps())))

    def eta(self, step: int) -> float | None:
        frac = self.fraction(step)
        return self.t.elapsed * (1 - frac) / frac if frac > 0 else None

    def update(self, step: int, losses: Mapping[str, float], metrics: Mapping[str, float], force: bool = False) -> None:
        if not self.t.dist.main:
            return
        if self.bar is not None:
            target = int(min(self.bar.total, round(self.t.elapsed))) if self.budget else step
            shown = {"step": step, **{k: f"{v:.3g}" for k, v in list(losses.items())[:2]}}
            for k in ("val/opening_r", "val/sharpness", "val/mouth_l1"):
                if k in metrics:
                    shown[k.split("/", 1)[1]] = f"{metrics[k]:.3f}"
            self.bar.set_postfix(shown, refresh=False)
            self.bar.update(max(0, target - self.bar.n))
        now = time.perf_counter()
        if self.t.cfg.progress_file and (force or now - self.last_write > 2.0):
            self.last_write = now
            self.write(step, metrics)

    def write(self, step: int, metrics: Mapping[str, float], done: bool = False) -> None:
        path = Path(self.t.cfg.progress_file)
        preview = self.t.run / "preview.png"
        status = {"stage": self.t.stage.name, "step": int(step), "max_steps": self.t.max_steps(),
                  "elapsed_s": round(self.t.elapsed, 1), "eta_s": None if done else self.eta(step),
                  "fraction": 1.0 if done else round(self.fraction(step), 4), "done": done,
                  "val": {k: (float(v) if math.isfinite(float(v)) else None) for k, v in metrics.items()},
                  "preview": str(preview) if preview.exists() else None}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(status, indent=1), encoding="utf-8")
        os.replace(tmp, path)

    def close(self, step: int, metrics: Mapping[str, float]) -> None:
        if self.bar is not None:
            self.bar.update(max(0, self.bar.total - self.bar.n) if self.budget and self.t.elapsed >= self.budget else 0)
            self.bar.close()
        if self.t.dist.main and self.t.cfg.progress_file:
            self.write(step, metrics, done=True)


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
        self.elapsed = 0.0  # training wall time of the run so far, across resumes (seconds)
        self.planned_steps: int | None = None  # steps the wall-clock budget allows (fixed once, then stored)

    def say(self, msg: str) -> None:
        if self.dist.main and not self.quiet:
            print(f"hyperlips train: {msg}", file=sys.stderr, flush=True)

    def max_steps(self) -> int:
        """The step the run stops at: ``max_steps``, or fewer when the time budget allows fewer (planned)."""
        if self.planned_steps is not None:
            return min(int(self.cfg.max_steps), int(self.planned_steps))
        return int(self.cfg.max_steps)

    def _plan(self, step: int, val_seconds: float, budget: float) -> None:
        """With a time budget, fix at every validation the step the run ends at, from the speed measured since the
        last plan (validations included), so the whole budget is used whatever else the machine is doing; the
        learning-rate schedule decays over it. The plan is stored in checkpoints: a resumed run continues with
        it until its own next validation re-plans from its own speed."""
        if not budget or step < 1:
            return
        ref_step, ref_elapsed = self._plan_ref
        if step <= ref_step:
            return
        per_step = max(self.elapsed - ref_elapsed - val_seconds, 1e-6) / (step - ref_step)
        self._plan_ref = (step, self.elapsed)
        left = budget - self.elapsed
        every = max(1, self.cfg.val_every or self.cfg.max_steps)
        steps_left = int(left / (per_step + val_seconds / every)) if left > 0 else 0
        first = self.planned_steps is None
        self.planned_steps = int(self.dist.broadcast(step + max(0, int(0.98 * steps_left))))
        if first:
            self.say(f"time budget {self.cfg.max_minutes:g} min: {per_step:.2f} s/step, {val_seconds:.1f} s/validation "
                     f"-> planning {self.planned_steps} steps (re-planned at every validation)")

    def _preview(self, stage: Stage, step: int, log: RunLog) -> None:
        if not self.dist.main:
            return
        img = stage.preview()
        if img is None:
            return
        import cv2

        log.image(step, "preview", img)
        tmp = self.run / ".preview.tmp.png"
        if cv2.imwrite(str(tmp), img):
            os.replace(tmp, self.run / "preview.png")

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
            "clock": {"elapsed_s": float(self.elapsed), "planned_steps": self.planned_steps},
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
                link_or_copy(path, self.run / CKPT_DIR / "best.pt")
                link_or_copy(self.run / "model.safetensors", self.run / "best.safetensors")
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
        try:
            for k, m in stage.modules().items():
                m.load_state_dict(ck["models"][k])
            for k, o in stage.optimizers().items():
                o.load_state_dict(ck["optimizers"][k])
        except (KeyError, RuntimeError, ValueError) as e:
            first = " ".join(str(e).split())[:200]
            raise UserError(f"{self.run}: its checkpoint does not fit the network being trained ({first}); resume it "
                            "with the settings it was started with, or train into a new --out folder") from None
        if self.ctx.scaler is not None and ck.get("scaler"):
            self.ctx.scaler.load_state_dict(ck["scaler"])
        clock = ck.get("clock") or {}
        self.elapsed = float(clock.get("elapsed_s", 0.0))
        self.planned_steps = clock.get("planned_steps")
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
        log = RunLog(self.run, self.dist.main, quiet=self.quiet)
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
        schedule = LRSchedule(stage.optimizers(), cfg)
        budget = float(cfg.max_minutes) * 60.0 if cfg.max_minutes else 0.0
        progress = Progress(self, budget)
        metrics: dict[str, float] = {}
        t0 = time.perf_counter()
        elapsed0 = self.elapsed
        self._plan_ref = (start, elapsed0)
        t_log, n_log = t0, 0
        step = start
        done_steps = 0
        last_saved = start if start > 0 else None
        image_batch = None
        losses: dict[str, float] = {}

        def out_of_time() -> bool:
            self.elapsed = elapsed0 + time.perf_counter() - t0
            return bool(budget) and self.dist.all_true(self.elapsed >= budget)

        if step >= self.max_steps():
            self.say(f"already at step {step} (max_steps {self.max_steps()}): nothing to do")
        elif budget and self.elapsed >= budget:
            self.say(f"the time budget ({cfg.max_minutes:g} min) is already spent at step {step}: nothing to do")
        elif step == 0 and cfg.val_at_start:
            self._recalibrate_bn(stage, step)
            metrics = self._validate(stage)
            if metrics:
                log.scalars(0, metrics)
                self.say("validation before training: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        stop = step >= self.max_steps() or (budget and self.elapsed >= budget)
        while not stop:
            schedule.apply(step, self.planned_steps)
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
            timed_out = out_of_time()
            last = step >= self.max_steps() or timed_out
            if step % cfg.log_every == 0 or last:
                now = time.perf_counter()
                sps = n_log * cfg.batch_size * self.dist.world / max(now - t_log, 1e-9)
                t_log, n_log = now, 0
                log.scalars(step, {**{f"train/{k}": v for k, v in losses.items()}, "train/samples_per_s": sps,
                                   "train/lr": schedule.factor * cfg.lr, "train/elapsed_s": self.elapsed,
                                   **({"train/planned_steps": self.planned_steps} if self.planned_steps else {})})
                if self.dist.main and not self.quiet and not cfg.progress:
                    parts = " ".join(f"{k} {v:.4f}" for k, v in losses.items())
                    print(f"step {step}/{self.max_steps()} {parts} ({sps:.2f} samples/s)", file=sys.stderr, flush=True)
            progress.update(step, losses, metrics)
            if self.dist.main and cfg.image_every and (step % cfg.image_every == 0 or step == 1):
                with torch.no_grad():
                    log.image(step, "train", stage.images(image_batch))
            is_best = False
            validate = bool(cfg.val_every) and (step % cfg.val_every == 0 or last)
            if validate or step % cfg.ckpt_every == 0 or last:
                self._recalibrate_bn(stage, step)  # eval-mode statistics that match the weights validated/saved
            if validate:
                t_val = time.perf_counter()
                metrics = self._validate(stage)
                if metrics:
                    log.scalars(step, metrics)
                    if not cfg.progress:
                        self.say("validation at step %d: %s" % (step, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())))
                    key = best["metric"]
                    v = metrics.get(key)
                    if v is not None and math.isfinite(v) and (best["value"] is None or v < best["value"]):
                        best = {"metric": key, "value": float(v), "step": step}
                        is_best = True
                self._preview(stage, step, log)
                self._plan(step, time.perf_counter() - t_val, budget)
                progress.update(step, losses, metrics, force=True)
            if step % cfg.ckpt_every == 0 or last or is_best:
                self.save(stage, step, best, is_best=is_best)
                last_saved = step
            stop = last or out_of_time()
        if last_saved != step and step > 0:
            self.save(stage, step, best)
        progress.close(step, metrics)
        elapsed = time.perf_counter() - t0
        sps = done_steps * cfg.batch_size * self.dist.world / max(elapsed, 1e-9)
        model = self.run / "model.safetensors"
        best_path = self.run / "best.safetensors"
        return TrainResult(self.run, step, model, best_path if best_path.exists() else None, self.history, metrics,
                           elapsed, sps)
