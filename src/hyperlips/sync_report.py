"""What ``LipSync.sync`` tells its caller while and after it works: the report of a run (its frames, where the
time went, how soon its first frame came), the stages' busy-time clock and the progress bars."""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .stages import Timings

ProgressCallback = Callable[[str, int, int], None]  # (stage, frames done, frames in the stage)


@dataclass
class SyncReport:
    """What a run produced and where its time went (seconds per stage)."""

    output: Path
    frames: int
    fps: float
    width: int  # the written file's size (an odd side of the input is one larger in 4:2:0)
    height: int
    audio_seconds: float
    frames_with_face: int
    timings: dict[str, float] = field(default_factory=dict)  # busy seconds per stage (the stages overlap)
    wall_seconds: float = 0.0  # from the start of sync() to the renamed file (models already loaded)
    first_frame_seconds: float | None = None  # from the start of sync() to the first frame handed to the encoder
    warnings: list[str] = field(default_factory=list)  # what this call warned of (InputWarning messages), each once

    def stage_fps(self) -> dict[str, float]:
        return {k: (self.frames / v if v > 0 else float("inf")) for k, v in self.timings.items()}

    def summary(self) -> str:
        parts = ", ".join(f"{k} {v:.1f}s ({self.frames / v:.1f} fps)" for k, v in self.timings.items() if v > 0)
        wall = self.wall_seconds
        return (
            f"{self.output}: {self.frames} frames {self.width}x{self.height} @ {self.fps:g} fps, "
            f"mouth generated in {self.frames_with_face}; {wall:.1f}s end to end once the models were loaded "
            f"({self.frames / wall if wall > 0 else float('inf'):.1f} fps{self._pace()}); busy time per stage (they "
            f"run at the same time): {parts}"
        )

    def after_first_frame_fps(self) -> float | None:
        """Frames per second from the first frame handed to the encoder to the end (:func:`pace_after_first_frame`)."""
        return pace_after_first_frame(self.frames, self.wall_seconds, self.first_frame_seconds)

    def _pace(self) -> str:
        after = self.after_first_frame_fps()
        if after is None:
            return ""
        return f"; the first frame after {self.first_frame_seconds:.2f}s, then {after:.1f} fps"


def pace_after_first_frame(frames: int, seconds: float, first_frame: float | None) -> float | None:
    """Frames per second of a run of ``frames`` frames in ``seconds`` from its first frame (at ``first_frame``
    seconds) to its end: its pace once the start-up (the speech, the reference face's search, the first batch) is
    done. None where a time is unknown (None or NaN) or there is no second frame."""
    if first_frame is None or not (math.isfinite(first_frame) and math.isfinite(seconds)) or frames < 2 \
            or seconds <= first_frame:
        return None
    return (frames - 1) / (seconds - first_frame)


class StageTimer(Timings):
    """Busy seconds per stage: ``with timer("stage"): ...`` in the caller's thread; the stage threads add theirs."""

    @contextlib.contextmanager
    def __call__(self, stage: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - t0)


def progress_bar(total: int, desc: str, show: bool = True, on_progress: ProgressCallback | None = None):
    """A progress bar (tqdm, on stderr; hidden unless ``show``); use it as a context manager, so it is closed (and
    its line ended) before any error. With ``on_progress``, every update is also reported to it."""
    from .bars import bar as new_bar

    bar = new_bar(total=total, desc=desc, unit="frame", disable=not show or total == 0)  # (nothing to count: a
    # reference picture given, no frames searched for one; it showed "faces: 0frame [00:00, ?frame/s]")
    return bar if on_progress is None else ReportingBar(bar, desc, on_progress)


def complete_bar(bar) -> None:
    """Show a bar whose work ended before its estimated total as done: the total becomes what was done."""
    if isinstance(bar, ReportingBar):
        bar.on_progress(bar.stage, bar.done, bar.done)
    from .bars import redraw

    inner = getattr(bar, "bar", bar)
    if not inner.disable:
        inner.total = inner.n
        redraw(inner)


class ReportingBar:
    """A progress bar that also tells a callback: ``on_progress(stage, done, total)`` after every update."""

    def __init__(self, bar, stage: str, on_progress: ProgressCallback) -> None:
        self.bar, self.stage, self.on_progress, self.done = bar, stage, on_progress, 0
        on_progress(stage, 0, int(bar.total))

    def update(self, n: int = 1) -> None:
        self.bar.update(n)
        self.done += n
        self.on_progress(self.stage, self.done, int(self.bar.total))

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> "ReportingBar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
