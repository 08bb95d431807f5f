"""Paste a generated face crop back into the full frame (reference §4.6, fixing §9.17).

Only a soft lower-face region of the crop changes: a feathered mask that is exactly 0 above the nose line and on
the crop border, so every pixel outside it keeps the input frame's bytes. Before blending, the generated face's
colour is matched to the original skin round the mouth (a Lab mean shift), so a global tint of the network output
does not show as a seam.

Geometry (fractions of the crop, for the default S3FD-like crop of ``track.crop_box``; measured with FaceMesh on 45
real frames of 16 clips): nose tip y 0.58 ± 0.04, upper lip 0.70 ± 0.03, mouth corners x 0.37 / 0.71, y 0.75,
lower lip 0.83 ± 0.03, chin 0.99 ± 0.01, jaw angles x 0.14 / 0.91 at y 0.81, cheek outline x 0.02 / 0.98.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Optional, Sequence, Union

import cv2
import numpy as np

from hyperlips.face.detect import Box, check_frame
from hyperlips.face.landmarks import LIP_RING
from hyperlips.face.mouth_inside import BAR_LEVEL, frame_black
from hyperlips.face.track import pixel_extent, pixel_region

# Lower face oval, from the left cheek (234) round the chin (152) to the right cheek (454), and the nostril base.
JAW_LINE: tuple[int, ...] = (
    234, 93, 132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397, 288, 361, 323, 454,
)
NOSE_BASE: tuple[int, ...] = (98, 97, 2, 326, 327)


# The highest the landmark mask's top cut goes (a fraction of the crop's height), wherever the nose is.
MIN_TOP = 0.45
# Rows of the generated face that resizing it to the crop reads above the first row it writes: bicubic enlargement
# reads 1 row above the sample point, area shrinking none (one row more, for rounding).
RESIZE_REACH = 2


@dataclass(frozen=True)
class MaskParams:
    """Shape of the soft lower-face mask, in fractions of the crop (x of its width, y of its height)."""

    center: tuple[float, float] = (0.5, 0.76)  # ellipse centre (x, y): the mouth
    axes: tuple[float, float] = (0.40, 0.30)  # ellipse half-axes (x, y): corners well inside, past the chin
    feather: float = 0.35  # soft band inside the ellipse, as a fraction of its radius (1 at r <= 1 - feather)
    top: float = 0.56  # rows above this are 0 (the nose and everything above stay original)
    top_feather: float = 0.10  # rows ramp from 0 at `top` to 1 at `top + top_feather`
    border: float = 0.06  # ramp from 0 on the crop's edge pixels to 1 this far inside
    landmark_feather: float = 0.08  # landmark mask: ramp width inside the jaw polygon (fraction of crop height)


def first_row_read(size: int, params: MaskParams = MaskParams(), landmarks: bool = False) -> int:
    """The first row of a ``size`` x ``size`` generated face that :func:`paste_face` can read with this mask
    (``landmarks``: the landmark mask, whose top follows the nose but never rises above :data:`MIN_TOP`); whatever
    the rows above it hold, the frame is the same, for crops of any size. A generator may skip computing them.

    The mask is 0 on the crop's rows ``y`` with ``(y + 0.5) / h <= top``; paste-back resizes the face to the crop
    and reads only the rows the mask touches, so row ``y`` reads the face near ``top * size - 0.5`` and above it
    at most :data:`RESIZE_REACH` rows."""
    top = MIN_TOP if landmarks else params.top
    return max(0, int(np.floor(top * size - 0.5)) - RESIZE_REACH)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _frame_ramps(h: int, w: int, p: MaskParams) -> np.ndarray:
    """Top cut × border taper, float32 (h, w): exactly 0 on the edge pixels and above ``p.top``."""
    ys = (np.arange(h, dtype=np.float64) + 0.5) / h
    top = _smoothstep((ys - p.top) / max(p.top_feather, 1e-6))
    by = _smoothstep(np.minimum(np.arange(h), np.arange(h)[::-1]) / max(p.border * h, 1.0))
    bx = _smoothstep(np.minimum(np.arange(w), np.arange(w)[::-1]) / max(p.border * w, 1.0))
    return ((top * by)[:, None] * bx[None, :]).astype(np.float32)


@lru_cache(maxsize=64)
def lower_face_mask(h: int, w: int, params: MaskParams = MaskParams()) -> np.ndarray:
    """Geometric soft mask (h, w) float32 in [0, 1] for a face crop of that size (cached, read-only)."""
    if h < 2 or w < 2:
        raise ValueError(f"crop too small for a mask: {h}x{w}")
    p = params
    ys = (np.arange(h, dtype=np.float64) + 0.5) / h
    xs = (np.arange(w, dtype=np.float64) + 0.5) / w
    r = np.sqrt(((xs[None, :] - p.center[0]) / p.axes[0]) ** 2 + ((ys[:, None] - p.center[1]) / p.axes[1]) ** 2)
    m = _smoothstep((1.0 - r) / max(p.feather, 1e-6)) * _frame_ramps(h, w, p)
    m = m.astype(np.float32)
    m.setflags(write=False)
    return m


@lru_cache(maxsize=64)
def _mouth_exclusion(h: int, w: int, p: MaskParams) -> np.ndarray:
    """Boolean (h, w): the lips and mouth interior for the geometric case (an ellipse round the mouth); cached per
    crop size like the mask (a video's crops keep nearly the same size), read-only."""
    ys = (np.arange(h) + 0.5) / h
    xs = (np.arange(w) + 0.5) / w
    cx, cy = p.center
    m = (((xs[None, :] - cx) / 0.22) ** 2 + ((ys[:, None] - cy) / 0.11) ** 2) <= 1.0
    m.setflags(write=False)
    return m


def landmark_face_mask(landmarks_xy: np.ndarray, h: int, w: int, params: MaskParams = MaskParams()) -> np.ndarray:
    """Soft mask (h, w) float32 from FaceMesh landmarks (crop pixels): the jaw line closed under the nose, ramped
    inward from its outline, times the same top cut and border taper as the geometric mask."""
    pts = np.asarray(landmarks_xy, dtype=np.float64)[:, :2]
    poly = np.round(pts[list(JAW_LINE) + list(NOSE_BASE)[::-1]]).astype(np.int32)
    inside = np.zeros((h, w), np.uint8)
    cv2.fillPoly(inside, [cv2.convexHull(poly)], 1)
    dist = cv2.distanceTransform(inside, cv2.DIST_L2, 3)
    ramp = _smoothstep(dist / max(params.landmark_feather * h, 1.0))
    # the nose line of this face replaces the fixed `top` (clamped to a sane band)
    nose_y = float(np.mean(pts[list(NOSE_BASE), 1])) / h
    p = replace(params, top=float(np.clip(nose_y - 0.02, MIN_TOP, 0.7)))
    return (ramp * _frame_ramps(h, w, p)).astype(np.float32)


# the skin's mean chroma (Lab a, b) below which a drawn face's colours are faded in proportion: grey footage has about
# 0-1 (its coding's noise), the lower face of every real colour clip here 12-35
FULL_CHROMA = 8.0


def match_color(face_bgr: np.ndarray, ref_bgr: np.ndarray, region: np.ndarray, mode: str = "mean") -> np.ndarray:
    """``face_bgr`` with its Lab colour statistics over ``region`` (bool (h, w)) moved to those of ``ref_bgr``.

    ``mode``: "mean" (shift L, a, b by the difference of means), "meanstd" (also scale the spread, factor clamped
    to [0.67, 1.5]) or "none". Round skin with less colour than :data:`FULL_CHROMA` (black and white footage), the
    face's colours are faded in proportion, to grey round grey skin. Both images uint8 (h, w, 3) BGR of one size;
    returns uint8 BGR.
    """
    if mode == "none":
        return face_bgr
    if mode not in ("mean", "meanstd"):
        raise ValueError(f"color mode must be 'none', 'mean' or 'meanstd', got {mode!r}")
    if int(region.sum()) < 32:
        return face_bgr
    f = cv2.cvtColor(face_bgr.astype(np.float32) / 255.0, cv2.COLOR_BGR2Lab)
    r = cv2.cvtColor(ref_bgr.astype(np.float32) / 255.0, cv2.COLOR_BGR2Lab)
    fs, rs = f[region], r[region]  # (K, 3)
    fm, rm = fs.mean(0), rs.mean(0)
    if mode == "meanstd":
        scale = np.clip(rs.std(0) / np.maximum(fs.std(0), 1e-3), 0.67, 1.5)
        f = (f - fm) * scale + rm
    else:
        f = f + (rm - fm)
    chroma = float(np.hypot(rs[:, 1], rs[:, 2]).mean())  # how colourful the skin round the mouth is
    if chroma < FULL_CHROMA:  # a black-and-white (or faded) picture: the drawn face's own colours, its pink chin and
        f[..., 1:] *= chroma / FULL_CHROMA  # bluish lips, fade with it (a grey frame got a coloured mouth)
    out = cv2.cvtColor(f.astype(np.float32), cv2.COLOR_Lab2BGR)
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def _laplacian(img_bgr: np.ndarray) -> np.ndarray:
    grey = cv2.cvtColor(img_bgr.astype(np.float32), cv2.COLOR_BGR2GRAY) if img_bgr.ndim == 3 else img_bgr
    return cv2.Laplacian(grey, cv2.CV_32F, ksize=3)


def match_detail(face_bgr: np.ndarray, ref_bgr: np.ndarray, region: np.ndarray, max_gain: float = 3.0,
                 sigma: float = 1.0, strength: float = 1.0) -> np.ndarray:
    """``face_bgr`` unsharp-masked so that its fine detail (Laplacian variance) over ``region`` matches ``ref_bgr``'s.

    A face generated at 128 px and enlarged to the frame loses the frame's finest detail (film grain, pores, crisp
    edges): it shows as a soft patch. Over the skin round the mouth the generated face and the original should be
    equally sharp, so the gain that makes them so there (times ``strength``) is applied to the whole generated
    face. Never blurs; the gain is at most ``max_gain``. Both images uint8 (h, w, 3) BGR of one size; returns uint8
    BGR. (On real 128 px crops pasted back into 114-234 px faces, the mouth's Laplacian variance went from 0.53-0.76
    of the original's to 0.93-0.97.)
    """
    if int(region.sum()) < 32:
        return face_bgr
    f = face_bgr.astype(np.float32)
    high = f - cv2.GaussianBlur(f, (0, 0), sigma)
    lf, lh, lr = _laplacian(f)[region], _laplacian(high)[region], _laplacian(ref_bgr.astype(np.float32))[region]
    target, v00, v11 = float(lr.var()), float(lf.var()), float(lh.var())
    if v00 >= target or v11 <= 1e-6:
        return face_bgr
    v01 = float(np.mean((lf - lf.mean()) * (lh - lh.mean())))
    # var(lf + a * lh) = v00 + 2 a v01 + a^2 v11 = target, the positive root
    disc = v01 * v01 - v11 * (v00 - target)
    gain = (-v01 + np.sqrt(max(disc, 0.0))) / v11
    gain = float(np.clip(strength * gain, 0.0, max_gain))
    return np.clip(np.rint(f + gain * high), 0, 255).astype(np.uint8)




def _bar(lines: np.ndarray) -> int:
    """How many of ``lines`` (each a row or column of the frame, from its edge inwards: (n, k, 3)) are black
    throughout, from the edge on."""
    k = 0
    while k < len(lines) and int(lines[k].max()) <= BAR_LEVEL:
        k += 1
    return k


def picture_region(frame_bgr: np.ndarray, region: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """``region`` (x1, y1, x2, y2, inside the frame) less the black bars of a letterboxed or pillarboxed frame:
    rows or columns black across the whole frame from its edge in. A face near a bar had its lower lip warped into
    the bar (the picture leaked into it, its edge made wavy). Each edge is looked at only as far as the region."""
    H, W = frame_bgr.shape[:2]
    x1, y1, x2, y2 = region
    if x2 <= x1 or y2 <= y1:
        return region
    bottom = _bar(frame_bgr[y1:][::-1])  # rows from the bottom edge up to the region's top
    top = _bar(frame_bgr[:y2]) if bottom < H - y1 else 0
    right = _bar(frame_bgr[:, x1:][:, ::-1].transpose(1, 0, 2))
    left = _bar(frame_bgr[:, :x2].transpose(1, 0, 2)) if right < W - x1 else 0
    y1, y2 = max(y1, top), min(y2, H - bottom)
    x1, x2 = max(x1, left), min(x2, W - right)
    return (x1, y1, max(x1, x2), max(y1, y2))


# How far below a lifted black (:func:`face.mouth_inside.frame_black`: faded film, a washed-out transfer) a generated
# face may reach, at most: a network trained on real blacks draws a mouth's inside darker than anything in such a
# picture (51-53 where the frame's darkest is 89).
BLACK_KNEE = 6.0


def above_black(face_bgr: np.ndarray, black: np.ndarray) -> np.ndarray:
    """``face_bgr`` (h, w, 3) uint8 kept near or above ``black`` (3,): values at or above it stay, a value ``x`` below
    it becomes ``KNEE * (1 - exp(-x / KNEE))`` below it (smooth at the black, the order kept, never :data:`BLACK_KNEE`
    below it)."""
    x = face_bgr.astype(np.float32) - black
    eased = BLACK_KNEE * (np.exp(np.minimum(x, 0.0) / BLACK_KNEE) - 1.0)
    return np.clip(np.rint(black + np.where(x >= 0, x, eased)), 0, 255).astype(np.uint8)


def paste_face(
    frame_bgr: np.ndarray,
    face_bgr: np.ndarray,
    box: Union[Box, Sequence[float]],
    *,
    landmarks: Optional[np.ndarray] = None,
    params: MaskParams = MaskParams(),
    color: str = "mean",
    detail: bool = True,
    inplace: bool = False,
) -> np.ndarray:
    """Blend a generated face crop into the frame; returns the new frame (the input is untouched unless ``inplace``).

    ``face_bgr``: uint8 (h', w', 3) BGR, any size, resized to ``box``'s pixel region (``track.pixel_extent``, the
    same region the crop was cut from); where the box reaches past the frame's edge, only the part inside is
    written. ``landmarks``: optional FaceMesh points (N, 2+) in pixels of the original crop; they give a jaw-shaped mask and the exact lip area to leave out of the colour statistics. Pixels where
    the mask is 0 (above the nose line, the crop border, everything outside the box) keep their exact input values.
    The face is enlarged with bicubic interpolation; ``detail`` restores the frame's fine detail
    (:func:`match_detail`), ``color`` its colour (:func:`match_color`), both measured on the skin round the mouth.
    """
    check_frame(frame_bgr)
    check_frame(face_bgr, "generated face")
    H, W = frame_bgr.shape[:2]
    ex1, ey1, ex2, ey2 = pixel_extent(box)  # the face's whole region, which may reach past the frame's edges
    x1, y1, x2, y2 = picture_region(frame_bgr, pixel_region(box, W, H))  # the part of it inside the frame's
    # picture (the frame less any black bars): the only pixels written
    h, w = ey2 - ey1, ex2 - ex1
    out = frame_bgr if inplace else frame_bgr.copy()
    if h < 2 or w < 2 or y2 - y1 < 2 or x2 - x1 < 2:
        return out
    orig = frame_bgr[y1:y2, x1:x2]
    interp = cv2.INTER_AREA if face_bgr.shape[0] > h else cv2.INTER_CUBIC
    gen = cv2.resize(face_bgr, (w, h), interpolation=interp) if face_bgr.shape[:2] != (h, w) else face_bgr

    if landmarks is not None:
        mask = landmark_face_mask(landmarks, h, w, params)
        pts = np.asarray(landmarks, dtype=np.float64)[:, :2]
        mouth = np.zeros((h, w), np.uint8)
        cv2.fillPoly(mouth, [np.round(pts[list(LIP_RING)]).astype(np.int32)], 1)
        mouth = mouth.astype(bool)
    else:
        mask = lower_face_mask(h, w, params)
        mouth = _mouth_exclusion(h, w, params)

    if (h, w) != orig.shape[:2]:  # keep the part inside the frame
        inside = (slice(y1 - ey1, y2 - ey1), slice(x1 - ex1, x2 - ex1))
        gen, mask, mouth = gen[inside], mask[inside], mouth[inside]
    rows = np.flatnonzero(mask.max(axis=1) > 0)
    if rows.size == 0:
        return out
    r0, r1 = int(rows[0]), int(rows[-1]) + 1  # only the rows the mask touches are computed
    gen = gen[r0:r1]
    o = orig[r0:r1]
    m = mask[r0:r1]
    skin = (m > 0.5) & ~mouth[r0:r1]
    if detail:
        gen = match_detail(gen, o, skin)
    gen = match_color(gen, o, skin, color)
    black = frame_black(frame_bgr)
    if black.any():  # a faded picture: nothing drawn darker than its darkest
        gen = above_black(gen, black)
    of = o.astype(np.float32)
    blended = of + m[:, :, None] * (gen.astype(np.float32) - of)
    res = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    res = np.where(m[:, :, None] > 0, res, o)  # bytes outside the mask are copied, not recomputed
    out[y1 + r0 : y1 + r1, x1:x2] = res
    return out
