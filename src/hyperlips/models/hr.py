"""HRDecoder, the stage-2 high-resolution decoder (reference §5.9)."""

from __future__ import annotations

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

    def forward(self, x: Tensor) -> Tensor:
        # (N,6,H,W) -> (N,3,H*r,W*r); or (B,6,T,H,W) -> (B,3,T,H*r,W*r), frames flattened time-major
        if x.dim() == 5:
            return unflatten_time(self.forward(flatten_time(x, 2)), x.shape[0], 2)
        if x.dim() != 4 or x.shape[1] != 6:
            raise ValueError(f"HRDecoder: input must be (N,6,H,W), got {tuple(x.shape)}")
        return self.output_block(self.up_conv(self.conv_base(x)))
