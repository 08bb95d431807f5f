"""Quality discriminators for the two training stages (reference §5.10, §5.11).

``forward`` returns probabilities (sigmoid), as the original; ``logits`` returns the pre-sigmoid scores for
numerically stable losses (``BCEWithLogitsLoss``). Losses live in the training code, on whatever device it uses.
"""

from __future__ import annotations

from torch import Tensor, nn

from .blocks import NoNormConvBlock, flatten_time


class _Discriminator(nn.Module):
    face_encoder_blocks: nn.ModuleList
    binary_pred: nn.Sequential

    def _prepare(self, faces: Tensor) -> Tensor:
        if faces.dim() == 5:  # (B,3,T,H,W) -> (T*B,3,H,W), time-major
            faces = flatten_time(faces, 2)
        if faces.dim() != 4 or faces.shape[1] != 3:
            raise ValueError(f"{type(self).__name__}: faces must be (N,3,H,W) or (B,3,T,H,W), got {tuple(faces.shape)}")
        return faces

    def logits(self, faces: Tensor) -> Tensor:
        """Pre-sigmoid real/fake scores, (N, 1)."""
        x = self._prepare(faces)
        for block in self.face_encoder_blocks:
            x = block(x)
        return self.binary_pred[0](x).view(x.shape[0], -1)

    def forward(self, faces: Tensor) -> Tensor:
        """Probability that each image is real, (N, 1)."""
        return self.binary_pred[1](self.logits(faces))


class BaseQualityDiscriminator(_Discriminator):
    """Stage-1 discriminator (HyperCtrolDiscriminator): judges the **lower half** of each face.

    Input (N,3,H,W) or (B,3,T,H,W) BGR in [0, 1] (128x128 in training); rows H//2..H are kept inside.
    """

    def __init__(self):
        super().__init__()
        self.face_encoder_blocks = nn.ModuleList([
            nn.Sequential(NoNormConvBlock(3, 32, 7, 1, 3)),
            nn.Sequential(NoNormConvBlock(32, 64, 5, (1, 2), 2), NoNormConvBlock(64, 64, 5, 1, 2)),
            nn.Sequential(NoNormConvBlock(64, 128, 5, 2, 2), NoNormConvBlock(128, 128, 5, 1, 2)),
            nn.Sequential(NoNormConvBlock(128, 256, 5, 2, 2), NoNormConvBlock(256, 256, 5, 1, 2)),
            nn.Sequential(NoNormConvBlock(256, 512, 3, 2, 1), NoNormConvBlock(512, 512, 3, 1, 1)),
            nn.Sequential(NoNormConvBlock(512, 512, 3, 2, 1), NoNormConvBlock(512, 512, 3, 1, 1)),
            nn.Sequential(NoNormConvBlock(512, 512, 3, 1, 0), NoNormConvBlock(512, 512, 1, 1, 0)),
            nn.Sequential(nn.AdaptiveAvgPool2d(1)),
        ])
        self.binary_pred = nn.Sequential(nn.Conv2d(512, 1, 1, 1, 0), nn.Sigmoid())

    def _prepare(self, faces: Tensor) -> Tensor:
        faces = super()._prepare(faces)
        return faces[:, :, faces.shape[2] // 2:]


class HRQualityDiscriminator(_Discriminator):
    """Stage-2 discriminator (HRDecoder_disc_qual): judges the whole face, any size (adaptive pooling).

    Input (N,3,S,S) or (B,3,T,S,S) BGR in [0, 1].
    """

    def __init__(self):
        super().__init__()
        self.face_encoder_blocks = nn.ModuleList([
            nn.Sequential(NoNormConvBlock(3, 32, 7, 1, 3)),
            nn.Sequential(NoNormConvBlock(32, 64, 5, 2, 2), NoNormConvBlock(64, 64, 5, 1, 2)),
            nn.Sequential(NoNormConvBlock(64, 128, 5, 2, 2), NoNormConvBlock(128, 128, 5, 1, 2)),
            nn.Sequential(NoNormConvBlock(128, 128, 5, 2, 2), NoNormConvBlock(128, 128, 5, 1, 2)),
            nn.Sequential(NoNormConvBlock(128, 128, 3, 2, 1), NoNormConvBlock(128, 128, 3, 1, 1)),
            nn.Sequential(nn.AdaptiveAvgPool2d(1)),
        ])
        self.binary_pred = nn.Sequential(nn.Conv2d(128, 1, 1, 1, 0), nn.Sigmoid())
