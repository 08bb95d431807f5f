"""HyperLips-Lite's audio encoder: mel -> the mouth shape it speaks.

The shape is a vector of lip and jaw landmark offsets (:mod:`hyperlips.face.mouth_shape`): a small, explicit target
the encoder is trained on directly (``train/lite_audio.py``), so it learns from a minute of footage instead of
discovering the mouth through the image loss alone.

A fully convolutional net over the mel stream (80 frames/s): three convolutions (two of stride 2, so one output
every 50 ms), three residual dilated convolutions, a 1x1 head; receptive field +-24 mel steps (+-0.3 s). It
holds ``members`` independently initialised nets computed together as grouped convolutions; their mean is the
prediction (an ensemble: steadier on unseen speech than any one of them). Heads predict standardised shapes;
``shape_std`` (set when the encoder is fitted) turns them into shape units.

Input mel is normalised per utterance (each mel bin to zero mean and unit variance over the whole speech track,
``media.audio.normalise_utterance``), which removes the recording's loudness and colour.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

STRIDE = 4  # mel steps per output step
RADIUS = 24  # receptive-field radius in mel steps


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
                 dropout: float = 0.3):
        super().__init__()
        self.n_mels, self.n_shape, self.members = n_mels, n_shape, members
        e, c = members, width

        def block(cin: int, stride: int) -> list[nn.Module]:
            return [nn.Conv1d(e * cin, e * c, 3, stride, 1, groups=e), nn.BatchNorm1d(e * c), nn.LeakyReLU(0.2)]

        self.body = nn.Sequential(*block(n_mels, 1), *block(c, 2), *block(c, 2), _Residual(e * c, e, 1),
                                  _Residual(e * c, e, 2), _Residual(e * c, e, 2))
        self.drop = nn.Dropout(dropout)
        self.head = nn.Conv1d(e * c, e * n_shape, 1, groups=e)
        self.register_buffer("shape_std", torch.ones(n_shape))

    def sequence(self, mel: Tensor) -> Tensor:  # (B, n_mels, L) -> (B, members, n_shape, ceil(L / 4)), standardised
        x = mel.repeat(1, self.members, 1)
        y = self.head(self.drop(self.body(x)))
        return y.view(len(y), self.members, self.n_shape, -1)

    def forward(self, mel: Tensor) -> Tensor:  # (N, 1, n_mels, steps) -> (N, n_shape) in shape units
        if mel.dim() != 4 or mel.shape[1] != 1 or mel.shape[2] != self.n_mels:
            raise ValueError(f"AudioShapeEncoder: mel must be (N,1,{self.n_mels},steps), got {tuple(mel.shape)}")
        steps = mel.shape[3]
        y = self.sequence(mel[:, 0])  # (N, E, S, L')
        q = (steps // 2) / STRIDE  # the output position of the window's centre
        i0 = min(int(q), y.shape[3] - 1)
        i1 = min(i0 + 1, y.shape[3] - 1)
        f = q - i0
        centre = y[..., i0] * (1 - f) + y[..., i1] * f if f else y[..., i0]
        return centre.mean(dim=1) * self.shape_std.to(centre.dtype)
