"""A lip-sync judge that compares mouth shapes: the shape the speech makes against the shape the face shows.

The audio side is an audio encoder of HyperLips-Lite's kind (:class:`~.lite_audio.AudioShapeEncoder`, fitted on
its own: the judge does not share a generator's weights), which reads the mouth shape from the mel stream,
normalised per utterance and, with ``mel_smooth``, first smoothed across frequency (the voice's pitch harmonics
removed, the formants the mouth makes kept). The face side needs no network: the shape is FaceMesh's lip and jaw
points with the head's pose taken out (:mod:`hyperlips.face.mouth_shape`), the same for every face. Both are
projected on the main directions in which mouths move when people speak (``basis``: principal components of the
training shapes, each scaled to unit variance), and a window of ``window`` frames scores the Pearson correlation
of the two trajectories (each component centred over the window): 1 when the mouth moves as the speech says,
about 0 when it is out of sync.

Why shapes and long windows: a mouth seen for 0.2 s says little about sync to a network trained on about 50
speakers (the image expert's 5-frame windows: AUC 0.61 on unseen people); a shape is the same quantity for every
face, and one second of it is judged much more surely (``docs/starter.md`` has the figures).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from .arch_config import ArchConfig
from .lite_audio import AudioShapeEncoder


@dataclass(frozen=True)
class JudgeConfig(ArchConfig):
    """The shape of a sync judge (stored in its checkpoint as ``extra``)."""

    window: int = 25  # frames per judged window (1 s at 25 fps)
    components: int = 16  # principal directions of mouth movement compared
    audio_width: int = 128
    audio_members: int = 3  # nets in the audio encoder's ensemble
    n_shape: int = 106  # mouth-shape vector length (face.mouth_shape.N_SHAPE)
    smooth_ms: float = 80.0  # the audio encoder's reading: a triangular mean within +- this (as HyperLips-Lite's)
    dropout: float = 0.3  # the audio encoder's, while it is fitted
    mel_smooth: int = 0  # > 0: each mel frame smoothed across frequency to its first this many DCT coefficients
    # before the per-utterance normalisation (media.audio.smooth_across_frequency); judges made before it: 0


class SyncJudge(nn.Module):
    """Audio shapes from a mel stream, and the windowed agreement of two shape trajectories."""

    def __init__(self, config: JudgeConfig | Mapping[str, Any] | None = None):
        super().__init__()
        cfg = config if isinstance(config, JudgeConfig) else JudgeConfig.from_dict(config)
        self.config = cfg
        self.audio_encoder = AudioShapeEncoder(80, cfg.audio_width, cfg.n_shape, cfg.audio_members, cfg.dropout,
                                               cfg.smooth_ms)
        # (components, n_shape): the principal directions, each divided by its standard deviation (set when fitted)
        self.register_buffer("basis", torch.eye(cfg.components, cfg.n_shape))

    def prepare_mel(self, mel: np.ndarray) -> np.ndarray:
        """A whole track's log-mel (80, T) as the audio encoder reads it: smoothed (``mel_smooth``), normalised."""
        from ..media.audio import normalise_utterance

        return normalise_utterance(mel, self.config.mel_smooth)

    def audio_shapes(self, mel: Tensor, positions: Tensor) -> Tensor:
        # mel (B, 80, L) from prepare_mel, positions (B, K) in mel steps -> shapes (B, K, n_shape)
        return self.audio_encoder.shapes_at(mel, positions)

    def project(self, shapes: Tensor) -> Tensor:
        # shapes (..., n_shape) -> (..., components), unit variance over the training frames
        return shapes @ self.basis.to(shapes.dtype).T

    def window_score(self, audio: Tensor, face: Tensor) -> Tensor:
        # projected trajectories (N, W, components) x 2 -> (N,) Pearson correlation over the window, in [-1, 1]
        a = audio - audio.mean(dim=1, keepdim=True)
        v = face - face.mean(dim=1, keepdim=True)
        num = (a * v).sum(dim=(1, 2))
        # clamped before the root: a still window (a face without shapes, tuning's masked ones) gives 0, and no NaN
        # gradient (train/judge_tune.py differentiates this)
        return num / ((a * a).sum(dim=(1, 2)) * (v * v).sum(dim=(1, 2))).clamp_min(1e-18).sqrt()
