"""MobileNetV3-Large feature encoder (RVM variant, output stride 16) with a 6- or 1-channel stem (reference §5.2).

Module names mirror torchvision's ``mobilenet_v3_large().features`` so the original checkpoints load:
``features.0`` stem, ``features.1..15`` inverted residual blocks (``block.j``), ``features.16`` the 1x1 conv to 960.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from torch import Tensor, nn

# BatchNorm inside the MobileNet blocks (torchvision's setting); the replaced stem keeps PyTorch's defaults.
BLOCK_BN_EPS = 1e-3
BLOCK_BN_MOMENTUM = 0.01
_block_bn = partial(nn.BatchNorm2d, eps=BLOCK_BN_EPS, momentum=BLOCK_BN_MOMENTUM)


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round ``v`` to the nearest multiple of ``divisor``, never going below 90% of ``v`` (MobileNet rule)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvBNAct(nn.Sequential):
    """Conv2d(no bias) -> BatchNorm2d -> activation, as ``0``, ``1``, ``2``."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, stride: int = 1, groups: int = 1,
                 dilation: int = 1, activation: type[nn.Module] | None = nn.ReLU, norm=_block_bn):
        padding = (kernel_size - 1) // 2 * dilation
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel_size, stride, padding, dilation=dilation, groups=groups, bias=False),
            norm(cout),
        ]
        if activation is not None:
            layers.append(activation())
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """Global average pool -> 1x1 conv C->sq -> ReLU -> 1x1 conv sq->C -> Hardsigmoid -> channel scale."""

    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x: Tensor) -> Tensor:  # (N, C, H, W) -> (N, C, H, W)
        s = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return x * s


@dataclass(frozen=True)
class BlockSpec:
    cin: int
    kernel: int
    expanded: int
    cout: int
    se: bool
    hardswish: bool
    stride: int
    dilation: int


class InvertedResidual(nn.Module):
    """[1x1 expand] -> depthwise kxk -> [SE] -> 1x1 project, with a residual when stride 1 and cin == cout."""

    def __init__(self, spec: BlockSpec):
        super().__init__()
        act = nn.Hardswish if spec.hardswish else nn.ReLU
        layers: list[nn.Module] = []
        if spec.expanded != spec.cin:
            layers.append(ConvBNAct(spec.cin, spec.expanded, 1, activation=act))
        layers.append(ConvBNAct(spec.expanded, spec.expanded, spec.kernel, spec.stride, groups=spec.expanded,
                                dilation=spec.dilation, activation=act))
        if spec.se:
            layers.append(SqueezeExcitation(spec.expanded, make_divisible(spec.expanded // 4, 8)))
        layers.append(ConvBNAct(spec.expanded, spec.cout, 1, activation=None))
        self.block = nn.Sequential(*layers)
        self.use_res_connect = spec.stride == 1 and spec.cin == spec.cout

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        return out + x if self.use_res_connect else out


# features.1..15 of MobileNetV3-Large; block 13 uses stride 1 and dilation 2 (RVM's output-stride-16 change).
LARGE_BLOCKS: tuple[BlockSpec, ...] = (
    BlockSpec(16, 3, 16, 16, False, False, 1, 1),
    BlockSpec(16, 3, 64, 24, False, False, 2, 1),
    BlockSpec(24, 3, 72, 24, False, False, 1, 1),
    BlockSpec(24, 5, 72, 40, True, False, 2, 1),
    BlockSpec(40, 5, 120, 40, True, False, 1, 1),
    BlockSpec(40, 5, 120, 40, True, False, 1, 1),
    BlockSpec(40, 3, 240, 80, False, True, 2, 1),
    BlockSpec(80, 3, 200, 80, False, True, 1, 1),
    BlockSpec(80, 3, 184, 80, False, True, 1, 1),
    BlockSpec(80, 3, 184, 80, False, True, 1, 1),
    BlockSpec(80, 3, 480, 112, True, True, 1, 1),
    BlockSpec(112, 3, 672, 112, True, True, 1, 1),
    BlockSpec(112, 5, 672, 160, True, True, 1, 2),
    BlockSpec(160, 5, 960, 160, True, True, 1, 2),
    BlockSpec(160, 5, 960, 160, True, True, 1, 2),
)


class MobileNetV3LargeEncoder(nn.Module):
    """MobileNetV3-Large features returning four scales (strides 2, 4, 8, 16).

    No ImageNet normalisation: the input (raw [0,1] BGR faces or a normalised mel) goes in as it is.
    """

    def __init__(self, in_channels: int):
        super().__init__()
        layers: list[nn.Module] = [ConvBNAct(in_channels, 16, 3, 2, activation=nn.Hardswish)]
        layers += [InvertedResidual(spec) for spec in LARGE_BLOCKS]
        layers.append(ConvBNAct(160, 960, 1, activation=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self._init_weights()
        # The original replaced the stem after construction: PyTorch default init and default BatchNorm settings.
        self.features[0] = ConvBNAct(in_channels, 16, 3, 2, activation=nn.Hardswish, norm=nn.BatchNorm2d)

    def _init_weights(self) -> None:
        if self.features[0][0].weight.is_meta:  # a build for shapes only (checkpoint checks): filling meta tensors
            return  # goes through slow reference kernels (3 s for Base) and fills nothing
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        # x (N, C, H, W) -> f1 (N,16,H/2,W/2), f2 (N,24,H/4,W/4), f3 (N,40,H/8,W/8), f4 (N,960,H/16,W/16)
        # (sizes rounded up; the mel 80x16 gives 40x8, 20x4, 10x2, 5x1)
        f = self.features
        x = f[0](x)
        f1 = f[1](x)
        f2 = f[3](f[2](f1))
        f3 = f[6](f[5](f[4](f2)))
        x = f3
        for i in range(7, 17):
            x = f[i](x)
        return f1, f2, f3, x
