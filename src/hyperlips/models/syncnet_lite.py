"""A compact lip-sync expert: the same inputs, outputs and scores as :class:`~.syncnet.SyncNet`, about 1/20 the work.

It takes what the official expert takes (five lower-half 128 px faces, a 16-step mel window), returns unit-length,
non-negative 256-d embeddings whose cosine similarity scores sync, so the sync loss, ``eval``'s offset search and
every caller of the official expert take it unchanged. Each encoder is a stack of levels (a stride-2 conv block
and a residual block), their widths set by :class:`SyncLiteConfig`, stored in the checkpoint as ``extra``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch.nn.functional as F
from torch import Tensor, nn

from .arch_config import ArchConfig
from .blocks import ConvBlock


@dataclass(frozen=True)
class SyncLiteConfig(ArchConfig):
    """The shape of a compact expert (stored in its checkpoint as ``extra``)."""

    face_widths: tuple[int, ...] = (32, 64, 128, 256)  # face encoder channels at 1/2, 1/4, 1/8, 1/16
    audio_widths: tuple[int, ...] = (32, 64, 128, 256)  # audio encoder channels at mel 40x16, 20x8, 10x4, 5x2
    embed: int = 256  # embedding length


def _levels(cin: int, widths: tuple[int, ...], first_stride: tuple[int, int]) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for i, w in enumerate(widths):
        layers += [ConvBlock(cin, w, 3, first_stride if i == 0 else 2, 1), ConvBlock(w, w, 3, 1, 1, residual=True)]
        cin = w
    return layers


class SyncNetLite(nn.Module):
    """Audio and face embeddings (``embed``-d, L2-normalised, non-negative) whose cosine similarity scores lip sync."""

    def __init__(self, config: SyncLiteConfig | Mapping[str, Any] | None = None):
        super().__init__()
        cfg = config if isinstance(config, SyncLiteConfig) else SyncLiteConfig.from_dict(config)
        self.config = cfg
        fw, aw = cfg.face_widths, cfg.audio_widths
        # faces 15x64x128 -> (fw[0], 32, 64) -> ... -> (fw[-1], 64 / 2^n, 128 / 2^n) -> embed x 1 x 1
        fh, fwid = 64 >> len(fw), 128 >> len(fw)
        self.face_encoder = nn.Sequential(*_levels(15, fw, (2, 2)), ConvBlock(fw[-1], cfg.embed, (fh, fwid), 1, 0),
                                          ConvBlock(cfg.embed, cfg.embed, 1, 1, 0))
        # mel 1x80x16 -> (aw[0], 40, 16) -> (aw[1], 20, 8) -> ... -> embed x 1 x 1
        ah, awid = 80 >> len(aw), 16 >> (len(aw) - 1)
        self.audio_encoder = nn.Sequential(*_levels(1, aw, (2, 1)), ConvBlock(aw[-1], cfg.embed, (ah, awid), 1, 0),
                                           ConvBlock(cfg.embed, cfg.embed, 1, 1, 0))

    def forward(self, audio: Tensor, faces: Tensor) -> tuple[Tensor, Tensor]:
        # audio (N,1,80,16), faces (N,15,64,128) -> audio_emb (N,embed), face_emb (N,embed), unit length
        if faces.dim() != 4 or faces.shape[1:] != (15, 64, 128):
            raise ValueError(f"SyncNetLite: faces must be (N,15,64,128), got {tuple(faces.shape)}")
        if audio.dim() != 4 or audio.shape[1:] != (1, 80, 16) or audio.shape[0] != faces.shape[0]:
            raise ValueError(f"SyncNetLite: audio must be ({faces.shape[0]},1,80,16), got {tuple(audio.shape)}")
        a = self.audio_encoder(audio).flatten(1)
        v = self.face_encoder(faces).flatten(1)
        return F.normalize(a, p=2, dim=1), F.normalize(v, p=2, dim=1)

    def similarity(self, audio: Tensor, faces: Tensor) -> Tensor:
        """Cosine similarity of the two embeddings, (N,), in [0, 1] (the embeddings are non-negative)."""
        a, v = self(audio, faces)
        return F.cosine_similarity(a, v, dim=1)
