"""The wall-clock budget of a training run (``max_minutes``, ``--minutes``): how many steps fit in it.

The step a run ends at is planned at every validation from the speed measured since the last plan (validations
included), so the whole budget is used whatever else the machine is doing; the learning-rate schedule decays over
the plan (:class:`~.progress.LRSchedule`). Work a stage does once before its first step (``Stage.prepare``:
HyperLips-Lite fits its audio encoder there) is spent from the budget but left out of the speed.

The plan travels in checkpoints with the budget it was made for. A run resumed with the same budget keeps it until
its own next validation re-plans; a run resumed with another one (more minutes to train on) drops it and plans
again at its next validation, its learning rate back at full strength until then. A run that ends at its plan keeps
its end as its plan (the validation at its last step plans nothing more), so running it again has nothing to do.

A run may also stop before its budget or ``max_steps`` when the held-out figure has stopped improving
(``patience``: that many validations in a row without a new best; :func:`patience_spent`). The best checkpoint is
kept either way, so the time after it is what is saved. The rule reads only the step of the best validation, which
checkpoints carry, so a resumed run stops exactly where the uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Mapping

from ..data.datasets import CLIPS_DIR, MANIFEST

PREPARE_SHARE = 0.25  # of the budget, the most a stage's one-off preparation may take
MARGIN = 0.98  # of the steps the measured speed allows, planned


class BudgetPlan:
    """The plan of a run with a budget of ``max_minutes`` (0: none, nothing is planned)."""

    def __init__(self, max_minutes: float, val_every: int, max_steps: int,
                 broadcast: Callable[[Any], Any] = lambda x: x):
        self.seconds = float(max_minutes) * 60.0 if max_minutes else 0.0
        self.every = max(1, int(val_every or max_steps))
        self.broadcast = broadcast  # every process must plan the same step
        self.planned_steps: int | None = None
        self._ref = (0, 0.0)  # (step, elapsed seconds) the speed is measured from for the next plan
        self._started = (0, 0.0)  # (step, elapsed seconds) training started at (after any preparation)

    def prepare_limit(self, elapsed: float) -> float | None:
        """Seconds a stage's preparation may take now (None: no budget, no limit)."""
        if not self.seconds:
            return None
        return max(0.0, PREPARE_SHARE * self.seconds - elapsed)

    def start(self, step: int, elapsed: float) -> None:
        """Measure the speed from here (after any preparation)."""
        self._ref = self._started = (int(step), float(elapsed))

    @property
    def measured_from(self) -> tuple[int, float]:
        """(step, elapsed seconds) of :meth:`start`: the whole pace since, validations included, is the time left's
        (each plan measures from the one before, and the step after a validation would carry all of its time)."""
        return self._started

    def plan(self, step: int, elapsed: float, val_seconds: float) -> float | None:
        """Fix the step the run ends at, at a validation that took ``val_seconds``; the seconds per step measured
        when this is the first plan (None otherwise, or when nothing was planned)."""
        ref_step, ref_elapsed = self._ref
        if not self.seconds or step < 1 or step <= ref_step:
            return None
        per_step = max(elapsed - ref_elapsed - val_seconds, 1e-6) / (step - ref_step)
        self._ref = (step, elapsed)
        left = self.seconds - elapsed
        steps_left = int(left / (per_step + val_seconds / self.every)) if left > 0 else 0
        first = self.planned_steps is None
        self.planned_steps = int(self.broadcast(step + max(0, int(MARGIN * steps_left))))
        return per_step if first else None

    def state(self) -> dict[str, Any]:
        return {"planned_steps": self.planned_steps, "budget_s": self.seconds}

    def restore(self, clock: Mapping[str, Any]) -> str | None:
        """Take a checkpoint's plan; a message when it was made for another budget and is dropped."""
        planned, was = clock.get("planned_steps"), clock.get("budget_s")
        if planned is not None and was is not None and abs(float(was) - self.seconds) > 1e-6:
            self.planned_steps = None
            now = f"{self.seconds / 60:.3g} min" if self.seconds else "none"
            return (f"the time budget changed ({float(was) / 60:.3g} min -> {now}): the plan of {planned} steps is "
                    "dropped" + (", the next validation plans again" if self.seconds else ""))
        self.planned_steps = planned
        return None


def patience_spent(step: int, best_step: int | None, patience: int, val_every: int) -> bool:
    """True when ``patience`` validations (every ``val_every`` steps) have passed since the best one, at
    ``best_step``, without a better one (``patience`` 0, or no best yet: never)."""
    if patience <= 0 or best_step is None or val_every <= 0:
        return False
    return step - int(best_step) >= int(patience) * int(val_every)


# validation figures for which more is better (the others, losses and errors, are better lower)
HIGHER_IS_BETTER = ("auc", "acc", "accuracy", "psnr", "ssim", "_r", "_r_other", "faces_found", "sharpness")


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of validation figure ``metric`` (``val/auc``, ``val/mouth_l1``) is the better one."""
    leaf = metric.rsplit("/", 1)[-1]
    return leaf in HIGHER_IS_BETTER or leaf.endswith(HIGHER_IS_BETTER)


def held_out_key(data) -> str | None:
    """A key of a dataset's held-out clips (its manifest's ``val`` side, and their frames where a clip is split in
    time), or None where there is no manifest."""
    try:
        clips = json.loads((Path(data) / MANIFEST).read_text(encoding="utf-8")).get("clips", [])
    except (OSError, ValueError, TypeError):
        return None
    held = sorted(f"{c.get('id')} {c.get('frames', '')}" for c in clips
                  if isinstance(c, dict) and c.get("split") == "val")
    return hashlib.sha1("\n".join(held).encode("utf-8", "surrogateescape")).hexdigest()[:16]


MADE_FROM_FILES = ("boxes.npy", "mel.npy", "times.npy")  # what a clip holds, in brief: its face track and sound


def made_from_key(data) -> dict[str, str] | None:
    """For each clip of a dataset, a key of what it holds (a hash of its face boxes, mel and frame times, a few tens of
    KB): a clip made again from other footage under the same name changes its key; one made again from the same
    file (only its time changed: a copy, a checkout) does not. Keys start with "c:" (those of runs saved before
    began with no prefix and held the file's size and time; :func:`same_scheme` tells them apart). None where there is
    no manifest."""
    try:
        clips = json.loads((Path(data) / MANIFEST).read_text(encoding="utf-8")).get("clips", [])
    except (OSError, ValueError, TypeError):
        return None
    return {str(c["id"]): clip_key(Path(data) / CLIPS_DIR / str(c["id"])) for c in clips
            if isinstance(c, dict) and c.get("id")}


def clip_key(folder: Path) -> str:
    """A key of what one clip folder holds (:data:`MADE_FROM_FILES`): ``"c:"`` and 12 hex digits."""
    h = hashlib.sha1()
    for name in MADE_FROM_FILES:
        try:
            h.update((Path(folder) / name).read_bytes())
        except OSError:
            h.update(b"-")
    return "c:" + h.hexdigest()[:12]


def same_scheme(a: str, b: str) -> bool:
    """Whether two :func:`made_from_key` values were made the same way (both of content, or both of file facts)."""
    return str(a).startswith("c:") == str(b).startswith("c:")
