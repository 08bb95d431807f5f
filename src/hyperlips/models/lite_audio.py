"""HyperLips-Lite's audio encoder: a mel window -> the mouth shape it speaks.

The shape is a vector of standardised lip and jaw landmark offsets (:mod:`hyperlips.face.mouth_shape`): a small,
explicit target the encoder is trained on directly, so it learns from minutes of footage instead of having to
discover the mouth through the image loss alone.
"""

from __future__ import annotations

from torch import Tensor, nn


def _conv1d(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv1d(cin, cout, 3, stride, 1), nn.BatchNorm1d(cout), nn.LeakyReLU(0.2))


class AudioShapeEncoder(nn.Module):
    """mel (N, 1, n_mels, steps) -> mouth shape (N, n_shape).

    ``norm``: per mel bin standardisation (BatchNorm over the training audio); ``convs``: one stride-1 and three
    stride-2 temporal convolutions (``steps`` 24 -> 3); ``head``: the shape after global average pooling.
    """

    def __init__(self, n_mels: int = 80, width: int = 96, n_shape: int = 106, dropout: float = 0.3):
        super().__init__()
        self.n_mels = n_mels
        self.norm = nn.BatchNorm1d(n_mels)
        self.convs = nn.Sequential(_conv1d(n_mels, width), _conv1d(width, width, 2), _conv1d(width, width, 2),
                                   _conv1d(width, width, 2))
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(width, n_shape)

    def forward(self, mel: Tensor) -> Tensor:  # (N, 1, n_mels, steps) -> (N, n_shape)
        if mel.dim() != 4 or mel.shape[1] != 1 or mel.shape[2] != self.n_mels:
            raise ValueError(f"AudioShapeEncoder: mel must be (N,1,{self.n_mels},steps), got {tuple(mel.shape)}")
        x = self.convs(self.norm(mel[:, 0]))  # (N, width, steps/8)
        return self.head(self.drop(x.mean(dim=2)))
