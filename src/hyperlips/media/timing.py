"""Frame timing: every job sees a video as frames at a constant rate, found by timestamps.

A video file's frames carry presentation timestamps; the rate in its header is a guess that may be neither
constant nor right. Phones, screen recorders and editors write variable-frame-rate (VFR) files: ``retalking/face1``
of the test data is tagged 30 fps but holds 135 frames over 6.1 s (22.1 fps on average; its frames last one or two
thirtieths of a second). Counting frames at the tagged rate plays such a video too fast and drifts away from its
audio. So no job counts frames to find time. The rule, used by inference and preprocessing alike:

- output frame ``j`` is shown at ``t_j = j / fps``; ``fps`` is the stream's nominal rate when the stream is
  constant-rate, its average rate (frames / duration) when it is variable, or the rate the caller asks for;
- it shows the **source frame on screen at** ``t_j``: the last frame whose timestamp is at most ``t_j + tol``, with
  ``tol`` a quarter of the shorter of the two frame periods (this absorbs timestamp rounding and jitter, so a
  constant-rate stream read at its own rate maps frame ``j`` to frame ``j`` exactly);
- its mel window is taken at ``t_j`` (``media.audio.mel_windows``).

:func:`analyse_rate` decides constant or variable and the default rate, :func:`source_frames` is the rule, and
:class:`RetimedReader` is a video decoded through the rule: frames ``0 .. n-1`` at ``fps``, a source frame repeated
where the source holds it longer, skipped where the source is faster. A source frame that cannot be decoded
(damaged data) is replaced by the frame before it; such frames and the frames the decoder had to conceal are
counted in :attr:`RetimedReader.damaged`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator

import numpy as np

from ..errors import MediaError, UserError, warn
from .video import Frame, FrameReader, as_rate

__all__ = ["FrameRate", "analyse_rate", "source_frames", "on_screen", "frame_count", "RetimedReader", "open_timeline", "report_damage",
           "check_fps", "MAX_FPS"]

MAX_FPS = 240.0  # the highest output rate accepted
RATE_TOLERANCE = 0.01  # frame intervals within 1 % of the nominal period on average: the nominal rate
JITTER_SHARE = 0.05  # more than 5 % of frame intervals off the nominal period by a quarter frame: variable


@dataclass(frozen=True)
class FrameRate:
    """What :func:`analyse_rate` found: ``nominal`` (the stream's tagged rate), ``average`` (frames / duration),
    ``variable`` (the timestamps do not follow the nominal rate) and ``fps``, the rate used by default."""

    nominal: Fraction
    average: Fraction
    variable: bool

    @property
    def fps(self) -> Fraction:
        return self.average if self.variable else self.nominal


def analyse_rate(times: np.ndarray, duration: float, nominal: Fraction, tick: float = 0.0) -> FrameRate:
    """Constant or variable frame rate, from the frames' timestamps (seconds, ascending).

    ``duration``: seconds the stream is shown (last timestamp - first + the last frame's duration); ``tick``: the
    timestamps' resolution in seconds (the stream's time base), so rounding to it never counts as variation.
    The stream is variable when more than 5 % of its frame intervals (one aside) are off the nominal period by more
    than a quarter of it, or when the mean of the others differs from it by more than 1 % (a slow drift). A gap of
    missing frames (dropped, or lost where the file was cut short: its last B-frames) does not make it variable; it
    is shown as the frame before. The average rate is frames / duration (FFmpeg's average rate);
    the test uses the intervals only, because containers often get the last frame's duration wrong.
    """
    nominal = Fraction(nominal)
    t = np.asarray(times, dtype=np.float64)
    n = len(t)
    if n < 2 or not duration or duration <= 0 or t[-1] <= t[0]:
        return FrameRate(nominal, nominal, False)
    average = as_rate(n / float(duration))
    period = 1.0 / float(nominal)
    intervals = np.diff(t)
    off = np.abs(intervals - period) > 0.25 * period + tick
    regular = intervals[~off]  # (the mean of every interval counted a gap of missing frames as a change of rate)
    drift = not regular.size or abs(float(regular.mean()) / period - 1.0) > RATE_TOLERANCE + tick / period
    variable = drift or (int(off.sum()) - 1) / len(intervals) > JITTER_SHARE  # one odd interval is an event (a
    # cut, a splice, a pause), not a rate
    return FrameRate(nominal, average, bool(variable))


def check_fps(fps: float | None) -> None:
    """Raise :class:`~hyperlips.errors.UserError` unless ``fps`` is None or a rate from 1 to :data:`MAX_FPS`."""
    if fps is None:
        return
    try:
        f = float(fps)
    except (TypeError, ValueError):
        f = float("nan")
    if not (1.0 <= f <= MAX_FPS):
        raise UserError(f"--fps (fps) must be a number from 1 to {MAX_FPS:g} (got {fps})")


def frame_count(duration: float, fps: float | Fraction) -> int:
    """Frames at ``fps`` that cover ``duration`` seconds (at least one)."""
    return max(1, int(round(float(duration) * float(fps) + 1e-9)))


def source_frames(times: np.ndarray, fps: float | Fraction, n_out: int) -> np.ndarray:
    """For output frames ``0 .. n_out-1`` at ``fps``: the index of the source frame on screen at each one's time.

    ``times``: the source frames' timestamps in seconds from the first frame, ascending. Output frame ``j`` (at
    ``j / fps``) shows the last source frame whose timestamp is at most ``j / fps + tol``, ``tol`` being a quarter
    of the shorter of the output period and the source's median frame interval. (n_out,) int64, non-decreasing.
    """
    period = 1.0 / float(fps)
    return on_screen(times, np.arange(int(n_out), dtype=np.float64) * period, period)


def on_screen(times: np.ndarray, at: np.ndarray, period: float) -> np.ndarray:
    """The rule of :func:`source_frames` for any times ``at`` (seconds from the first frame) of frames ``period``
    seconds apart: the index of the source frame (timestamps ``times``) on screen at each. (len(at),) int64."""
    t = np.asarray(times, dtype=np.float64)
    if len(t) == 0:
        raise ValueError("a video needs at least one frame")
    src_period = float(np.median(np.diff(t))) if len(t) > 1 else period
    tol = 0.25 * (min(period, src_period) if src_period > 0 else period)
    idx = np.searchsorted(t, np.asarray(at, dtype=np.float64) + tol, side="right") - 1
    return np.clip(idx, 0, len(t) - 1).astype(np.int64)


class RetimedReader:
    """A video (or still image) as frames ``0 .. n_frames-1`` at a constant ``fps``, chosen by :func:`source_frames`.

    ``fps=None`` uses the stream's own rate (:attr:`FrameRate.fps`: nominal, or average when the stream is
    variable); a still image is one frame at 25 fps (or ``fps``). :meth:`iter_range` works like
    :meth:`FrameReader.iter_range` (forward, or in reverse with bounded memory) and yields ``Frame(j, j / fps,
    image)``; a source frame shown by several output frames is yielded once per output frame (the same array).
    ``keep_source``: frames carry their decoded picture (``Frame.source``) where a writer can copy it.
    """

    def __init__(self, path: str | os.PathLike, fps: float | Fraction | None = None, chunk: int = 32,
                 keep_source: bool = False):
        self.source = FrameReader(path, chunk=chunk, keep_source=keep_source)
        self.info = self.source.info
        times = self.source.times
        self.source_times = times
        tick = float(self.source.time_base) if self.source.time_base else 0.0
        self.timing = analyse_rate(times, self.info.duration, self.info.rate, tick)
        self.rate = as_rate(fps) if fps is not None else self.timing.fps
        self.fps = float(self.rate)
        self.n_frames = 1 if self.info.is_image else frame_count(self.info.duration, self.rate)
        self.source_index = source_frames(times, self.rate, self.n_frames)
        self.damaged: set[int] = set()  # source frames that could not be decoded or were concealed by the decoder

    @property
    def variable(self) -> bool:
        return self.timing.variable

    @property
    def width(self) -> int:
        return self.info.width

    @property
    def height(self) -> int:
        return self.info.height

    def __len__(self) -> int:
        return self.n_frames

    def close(self) -> None:
        self.source.close()

    def __enter__(self) -> "RetimedReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __iter__(self) -> Iterator[Frame]:
        return self.iter_range(0, None)

    def iter_range(self, start: int = 0, stop: int | None = None, reverse: bool = False) -> Iterator[Frame]:
        """Output frames ``start <= j < stop`` (``None``: to the end), ascending or, with ``reverse``, descending."""
        start = max(0, int(start))
        stop = self.n_frames if stop is None else min(int(stop), self.n_frames)
        if start >= stop:
            return
        src = self.source_index
        lo, hi = int(src[start]), int(src[stop - 1]) + 1
        frames = self.source.iter_range(lo, hi, reverse=reverse)
        if reverse:
            yield from self._backward(frames, start, stop)
        else:
            yield from self._forward(frames, start, stop, lo, hi)

    def _frame(self, j: int, shown: Frame) -> Frame:
        return Frame(j, j / self.fps, shown.image, source=shown.source)

    def _forward(self, frames, start: int, stop: int, lo: int, hi: int) -> Iterator[Frame]:
        src = self.source_index
        j, held, expect = start, None, lo
        for fr in frames:
            if fr.damaged:
                self.damaged.add(fr.index)
            self.damaged.update(range(expect, fr.index))  # frames the decoder never gave back
            expect = fr.index + 1
            while j < stop and src[j] < fr.index:  # their time: the frame before (or this one, at the start)
                yield self._frame(j, held if held is not None else fr)
                j += 1
            while j < stop and src[j] == fr.index:
                yield self._frame(j, fr)
                j += 1
            held = fr
            if j >= stop:
                return
        self.damaged.update(range(expect, hi))
        if held is None:
            raise MediaError(f"no video frame could be decoded from {self.info.path} (the file is damaged)")
        while j < stop:
            yield self._frame(j, held)
            j += 1

    def _backward(self, frames, start: int, stop: int) -> Iterator[Frame]:
        src = self.source_index
        j, last = stop - 1, None
        for fr in frames:  # descending source indices; a missing frame's time shows the decoded frame before it
            while j >= start and src[j] >= fr.index:
                yield self._frame(j, fr)
                j -= 1
            last = fr
            if j < start:
                return
        if last is None:
            raise MediaError(f"no video frame could be decoded from {self.info.path} (the file is damaged)")
        while j >= start:
            yield self._frame(j, last)
            j -= 1


SLOW_FPS = 10  # a video slower than this, read at its own rate, gets a warning: lips cannot follow speech that seldom


def open_timeline(path: str | os.PathLike, fps: float | Fraction | None = None,
                  keep_source: bool = False, warn_slow: bool = False) -> RetimedReader:
    """:class:`RetimedReader` of ``path``, with an :class:`~hyperlips.errors.InputWarning` when its rate varies or
    (``warn_slow``: a command with ``--fps``), read at its own rate, is below :data:`SLOW_FPS`."""
    reader = RetimedReader(path, fps, keep_source=keep_source)
    t = reader.timing
    ignored = reader.source.ignored_timestamps
    if ignored and not reader.info.is_image:
        warn(f"{reader.info.path}: {ignored} of its {len(reader.source_times)} frames carry the timestamp of another "
             f"frame (a badly muxed or damaged file), so its timestamps are not used: its frames are shown in the "
             f"order they are stored, at its tagged rate of {float(reader.info.rate):.4g} fps; if that is not its "
             f"speed, re-encode it with timestamps")
    if reader.info.hdr:
        warn(f"{reader.info.path} is high dynamic range video ({reader.info.hdr} transfer): it is read as ordinary "
             f"(SDR, BT.709, 8-bit) video holding the picture's HDR values as they are (an output shows washed out "
             f"and flat, training crops are unlike SDR faces); convert it to SDR first (a phone's \"most compatible\" "
             f"export, or a tone-mapping filter)")
    if reader.variable and not reader.info.is_image:
        how = f"at {reader.fps:.3g} fps (--fps)" if fps is not None else f"at its average rate, {reader.fps:.4g} fps"
        warn(f"{reader.info.path} has a variable frame rate (tagged {float(t.nominal):.4g} fps, "
             f"{float(t.average):.4g} fps on average): it is read {how}, each frame the one shown at that time")
    if warn_slow and fps is None and not reader.info.is_image and reader.fps < SLOW_FPS:
        warn(f"{reader.info.path} has {reader.fps:.3g} frames a second: the mouth can change only that often (speech "
             f"needs about {SLOW_FPS}); --fps 25 shows each frame for as long as it lasts and moves the mouth 25 times "
             "a second")
    return reader


CUT_END_S = 1.0  # damaged frames within this of the end of a picture cut short are the cut's (said once, as a cut)


def report_damage(reader: RetimedReader, n_frames: int) -> None:
    """Warn when frames of the first ``n_frames`` of ``reader`` were damaged (undecodable or concealed); not where
    they all lie in the last :data:`CUT_END_S` of a picture cut short (the cut's, said when the file was probed)."""
    bad = sorted(i for i in reader.damaged if i <= int(reader.source_index[max(0, n_frames - 1)]))
    if bad and reader.source.cut_short and reader.source_times[bad[0]] >= reader.info.duration - CUT_END_S:
        return  # the frames the cut went through: the file was said to be cut short
    if bad:
        n_src = int(reader.source_index[max(0, n_frames - 1)]) + 1
        warn(f"{reader.info.path}: {len(bad)} of {n_src} frames are damaged (first at {reader.source_times[bad[0]]:.2f} s): "
             "the decoder could not read them or had to conceal errors; the frame before is shown where one is "
             "missing. Re-encode or repair the file for a clean result")
