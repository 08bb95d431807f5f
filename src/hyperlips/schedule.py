"""Which source frame each output frame shows, when the audio and the video differ in length.

The output always has as many frames as the audio lasts. When the video is shorter it is either played
forward and backward in turn (``pingpong``: 0 1 2 3 2 1 0 1 2 ...; no jump cut at the loop point) or it
holds its last frame (``hold``). When the video is longer it is cut where the audio ends.

Runs are produced lazily so a ten-minute output over a two-second clip costs no memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

LOOP_MODES = ("pingpong", "hold")


@dataclass(frozen=True)
class Run:
    """Source frames ``start .. stop-1`` shown in order (or ``stop-1 .. start`` when ``reverse``)."""

    start: int
    stop: int
    reverse: bool = False

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def indices(self) -> range:
        return range(self.stop - 1, self.start - 1, -1) if self.reverse else range(self.start, self.stop)


def source_index(j: int, n_src: int, loop: str = "pingpong") -> int:
    """Source frame shown at output frame ``j``."""
    if n_src <= 0:
        raise ValueError("n_src must be positive")
    if j < n_src:
        return j
    if loop == "hold" or n_src == 1:
        return n_src - 1
    if loop != "pingpong":
        raise ValueError(f"unknown loop mode {loop!r}; choose one of {LOOP_MODES}")
    period = 2 * (n_src - 1)
    k = j % period
    return k if k < n_src else period - k


def runs(n_src: int, n_out: int, loop: str = "pingpong") -> Iterator[Run]:
    """Contiguous runs of source frames covering output frames ``0 .. n_out-1`` in order."""
    if loop not in LOOP_MODES:
        raise ValueError(f"unknown loop mode {loop!r}; choose one of {LOOP_MODES}")
    if n_src <= 0:
        raise ValueError("n_src must be positive")
    left = n_out
    first = Run(0, min(n_src, left))
    yield first
    left -= len(first)
    if loop == "hold" or n_src == 1:
        while left > 0:  # repeat the last frame, one run per output frame keeps batching simple
            yield Run(n_src - 1, n_src)
            left -= 1
        return
    forward = False
    while left > 0:
        # after a forward pass ending at n-1, go back n-2 .. 0; after a backward pass ending at 0, go 1 .. n-1
        run = Run(0, n_src - 1, reverse=True) if not forward else Run(1, n_src)
        if len(run) > left:
            run = Run(run.stop - left, run.stop, True) if run.reverse else Run(run.start, run.start + left)
        yield run
        left -= len(run)
        forward = not forward
