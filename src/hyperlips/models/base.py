"""HyperLips-Base, the stage-1 generator (reference §5.1)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .blocks import ConvBlock, flatten_time, output_head, unflatten_time
from .decoder import RecurrentDecoder
from .hyper import HyperFCNet
from .lraspp import LRASPP
from .mobilenetv3 import MobileNetV3LargeEncoder


class HyperLipsBase(nn.Module):
    """Masked face + reference face and a mel window in, a 128x128 BGR face in [0, 1] out.

    Inputs per frame: ``audio`` = mel window (1, 80, 16); ``faces`` = [target with lower half zeroed, reference],
    BGR in [0, 1], (6, 128, 128). Every frame is generated independently.
    """

    IMG_SIZE = 128

    def __init__(self):
        super().__init__()
        # attribute order = the original's state-dict order
        self.up_conv = nn.Sequential(ConvBlock(64, 64, 3, 1, 1, residual=True), ConvBlock(64, 64, 3, 1, 1, residual=True))
        self.output_block = output_head(64)
        self.face_encoder = MobileNetV3LargeEncoder(6)
        self.aspp = LRASPP(960, 128)
        self.hyper_control_net = HyperFCNet()
        self.decoder = RecurrentDecoder([16, 24, 40, 128], [80, 40, 32, 64], src_channels=6)

    # 3x3 convolutions at 128 px after the last upsampling: decode0's two, up_conv's two, the head's one. Each
    # one reads a row above, so a slice starting this many rows early gives exact rows from where it was asked.
    FULL_RES_CONVS = 5

    def forward(self, audio: Tensor, faces: Tensor, first_row: int = 0) -> Tensor:
        # audio (N,1,80,16), faces (N,6,128,128) -> (N,3,128,128)
        # or audio (B,T,1,80,16), faces (B,6,T,128,128) -> (B,3,T,128,128) (frames flattened time-major)
        if faces.dim() == 5:
            if audio.dim() != 5 or audio.shape[:2] != (faces.shape[0], faces.shape[2]):
                raise ValueError(f"HyperLipsBase: audio {tuple(audio.shape)} does not match faces {tuple(faces.shape)}"
                                 " (expected (B,T,1,80,16) with faces (B,6,T,128,128))")
            batch = faces.shape[0]
            out = self.forward_frames(flatten_time(audio, 1), flatten_time(faces, 2), first_row)
            return unflatten_time(out, batch, 2)
        return self.forward_frames(audio, faces, first_row)

    def forward_frames(self, audio: Tensor, faces: Tensor, first_row: int = 0) -> Tensor:
        # audio (N,1,80,16), faces (N,6,128,128) -> (N,3,128,128)
        # first_row > 0: the 128-px layers (84 % of the operations) compute only the rows from first_row -
        # FULL_RES_CONVS down; rows >= first_row are the full network's (to float rounding), the rows above are
        # copied from the input's first image (for inference that pastes back only the lower face)
        if faces.dim() != 4 or faces.shape[1:] != (6, self.IMG_SIZE, self.IMG_SIZE):
            raise ValueError(f"HyperLipsBase: faces must be (N,6,128,128), got {tuple(faces.shape)}")
        if audio.dim() != 4 or audio.shape[0] != faces.shape[0] or audio.shape[1:] != (1, 80, 16):
            raise ValueError(f"HyperLipsBase: audio must be ({faces.shape[0]},1,80,16), got {tuple(audio.shape)}")
        if not 0 <= first_row < self.IMG_SIZE:
            raise ValueError(f"HyperLipsBase: first_row must be in [0, {self.IMG_SIZE}), got {first_row}")
        f1, f2, f3, f4 = self.face_encoder(faces)
        f4 = self.aspp(f4)
        g1, g2, g3, g4 = self.hyper_control_net(audio, f1, f2, f3, f4)
        start = max(0, first_row - self.FULL_RES_CONVS)
        x = self.decoder(faces, g1, g2, g3, g4, first_row=start)  # (N, 64, 128 - start, 128)
        x = self.up_conv(x)
        out = self.output_block(x)
        if first_row == 0:
            return out
        return torch.cat([faces[:, :3, :first_row].to(out.dtype), out[:, :, first_row - start:]], dim=2)
