"""The frame's own mouth moved to a new shape: its lips and jaw warped, piecewise affine.

A generic renderer draws an unseen person's mouth soft and smeared; the frame itself holds that person's lips,
skin and grain at full resolution. :class:`MouthWarp` moves the frame's lip and jaw points (FaceMesh,
``mouth_shape.MOVING``) to where a mouth shape puts them (``mouth_shape.moving_points``) while the eyes, nose,
cheeks and the crop's edges stay; the inside of the new inner-lip ring is drawn apart (:mod:`.mouth_inside`): the
frame's own teeth and tongue where the openings agree, a dark gap where the frame's own mouth was closed.

Shapes are relative to the clip's average mouth in a fixed pose (``mouth_shape``): :class:`MouthWarp` learns
both from the first frames it sees (``frames``), then keeps them, so its targets do not drift.

:func:`with_detail` keeps the network's face instead and takes only the fine detail of the warped frame: the mouth a
person model draws, with the footage's sharpness.
"""

from __future__ import annotations

import cv2
import numpy as np

from . import mouth_shape as ms
from .mouth_inside import draw_inside, fill_from, paint_inside
from .piecewise import PiecewiseAffine

# points that stay where they are: the stable points, cheeks, the sides of the nose and the nasolabial folds
ANCHORS: tuple[int, ...] = ms.STABLE + (234, 454, 93, 323, 132, 361, 205, 425, 36, 266, 203, 423, 98, 327, 2, 164)
INNER = slice(len(ms.OUTER_LIP), len(ms.OUTER_LIP) + len(ms.INNER_LIP))  # the inner ring among MOVING


class PoseFilter:
    """A one-euro filter (an adaptive low-pass: Casiez, Roussel and Vogel, CHI 2012) for points that track a head.

    FaceMesh's points shake by a pixel or more from frame to frame even on a still head; a real head moves
    smoothly. The cut-off frequency rises with the points' speed (``min_cutoff`` Hz at rest, plus ``beta`` Hz per
    unit of speed, in the points' own units per second), so a still head is steadied and a turning one followed
    with little lag. Call it on each frame's points in order; :meth:`reset` after a gap."""

    def __init__(self, fps: float = 25.0, min_cutoff: float = 2.0, beta: float = 2.0, speed_cutoff: float = 1.0):
        if fps <= 0:
            raise ValueError(f"PoseFilter: fps must be > 0, got {fps}")
        self.fps, self.min_cutoff = float(fps), float(min_cutoff)
        self.beta, self.speed_cutoff = float(beta), float(speed_cutoff)
        self.reset()

    def reset(self) -> None:
        self._x: np.ndarray | None = None
        self._speed: np.ndarray | None = None

    def _alpha(self, cutoff) -> np.ndarray:
        # the smoothing factor of a first-order low-pass at ``cutoff`` Hz, sampled at fps
        return 1.0 / (1.0 + self.fps / (2.0 * np.pi * cutoff))

    def __call__(self, points: np.ndarray) -> np.ndarray:
        x = np.asarray(points, np.float64)
        if self._x is None or self._x.shape != x.shape:
            self._x, self._speed = x.copy(), np.zeros_like(x)
            return x.copy()
        self._speed = self._speed + self._alpha(self.speed_cutoff) * ((x - self._x) * self.fps - self._speed)
        self._x = self._x + self._alpha(self.min_cutoff + self.beta * np.abs(self._speed)) * (x - self._x)
        return self._x.copy()


class MouthWarp:
    """Warps a face region's mouth to mouth shapes; one per clip (it learns the clip's average mouth).

    ``frames``: how many frames with landmarks make the clip's template and average mouth (about 3 s). ``fps``: the
    clip's frame rate, for the head's pose, which is steadied in time (:class:`PoseFilter` on the stable points,
    in units of the region's side) before it places the new mouth: the frame's own points stay as read, so the
    warp moves the lips the frame shows, to a place that does not shake with FaceMesh's reading (on the official
    test pairs the lip jitter ratio fell from 0.80-1.14 to 0.71-0.91). ``steady=False`` places it by each frame's
    reading alone."""

    def __init__(self, frames: int = 75, fps: float = 25.0, steady: bool = True) -> None:
        self.frames = int(frames)
        self.template: np.ndarray | None = None
        self._sum = np.zeros((len(ms.MOVING), 2))
        self._n = 0
        self.pose = PoseFilter(fps) if steady else None

    def lost(self) -> None:
        """The face was not found on a frame: the pose starts afresh on the next (it may have moved or cut)."""
        if self.pose is not None:
            self.pose.reset()

    @property
    def mean(self) -> np.ndarray:
        return self._sum / max(self._n, 1)

    def observe(self, landmarks: np.ndarray) -> None:
        """Count one frame's landmarks (468+, 2+) in the clip's average mouth (until ``frames`` are counted)."""
        lm = np.asarray(landmarks, np.float64)[None, :, :2]
        if self.template is None:
            self.template = ms.stable_template(lm)
        if self._n < self.frames:
            pts = ms.aligned_moving_points(lm, self.template)[0]
            if np.isfinite(pts).all():
                self._sum += pts
                self._n += 1

    def place(self, landmarks: np.ndarray, shape: np.ndarray, side: float, observed: bool = False) -> np.ndarray:
        """Where the lip and jaw points (``mouth_shape.MOVING``) of ``shape`` go in this frame, whose FaceMesh points
        are ``landmarks`` (468+, 2+) in pixels of a region ``side`` pixels wide: (len(MOVING), 2). Counts the frame
        in the clip's average mouth (unless ``observed`` already) and, with ``steady``, steps the pose filter: call
        it once per frame, in order."""
        if not observed:
            self.observe(landmarks)
        lm = np.asarray(landmarks, np.float64)[:, :2]
        placed = lm
        if self.pose is not None:  # the pose from the steadied stable points
            placed = lm.copy()
            placed[list(ms.STABLE)] = self.pose(lm[list(ms.STABLE)] / float(side)) * float(side)
        return ms.moving_points(shape, placed, self.template, self.mean)

    def apply(self, region: np.ndarray, landmarks: np.ndarray, shape: np.ndarray, first_row: int = 0,
              fill: np.ndarray | None = None, close: float = 0.0, observed: bool = False,
              black: np.ndarray | None = None) -> np.ndarray:
        """``region`` (h, w, 3) uint8: the face as the frame shows it, ``landmarks`` (468+, 2+) its FaceMesh points
        in its pixels, ``shape`` (N_SHAPE,) the mouth to show. -> (h, w, 3) uint8: rows from ``first_row`` down
        warped, the inside of the new opening drawn (:mod:`~hyperlips.face.mouth_inside`), or filled from ``fill``
        (h, w, 3) uint8 where given (the hybrid's network face, as the warp was first made); the rows above are
        ``region``'s. ``close`` (0-1): the lips then brought that far together (:func:`close_lips`; 1 on a /p b m/
        whose timing was given). One call per frame, in order (:meth:`place`; ``observed``: the frame was counted in
        the clip's average mouth already). ``black``: the frame's lifted black (``mouth_inside.frame_black``), the
        inside drawn over it."""
        lm = np.asarray(landmarks, np.float64)[:, :2]
        h, w = region.shape[:2]
        src = lm[list(ms.MOVING)]
        dst = self.place(lm, shape, max(h, w), observed)
        if close > 0:
            dst = close_lips(dst, close)
        if fill is None:  # the inner lips kept a pixel apart (of a 256 px region): lips crossing over would turn
            # their triangles over, and the new points' triangulation (where one turns) would join an upper lip point
            # to a lower one across the old opening and carry its teeth between the lips (first seen with that
            # triangulation alone; the hybrid, whose mouth is the network's, keeps its points as placed: on
            # the one-person tails its opening r moved by 0.01 at most and its mouth's sharpness fell, French 1.02
            # -> 0.74, cnn2 0.88 -> 0.77, as the frame's own teeth left its detail)
            dst = keep_apart(dst, max(h, w) / 256.0)
        first_row = int(np.clip(first_row, 0, h - 1))
        edge = _border(w, h, first_row)
        keep = np.vstack([lm[list(ANCHORS)], edge])
        ring_src, ring_dst = src[INNER], dst[INNER]
        gap_src, gap_dst = _gap(ring_src), _gap(ring_dst)
        # the lips and jaw are moved from the frame with its own inside painted dark, so that lips closing over
        # teeth meet on a dark line; the new opening's inside is drawn apart
        out = paint_inside(region, ring_src, black) if gap_src >= 1.0 and fill is None else region.copy()
        # the frame's own triangles keep closing lips from carrying the inside over the lower lip; the hybrid, whose
        # mouth is the network's, takes the moved points' unless its lips are closed on purpose (its one-person
        # tails read 0.01-0.02 lower with them: French 0.684 -> 0.667, cnn2 0.503 -> 0.493, pose 0.506 -> 0.497)
        own = fill is None or close > 0
        moved = PiecewiseAffine(np.vstack([src, keep]), np.vstack([dst, keep]), own_triangles=own).grid(w, h)
        if moved is not None:
            (x0, y0, x1, y1), mx, my = moved
            y0 = max(y0, first_row)  # the rows above are the region's (the border points keep the warp below)
            mx, my = mx[y0 - moved[0][1]:], my[y0 - moved[0][1]:]
            # remap reads all of out before its result is written back into it
            out[y0:y1, x0:x1] = cv2.remap(out, mx, my, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
        sigma = max(w / 256.0, 0.5)
        if fill is not None:
            fill_from(out, fill, ring_dst, gap_src, gap_dst, sigma)
        elif gap_dst >= 1.0:
            draw_inside(out, region, ring_src, ring_dst, gap_src, gap_dst, sigma, black)
        return out


def with_detail(rendered: np.ndarray, warped: np.ndarray, first_row: int = 0, scale: float = 1.0) -> np.ndarray:
    """The network's ``rendered`` face (h, w, 3) uint8, enlarged from its own size, given the fine detail of the
    frame's own face ``warped`` to the same mouth (:meth:`MouthWarp.apply`): ``rendered`` plus ``warped`` minus its
    Gaussian blur at the scale the enlargement lost (``scale`` pixels of the network's 128, as pixels of ``h``). The
    mouth's shape and shading stay the network's; the lips, skin and grain get the footage's sharpness. Rows above
    ``first_row`` are ``warped``'s (the frame's own)."""
    w = warped.astype(np.float32)
    sigma = max(rendered.shape[0] / 128.0 * scale, 0.5)
    out = rendered.astype(np.float32) + (w - cv2.GaussianBlur(w, (0, 0), sigma))
    out[:first_row] = w[:first_row]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _border(w: int, h: int, first_row: int, n: int = 6) -> np.ndarray:
    """Points along the warped rows' border (the first row, the sides, the bottom), which stay where they are: the
    warp joins the rows above and the crop's edges without a seam."""
    xs, ys = np.linspace(0, w - 1, n), np.linspace(first_row, h - 1, n)
    return np.unique(np.concatenate([np.stack([xs, np.full(n, first_row)], 1), np.stack([xs, np.full(n, h - 1.0)], 1),
                                     np.stack([np.zeros(n), ys], 1), np.stack([np.full(n, w - 1.0), ys], 1)]), axis=0)


def close_lips(points: np.ndarray, amount: float) -> np.ndarray:
    """``MOVING`` points (n, 2) with the lips brought together by ``amount`` (0: as they are, 1: the inner lips
    meet): each upper inner-lip point moves down and the lower one facing it up, each by ``amount`` of half their
    gap; the outer lip point of the same place in its ring moves with it (the lips keep their thickness) and the
    jaw rises with the lower lip (by the move of the lower lip at its x, nothing beyond the corners)."""
    out = np.array(points, np.float64)
    a = float(np.clip(amount, 0.0, 1.0))
    first, n = len(ms.OUTER_LIP), len(ms.INNER_LIP)  # both rings: a corner, the lower arc, a corner, the upper arc
    lower = np.arange(1, n // 2)
    upper = n - np.arange(1, n // 2)
    move = a * np.maximum(out[first + lower, 1] - out[first + upper, 1], 0.0) / 2  # (n // 2 - 1,)
    for ring in (0, first):  # the outer ring's points, then the inner ring's
        out[ring + upper, 1] += move
        out[ring + lower, 1] -= move
    jaw = np.arange(len(ms.OUTER_LIP) + len(ms.INNER_LIP), len(ms.MOVING))
    xs = np.concatenate([[out[first, 0]], out[first + lower, 0], [out[first + n // 2, 0]]])
    lift = np.concatenate([[0.0], move, [0.0]])
    order = np.argsort(xs)
    out[jaw, 1] -= np.interp(out[jaw, 0], xs[order], lift[order], left=0.0, right=0.0)
    return out


def keep_apart(points: np.ndarray, gap: float) -> np.ndarray:
    """``MOVING`` points (n, 2) with each upper inner-lip point at least ``gap`` px above the lower one facing it
    (both moved by half of what is missing)."""
    out = np.array(points, np.float64)
    first, n = len(ms.OUTER_LIP), len(ms.INNER_LIP)  # INNER_LIP: a corner, the lower lip, a corner, the upper lip
    lower = np.arange(1, n // 2) + first
    upper = n - np.arange(1, n // 2) + first
    short = np.maximum(gap - (out[lower, 1] - out[upper, 1]), 0.0) / 2
    out[lower, 1] += short
    out[upper, 1] -= short
    return out


def _gap(inner: np.ndarray) -> float:
    """The inner ring's opening: upper against lower centre point distance (pixels)."""
    up = inner[ms.INNER_LIP.index(ms.UPPER_INNER)]
    lo = inner[ms.INNER_LIP.index(ms.LOWER_INNER)]
    return float(max(lo[1] - up[1], 0.0))
