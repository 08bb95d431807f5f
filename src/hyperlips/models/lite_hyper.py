"""HyperLips-Lite's hypernetwork: a mouth shape -> per-frame convolutions that edit the face features.

As in HyperLips-Base, the convolution weights are generated per frame from the audio side; here each level gets a
generated depthwise 3x3 kernel plus a per-channel gain and bias (a few hundred numbers per level instead of the
147,456 of Base's last level), followed by a fixed pointwise convolution, as a residual edit of the features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ShapeCode(nn.Module):
    """mouth shape (N, n_shape) -> code (N, hyp_dim): Linear -> LeakyReLU -> Linear -> LeakyReLU."""

    def __init__(self, n_shape: int, hyp_dim: int = 64, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_shape, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hyp_dim),
                                 nn.LeakyReLU(0.2))

    def forward(self, shape: Tensor) -> Tensor:  # (N, n_shape) -> (N, hyp_dim)
        return self.net(shape)


class HyperDepthwiseEdit(nn.Module):
    """x + BN(pointwise(ReLU(dwconv(x; K(h)) * (1 + g(h)) + b(h)))), K/g/b generated from the code h per frame.

    Starts as the identity kernel with zero gain and bias, so an untrained edit passes the features through.
    """

    def __init__(self, channels: int, hyp_dim: int = 64):
        super().__init__()
        self.channels = channels
        self.kernel = nn.Linear(hyp_dim, channels * 9)
        self.gain = nn.Linear(hyp_dim, channels)
        self.bias = nn.Linear(hyp_dim, channels)
        self.pointwise = nn.Conv2d(channels, channels, 1)
        self.bn = nn.BatchNorm2d(channels)
        with torch.no_grad():
            for lin in (self.kernel, self.gain, self.bias):
                lin.weight.mul_(0.1)
                lin.bias.zero_()
            self.kernel.bias.view(channels, 9)[:, 4] = 1.0  # centre tap: identity

    def forward(self, x: Tensor, h: Tensor) -> Tensor:  # x (N, C, H, W), h (N, hyp_dim) -> (N, C, H, W)
        n, c, height, width = x.shape
        if h.shape[0] != n or c != self.channels:
            raise ValueError(f"HyperDepthwiseEdit({self.channels}): features {tuple(x.shape)}, codes {tuple(h.shape)}")
        k = self.kernel(h).reshape(n * c, 1, 3, 3).to(x.dtype)
        y = F.conv2d(x.reshape(1, n * c, height, width), k, padding=1, groups=n * c).view(n, c, height, width)
        y = y * (1 + self.gain(h)).to(x.dtype)[:, :, None, None] + self.bias(h).to(x.dtype)[:, :, None, None]
        return x + self.bn(self.pointwise(F.relu(y)))
