"""HyperLips-Lite: the compact member of the family (about 0.25 GFLOP per 128 px frame; Base: 5.9).

Same inputs and outputs as HyperLips-Base, so every caller takes either: a mel window and [masked target,
reference] faces in, a 128 px BGR face out. Inside, the audio encoder says which mouth shape the sound makes
(standardised lip/jaw landmark offsets, supervised directly in training), a hypernetwork turns that shape into
per-frame convolutions that edit the face features at every level, and a small U-Net decoder renders the face.
Width, depth and the audio window are set by :class:`LiteConfig`, which travels inside the checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from ..media.phones import N_PHONES
from .arch_config import ArchConfig
from .blocks import flatten_time, unflatten_time
from .lite_audio import AudioShapeEncoder
from .lite_hyper import HyperDepthwiseEdit, ShapeCode
from .lite_unet import FaceDecoder, FaceEncoder


@dataclass(frozen=True)
class LiteConfig(ArchConfig):
    """The shape of a HyperLips-Lite network (stored in its checkpoint as ``extra``)."""

    widths: tuple[int, int, int, int] = (16, 32, 64, 128)  # encoder channels at 1/2, 1/4, 1/8, 1/16
    out_width: int = 16  # decoder channels at full resolution
    audio_width: int = 128
    audio_members: int = 3  # nets in the audio encoder's ensemble
    mel_steps: int = 56  # mel frames per window (0.7 s: the encoder's +-0.3 s and a margin), centred on the frame
    mel_norm: str = "utterance"  # mel normalised per utterance (media.audio.normalise_utterance) before windows
    mel_smooth: int = 0  # > 0: each log-mel frame first smoothed across frequency, its DCT over the bins cut to this
    # many coefficients (media.audio.smooth_across_frequency: the voice's pitch harmonics go, the formants stay)
    phones: bool = False  # the audio encoder also reads the phone spoken at each mel frame (media.phones): 42 one-hot
    # rows below the 80 mel bins; all zero where no phones were read (it is trained to do without them too)
    phone_mix: float = 0.0  # with phones: a linear head on the phones is mixed in at this weight where they were read
    # (models.lite_audio: a second, simpler reading of what is said; fitted in closed form)
    n_shape: int = 106  # mouth-shape vector length (face.mouth_shape.N_SHAPE)
    hyp_dim: int = 64
    top: float = 0.375  # rows above this fraction of the crop are copied from the input, not generated
    dropout: float = 0.3  # audio encoder
    shape_gain: float = 1.0  # predicted shapes are multiplied by this before rendering (set by finetune: the
    # audio encoder's predictions on unseen speech vary less than real mouths; this restores their spread)
    shape_smooth_ms: float = 80.0  # the shape is a triangular-weighted mean of readings every 40 ms within +- this
    # (0: the centre's alone); steadier lips. Checkpoints made before it existed get it too (the default)


class HyperLipsLite(nn.Module):
    """Masked + reference face and a mel window in, a 128x128 BGR face in [0, 1] out (as HyperLipsBase).

    Inputs per frame: ``audio`` (1, 80, mel_steps) mel window centred on the frame (with ``phones``: (1, 122,
    mel_steps), the phones' one-hot rows below the mel); ``faces`` (6, 128, 128) =
    [target with lower half zeroed, reference], BGR in [0, 1]. ``shape`` (n_shape,) overrides the audio encoder's
    mouth shape (training on the real shapes; driving the mouth from landmarks).
    """

    IMG_SIZE = 128

    def __init__(self, config: LiteConfig | Mapping[str, Any] | None = None):
        super().__init__()
        cfg = config if isinstance(config, LiteConfig) else LiteConfig.from_dict(config)
        self.config = cfg
        rows = 80 + (N_PHONES if cfg.phones else 0)  # the mel bins, then the phones' rows
        if len(cfg.widths) != 4:
            raise ValueError(f"LiteConfig: widths must be 4 channel counts (1/2, 1/4, 1/8, 1/16), got {list(cfg.widths)}")
        if cfg.phone_mix and not cfg.phones:
            raise ValueError(f"LiteConfig: phone_mix {cfg.phone_mix} needs phones (phones: true)")
        self.audio_encoder = AudioShapeEncoder(rows, cfg.audio_width, cfg.n_shape, cfg.audio_members, cfg.dropout,
                                               cfg.shape_smooth_ms, rows - 80, cfg.phone_mix)
        self.shape_code = ShapeCode(cfg.n_shape, cfg.hyp_dim)
        self.face_encoder = FaceEncoder(cfg.widths)
        self.edits = nn.ModuleList(HyperDepthwiseEdit(c, cfg.hyp_dim) for c in cfg.widths)
        self.decoder = FaceDecoder(cfg.widths, out_width=cfg.out_width, top=cfg.top)

    @property
    def mel_steps(self) -> int:
        # the configured window, lengthened where the shape's smoothing reads further (57 for 56 and 80 ms)
        return max(self.config.mel_steps, self.audio_encoder.min_steps)

    @property
    def mel_norm(self) -> str:
        return self.config.mel_norm

    @property
    def mel_smooth(self) -> int:
        return int(self.config.mel_smooth)

    @property
    def phones(self) -> bool:
        return bool(self.config.phones)

    @property
    def audio_rows(self) -> int:
        """Rows of an audio window: the 80 mel bins, then the phones' one-hot rows where it reads them."""
        return self.audio_encoder.n_mels

    def decoder_rows(self, height: int = IMG_SIZE) -> int:
        """How many rows at the bottom of a ``height``-row output are generated (the rest is the input's)."""
        return height - 4 * self.decoder.top_rows(height // 4)

    def forward(self, audio: Tensor, faces: Tensor, shape: Tensor | None = None) -> Tensor:
        # audio (N,1,R,S) (R: audio_rows, 80 or 122), faces (N,6,128,128) -> (N,3,128,128)
        # or audio (B,T,1,R,S), faces (B,6,T,128,128) -> (B,3,T,128,128)
        if faces.dim() == 5:
            if audio.dim() != 5 or audio.shape[:2] != (faces.shape[0], faces.shape[2]):
                raise ValueError(f"HyperLipsLite: audio {tuple(audio.shape)} does not match faces {tuple(faces.shape)}")
            batch = faces.shape[0]
            s = None if shape is None else flatten_time(shape, 1)
            out = self.forward_frames(flatten_time(audio, 1), flatten_time(faces, 2), s)
            return unflatten_time(out, batch, 2)
        return self.forward_frames(audio, faces, shape)

    def forward_frames(self, audio: Tensor | None, faces: Tensor, shape: Tensor | None = None) -> Tensor:
        # audio (N,1,R,S) (unused when shape is given), faces (N,6,128,128), shape (N,n_shape) -> (N,3,128,128)
        if faces.dim() != 4 or faces.shape[1:] != (6, self.IMG_SIZE, self.IMG_SIZE):
            raise ValueError(f"HyperLipsLite: faces must be (N,6,128,128), got {tuple(faces.shape)}")
        if shape is None:
            steps = self.mel_steps
            rows = self.audio_rows
            if audio is None or audio.dim() != 4 or audio.shape[0] != faces.shape[0] or audio.shape[1:] != (1, rows, steps):
                got = None if audio is None else tuple(audio.shape)
                raise ValueError(f"HyperLipsLite: audio must be ({faces.shape[0]},1,{rows},{steps}), got {got}")
            shape = self.predict_shape(audio)
        return self.render(faces, shape)

    def predict_shape(self, audio: Tensor) -> Tensor:
        # audio (N,1,R,S) -> the mouth shape to render (N, n_shape): the audio encoder's, times shape_gain
        return self.gained(self.audio_encoder(audio))

    def gained(self, shape: Tensor) -> Tensor:
        # the audio encoder's shape (N, n_shape) -> the shape to render: times shape_gain
        return shape * self.config.shape_gain if self.config.shape_gain != 1.0 else shape

    def render(self, faces: Tensor, shape: Tensor) -> Tensor:
        # faces (N,6,128,128), shape (N,n_shape) -> (N,3,128,128): rows above `top` copied from the input
        if shape.shape != (faces.shape[0], self.config.n_shape):
            raise ValueError(f"HyperLipsLite: shape must be ({faces.shape[0]},{self.config.n_shape}), got {tuple(shape.shape)}")
        h = self.shape_code(shape.to(faces.dtype))
        feats = [edit(f, h) for edit, f in zip(self.edits, self.face_encoder(faces))]
        lower = self.decoder(faces, *feats)  # (N, 3, 128 - r0, 128)
        r0 = faces.shape[2] - lower.shape[2]
        return torch.cat([faces[:, :3, :r0].to(lower.dtype), lower], dim=2)
