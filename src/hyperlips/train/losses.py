"""Training losses (reference §6), with the original's bugs fixed:

- the sync expert that supervises the generator is frozen **and in eval mode** (the original left it in train
  mode: BatchNorm used batch statistics and its running statistics drifted while it judged the generator);
- the expert's audio window is ``media.audio.sync_mel_windows`` everywhere (training the expert, the sync loss,
  validation), and the generator's per-frame windows are ``media.audio.mel_windows``, the same function
  inference uses: one convention, no hidden 40 ms shift;
- the discriminators' losses work on logits with ``BCEWithLogits`` (the original put a sigmoid output through
  ``BCEWithLogitsLoss``, a double sigmoid, in the HR stage's relativistic GAN);
- lip boxes come from landmarks (or a PNG mask thresholded at 127), never an exact-255 test on a JPEG.

Images are BGR in [0, 1]; 5-D tensors are (B, C, T, H, W) as the generator returns them.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_EPS = 1e-6


# ---------------------------------------------------------------------------------------------- sync
def lower_half_stack(frames: Tensor) -> Tensor:
    """(B, 3, T, H, W) frames -> (B, 3T, H/2, W): the lower halves with frames stacked on channels, frame-major
    ([f0 B, f0 G, f0 R, f1 B, ...]), resized to 64x128 when the frames are not 128 px (the expert's input)."""
    b, c, t, h, w = frames.shape
    x = frames[:, :, :, h // 2 :].permute(0, 2, 1, 3, 4).reshape(b, t * c, h - h // 2, w)
    if x.shape[-2:] != (64, 128):
        x = F.interpolate(x, size=(64, 128), mode="bilinear", align_corners=False)
    return x


def sync_probability(audio_emb: Tensor, face_emb: Tensor) -> Tensor:
    """Cosine similarity of the expert's (non-negative, unit) embeddings, in [0, 1]: the expert's P(in sync)."""
    return F.cosine_similarity(audio_emb, face_emb, dim=1).clamp(_EPS, 1 - _EPS)


def _bce(p: Tensor, label: Tensor) -> Tensor:
    """Binary cross-entropy of probabilities, written out (``F.binary_cross_entropy`` refuses to run under
    autocast); ``p`` is already clamped away from 0 and 1."""
    p, y = p.float(), label.float()
    return -(y * torch.log(p) + (1 - y) * torch.log1p(-p)).mean()


def expert_loss(audio_emb: Tensor, face_emb: Tensor, label: Tensor) -> Tensor:
    """BCE between the expert's similarity and the in-sync label (1) / off-sync label (0) (reference §6.1)."""
    return _bce(sync_probability(audio_emb.float(), face_emb.float()), label)


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode, no gradients, and ``.train()`` can no longer switch it back (the expert's BatchNorm keeps its
    running statistics while it supervises the generator)."""
    module.eval()
    module.requires_grad_(False)
    module.train = lambda mode=True: module  # type: ignore[method-assign]
    return module


def sync_loss(expert: nn.Module, sync_mel: Tensor, frames: Tensor) -> Tensor:
    """Generator sync loss: BCE(expert similarity of (audio, generated lower halves), 1).

    ``expert``: a frozen SyncNet (see :func:`freeze`); ``sync_mel`` (B, 1, 80, 16); ``frames`` (B, 3, 5, 128, 128).
    """
    a, v = expert(sync_mel, lower_half_stack(frames))
    p = sync_probability(a.float(), v.float())
    return _bce(p, torch.ones_like(p))


# ---------------------------------------------------------------------------------------------- GAN
def gan_generator_loss(fake_logits: Tensor) -> Tensor:
    """Non-saturating GAN loss for the generator: BCE(D(fake), real)."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def gan_discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """BCE(D(real), 1) + BCE(D(fake), 0) (reference §6.2, on logits)."""
    return (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))


def relativistic_generator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Relativistic average GAN, generator side (reference §6.3), on logits (no double sigmoid)."""
    d_rf = real_logits - fake_logits.mean()
    d_fr = fake_logits - real_logits.mean()
    return 0.5 * (F.binary_cross_entropy_with_logits(d_rf, torch.zeros_like(d_rf))
                  + F.binary_cross_entropy_with_logits(d_fr, torch.ones_like(d_fr)))


def relativistic_discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Relativistic average GAN, discriminator side, on logits."""
    d_rf = real_logits - fake_logits.mean()
    d_fr = fake_logits - real_logits.mean()
    return 0.5 * (F.binary_cross_entropy_with_logits(d_rf, torch.ones_like(d_rf))
                  + F.binary_cross_entropy_with_logits(d_fr, torch.zeros_like(d_fr)))


def discriminator_features(disc: nn.Module, images: Tensor) -> list[Tensor]:
    """Outputs of each block of a quality discriminator (its ``face_encoder_blocks``) for (N, 3, H, W) images."""
    feats = []
    x = images
    for block in disc.face_encoder_blocks:
        x = block(x)
        feats.append(x)
    return feats[:-1]  # the last block is the global pool


def feature_matching_loss(disc: nn.Module, real: Tensor, fake: Tensor) -> Tensor:
    """Mean over blocks of L1 between the discriminator's features of real (no gradient) and generated images."""
    with torch.no_grad():
        fr = discriminator_features(disc, real)
    ff = discriminator_features(disc, fake)
    return torch.stack([F.l1_loss(a, b) for a, b in zip(ff, fr)]).mean()


# ---------------------------------------------------------------------------------------------- regions
def box_mask(boxes: Tensor, height: int, width: int) -> Tensor:
    """(N, 4) boxes (x1, y1, x2, y2) as fractions of the image, x2/y2 exclusive -> (N, 1, H, W) 0/1 masks.

    A pixel is inside when its centre is; every box covers at least one pixel."""
    ys = (torch.arange(height, device=boxes.device, dtype=torch.float32) + 0.5) / height
    xs = (torch.arange(width, device=boxes.device, dtype=torch.float32) + 0.5) / width
    b = boxes.float()
    x1, y1, x2, y2 = (b[:, i].view(-1, 1, 1) for i in range(4))
    inside_y = (ys.view(1, -1, 1) >= y1) & (ys.view(1, -1, 1) < y2)
    inside_x = (xs.view(1, 1, -1) >= x1) & (xs.view(1, 1, -1) < x2)
    m = (inside_y & inside_x).float()
    empty = m.flatten(1).sum(1) == 0
    if empty.any():  # a box thinner than a pixel: take the pixel at its centre
        cy = ((y1 + y2) / 2 * height).long().clamp(0, height - 1).view(-1)
        cx = ((x1 + x2) / 2 * width).long().clamp(0, width - 1).view(-1)
        idx = torch.nonzero(empty).view(-1)
        m[idx, cy[idx], cx[idx]] = 1.0
    return m.unsqueeze(1)


def masked_l1(x: Tensor, y: Tensor, mask: Tensor) -> Tensor:
    """Per-image mean |x - y| over the pixels where ``mask`` (N, 1, H, W) is 1: (N,)."""
    diff = (x.float() - y.float()).abs() * mask
    return diff.flatten(1).sum(1) / (mask.flatten(1).sum(1) * x.shape[1]).clamp_min(1.0)


def crop_resize(images: Tensor, boxes: Tensor, size: Sequence[int]) -> Tensor:
    """Differentiable crop of each image to its box (fractions, x2/y2 exclusive), resized to ``size`` = (h, w)
    with bilinear sampling: (N, C, H, W) -> (N, C, h, w)."""
    n = images.shape[0]
    h, w = int(size[0]), int(size[1])
    b = boxes.to(images.dtype)
    # pixel-centre sampling grid inside each box, in grid_sample's [-1, 1] coordinates (align_corners=False)
    ty = (torch.arange(h, device=images.device, dtype=images.dtype) + 0.5) / h
    tx = (torch.arange(w, device=images.device, dtype=images.dtype) + 0.5) / w
    gy = b[:, 1:2] + (b[:, 3:4] - b[:, 1:2]) * ty.view(1, -1)  # (N, h)
    gx = b[:, 0:1] + (b[:, 2:3] - b[:, 0:1]) * tx.view(1, -1)  # (N, w)
    grid = torch.stack([gx.view(n, 1, w).expand(n, h, w), gy.view(n, h, 1).expand(n, h, w)], dim=-1) * 2 - 1
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def psnr(x: Tensor, y: Tensor) -> Tensor:
    """Per-image PSNR in dB of images in [0, 1]: (N,)."""
    mse = (x.float() - y.float()).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(1.0 / mse)
