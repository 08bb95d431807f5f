"""The learning-rate schedule (:class:`LRSchedule`) and the progress of a run (:class:`Progress`: the bar, and the
JSON status file other tools read) of the training loop (:mod:`.loop`)."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import torch

from ..errors import UserError, hidden_name
from .config import TrainConfig


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
    """For a :class:`~.loop.Trainer`: a progress bar (``progress: true``) over the steps, or over the wall-clock budget when there is one, with
    the latest losses and validation figures; and the JSON status file ``progress_file`` for other tools."""

    def __init__(self, trainer: Any, budget: float):
        self.t = trainer
        self.budget = budget
        self.bar = None
        self.last_write = 0.0
        if trainer.dist.main and trainer.cfg.progress and not trainer.quiet:
            from tqdm import tqdm

            from ..bars import width_options

            total = int(round(budget)) if budget else trainer.max_steps()
            self.bar = tqdm(total=total, unit="s" if budget else "step", desc=f"train {trainer.stage.name}",
                            file=sys.stderr, **width_options(sys.stderr),
                            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}{postfix}]")

    def fraction(self, step: int) -> float:
        if self.budget:
            by_time = self.t.elapsed / self.budget
            by_steps = step / max(1, self.t.max_steps())
            return float(min(1.0, max(by_time, by_steps)))
        return float(min(1.0, step / max(1, self.t.max_steps())))

    def eta(self, step: int) -> float | None:
        """Seconds left: the steps left at the pace of those done since the run (or this resume) started training,
        no longer than what the time budget leaves. The preparation before the first step (Lite's audio-encoder fit,
        a minute or two) is not a step's time: counted in, it made 17 minutes of 1 left at step 10 of 120."""
        ref_step, ref_elapsed = self.t.budget.measured_from
        by_steps = None
        if step > ref_step:
            per_step = max(self.t.elapsed - ref_elapsed, 0.0) / (step - ref_step)
            by_steps = per_step * max(self.t.max_steps() - step, 0)
        if self.budget:
            by_time = max(self.budget - self.t.elapsed, 0.0)
            return by_time if by_steps is None else min(by_time, by_steps)
        return by_steps

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

    def validating(self, done: int, total: int) -> None:
        """While the held-out samples are scored (minutes for Base on a CPU), the bar says so instead of standing."""
        if self.bar is not None and self.t.dist.main:
            self.bar.set_postfix_str(f"validating: batch {done}/{total}", refresh=True)

    def write(self, step: int, metrics: Mapping[str, float], done: bool = False) -> None:
        path = Path(self.t.cfg.progress_file)
        preview = self.t.run / "preview.png"
        status = {"stage": self.t.stage.name, "step": int(step), "max_steps": self.t.max_steps(),
                  "elapsed_s": round(self.t.elapsed, 1), "eta_s": None if done else self.eta(step),
                  "fraction": 1.0 if done else round(self.fraction(step), 4), "done": done,
                  "val": {k: (float(v) if math.isfinite(float(v)) else None) for k, v in metrics.items()},
                  "preview": str(preview) if preview.exists() else None}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(hidden_name(path.name, ".tmp"))
        tmp.write_text(json.dumps(status, indent=1), encoding="utf-8")
        os.replace(tmp, path)

    def close(self, step: int, metrics: Mapping[str, float], done: bool = True) -> None:
        """The bar closed and the status file's last word: ``done`` (False: stopped by a signal, to be resumed)."""
        if self.bar is not None:
            self.bar.update(max(0, self.bar.total - self.bar.n) if self.budget and self.t.elapsed >= self.budget else 0)
            self.bar.close()
        if self.t.dist.main and self.t.cfg.progress_file:
            self.write(step, metrics, done=done)
