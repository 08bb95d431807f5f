"""A mouth reader: where the lips and jaw are in a 128 px face, read from the pixels.

A small CNN that regresses the lip and jaw points (``face.mouth_shape.MOVING``, in the crop's own coordinates,
0..1) from the lower part of a face crop. Trained on FaceMesh's points of real crops, it is differentiable, so a
generated face can be read the same way as the real one: ``train/lite.py`` uses it to make the renderer draw the
mouth it is asked for (the reader's points on the generated face against its points on the real face), a signal
about the lips' geometry that pixel losses blur away.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from torch import Tensor, nn

from ..face.mouth_shape import MOVING
from .arch_config import ArchConfig
from .blocks import ConvBlock

N_POINTS = len(MOVING)  # 53: 20 outer lip, 20 inner lip, 13 jaw


@dataclass(frozen=True)
class MouthReaderConfig(ArchConfig):
    """The shape of a mouth reader (stored in its checkpoint as ``extra``)."""

    widths: tuple[int, ...] = (16, 32, 64, 96)  # channels at 1/2, 1/4, 1/8, 1/16 of the crop
    top: int = 40  # rows of the 128 px crop above this are not read (eyes and brows say nothing of the mouth)


class MouthReader(nn.Module):
    """Face crops (N, 3, 128, 128) BGR in [0, 1] -> lip and jaw points (N, 53, 2), x and y in crop units (0..1)."""

    SIZE = 128

    def __init__(self, config: MouthReaderConfig | Mapping[str, Any] | None = None):
        super().__init__()
        cfg = config if isinstance(config, MouthReaderConfig) else MouthReaderConfig.from_dict(config)
        self.config = cfg
        layers: list[nn.Module] = []
        cin = 3
        for w in cfg.widths:  # each level halves the size: (88, 128) -> (44, 64) -> ... -> (6, 8)
            layers += [ConvBlock(cin, w, 3, 2, 1), ConvBlock(w, w, 3, 1, 1, residual=True)]
            cin = w
        self.body = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d((3, 4))  # keeps coarse position: (C, 3, 4)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(cin * 12, 256), nn.LeakyReLU(0.2), nn.Linear(256, 2 * N_POINTS))

    def forward(self, faces: Tensor) -> Tensor:
        # faces (N,3,128,128) -> points (N,53,2)
        if faces.dim() != 4 or faces.shape[1:] != (3, self.SIZE, self.SIZE):
            raise ValueError(f"MouthReader: faces must be (N,3,128,128), got {tuple(faces.shape)}")
        x = self.body(faces[:, :, self.config.top:] * 2 - 1)  # (N, C, 6, 8)
        y = self.head(self.pool(x))  # (N, 106)
        return y.view(len(y), N_POINTS, 2) + 0.5
