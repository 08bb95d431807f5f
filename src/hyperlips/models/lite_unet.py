"""HyperLips-Lite's face encoder and decoder: a small U-Net on 128 px crops.

The encoder halves the resolution four times (128 -> 8); the decoder doubles it back, joining each level's
(hyper-edited) encoder features. Only the lower part of the face is ever pasted back, so the two full-resolution
decoder levels work on the rows from ``top`` down; the rows above are copied from the input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def cbr(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Conv (no bias) -> BatchNorm -> ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class Down(nn.Module):
    """Stride-2 3x3 CBR (cin -> cout) then a residual 3x3 CBR."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.down = cbr(cin, cout, 3, 2)
        self.conv = cbr(cout, cout)

    def forward(self, x: Tensor) -> Tensor:  # (N, cin, H, W) -> (N, cout, H/2, W/2)
        x = self.down(x)
        return x + self.conv(x)


class Up(nn.Module):
    """x2 nearest upsample, concat the skip, 1x1 CBR to ``cout``, then a residual 3x3 (depthwise-separable
    when ``separable``) CBR."""

    def __init__(self, cin: int, skip: int, cout: int, separable: bool = False):
        super().__init__()
        self.fuse = cbr(cin + skip, cout, 1)
        self.conv = nn.Sequential(cbr(cout, cout, 3, groups=cout), cbr(cout, cout, 1)) if separable else cbr(cout, cout)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:  # (N, cin, h, w), (N, skip, 2h, 2w) -> (N, cout, 2h, 2w)
        x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
        x = self.fuse(torch.cat([x, skip], dim=1))
        return x + self.conv(x)


class FaceEncoder(nn.Module):
    """faces (N, 6, 128, 128) -> features at 1/2, 1/4, 1/8, 1/16 with ``widths`` channels."""

    def __init__(self, widths: tuple[int, int, int, int] = (16, 32, 64, 128), in_channels: int = 6):
        super().__init__()
        c1, c2, c3, c4 = widths
        self.down1 = Down(in_channels, c1)
        self.down2 = Down(c1, c2)
        self.down3 = Down(c2, c3)
        self.down4 = Down(c3, c4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        f1 = self.down1(x)  # (N, c1, 64, 64)
        f2 = self.down2(f1)  # (N, c2, 32, 32)
        f3 = self.down3(f2)  # (N, c3, 16, 16)
        f4 = self.down4(f3)  # (N, c4, 8, 8)
        return f1, f2, f3, f4


class FaceDecoder(nn.Module):
    """Edited features + the input -> the face rows from ``top`` (a fraction of the height) down, BGR in (0, 1)."""

    def __init__(self, widths: tuple[int, int, int, int] = (16, 32, 64, 128), in_channels: int = 6,
                 out_width: int = 16, top: float = 0.375):
        super().__init__()
        c1, c2, c3, c4 = widths
        self.top = float(top)
        self.mid = cbr(c4, c4)
        self.up3 = Up(c4, c3, c3)
        self.up2 = Up(c3, c2, c2)
        self.up1 = Up(c2, c1, c1, separable=True)
        self.up0 = Up(c1, in_channels, out_width, separable=True)
        self.head = nn.Conv2d(out_width, 3, 3, 1, 1)

    def forward(self, faces: Tensor, f1: Tensor, f2: Tensor, f3: Tensor, f4: Tensor) -> Tensor:
        # faces (N,6,128,128), f1..f4 as FaceEncoder gives -> (N, 3, 128 - 4*r, 128), r = top_rows(32)
        r = self.top_rows(f2.shape[2])
        x = self.mid(f4)  # (N, c4, 8, 8)
        x = self.up3(x, f3)  # (N, c3, 16, 16)
        x = self.up2(x, f2)  # (N, c2, 32, 32)
        x = self.up1(x[:, :, r:], f1[:, :, 2 * r:])  # (N, c1, 64 - 2r, 64)
        x = self.up0(x, faces[:, :, 4 * r:])  # (N, out_width, 128 - 4r, 128)
        return torch.sigmoid(self.head(x))

    def top_rows(self, height: int) -> int:
        """First generated row at a level of ``height`` rows (the 1/4 level: 12 of 32 for ``top`` 0.375)."""
        return int(round(self.top * height))
