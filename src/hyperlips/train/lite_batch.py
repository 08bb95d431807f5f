"""A HyperLips-Lite training step's batches and their losses (``train/lite.py``): the masked faces the renderer
sees, mirrored samples, a target paired with the frame after it, the change between them, image gradients, the
mouth crops the mouth discriminator judges and the lip box's sharpness that validation reports.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..data.datasets import BASE_SIZE
from .losses import box_mask, crop_resize

MOUTH_CROP = 64  # side of the mouth crops the discriminator judges
MOUTH_MARGIN = 0.25  # the lip box grown by this much of its size on every side


def masked_faces(batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """-> (faces (N, 6, 128, 128) = [target with lower half zeroed, reference] in [0, 1], target (N, 3, 128, 128)).
    With a ``source`` in the batch (``source_shift``), its upper half is shown instead of the target's."""
    target = batch["target"].float() / 255.0
    masked = batch["source"].float() / 255.0 if "source" in batch else target.clone()
    masked[:, :, BASE_SIZE // 2:] = 0.0
    return torch.cat([masked, batch["reference"].float() / 255.0], dim=1), target


def mirrored(faces: Tensor, target: Tensor, shapes: Tensor, lip_box: Tensor, which: Tensor):
    """The samples ``which`` (N,) bool seen in a mirror: faces (N, 6, H, W) and targets (N, 3, H, W) flipped
    left-right, their mouth shapes (N, N_SHAPE) mirrored (``face.mouth_shape.mirror_shapes``), lip boxes (N, 4:
    x1, y1, x2, y2 as fractions of the crop) flipped; the others unchanged."""
    from ..face.mouth_shape import mirror_shapes

    w4 = which.view(-1, 1, 1, 1)
    box = lip_box.float()
    flipped_box = torch.stack([1 - box[:, 2], box[:, 1], 1 - box[:, 0], box[:, 3]], dim=1)
    return (torch.where(w4, faces.flip(3), faces), torch.where(w4, target.flip(3), target),
            torch.where(which[:, None], mirror_shapes(shapes), shapes), torch.where(which[:, None], flipped_box, box))


PAIRED = {"target": "next_target", "mel": "next_mel", "shape": "next_shape", "has_shape": "next_has_shape",
          "lip_box": "next_lip_box", "reference": "reference", "source": "next_source", "shifted": "next_shifted"}


def paired_batch(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """A batch with the frames after its targets (``data.frames.FrameDataset`` with ``pairs``) as one twice the size:
    the targets, then the frames after them with the same references; ``has_next`` (N,) says which pairs are real."""
    out = {k: torch.cat([batch[k], batch[v]]) for k, v in PAIRED.items() if k in batch}
    out["has_next"] = batch["has_next"].bool()
    return out


def change_loss(fake: Tensor, target: Tensor, lip_box: Tensor, use: Tensor, first_row: int,
                mouth_weight: float) -> Tensor:
    """L1 between the generated and the real change from each target (first half of the batch) to the frame after
    it (second half), over rows ``first_row`` down (the generated ones), ``mouth_weight`` inside the target's lip
    box; the mean over the pairs ``use`` (N/2,) bool (0 without any)."""
    h = len(fake) // 2
    w = 1.0 + (mouth_weight - 1.0) * box_mask(lip_box[:h], target.shape[2], target.shape[3])
    d = (fake[h:].float() - fake[:h].float()) - (target[h:] - target[:h])
    per = (d[:, :, first_row:].abs() * w[:, :, first_row:]).mean(dim=(1, 2, 3))  # (N/2,)
    u = use.float()
    return (per * u).sum() / u.sum().clamp_min(1.0)


def image_gradients(x: Tensor) -> tuple[Tensor, Tensor]:
    """Horizontal and vertical differences of (N, C, H, W) images."""
    return x[:, :, :, 1:] - x[:, :, :, :-1], x[:, :, 1:] - x[:, :, :-1]


def mouth_crops(images: Tensor, lip_box: Tensor) -> Tensor:
    """(N, 3, 128, 128) faces -> (N, 3, 64, 64) crops of the lip box grown by MOUTH_MARGIN (differentiable)."""
    b = lip_box.float()
    w, h = (b[:, 2] - b[:, 0]).clamp_min(0.05), (b[:, 3] - b[:, 1]).clamp_min(0.05)
    side = torch.maximum(w, h) * (1 + 2 * MOUTH_MARGIN)  # square crops: lips keep their proportions
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    box = torch.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], dim=1)
    return crop_resize(images.float(), box, (MOUTH_CROP, MOUTH_CROP))


def lip_box_laplacian(images: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 faces, (N, 4) lip boxes (fractions, x1 y1 x2 y2) -> (N,) variance of the grey image's
    3x3 Laplacian inside each box (``eval``'s sharpness measure; nan where the box is under 3 pixels wide or high)."""
    from ..eval.metrics import laplacian_variance

    n, h, w = images.shape[:3]
    out = np.full(n, np.nan, np.float64)
    for i in range(n):
        x1, y1, x2, y2 = boxes[i]
        c0, c1 = max(0, int(round(x1 * w))), min(w, int(round(x2 * w)))
        r0, r1 = max(0, int(round(y1 * h))), min(h, int(round(y2 * h)))
        if c1 - c0 >= 3 and r1 - r0 >= 3:
            out[i] = laplacian_variance(images[i, r0:r1, c0:c1])
    return out
