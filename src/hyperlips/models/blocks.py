"""Plain convolution blocks shared by the HR decoder, the base model's head, SyncNet and the discriminators.

State-dict names follow the original (Wav2Lip-style ``conv_block.0`` conv, ``conv_block.1`` BatchNorm), reference §5.0.
"""

from __future__ import annotations

from torch import Tensor, nn

_Size = int | tuple[int, int]


class ConvBlock(nn.Module):
    """Conv2d(bias) -> BatchNorm2d (eps 1e-5) -> optional residual add of the input -> ReLU ("CBR")."""

    def __init__(self, cin: int, cout: int, kernel_size: _Size, stride: _Size = 1, padding: _Size = 0,
                 residual: bool = False):
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel_size, stride, padding), nn.BatchNorm2d(cout))
        self.act = nn.ReLU()
        self.residual = residual
        self.add_in_place = False  # inference: the residual added into the convolution's output (models.inference)
        self.fused = None  # inference: conv, residual add and ReLU in one call (models.cpu_convs.fused_activations)

    def forward(self, x: Tensor) -> Tensor:  # (N, cin, H, W) -> (N, cout, H', W')
        if self.fused is not None:
            out = self.fused(x)
            if out is not None:
                return out
        out = self.conv_block(x)
        if self.residual:
            out = out.add_(x) if self.add_in_place else out + x
        return self.act(out)


class NoNormConvBlock(nn.Module):
    """Conv2d(bias) -> LeakyReLU(0.01), no normalisation (discriminators)."""

    def __init__(self, cin: int, cout: int, kernel_size: _Size, stride: _Size = 1, padding: _Size = 0):
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel_size, stride, padding))
        self.act = nn.LeakyReLU(0.01)

    def forward(self, x: Tensor) -> Tensor:  # (N, cin, H, W) -> (N, cout, H', W')
        return self.act(self.conv_block(x))


class ConvTransposeBlock(nn.Module):
    """ConvTranspose2d(k3, s2, p1, output_padding 1, bias) -> BatchNorm2d -> ReLU: doubles H and W."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, stride: int = 2, padding: int = 1,
                 output_padding: int = 1):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ConvTranspose2d(cin, cout, kernel_size, stride, padding, output_padding), nn.BatchNorm2d(cout)
        )
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:  # (N, cin, H, W) -> (N, cout, 2H, 2W)
        return self.act(self.conv_block(x))


def output_head(cin: int = 64) -> nn.Sequential:
    """CBR(cin->32, 3x3) -> Conv1x1(32->3, bias) -> Sigmoid: the image head of the base model and the HR decoder."""
    return nn.Sequential(ConvBlock(cin, 32, 3, 1, 1), nn.Conv2d(32, 3, 1, 1, 0), nn.Sigmoid())


def flatten_time(x: Tensor, time_dim: int) -> Tensor:
    """(B, ..., T at ``time_dim``, ...) -> (T*B, ...) time-major: all batch items of frame 0 first, then frame 1, ..."""
    x = x.movedim(time_dim, 0)
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def unflatten_time(x: Tensor, batch: int, time_dim: int) -> Tensor:
    """Inverse of :func:`flatten_time`: (T*B, ...) -> (B, ..., T at ``time_dim``, ...)."""
    x = x.reshape(x.shape[0] // batch, batch, *x.shape[1:])
    return x.movedim(0, time_dim)
