"""The lip-sync expert: Wav2Lip's colour SyncNet adapted to 128-px faces (SyncNet_color, reference §5.12)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import ConvBlock


def _face_encoder() -> nn.Sequential:
    # input 15x64x128: 5 frames x BGR (frame-major channels), lower half of 128x128 faces
    return nn.Sequential(
        ConvBlock(15, 32, 7, 1, 3),                                                         # 32x64x128
        ConvBlock(32, 64, 5, (1, 2), 1),                                                    # 64x62x63
        ConvBlock(64, 64, 3, 1, 1, residual=True),
        ConvBlock(64, 64, 3, 1, 1, residual=True),
        ConvBlock(64, 128, 3, 2, 1),                                                        # 128x31x32
        ConvBlock(128, 128, 3, 1, 1, residual=True),
        ConvBlock(128, 128, 3, 1, 1, residual=True),
        ConvBlock(128, 128, 3, 1, 1, residual=True),
        ConvBlock(128, 256, 3, 2, 1),                                                       # 256x16x16
        ConvBlock(256, 256, 3, 1, 1, residual=True),
        ConvBlock(256, 256, 3, 1, 1, residual=True),
        ConvBlock(256, 512, 3, 2, 1),                                                       # 512x8x8
        ConvBlock(512, 512, 3, 1, 1, residual=True),
        ConvBlock(512, 512, 3, 1, 1, residual=True),
        ConvBlock(512, 512, 3, 2, 1),                                                       # 512x4x4
        ConvBlock(512, 512, 3, 1, 1, residual=True),
        ConvBlock(512, 512, 3, 1, 1, residual=True),
        ConvBlock(512, 512, 4, 1, 0),                                                       # 512x1x1
        ConvBlock(512, 512, 1, 1, 0),
    )


def _audio_encoder() -> nn.Sequential:
    # input 1x80x16 mel window
    return nn.Sequential(
        ConvBlock(1, 32, 3, 1, 1),                                                          # 32x80x16
        ConvBlock(32, 32, 3, 1, 1, residual=True),
        ConvBlock(32, 32, 3, 1, 1, residual=True),
        ConvBlock(32, 64, 3, (3, 1), 1),                                                    # 64x27x16
        ConvBlock(64, 64, 3, 1, 1, residual=True),
        ConvBlock(64, 64, 3, 1, 1, residual=True),
        ConvBlock(64, 128, 3, 3, 1),                                                        # 128x9x6
        ConvBlock(128, 128, 3, 1, 1, residual=True),
        ConvBlock(128, 128, 3, 1, 1, residual=True),
        ConvBlock(128, 256, 3, (3, 2), 1),                                                  # 256x3x3
        ConvBlock(256, 256, 3, 1, 1, residual=True),
        ConvBlock(256, 256, 3, 1, 1, residual=True),
        ConvBlock(256, 512, 3, 1, 0),                                                       # 512x1x1
        ConvBlock(512, 512, 1, 1, 0),
    )


class SyncNet(nn.Module):
    """Audio and face embeddings (512-d, L2-normalised, non-negative) whose cosine similarity scores lip sync."""

    def __init__(self):
        super().__init__()
        self.face_encoder = _face_encoder()
        self.audio_encoder = _audio_encoder()

    def forward(self, audio: Tensor, faces: Tensor) -> tuple[Tensor, Tensor]:
        # audio (N,1,80,16), faces (N,15,64,128) -> audio_emb (N,512), face_emb (N,512), unit length
        if faces.dim() != 4 or faces.shape[1:] != (15, 64, 128):
            raise ValueError(f"SyncNet: faces must be (N,15,64,128), got {tuple(faces.shape)}")
        if audio.dim() != 4 or audio.shape[1:] != (1, 80, 16) or audio.shape[0] != faces.shape[0]:
            raise ValueError(f"SyncNet: audio must be ({faces.shape[0]},1,80,16), got {tuple(audio.shape)}")
        a = self.audio_encoder(audio).flatten(1)
        v = self.face_encoder(faces).flatten(1)
        return F.normalize(a, p=2, dim=1), F.normalize(v, p=2, dim=1)

    def similarity(self, audio: Tensor, faces: Tensor) -> Tensor:
        """Cosine similarity of the two embeddings, (N,), in [0, 1] (the embeddings are non-negative)."""
        a, v = self(audio, faces)
        return F.cosine_similarity(a, v, dim=1)
