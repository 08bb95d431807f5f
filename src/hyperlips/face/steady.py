"""Steady mouths: each generated face blended with its neighbours in time, before paste-back.

A network renders every frame on its own, so the lips it draws wobble a little from one frame to the next even when
the mouth shape it is given moves smoothly. Frame ``t``'s face becomes ``(1 - 2w) * face[t] + w * face[t-1] +
w * face[t+1]`` (``w`` = ``weight``, 0.25 by default: weights 1/4, 1/2, 1/4), each neighbour first moved into frame
``t``'s crop (the crops follow the smoothed face box, so they differ by a few pixels of position and scale). A
neighbour that is missing (no face on that frame, the end of the video) or whose crop is not near frame ``t``'s
(a cut, a jump of the track) gives its weight to frame ``t`` itself, so nothing is blended across a cut.

Measured on the official HyperLips test pairs with the shipped starter (``docs/inference.md``): the lip-jitter
ratio falls from 1.05-1.20 to 0.85-0.96, below the original HyperLips' 0.87-1.10 on all four; the mouth's
sharpness falls by 6-13%; the sync judge's confidence is unchanged.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

DEFAULT_WEIGHT = 0.25
MAX_WEIGHT = 1.0 / 3.0  # 1/3 each: a plain 3-frame mean; more would weigh the neighbours above the frame itself
NEAR = 0.1  # a neighbour's crop counts as near when its corners are within this fraction of the crop's size

Region = Sequence[int]  # (x1, y1, x2, y2) pixel region of a crop in its frame (``track.pixel_extent``)


def check_weight(weight: float) -> float:
    """The weight as a float; ValueError outside 0..1/3."""
    w = float(weight)
    if not 0.0 <= w <= MAX_WEIGHT + 1e-9:
        raise ValueError(f"the temporal blend weight must be between 0 and 1/3 (got {weight})")
    return w


def is_near(a: Region, b: Region) -> bool:
    """Whether crop regions ``a`` and ``b`` are the same face a frame apart (every corner within NEAR of the size)."""
    size = max(a[2] - a[0], a[3] - a[1], 1)
    return max(abs(float(p) - float(q)) for p, q in zip(a, b)) <= NEAR * size


def into_region(face: np.ndarray, src: Region, dst: Region, size: int) -> np.ndarray:
    """``face`` (a crop of region ``src`` resized to its square) resampled as the crop of region ``dst`` would show
    it, at ``size`` x ``size`` (bilinear, edges repeated)."""
    import cv2

    sw, sh = src[2] - src[0], src[3] - src[1]
    dw, dh = dst[2] - dst[0], dst[3] - dst[1]
    h, w = face.shape[:2]
    # pixel p of the dst crop is frame point dst0 + (p + 0.5) * d / size - 0.5, which is src pixel q:
    ax, ay = (dw / sw) * (w / size), (dh / sh) * (h / size)
    bx = (dst[0] - src[0]) * w / sw + 0.5 * ax - 0.5
    by = (dst[1] - src[1]) * h / sh + 0.5 * ay - 0.5
    m = np.array([[ax, 0.0, bx], [0.0, ay, by]], np.float64)
    return cv2.warpAffine(face, m, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


def blend_neighbours(face: np.ndarray, region: Region, before: Optional[tuple[np.ndarray, Region]],
                     after: Optional[tuple[np.ndarray, Region]], weight: float = DEFAULT_WEIGHT) -> np.ndarray:
    """Frame t's face (S, S, 3) uint8 of crop ``region`` blended with ``before``/``after`` = (face, region) of
    frames t-1 and t+1 (None: missing). Returns a new uint8 array (the face itself when nothing is blended)."""
    if weight <= 0:
        return face
    own = face.astype(np.float32)
    acc = (1.0 - 2.0 * weight) * own  # the three weights sum to 1
    for other in (before, after):
        near = other is not None and is_near(other[1], region)
        acc += weight * (into_region(other[0], other[1], region, face.shape[0]).astype(np.float32) if near else own)
    return np.clip(acc + 0.5, 0, 255).astype(np.uint8)
