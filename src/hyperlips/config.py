"""Configuration dataclasses. Their values travel inside our checkpoints (as JSON) so weights and settings stay together."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class AudioConfig:
    """Mel spectrogram settings of the original (reference §3). Identical for every network."""

    sample_rate: int = 16000
    n_fft: int = 800
    hop_length: int = 200  # 12.5 ms -> 80 mel frames per second
    win_length: int = 800
    n_mels: int = 80
    fmin: float = 55.0
    fmax: float = 7600.0
    preemphasis: float = 0.97
    ref_level_db: float = 20.0
    min_level_db: float = -100.0
    max_abs_value: float = 4.0
    window_steps: int = 16  # mel frames per window (0.2 s)
    # Frame -> mel window convention (one for training and inference alike): the window for video frame i
    # starts `frame_offset` frames before frame i's timestamp. -1 matches how the official checkpoints were
    # trained (reference §3, "generator training"); see media/audio.py:mel_window_start.
    frame_offset: int = -1

    @property
    def mel_fps(self) -> float:
        return self.sample_rate / self.hop_length


@dataclass
class ModelConfig:
    """Which network a checkpoint holds, and how to build it."""

    name: str = "hyperlips-base"  # registry name: hyperlips-base, hyperlips-hr-128/256/512, syncnet, ...
    img_size: int = 128
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})
