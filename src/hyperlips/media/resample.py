"""Polyphase resampling by a rational factor, the same filter and alignment as ``scipy.signal.resample_poly``.

Why not scipy's: importing ``scipy.signal`` costs 0.7-1.0 s (it pulls in ``scipy.stats``), paid by every
``hyperlips sync`` whose speech is not at 48 kHz, the rate of the output's audio track. This needs only numpy.

The filter is scipy's default: a Kaiser-windowed (beta 5) low-pass of ``2 * 10 * max(up, down) + 1`` taps with its
cut-off at the lower of the two Nyquist rates, unit gain at DC (times ``up``), and the output shifted so that
sample 0 stays at time 0 and the length is ``ceil(len(x) * up / down)``. Results agree with scipy's to float32
rounding (tested).
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

KAISER_BETA = 5.0
HALF_LEN_PER_RATE = 10  # half the filter length, in units of max(up, down)
CHUNK = 1 << 16  # outputs per matrix product (bounds the temporary copy of the windows)


@lru_cache(maxsize=16)
def _polyphase(up: int, down: int) -> tuple[np.ndarray, int]:
    """The filter split into ``up`` phases, each with its taps in reverse order, (up, taps per phase) float32:
    ``[p, -1 - t] = h[p + t * up]``; and the number of leading outputs to drop (the filter's delay)."""
    max_rate = max(up, down)
    half_len = HALF_LEN_PER_RATE * max_rate
    n = 2 * half_len + 1
    m = np.arange(n) - half_len
    cutoff = 1.0 / max_rate  # relative to Nyquist
    h = cutoff * np.sinc(cutoff * m) * np.kaiser(n, KAISER_BETA)
    h = h / h.sum() * up
    pre_pad = down - half_len % down  # as scipy: the delay becomes a whole number of output samples
    h = np.concatenate([np.zeros(pre_pad), h])
    taps = -(-len(h) // up)
    phases = np.zeros(up * taps)
    phases[: len(h)] = h
    phases = phases.reshape(taps, up).T[:, ::-1].astype(np.float32)  # row p: h[p], h[p + up], ... reversed
    phases.setflags(write=False)
    return phases, (half_len + pre_pad) // down


def resample_poly(x: np.ndarray, up: int, down: int) -> np.ndarray:
    """``x`` (1-D) resampled by ``up / down``: ``ceil(len(x) * up / down)`` samples, float32.

    Output sample ``m`` is the filtered, zero-stuffed input at ``j = (m + delay) * down``: it sums
    ``h[j % up + t * up] * x[j // up - t]`` over the taps ``t``. The outputs that share a phase are every ``up``-th one, and their
    input positions step by ``down``: per phase, one product of a strided view of windows of ``x`` with the
    phase's taps.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"resample_poly takes 1-D samples, got shape {x.shape}")
    if up < 1 or down < 1 or up != int(up) or down != int(down):
        raise ValueError(f"up and down must be positive integers (got {up}, {down})")
    g = math.gcd(int(up), int(down))
    up, down = int(up) // g, int(down) // g
    if up == down == 1:
        return x.copy()
    n_out = -(-len(x) * up // down)
    reversed_phases, skip = _polyphase(up, down)
    taps = reversed_phases.shape[1]
    # x with zeros before (indices below 0) and after (past the end); row r of `windows` is padded[r : r + taps]
    last = ((n_out - 1 + skip) * down) // up
    padded = np.zeros(taps + max(len(x), last + 1), np.float32)
    padded[taps: taps + len(x)] = x
    windows = np.lib.stride_tricks.sliding_window_view(padded, taps)
    y = np.zeros(n_out, np.float32)
    for first in range(min(up, n_out)):  # outputs first, first + up, ...: one phase each
        j0 = (first + skip) * down  # index in the zero-stuffed, filtered signal
        p, i0 = j0 % up, j0 // up
        count = len(range(first, n_out, up))
        # output k of this phase: sum over t of phases[p, t] * x[i0 + k * down - t] = windows[i0 + 1 + k * down] . reversed
        rows = windows[i0 + 1: i0 + 1 + (count - 1) * down + 1: down]
        for c in range(0, count, CHUNK):
            block = rows[c: c + CHUNK]
            y[first + c * up: first + (c + len(block)) * up: up] = block @ reversed_phases[p]
    return y


class StreamResampler:
    """:func:`resample_poly` of a signal that arrives in chunks: :meth:`push` gives the output samples the input so
    far fixes (those whose filter window it holds whole), :meth:`finish` the rest, the signal's end taken as zeros.
    Together they are ``resample_poly`` of the whole signal, sample for sample (to float32 rounding; resampling each
    chunk on its own put a seam at every chunk's edge). It keeps only the last filter's length of input."""

    def __init__(self, up: int, down: int) -> None:
        if up < 1 or down < 1 or up != int(up) or down != int(down):
            raise ValueError(f"up and down must be positive integers (got {up}, {down})")
        g = math.gcd(int(up), int(down))
        self.up, self.down = int(up) // g, int(down) // g
        self._phases, self._skip = _polyphase(self.up, self.down) if self.up != self.down else (None, 0)
        self._taps = 0 if self._phases is None else self._phases.shape[1]
        self._held = np.zeros(self._taps, np.float32)  # input samples [_start, _start + len(_held)): zeros before 0
        self._start = -self._taps
        self._n_in = 0  # input samples pushed
        self._m = 0  # the next output sample

    def _outputs(self, stop: int) -> np.ndarray:
        """Output samples ``_m`` to ``stop`` - 1, every input they read held."""
        if stop <= self._m:
            return np.zeros(0, np.float32)
        m = np.arange(self._m, stop)
        j = (m + self._skip) * self.down
        last = j // self.up  # the last input each reads; it reads the taps before it too
        rows = last[:, None] - self._start - self._taps + 1 + np.arange(self._taps)
        y = np.einsum("ij,ij->i", self._held[rows], self._phases[j % self.up])
        self._m = stop
        keep = int(((stop + self._skip) * self.down) // self.up) - self._taps + 1 - self._start  # the next one's first
        if keep > 0:
            self._held, self._start = self._held[keep:], self._start + keep
        return y.astype(np.float32)

    def push(self, x: np.ndarray) -> np.ndarray:
        """Take the next input samples (1-D); the output samples they complete (float32)."""
        x = np.asarray(x, np.float32).reshape(-1)
        if self._phases is None:
            self._n_in += len(x)
            return x.copy()
        self._held = np.concatenate([self._held, x])
        self._n_in += len(x)
        # output m reads inputs up to ((m + skip) * down) // up: complete while that is below the inputs pushed
        ready = (self._n_in * self.up - 1) // self.down - self._skip + 1 if self._n_in else 0
        return self._outputs(max(ready, self._m))

    def finish(self) -> np.ndarray:
        """The signal ended: the output samples left (``ceil(n_in * up / down)`` in all), past its end read as zeros."""
        if self._phases is None:
            return np.zeros(0, np.float32)
        total = -(-self._n_in * self.up // self.down)
        need = ((total - 1 + self._skip) * self.down) // self.up + 1 - self._start - len(self._held)
        if need > 0:
            self._held = np.concatenate([self._held, np.zeros(need, np.float32)])
        return self._outputs(total)
