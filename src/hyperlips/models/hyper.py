"""The audio-conditioned hyper-convolution side of HyperLips-Base (reference §5.4, §5.5).

The audio encoder's features go through small MLPs (``hnet0..3``) to 64-d codes; each code generates the kernels of
two 3x3 convolutions (``BatchConv2d``) that are applied to the matching face feature map, one kernel per frame.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .lraspp import LRASPP
from .mobilenetv3 import MobileNetV3LargeEncoder


class HyperNetwork(nn.Module):
    """h = LeakyReLU(lin2(LeakyReLU(lin1(x)))), slope 0.01. Keys ``lin1``, ``lin2``."""

    def __init__(self, in_dim: int, hidden_dim: int = 64):
        super().__init__()
        self.lin1 = nn.Linear(in_dim, hidden_dim)
        self.lin2 = nn.Linear(hidden_dim, hidden_dim)

    def forward(self, x: Tensor) -> Tensor:  # (N, in_dim) -> (N, hidden_dim)
        return F.leaky_relu(self.lin2(F.leaky_relu(self.lin1(x), 0.01)), 0.01)


class BatchConv2d(nn.Module):
    """A conv whose kernel and bias are generated per sample from a code: y_n = conv2d(x_n, W(h_n), b(h_n)).

    ``hyperkernel`` = Linear(hyp_dim -> cout*cin*k*k) reshaped row-major to (cout, cin, k, k);
    ``hyperbias`` = Linear(hyp_dim -> cout). Computed as one grouped convolution over the batch.
    """

    def __init__(self, in_channels: int, out_channels: int, hyp_dim: int = 64, kernel_size: int = 3,
                 stride: int = 1, padding: int = 1, dilation: int = 1):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.hyperkernel = nn.Linear(hyp_dim, out_channels * in_channels * kernel_size * kernel_size)
        self.hyperbias = nn.Linear(hyp_dim, out_channels)

    def kernels(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """h (N, hyp_dim) -> weights (N, cout, cin, k, k), biases (N, cout)."""
        k = self.kernel_size
        w = self.hyperkernel(h).view(h.shape[0], self.out_channels, self.in_channels, k, k)
        return w, self.hyperbias(h)

    def forward(self, x: Tensor, h: Tensor) -> Tensor:  # x (N, cin, H, W), h (N, hyp_dim) -> (N, cout, H', W')
        n, c, height, width = x.shape
        if h.shape[0] != n:
            raise ValueError(f"BatchConv2d: {n} inputs but {h.shape[0]} codes")
        w, b = self.kernels(h)
        y = F.conv2d(x.reshape(1, n * c, height, width), w.reshape(n * self.out_channels, c, *w.shape[-2:]),
                     b.reshape(-1), stride=self.stride, padding=self.padding, dilation=self.dilation, groups=n)
        return y.view(n, self.out_channels, *y.shape[-2:])


class HyperDoubleConv(nn.Sequential):
    """``0`` BatchConv2d -> ``1`` BN -> ``2`` ReLU -> ``3`` BatchConv2d -> ``4`` BN -> ``5`` Sigmoid; one code for both."""

    def __init__(self, channels: int, hyp_dim: int = 64):
        super().__init__(
            BatchConv2d(channels, channels, hyp_dim), nn.BatchNorm2d(channels), nn.ReLU(),
            BatchConv2d(channels, channels, hyp_dim), nn.BatchNorm2d(channels), nn.Sigmoid(),
        )

    def forward(self, x: Tensor, h: Tensor) -> Tensor:  # x (N, C, H, W), h (N, hyp_dim) -> (N, C, H, W) in (0, 1)
        for layer in self:
            x = layer(x, h) if isinstance(layer, BatchConv2d) else layer(x)
        return x


class HyperFCNet(nn.Module):
    """Audio encoder + LRASPP + hnet0..3 + dconv_down0..3 (``hyper_control_net`` in the original).

    Audio: the normalised mel window (N, 1, 80, 16). Its four feature maps, flattened in C,H,W order, give the codes.
    """

    FACE_CHANNELS = (16, 24, 40, 128)
    # flattened audio feature sizes for an 80x16 mel: a1 16x40x8, a2 24x20x4, a3 40x10x2, a4' 128x5x1
    AUDIO_DIMS = (5120, 1920, 800, 640)

    def __init__(self, hyp_dim: int = 64):
        super().__init__()
        self.audio_encoder = MobileNetV3LargeEncoder(1)
        self.aspp_a = LRASPP(960, 128)
        self.hnet0 = HyperNetwork(self.AUDIO_DIMS[0], hyp_dim)
        self.hnet1 = HyperNetwork(self.AUDIO_DIMS[1], hyp_dim)
        self.hnet2 = HyperNetwork(self.AUDIO_DIMS[2], hyp_dim)
        self.hnet3 = HyperNetwork(self.AUDIO_DIMS[3], hyp_dim)
        self.dconv_down0 = HyperDoubleConv(self.FACE_CHANNELS[0], hyp_dim)
        self.dconv_down1 = HyperDoubleConv(self.FACE_CHANNELS[1], hyp_dim)
        self.dconv_down2 = HyperDoubleConv(self.FACE_CHANNELS[2], hyp_dim)
        self.dconv_down3 = HyperDoubleConv(self.FACE_CHANNELS[3], hyp_dim)

    def codes(self, audio: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """audio (N, 1, 80, 16) -> h0..h3, each (N, hyp_dim)."""
        a1, a2, a3, a4 = self.audio_encoder(audio)
        a4 = self.aspp_a(a4)
        return (self.hnet0(a1.flatten(1)), self.hnet1(a2.flatten(1)),
                self.hnet2(a3.flatten(1)), self.hnet3(a4.flatten(1)))

    def forward(self, audio: Tensor, f1: Tensor, f2: Tensor, f3: Tensor, f4: Tensor
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        # audio (N,1,80,16); f1 (N,16,64,64), f2 (N,24,32,32), f3 (N,40,16,16), f4 (N,128,8,8)
        # -> g1..g4 with the same shapes as f1..f4, values in (0, 1)
        h0, h1, h2, h3 = self.codes(audio)
        return (self.dconv_down0(f1, h0), self.dconv_down1(f2, h1),
                self.dconv_down2(f3, h2), self.dconv_down3(f4, h3))
