"""Lite R-ASPP head (RVM, reference §5.3): a 1x1 conv branch gated by a global-context sigmoid branch."""

from __future__ import annotations

from torch import Tensor, nn


class LRASPP(nn.Module):
    """out = ReLU(BN(Conv1x1(x))) * Sigmoid(Conv1x1(GlobalAvgPool(x))). Keys ``aspp1.{0,1}``, ``aspp2.1``."""

    def __init__(self, in_channels: int = 960, out_channels: int = 128):
        super().__init__()
        self.aspp1 = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU()
        )
        self.aspp2 = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.Sigmoid()
        )

    def forward(self, x: Tensor) -> Tensor:  # (N, in, H, W) -> (N, out, H, W)
        return self.aspp1(x) * self.aspp2(x)
