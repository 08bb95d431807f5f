"""HyperLips-Lite's mouth discriminator: a small PatchGAN that judges 64 x 64 mouth crops.

An L1 loss draws the average of the mouths a sound could make: soft lips, grey teeth. Judged patch by patch by a
network that has seen the person's real mouths, the renderer keeps their crisp edges. Spectral normalisation
keeps the judge smooth enough to train beside the renderer on a CPU-sized budget.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm


class MouthDiscriminator(nn.Module):
    """mouth crops (N, 3, 64, 64) BGR in [0, 1] -> patch logits (N, 1, 8, 8)."""

    def __init__(self, width: int = 32):
        super().__init__()
        w = width
        self.net = nn.Sequential(
            spectral_norm(nn.Conv2d(3, w, 4, 2, 1)), nn.LeakyReLU(0.2),  # 32
            spectral_norm(nn.Conv2d(w, 2 * w, 4, 2, 1)), nn.LeakyReLU(0.2),  # 16
            spectral_norm(nn.Conv2d(2 * w, 4 * w, 4, 2, 1)), nn.LeakyReLU(0.2),  # 8
            spectral_norm(nn.Conv2d(4 * w, 4 * w, 3, 1, 1)), nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(4 * w, 1, 3, 1, 1)),
        )

    def forward(self, mouths: Tensor) -> Tensor:  # (N, 3, 64, 64) -> (N, 1, 8, 8)
        return self.net(mouths * 2 - 1)
