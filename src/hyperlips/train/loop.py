"""The one training loop shared by every stage (sync expert, HyperLips-Base, HR decoder, HyperLips-Lite).

What it does for every stage: one process per GPU under ``torchrun`` (:mod:`.distributed`), AMP, gradient
clipping, a finiteness check on every loss that stops the run with a message (before anything is written),
periodic validation (:mod:`.validation`), logging (:mod:`.runlog`), checkpoints (:mod:`.checkpoints`) and an
optional wall-clock budget (:mod:`.budget`, which also says which validation figures are better higher); Ctrl-C and
SIGTERM stop it after a step with a checkpoint (:mod:`.interrupts`).

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
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from ..errors import UserError, check_stop, warn
from .budget import BudgetPlan, held_out_key, higher_is_better, made_from_key, patience_spent, same_scheme
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
from .interrupts import deferred_interrupt, stopped
from .progress import LRSchedule, Progress
from .runlog import RunLog
from .stage import Context, Stage, TrainingDiverged, amp_settings
from .validation import held_out_metrics, recalibrate_bn, to_device


EARLY_PLAN_STEPS = 20  # with a time budget, the steps timed for a first plan (before any validation)


# ---------------------------------------------------------------------------------------------- the loop
def _infinite(loader) -> Iterator:
    while True:
        yield from loader


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
    stopped_early: bool = False  # ended by ``patience``: the held-out figure had stopped improving


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
        self._said_metric = False  # best_metric named no figure of the validation (said once)
        self._held_out = held_out_key(cfg.data)  # which clips the dataset holds out (kept in checkpoints)
        self._made_from = made_from_key(cfg.data)  # and what each clip was made from
        self.budget = BudgetPlan(cfg.max_minutes, cfg.val_every, cfg.max_steps, self.dist.broadcast)

    def _agreed_stop(self, interrupted: list[int]) -> int:
        """The signal the run stops after this step for, 0 for none: this process's (``interrupted``), or under
        torchrun the first process's that has one, so that every process stops at the same step and the checkpoint
        holds them all (a collective call)."""
        mine = interrupted[0] if interrupted else 0
        if not self.dist.enabled:
            return mine
        return next((s for s in self.dist.gather(mine) if s), 0)

    def say(self, msg: str) -> None:
        if self.dist.main and not self.quiet:
            from tqdm import tqdm

            # on its own line above a bar being drawn (printed as it was, it ran on after the bar's text)
            tqdm.write(f"hyperlips train: {msg}", file=sys.stderr)
            sys.stderr.flush()

    def _position(self, step: int, budget: float, progress: Progress) -> str:
        """Where a logged step stands: ``12/2000 (about 3.1 min left)``; with a time budget, the minutes spent and left
        instead (its step count is a plan that changes, and before the first plan it is the unbounded
        ``max_steps``)."""
        eta = progress.eta(step)
        if not budget:
            return f"{step}/{self.max_steps()}" + ("" if eta is None else f" (about {eta / 60:.1f} min left)")
        left = "" if eta is None else f", about {eta / 60:.1f} min left"
        return f"{step} ({self.elapsed / 60:.1f} of {budget / 60:.1f} min{left})"

    @property
    def planned_steps(self) -> int | None:
        """The step the wall-clock budget allows (:mod:`.budget`; None before the first plan, or without one)."""
        return self.budget.planned_steps

    def max_steps(self) -> int:
        """The step the run stops at: ``max_steps``, or fewer when the time budget allows fewer (planned)."""
        if self.planned_steps is not None:
            return min(int(self.cfg.max_steps), int(self.planned_steps))
        return int(self.cfg.max_steps)

    def _no_better(self, step: int, best: dict[str, Any]) -> bool:
        return patience_spent(step, best.get("step"), self.cfg.patience, self.cfg.val_every)

    def _no_better_message(self, step: int, best: dict[str, Any]) -> str:
        n = (step - int(best["step"])) // max(1, self.cfg.val_every)
        return (f"{n} validations without a better {best['metric']} than step {best['step']}'s "
                f"({best['value']:.4f}; patience {self.cfg.patience})")

    def _plan(self, step: int, val_seconds: float | None) -> None:
        """Plan the budget's steps at ``step`` (:mod:`.budget`), after a validation of ``val_seconds`` (None: none
        yet); the first plan is told."""
        per_step = self.budget.plan(step, self.elapsed, val_seconds or 0.0)
        if per_step is not None:
            val = "" if val_seconds is None else f", {val_seconds:.1f} s/validation"
            self.say(f"time budget {self.cfg.max_minutes:.3g} min: {per_step:.2f} s/step{val} -> planning "
                     f"{self.planned_steps} steps (re-planned at every validation)")

    def _preview(self, stage: Stage, step: int, log: RunLog, best: bool = False) -> None:
        """``RUN/preview.png``, the newest; and ``RUN/preview_best.png``, the best checkpoint's (``best``): the one a
        run keeps (its closing line showed the newest, of weights it did not keep)."""
        if not self.dist.main:
            return
        img = stage.preview()
        if img is None:
            return
        from ..media.video import write_image

        log.image(step, "preview", img)
        for name in ("preview.png", "preview_best.png") if best else ("preview.png",):
            tmp = self.run / f".{name}.tmp.png"
            if write_image(tmp, img):
                os.replace(tmp, self.run / name)

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
            "data": {"samples_per_rank": int(step) * self.cfg.batch_size, "world": self.dist.world,
                     "held_out": self._held_out, "made_from": self._made_from},
            "best": dict(best),
            "clock": {"elapsed_s": float(self.elapsed), **self.budget.state()},
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
        # the rates the settings give (a changed --lr applies from here on); loading the optimisers' state brings
        # back the checkpoint's, which the schedule would otherwise keep scaling
        rates = {k: [g["lr"] for g in o.param_groups] for k, o in stage.optimizers().items()}
        try:
            for k, m in stage.modules().items():
                m.load_state_dict(ck["models"][k])
            for k, o in stage.optimizers().items():
                o.load_state_dict(ck["optimizers"][k])
                for g, lr in zip(o.param_groups, rates[k]):
                    g["initial_lr"] = lr
        except (KeyError, RuntimeError, ValueError) as e:
            first = " ".join(str(e).split())[:200]
            raise UserError(f"{self.run}: its checkpoint does not fit the network being trained ({first}); resume it "
                            "with the settings it was started with, or train into a new --out folder") from None
        if self.ctx.scaler is not None and ck.get("scaler"):
            self.ctx.scaler.load_state_dict(ck["scaler"])
        clock = ck.get("clock") or {}
        self.elapsed = float(clock.get("elapsed_s", 0.0))
        dropped = self.budget.restore(clock)
        if dropped:
            self.say(dropped)
        rngs = ck.get("rng") or []
        if len(rngs) == self.dist.world:
            set_rng_state(rngs[self.dist.rank])
        else:
            seed_everything(self.cfg.seed + 1000 * int(ck["step"]) + self.dist.rank)
            if rngs and self.dist.main:
                warn(f"{self.run}: the run was saved by {len(rngs)} processes and continues with {self.dist.world}: "
                     f"its batch of {len(rngs) * self.cfg.batch_size} samples a step becomes "
                     f"{self.dist.world * self.cfg.batch_size}, and its random draws start afresh (the run is no longer "
                     "what it would have been uninterrupted)")
        held = (ck.get("data") or {}).get("held_out")
        if held is not None and held != self._held_out and self.dist.main:
            warn(f"{self.run}: the dataset's held-out clips changed since this run was saved (preprocessed again with "
                 "other footage or another --val-fraction): its validation figures, and the best checkpoint chosen "
                 "by them, now measure other clips, possibly ones it trained on")
        before = (ck.get("data") or {}).get("made_from")
        if isinstance(before, dict) and isinstance(self._made_from, dict) and self.dist.main:
            remade = sorted(k for k, v in self._made_from.items()
                            if k in before and same_scheme(before[k], v) and before[k] != v)
            if remade:  # (a clip replaced under its name, preprocessed again: it resumed without a word)
                shown = ", ".join(remade[:3]) + (f" and {len(remade) - 3} more" if len(remade) > 3 else "")
                warn(f"{self.run}: {len(remade)} of the dataset's clips were made again from other footage since this "
                     f"run was saved ({shown}: another file under their names, or another face chosen): it goes on "
                     "learning from what they hold now, and where they are held out its validation figures measure "
                     "other frames than before")
            added, gone = sorted(set(self._made_from) - set(before)), sorted(set(before) - set(self._made_from))
            if added or gone:  # (clips preprocessed into the dataset since: its batches changed without a word)
                told = [f"{len(n)} {w} ({', '.join(n[:3])}{f' and {len(n) - 3} more' if len(n) > 3 else ''})"
                        for n, w in ((added, "added"), (gone, "gone")) if n]
                warn(f"{self.run}: the dataset's clips changed since this run was saved: {'; '.join(told)}: it goes on "
                     "with other batches than it would have had uninterrupted")

    # -- main
    def fit(self) -> TrainResult:
        cfg = self.cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if not cfg.out:
            raise UserError("no run folder given (--out RUN)")
        if self.run.exists() and not self.run.is_dir():
            raise UserError(f"--out {self.run} is a file: the run folder must be a folder (new or of this run)")
        from ..data.preprocess import LOCK, dataset_lock

        created = not self.run.exists()
        if self.dist.main:
            self.run.mkdir(parents=True, exist_ok=True)
        try:  # a second run into the folder meanwhile is refused (two interleaved their checkpoints and scalars)
            with dataset_lock(self.run) if self.dist.main else contextlib.nullcontext():
                if self.dist.main:
                    clean_temporaries(self.run)  # (held: a run going on keeps its half-written files)
                return self._fit()
        except UserError:
            if created and self.dist.main and {p.name for p in self.run.iterdir()} <= {LOCK}:
                (self.run / LOCK).unlink(missing_ok=True)  # a mistake in the data or the settings: no empty run
                self.run.rmdir()  # folder left behind
            raise

    def _fit(self) -> TrainResult:
        cfg = self.cfg
        resume_ck, found, problem = None, None, None
        if self.dist.main:
            if self.resume:
                latest = latest_checkpoint(self.run)
                if latest is None:
                    problem = f"--resume: no checkpoint in {self.run / CKPT_DIR} to resume from"
                else:
                    found = str(latest[0])
            elif list_checkpoints(self.run):
                held = latest_checkpoint(self.run)  # (another stage's run: --resume, advised, then failed too)
                other = str(((held[1].get("config") or {}).get("stage")) if held else "") or cfg.stage
                problem = (f"{self.run} already holds checkpoints of a run: pass --resume to continue it, or choose "
                           "another --out folder") if other == cfg.stage else (
                    f"{self.run} holds a `train {other}` run: choose another --out folder for this `train "
                    f"{cfg.stage}` run")
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
        log = RunLog(self.run, self.dist.main, quiet=self.quiet, start=start)
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

    def _loop(self, stage: Stage, start: int, best: dict[str, Any], log: RunLog) -> TrainResult:
        cfg = self.cfg
        loader = self._loader(stage.train_dataset(), start * cfg.batch_size)
        batches = _infinite(loader)
        for m in stage.modules().values():
            m.train()
        schedule = LRSchedule(stage.optimizers(), cfg)
        budget = self.budget.seconds
        metrics: dict[str, float] = {}
        t0 = time.perf_counter()
        elapsed0 = self.elapsed
        step = start
        done_steps = 0
        last_saved = start if start > 0 else None
        image_batch = None
        losses: dict[str, float] = {}

        def clock() -> None:  # the training time so far, into self.elapsed
            self.elapsed = elapsed0 + time.perf_counter() - t0

        def out_of_time() -> bool:
            clock()
            return bool(budget) and self.dist.all_true(self.elapsed >= budget)

        if step >= self.max_steps():
            more = " (the plan for its time budget; a larger --minutes continues it)" if budget else ""
            self.say(f"already at step {step} (max_steps {self.max_steps()}){more}: nothing to do")
        elif budget and self.elapsed >= budget:
            self.say(f"the time budget ({cfg.max_minutes:g} min) is already spent at step {step}: nothing to do; a "
                     "larger --minutes continues the run")
        elif self._no_better(step, best):
            self.say(self._no_better_message(step, best) + ": nothing to do (--set patience=0 trains on)")
        elif step == 0:
            try:  # once, before a fresh run's first step (Lite: the audio encoder's fit, minutes)
                stage.prepare(self.budget.prepare_limit(self.elapsed))
            except KeyboardInterrupt:  # SIGTERM/SIGHUP too (Terminated): no step yet, so no checkpoint
                self.say("stopped before the first step (while preparing the run: Lite fits its audio encoder "
                         "then); nothing was saved, so running the same command again starts the run over (`train`: "
                         "without --resume, which needs a checkpoint)")
                raise
            out_of_time()
        self.budget.start(start, self.elapsed)  # the speed is measured from here
        progress = Progress(self, budget)
        if step == 0 and cfg.val_at_start and step < self.max_steps() and not out_of_time():
            recalibrate_bn(stage, cfg, self.ctx, step)
            metrics = held_out_metrics(stage, cfg, self.ctx, progress.validating)
            if metrics:
                log.scalars(0, metrics)
                self.say("validation before training: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        t_log, n_log = time.perf_counter(), 0
        stop = step >= self.max_steps() or (budget and self.elapsed >= budget) or self._no_better(step, best)
        stop_signal = 0  # the signal the run stops after a step for (under torchrun: any process's)
        with deferred_interrupt(self) as interrupted:  # Ctrl-C: stop after the step, with a checkpoint
            while not stop:
                check_stop()  # SIGTERM/SIGHUP whose exception a native call swallowed: stop before the next step
                schedule.apply(step, self.planned_steps)
                batch = to_device(next(batches), self.dist.device)
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
                if budget and self.planned_steps is None and step - start == EARLY_PLAN_STEPS:
                    self._plan(step, None)  # from the speed alone: validations are timed at the first one
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
                        print(f"step {self._position(step, budget, progress)} {parts} ({sps:.2f} samples/s)",
                              file=sys.stderr, flush=True)
                progress.update(step, losses, metrics)
                if self.dist.main and cfg.image_every and (step % cfg.image_every == 0 or step == 1):
                    with torch.no_grad():
                        log.image(step, "train", stage.images(image_batch))
                is_best = False
                validate = bool(cfg.val_every) and (step % cfg.val_every == 0 or last)
                if validate or step % cfg.ckpt_every == 0 or last:
                    recalibrate_bn(stage, cfg, self.ctx, step)  # eval-mode statistics that match the weights validated/saved
                if validate:
                    t_val = time.perf_counter()
                    metrics = held_out_metrics(stage, cfg, self.ctx, progress.validating)
                    if metrics:
                        log.scalars(step, metrics)
                        if not cfg.progress:
                            self.say("validation at step %d: %s" % (step, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())))
                        key = best["metric"]
                        v = metrics.get(key)
                        if v is None and not self._said_metric:
                            self._said_metric = True
                            warn(f"best_metric {key} is none of this validation's figures ({', '.join(metrics)}): "
                                 "no best checkpoint is kept, and patience never stops the run")
                        if v is not None and math.isfinite(v) and (best["value"] is None or (
                                v > best["value"] if higher_is_better(key) else v < best["value"])):
                            best = {"metric": key, "value": float(v), "step": step}
                            is_best = True
                    self._preview(stage, step, log, is_best)
                    clock()  # with the validation in it (the time before it, less the validation, read as 0 s a step)
                    self._plan(step, time.perf_counter() - t_val)
                    if last and self.budget.planned_steps is not None and step < int(cfg.max_steps):  # the budget
                        # ends the run here, and its checkpoint says so (a plan made now would have a re-run train on);
                        # not where --max-steps ended it, whose larger value continues in the time left
                        self.budget.planned_steps = step
                    progress.update(step, losses, metrics, force=True)
                if step % cfg.ckpt_every == 0 or last or is_best:
                    self.save(stage, step, best, is_best=is_best)
                    last_saved = step
                stale = validate and self.dist.broadcast(self._no_better(step, best))
                if stale and not last:
                    self.say(self._no_better_message(step, best) + ": stopping here (patience)")
                stop_signal = self._agreed_stop(interrupted)
                stop = last or stale or step >= self.max_steps() or out_of_time() or bool(stop_signal)
            stop_signal = stop_signal or self._agreed_stop(interrupted)  # (one that came after the last step)
            if last_saved != step and step > 0:  # (inside: the same stop passed on again does not cut the save)
                self.save(stage, step, best)
        progress.close(step, metrics, done=not stop_signal)
        if stop_signal:
            self.say(f"stopped at step {step}; its checkpoint is in {self.run / CKPT_DIR}: run the same command again "
                     "to continue (`train`: with --resume; `finetune` as it was)")
            raise stopped(stop_signal)
        elapsed = time.perf_counter() - t0
        sps = done_steps * cfg.batch_size * self.dist.world / max(elapsed, 1e-9)
        model = self.run / "model.safetensors"
        best_path = self.run / "best.safetensors"
        return TrainResult(self.run, step, model, best_path if best_path.exists() else None, self.history, metrics,
                           elapsed, sps, self._no_better(step, best))
