"""HyperLips-Lite's audio encoder: mel -> the mouth shape it speaks.

The shape is a vector of lip and jaw landmark offsets (:mod:`hyperlips.face.mouth_shape`): a small, explicit target
the encoder is trained on directly (``train/lite_audio.py``), so it learns from a minute of footage instead of
discovering the mouth through the image loss alone.

A fully convolutional net over the mel stream (80 frames/s): three convolutions (two of stride 2, so one output
every 50 ms), three residual dilated convolutions, a 1x1 head; receptive field +-24 mel steps (+-0.3 s). It
holds ``members`` independently initialised nets computed together as grouped convolutions; their mean is the
prediction (an ensemble: steadier on unseen speech than any one of them). Heads predict standardised shapes;
``shape_std`` (set when the encoder is fitted) turns them into shape units.

A frame's shape is read at its window's centre, or (``smooth_ms`` > 0) as a weighted mean of readings every
40 ms around it with triangular weights reaching zero at +-``smooth_ms`` (80: the readings 40 ms before, at and
after the frame, weighted 1/4, 1/2, 1/4): a low-pass in time that steadies the lips without delaying them. Every
reading sees only steps inside the window (``min_steps``, checked), so a frame depends on its own window alone.

Input mel is normalised per utterance (each mel bin to zero mean and unit variance over the whole speech track,
``media.audio.normalise_utterance``), which removes the recording's loudness and colour.

With ``phone_rows`` and ``phone_mix`` > 0 the last ``phone_rows`` input rows are one-hot phones
(``media.phones``), and a linear head also reads them: their 50 ms means (one per output step) over +-0.25 s,
mapped straight to the shape (fitted in closed form, ``train/lite_audio.fit_phone_head``). Where phones were
read, the stream is ``(1 - phone_mix) x`` the ensemble's mean ``+ phone_mix x`` the head's; where their rows are
zero (speech whose phones were not read) it is the ensemble's alone.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

STRIDE = 4  # mel steps per output step
RADIUS = 24  # receptive-field radius in mel steps
PHONE_REACH = 5  # the phone head reads +- this many output steps (+-0.25 s; with its 50 ms means, +-22 mel steps)
TAP_MS = 40.0  # spacing of the smoothing readings
MEL_PER_MS = 0.08  # 80 mel frames per second


def smoothing_taps(smooth_ms: float) -> list[tuple[float, float]]:
    """(offset in mel steps, weight) of the readings for a triangular window of half-width ``smooth_ms``."""
    if smooth_ms < 0:
        raise ValueError(f"smooth_ms must be >= 0, got {smooth_ms}")
    if smooth_ms <= TAP_MS:  # no reading but the centre's has a weight above zero
        return [(0.0, 1.0)]
    n = math.ceil(smooth_ms / TAP_MS) - 1  # readings on each side (their weights > 0)
    taps = [(k * TAP_MS * MEL_PER_MS, 1.0 - abs(k) * TAP_MS / smooth_ms) for k in range(-n, n + 1)]
    total = sum(w for _, w in taps)
    return [(o, w / total) for o, w in taps]


def window_needed(smooth_ms: float) -> int:
    """The shortest mel window whose readings (each interpolated between two outputs) see no step outside it:
    output ``j`` reads mel steps ``STRIDE * j - RADIUS`` to ``STRIDE * j + RADIUS``; the frame is at ``steps // 2``."""
    offsets = [o for o, _ in smoothing_taps(smooth_ms)]

    def fits(steps: int) -> bool:
        qs = [(steps // 2 + o) / STRIDE for o in offsets]
        return (STRIDE * min(math.floor(q) for q in qs) >= RADIUS
                and STRIDE * max(math.ceil(q) for q in qs) + RADIUS <= steps - 1)

    steps = 2 * RADIUS
    while not fits(steps):
        steps += 1
    return steps


class _Residual(nn.Module):
    """x + LeakyReLU(BN(dilated grouped conv(x)))."""

    def __init__(self, channels: int, groups: int, dilation: int):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, 3, padding=dilation, dilation=dilation, groups=groups)
        self.bn = nn.BatchNorm1d(channels)

    def forward(self, x: Tensor) -> Tensor:  # (N, C, L) -> (N, C, L)
        return x + F.leaky_relu(self.bn(self.conv(x)), 0.2)


class AudioShapeEncoder(nn.Module):
    """mel window (N, 1, n_mels, steps) -> mouth shape (N, n_shape) at the window's centre; or a whole stream
    with :meth:`sequence`."""

    def __init__(self, n_mels: int = 80, width: int = 128, n_shape: int = 106, members: int = 3,
                 dropout: float = 0.3, smooth_ms: float = 0.0, phone_rows: int = 0, phone_mix: float = 0.0):
        super().__init__()
        self.n_mels, self.n_shape, self.members = n_mels, n_shape, members
        if not 0.0 <= phone_mix < 1.0 or (phone_mix > 0 and not 0 < phone_rows < n_mels):
            raise ValueError(f"AudioShapeEncoder: phone_mix {phone_mix} needs 0 <= phone_mix < 1 and phone rows "
                             f"below the mel (phone_rows {phone_rows} of {n_mels})")
        self.phone_rows, self.phone_mix = (phone_rows, float(phone_mix)) if phone_mix > 0 else (0, 0.0)
        self.taps = smoothing_taps(smooth_ms)
        # the window its readings need (the centre's alone: whatever the window, as before the smoothing existed)
        self.min_steps = window_needed(smooth_ms) if len(self.taps) > 1 else 0
        e, c = members, width

        def block(cin: int, stride: int) -> list[nn.Module]:
            return [nn.Conv1d(e * cin, e * c, 3, stride, 1, groups=e), nn.BatchNorm1d(e * c), nn.LeakyReLU(0.2)]

        self.body = nn.Sequential(*block(n_mels, 1), *block(c, 2), *block(c, 2), _Residual(e * c, e, 1),
                                  _Residual(e * c, e, 2), _Residual(e * c, e, 2))
        self.drop = nn.Dropout(dropout)
        self.head = nn.Conv1d(e * c, e * n_shape, 1, groups=e)
        if self.phone_mix:
            self.phone_head = nn.Conv1d(phone_rows, n_shape, 2 * PHONE_REACH + 1, padding=PHONE_REACH)
        self.register_buffer("shape_std", torch.ones(n_shape))

    def sequence(self, mel: Tensor) -> Tensor:  # (B, n_mels, L) -> (B, members, n_shape, ceil(L / 4)), standardised
        x = mel.repeat(1, self.members, 1)
        y = self.head(self.drop(self.body(x)))
        return y.view(len(y), self.members, self.n_shape, -1)

    def phone_steps(self, mel: Tensor) -> Tensor:
        """The phone rows' means over the 5 mel steps round each output step: (B, n_mels, L) -> (B, phone_rows,
        ceil(L / 4)), output ``j`` centred on mel step ``4 j`` as the ensemble's (what the phone head reads)."""
        return F.avg_pool1d(mel[:, self.n_mels - self.phone_rows:], STRIDE + 1, STRIDE, STRIDE // 2,
                            count_include_pad=False)

    def stream(self, mel: Tensor) -> Tensor:
        """(B, n_mels, L) -> (B, n_shape, ceil(L / 4)) standardised: the ensemble's mean, mixed with the phone
        head's where phones were read."""
        y = self.sequence(mel).mean(dim=1)
        if not self.phone_mix:
            return y
        p = self.phone_steps(mel)
        read = self._phone_weight(p, y.dtype)
        return y * (1 - read) + self.phone_head(p) * read

    def _phone_weight(self, p: Tensor, dtype) -> Tensor:
        # the phone head's weight at each output step (B, 1, L'): phone_mix where phones were read, else 0
        return self.phone_mix * (p.sum(dim=1, keepdim=True) > 0.5).to(dtype)

    def forward(self, mel: Tensor) -> Tensor:  # (N, 1, n_mels, steps) -> (N, n_shape) in shape units
        if mel.dim() != 4 or mel.shape[1] != 1 or mel.shape[2] != self.n_mels:
            raise ValueError(f"AudioShapeEncoder: mel must be (N,1,{self.n_mels},steps), got {tuple(mel.shape)}")
        steps = mel.shape[3]
        if steps < self.min_steps:
            raise ValueError(f"AudioShapeEncoder: its smoothing reads {self.min_steps} mel steps, the window has {steps}")
        out = self._centre(self.sequence(mel[:, 0]), steps).mean(dim=1)  # (N, E, S, L') -> (N, S)
        if self.phone_mix:  # where no phones were read: out * 1 + head * 0, exactly the ensemble's
            p = self.phone_steps(mel[:, 0])
            read = self._centre(self._phone_weight(p, out.dtype), steps)
            out = out * (1 - read) + self._centre(self.phone_head(p), steps) * read
        return out * self.shape_std.to(out.dtype)

    def _centre(self, y: Tensor, steps: int) -> Tensor:
        # a window's output stream (..., L') read at its centre frame: the taps' weighted mean -> (...)
        out = 0
        for offset, weight in self.taps:  # a lone centre reading has weight 1.0: exactly the reading
            q = (steps // 2 + offset) / STRIDE  # the output position of the reading
            i0 = min(int(q), y.shape[-1] - 1)
            i1 = min(i0 + 1, y.shape[-1] - 1)
            f = q - i0
            out = out + weight * (y[..., i0] * (1 - f) + y[..., i1] * f if f else y[..., i0])
        return out

    def shapes_at(self, mel: Tensor, positions: Tensor) -> Tensor:
        """A whole stream at once: mel (B, n_mels, L), frame positions (B, K) in mel steps -> shapes (B, K, n_shape)
        in shape units, each the taps' weighted mean of the ensemble's readings around its position (as
        :meth:`forward` reads a window's centre; at a stream's ends the convolutions see zero padding instead)."""
        return self.read(self.stream(mel), positions)

    def read(self, y: Tensor, positions: Tensor) -> Tensor:
        # the ensemble's mean readings of a stream (B, S, L') at positions (B, K) in mel steps -> (B, K, S) shape units
        out = 0
        for offset, weight in self.taps:
            out = out + weight * sample_at(y, (positions + offset) / STRIDE)
        return out * self.shape_std.to(out.dtype)


def sample_at(y: Tensor, q: Tensor) -> Tensor:
    """y (B, S, L) sampled at positions q (B, K) (output steps) by linear interpolation -> (B, K, S)."""
    q = q.clamp(0, y.shape[2] - 1.001)
    i0 = q.floor().long()
    frac = (q - i0)[..., None]
    yt = y.transpose(1, 2)

    def at(i):
        return torch.gather(yt, 1, i[..., None].expand(-1, -1, yt.shape[2]))

    return at(i0) * (1 - frac) + at(i0 + 1) * frac
