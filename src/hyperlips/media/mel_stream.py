"""The mel spectrogram of speech that arrives in pieces: the frames of ``audio.melspectrogram``, each computed as
soon as the samples it covers are in.

Mel frame ``k`` is centred on sample ``k * hop`` and spans ``n_fft`` samples (zero padding before the start), so it
is final once samples up to ``k * hop + n_fft / 2`` have arrived; :meth:`MelStream.finish` pads the end as the
offline spectrogram does. The pre-emphasis filter carries its one sample of state across pieces. The frames are the
offline ones (the same arithmetic; the mel matrix product is computed in other block sizes, which may move the
last bits of a float64, tested within 1e-5).

Memory stays flat: samples are kept only until their frames are computed, and mel frames only until
:meth:`MelStream.drop_before` says they are no longer needed.
"""

from __future__ import annotations

import threading

import numpy as np

from ..config import AudioConfig
from .audio import mel_of_frames


class MelStream:
    """Push 1-D float samples (at ``cfg.sample_rate``) with :meth:`push`, end with :meth:`finish`; read frames with
    :meth:`frames`. Thread-safe: one thread may push while another waits for frames (:meth:`wait_for`)."""

    def __init__(self, cfg: AudioConfig = AudioConfig()) -> None:
        self.cfg = cfg
        self.n_samples = 0  # samples received
        self.finished = False
        self._half = cfg.n_fft // 2
        self._prev = None  # last sample received (pre-emphasis state)
        self._y = np.zeros(self._half)  # the pre-emphasised signal after `half` zeros, from index `_q0` of it on
        self._q0 = 0
        # mel frames from `_k0` on: the first `_len` columns of `_buf`, which grows by doubling (appending a push's
        # frames to an array of every frame held cost more with each push: quadratic when the frames are not read)
        self._buf = np.zeros((cfg.n_mels, 256), np.float32)
        self._len = 0
        self._k0 = 0
        self._cond = threading.Condition()

    @property
    def n_frames(self) -> int:
        """Mel frames computed so far (frame indices 0 .. n_frames - 1)."""
        return self._k0 + self._len

    @property
    def _mel(self) -> np.ndarray:
        return self._buf[:, : self._len]

    def _append(self, mel: np.ndarray) -> None:
        n = mel.shape[1]
        if self._len + n > self._buf.shape[1]:
            grown = np.empty((self._buf.shape[0], max(2 * self._buf.shape[1], self._len + n)), np.float32)
            grown[:, : self._len] = self._mel
            self._buf = grown
        self._buf[:, self._len : self._len + n] = mel
        self._len += n

    def push(self, samples: np.ndarray) -> None:
        x = np.asarray(samples, dtype=np.float64).reshape(-1)
        if self.finished:
            raise RuntimeError("push() after finish()")
        if not len(x):
            return
        y = x.copy()
        p = self.cfg.preemphasis
        if p:
            y[1:] -= p * x[:-1]
            if self._prev is not None:
                y[0] -= p * self._prev
        self._prev = float(x[-1])
        with self._cond:
            self._y = np.concatenate([self._y, y])
            self.n_samples += len(x)
            self._compute(final=False)
            self._cond.notify_all()

    def finish(self) -> None:
        """No more samples: compute the last frames (``1 + n_samples // hop`` in all, as ``melspectrogram``)."""
        with self._cond:
            if not self.finished:
                self.finished = True
                self._y = np.concatenate([self._y, np.zeros(self._half)])
                self._compute(final=True)
            self._cond.notify_all()

    def _compute(self, final: bool) -> None:
        cfg, hop = self.cfg, self.cfg.hop_length
        total = 1 + self.n_samples // hop if final else max(0, (self.n_samples - self._half) // hop + 1)
        k = self.n_frames
        if total <= k:
            return
        # frame k covers padded-signal indices k * hop .. k * hop + n_fft - 1; _y[i] is index _q0 + i
        start = k * hop - self._q0
        span = self._y[start : start + (total - k - 1) * hop + cfg.n_fft]
        frames = np.lib.stride_tricks.sliding_window_view(span, cfg.n_fft)[::hop][: total - k]
        self._append(mel_of_frames(frames, cfg))
        keep = total * hop - self._q0  # the next frame starts here
        self._y = self._y[keep:]
        self._q0 += keep

    def frames(self, start: int, stop: int) -> np.ndarray:
        """Mel frames ``start .. stop - 1`` (n_mels, stop - start), all computed and not dropped."""
        with self._cond:
            if start < self._k0 or stop > self.n_frames:
                raise IndexError(f"mel frames {start}..{stop} requested, {self._k0}..{self.n_frames} held")
            return self._mel[:, start - self._k0 : stop - self._k0].copy()

    def wait_for(self, n: int, timeout: float | None = None) -> bool:
        """Wait until ``n`` frames are computed or the stream is finished; True when there are ``n`` frames."""
        with self._cond:
            self._cond.wait_for(lambda: self.n_frames >= n or self.finished, timeout)
            return self.n_frames >= n

    def drop_before(self, k: int) -> None:
        """Frames before ``k`` will not be read again."""
        with self._cond:
            cut = min(max(0, k - self._k0), self._len)
            if cut:
                self._buf[:, : self._len - cut] = self._buf[:, cut : self._len].copy()
                self._len -= cut
                self._k0 += cut
