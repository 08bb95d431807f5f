"""RVM RecurrentDecoder as used by HyperLips-Base (reference §5.6), per frame.

HyperLips always starts every ConvGRU from a zero state, so each frame is decoded on its own. With h = 0 the GRU
reduces to h' = z * tanh(W_hh[:, :C] x + b_hh) with z = sigmoid(W_ih[C:, :C] x + b_ih[C:]); :class:`ConvGRU`
computes exactly that when no state is given (a third of the full cost). The weights acting on h stay in the
state dict so the original checkpoints load unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ConvGRU(nn.Module):
    """Convolutional GRU cell. ``ih`` = Conv(2C->2C)+Sigmoid giving (r, z); ``hh`` = Conv(2C->C)+Tanh."""

    def __init__(self, channels: int, kernel_size: int = 3, padding: int = 1):
        super().__init__()
        self.channels = channels
        self.padding = padding
        self.ih = nn.Sequential(nn.Conv2d(channels * 2, channels * 2, kernel_size, padding=padding), nn.Sigmoid())
        self.hh = nn.Sequential(nn.Conv2d(channels * 2, channels, kernel_size, padding=padding), nn.Tanh())

    def forward(self, x: Tensor, h: Tensor | None = None) -> Tensor:
        # x (N, C, H, W), h (N, C, H, W) or None (= zeros) -> new state (N, C, H, W)
        c = self.channels
        if h is None:
            ih, hh = self.ih[0], self.hh[0]
            # one conv for both gates: z-rows of ih and all rows of hh, restricted to the x input channels
            w = torch.cat([ih.weight[c:, :c], hh.weight[:, :c]], dim=0)
            b = torch.cat([ih.bias[c:], hh.bias], dim=0)
            zc = F.conv2d(x, w, b, padding=self.padding)
            return torch.sigmoid(zc[:, :c]) * torch.tanh(zc[:, c:])
        r, z = self.ih(torch.cat([x, h], dim=1)).split(c, dim=1)
        cand = self.hh(torch.cat([x, r * h], dim=1))
        return (1 - z) * h + z * cand


class BottleneckBlock(nn.Module):
    """Second half of the channels through a ConvGRU, first half unchanged."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.gru = ConvGRU(channels // 2)

    def forward(self, x: Tensor) -> Tensor:  # (N, C, H, W) -> (N, C, H, W)
        a, b = x.split(self.channels // 2, dim=1)
        return torch.cat([a, self.gru(b)], dim=1)


class UpsamplingBlock(nn.Module):
    """x2 bilinear upsample, concat [x, skip, src], Conv3x3+BN+ReLU, second half through a ConvGRU."""

    def __init__(self, in_channels: int, skip_channels: int, src_channels: int, out_channels: int):
        super().__init__()
        self.out_channels = out_channels
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels + skip_channels + src_channels, out_channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )
        self.gru = ConvGRU(out_channels // 2)

    def forward(self, x: Tensor, skip: Tensor, src: Tensor) -> Tensor:
        # x (N, in, h, w), skip (N, skip, H, W), src (N, src, H, W) with H <= 2h -> (N, out, H, W)
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        x = x[:, :, : src.shape[2], : src.shape[3]]
        x = self.conv(torch.cat([x, skip, src], dim=1))
        a, b = x.split(self.out_channels // 2, dim=1)
        return torch.cat([a, self.gru(b)], dim=1)


class OutputBlock(nn.Module):
    """x2 bilinear upsample, concat [x, src], two Conv3x3+BN+ReLU (keys ``conv.0, conv.1, conv.3, conv.4``)."""

    def __init__(self, in_channels: int, src_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels + src_channels, out_channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )

    def forward(self, x: Tensor, src: Tensor, first_row: int = 0) -> Tensor:
        # x (N, in, h, w), src (N, src, H, W) -> (N, out, H - first_row, W): the rows from first_row down (those
        # near the top of the slice see zero padding where the full map has rows: the caller keeps a margin)
        # only the input rows the kept output rows read are enlarged: output row o reads input rows near o / 2 -
        # 1/4, so from input row first_row // 2 - 1 on (shifted by whole input rows, the weights are the same)
        top = max(0, first_row // 2 - 1)
        x = F.interpolate(x[:, :, top:], scale_factor=2.0, mode="bilinear", align_corners=False)
        x = x[:, :, first_row - 2 * top : src.shape[2] - 2 * top, : src.shape[3]]
        return self.conv(torch.cat([x, src[:, :, first_row:]], dim=1))


class RecurrentDecoder(nn.Module):
    """RVM decoder with zero recurrent state; ``src`` is the network input, average-pooled to every scale."""

    def __init__(self, feature_channels=(16, 24, 40, 128), decoder_channels=(80, 40, 32, 64), src_channels: int = 6):
        super().__init__()
        self.avgpool = nn.AvgPool2d(2, 2, count_include_pad=False, ceil_mode=True)
        self.decode4 = BottleneckBlock(feature_channels[3])
        self.decode3 = UpsamplingBlock(feature_channels[3], feature_channels[2], src_channels, decoder_channels[0])
        self.decode2 = UpsamplingBlock(decoder_channels[0], feature_channels[1], src_channels, decoder_channels[1])
        self.decode1 = UpsamplingBlock(decoder_channels[1], feature_channels[0], src_channels, decoder_channels[2])
        self.decode0 = OutputBlock(decoder_channels[2], src_channels, decoder_channels[3])

    def forward(self, s0: Tensor, f1: Tensor, f2: Tensor, f3: Tensor, f4: Tensor, first_row: int = 0) -> Tensor:
        # s0 (N,6,128,128); f1 (N,16,64,64), f2 (N,24,32,32), f3 (N,40,16,16), f4 (N,128,8,8)
        # -> (N,64,128 - first_row,128): the last (full-resolution) block computes the rows from first_row down
        s1 = self.avgpool(s0)
        s2 = self.avgpool(s1)
        s3 = self.avgpool(s2)
        x = self.decode4(f4)
        x = self.decode3(x, f3, s3)
        x = self.decode2(x, f2, s2)
        x = self.decode1(x, f1, s1)
        return self.decode0(x, s0, first_row)
