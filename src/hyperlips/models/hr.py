"""HRDecoder, the stage-2 high-resolution decoder (reference §5.9)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import ConvBlock, ConvTransposeBlock, flatten_time, output_head, unflatten_time

RESCALINGS = (1, 2, 4)
INPUT_SIZE = 128


class HRDecoder(nn.Module):
    """[base output BGR, sketch] (6, 128, 128) in [0, 1] -> a BGR face (3, 128*r, 128*r) in [0, 1], r = rescaling.

    The ``up_conv`` index layout differs per variant (kept exactly so the original checkpoints load):
    r=1: 0,1 residual CBR; r=2: 0 ConvT x2, 1,2 residual CBR; r=4: 0 ConvT, 1,2 CBR, 3 ConvT, 4,5 CBR.
    """

    def __init__(self, rescaling: int = 1):
        super().__init__()
        if rescaling not in RESCALINGS:
            raise ValueError(f"HRDecoder: rescaling must be one of {RESCALINGS}, got {rescaling!r}")
        self.rescaling = rescaling
        self.conv_base = nn.Sequential(ConvBlock(6, 64, 3, 1, 1), ConvBlock(64, 64, 3, 1, 1, residual=True))
        layers: list[nn.Module] = []
        for _ in range({1: 1, 2: 1, 4: 2}[rescaling]):
            if rescaling > 1:
                layers.append(ConvTransposeBlock(64, 64))
            layers += [ConvBlock(64, 64, 3, 1, 1, residual=True), ConvBlock(64, 64, 3, 1, 1, residual=True)]
        self.up_conv = nn.Sequential(*layers)
        self.output_block = output_head(64)

    @classmethod
    def for_size(cls, size: int) -> "HRDecoder":
        """The decoder whose output is ``size`` px (128, 256 or 512) for a 128-px input."""
        if size % INPUT_SIZE or size // INPUT_SIZE not in RESCALINGS:
            raise ValueError(f"HRDecoder: output size must be 128, 256 or 512, got {size!r}")
        return cls(size // INPUT_SIZE)

    @property
    def output_size(self) -> int:
        """Output side in pixels for the 128-px input the decoder was trained on."""
        return INPUT_SIZE * self.rescaling

    # Input rows computed above a requested first row: every layer is local (3x3 convolutions, stride-2 transposed
    # ones), so the rows of a slice that start this far below its top are the whole input's. Five are needed (r = 1:
    # five 3x3 convolutions at 128 px; tested: four are not enough), eight leave room.
    MARGIN_ROWS = 8

    def forward(self, x: Tensor, first_row: int = 0) -> Tensor:
        # (N,6,H,W) -> (N,3,H*r,W*r); or (B,6,T,H,W) -> (B,3,T,H*r,W*r), frames flattened time-major
        # first_row > 0 (output rows): only the rows from there down are computed (the full network's, to float
        # rounding); the rows above are the input's first image, enlarged (for inference that pastes the lower face)
        if x.dim() == 5:
            return unflatten_time(self.forward(flatten_time(x, 2), first_row), x.shape[0], 2)
        if x.dim() != 4 or x.shape[1] != 6:
            raise ValueError(f"HRDecoder: input must be (N,6,H,W), got {tuple(x.shape)}")
        r, height = self.rescaling, x.shape[2] * self.rescaling
        if not 0 <= first_row < height:
            raise ValueError(f"HRDecoder: first_row must be in [0, {height}), got {first_row}")
        start = max(0, first_row // r - self.MARGIN_ROWS)  # input row
        out = self.output_block(self.up_conv(self.conv_base(x[:, :, start:])))  # (N, 3, (H - start) * r, W * r)
        if first_row == 0:
            return out
        above = x[:, :3, : -(-first_row // r) + 1]  # one row more: its lowest rows interpolate as the whole image's
        if r > 1:
            above = F.interpolate(above, scale_factor=float(r), mode="bilinear", align_corners=False)
        return torch.cat([above[:, :, :first_row].to(out.dtype), out[:, :, first_row - start * r:]], dim=2)
