"""The frame's own mouth moved to a new shape: its lips and jaw warped, piecewise affine.

A generic renderer draws an unseen person's mouth soft and smeared; the frame itself holds that person's lips,
skin and grain at full resolution. :class:`MouthWarp` moves the frame's lip and jaw points (FaceMesh,
``mouth_shape.MOVING``) to where a mouth shape puts them (``mouth_shape.moving_points``) while the eyes, nose,
cheeks and the crop's edges stay; inside the new inner-lip ring, where the frame's own mouth was closed and has
nothing to show, the rendered face fills the opening.

Shapes are relative to the clip's average mouth in a fixed pose (``mouth_shape``): :class:`MouthWarp` learns
both from the first frames it sees (``frames``), then keeps them, so its targets do not drift.

:func:`with_detail` keeps the network's face instead and takes only the fine detail of the warped frame: the mouth a
person model draws, with the footage's sharpness.
"""

from __future__ import annotations

import cv2
import numpy as np

from . import mouth_shape as ms

# points that stay where they are: the stable points, cheeks, the sides of the nose and the nasolabial folds
ANCHORS: tuple[int, ...] = ms.STABLE + (234, 454, 93, 323, 132, 361, 205, 425, 36, 266, 203, 423, 98, 327, 2, 164)
INNER = slice(len(ms.OUTER_LIP), len(ms.OUTER_LIP) + len(ms.INNER_LIP))  # the inner ring among MOVING


class PiecewiseAffine:
    """The piecewise-affine map taking points ``dst`` (n, 2) to ``src`` (n, 2) over a Delaunay triangulation of
    ``dst``; identity outside the triangles. Used backwards, as an image warp reads (for each output pixel, where in
    the source to read it): every output pixel lies in one triangle, so the warp cannot fold, even where a mouth
    closes and its inner-lip points meet. Call it on (m, 2) points, or take a whole block of pixels with
    :meth:`grid`."""

    def __init__(self, src: np.ndarray, dst: np.ndarray) -> None:
        from scipy.spatial import Delaunay

        self.src, self.dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
        self.tri = Delaunay(self.dst)
        # the affine map (2, 3) from output to source coordinates of each triangle the warp rasterises: those whose
        # points moved (the others are the identity) and that cover at least half a pixel (slivers of points that
        # met cover none, and their maps would be singular)
        simplices = self.tri.simplices
        still = np.all(np.abs(self.src - self.dst) < 1e-9, axis=1)
        corners = self.dst[simplices]  # (T, 3, 2)
        e1, e2 = corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]
        self.area = 0.5 * np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0])
        self.drawn = np.flatnonzero(~still[simplices].all(axis=1) & (self.area >= 0.5))
        d = np.concatenate([corners[self.drawn], np.ones((len(self.drawn), 3, 1))], axis=2)  # (D, 3, 3)
        self.affine = np.transpose(np.linalg.solve(d, self.src[simplices[self.drawn]]), (0, 2, 1))  # (D, 2, 3)

    def __call__(self, q: np.ndarray) -> np.ndarray:
        q = np.asarray(q, np.float64)
        out = q.copy()
        k = self.tri.find_simplex(q)
        inside = k >= 0
        t = self.tri.transform[k[inside]]  # (m, 3, 2): barycentric coordinates from a point
        b = np.einsum("mij,mj->mi", t[:, :2], q[inside] - t[:, 2])
        bary = np.concatenate([b, 1.0 - b.sum(axis=1, keepdims=True)], axis=1)
        out[inside] = np.einsum("mi,mij->mj", bary, self.src[self.tri.simplices[k[inside]]])
        return out

    def grid(self, width: int, height: int) -> tuple[tuple[int, int, int, int], np.ndarray, np.ndarray] | None:
        """The pixels this map moves, within a (height, width) image: their bounding box (x0, y0, x1, y1) and the
        source x and y of every pixel in it (float32 (y1 - y0, x1 - x0)); None when nothing moves. The moved
        triangles are rasterised (each pixel takes the affine map of the triangle that covers it: far faster than
        locating every pixel); the other pixels stay where they are."""
        if not len(self.drawn):
            return None
        tris = self.dst[self.tri.simplices[self.drawn]]
        x0, y0 = np.maximum(np.floor(tris.reshape(-1, 2).min(axis=0)).astype(int) - 1, 0)
        x1, y1 = np.minimum(np.ceil(tris.reshape(-1, 2).max(axis=0)).astype(int) + 2, [width, height])
        if x1 <= x0 or y1 <= y0:
            return None
        index = np.full((y1 - y0, x1 - x0), -1, np.int32)
        corners = np.round((tris - [x0, y0]) * 16).astype(np.int32)  # 4 fraction bits
        # a filled triangle takes the pixels on its edges too: the largest are filled last, so a pixel on an edge
        # takes the larger neighbour's map
        for k in np.argsort(self.area[self.drawn]):
            cv2.fillConvexPoly(index, corners[k], int(k), lineType=cv2.LINE_8, shift=4)
        ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        mx, my = xs.copy(), ys.copy()
        hit = index >= 0
        a = self.affine.reshape(-1, 6).T.astype(np.float32)[:, index[hit]]  # (6, m): each hit pixel's map
        x, y = xs[hit], ys[hit]
        mx[hit] = a[0] * x + a[1] * y + a[2]
        my[hit] = a[3] * x + a[4] * y + a[5]
        return (int(x0), int(y0), int(x1), int(y1)), mx, my


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

    def place(self, landmarks: np.ndarray, shape: np.ndarray, side: float) -> np.ndarray:
        """Where the lip and jaw points (``mouth_shape.MOVING``) of ``shape`` go in this frame, whose FaceMesh points
        are ``landmarks`` (468+, 2+) in pixels of a region ``side`` pixels wide: (len(MOVING), 2). Counts the frame
        in the clip's average mouth and, with ``steady``, steps the pose filter: call it once per frame, in order."""
        self.observe(landmarks)
        lm = np.asarray(landmarks, np.float64)[:, :2]
        placed = lm
        if self.pose is not None:  # the pose from the steadied stable points
            placed = lm.copy()
            placed[list(ms.STABLE)] = self.pose(lm[list(ms.STABLE)] / float(side)) * float(side)
        return ms.moving_points(shape, placed, self.template, self.mean)

    def apply(self, region: np.ndarray, landmarks: np.ndarray, shape: np.ndarray, rendered: np.ndarray,
              first_row: int = 0) -> np.ndarray:
        """``region`` (h, w, 3) uint8: the face as the frame shows it, ``landmarks`` (468+, 2+) its FaceMesh points
        in its pixels, ``shape`` (N_SHAPE,) the mouth to show, ``rendered`` (h, w, 3) uint8 the network's face at
        the same size. -> (h, w, 3) uint8: rows from ``first_row`` down warped, the opening filled from
        ``rendered``; the rows above are ``region``'s. One call per frame, in order (:meth:`place`)."""
        lm = np.asarray(landmarks, np.float64)[:, :2]
        h, w = region.shape[:2]
        src = lm[list(ms.MOVING)]
        dst = self.place(lm, shape, max(h, w))
        first_row = int(np.clip(first_row, 0, h - 1))
        edge = _border(w, h, first_row)
        keep = np.vstack([lm[list(ANCHORS)], edge])
        out = region.copy()
        moved = PiecewiseAffine(np.vstack([src, keep]), np.vstack([dst, keep])).grid(w, h)
        if moved is not None:
            (x0, y0, x1, y1), mx, my = moved
            y0 = max(y0, first_row)  # the rows above are the region's (the border points keep the warp below)
            mx, my = mx[y0 - moved[0][1]:], my[y0 - moved[0][1]:]
            out[y0:y1, x0:x1] = cv2.remap(region, mx, my, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
        # the opening: the frame's own inside of the mouth (teeth, tongue) fits the new ring only as far as the two
        # openings agree; where the mouth opens from closed, or closes over teeth, the rendered face shows inside it
        gap_src, gap_dst = _gap(src[INNER]), _gap(dst[INNER])
        wide = max(gap_src, gap_dst)
        use = 1.0 - min(gap_src, gap_dst) / wide if wide > 0 else 0.0
        if use > 0:  # blended within the new ring's box, widened by the blur's reach
            sigma = max(w / 256.0, 0.5)
            reach = int(np.ceil(4 * sigma)) + 2
            bx0, by0 = np.maximum(np.floor(dst[INNER].min(axis=0)).astype(int) - reach, 0)
            bx1, by1 = np.minimum(np.ceil(dst[INNER].max(axis=0)).astype(int) + reach + 1, [w, h])
            if bx1 > bx0 and by1 > by0:
                mask = np.zeros((by1 - by0, bx1 - bx0), np.float32)
                ring = np.round((dst[INNER] - [bx0, by0]) * 4).astype(np.int32)
                cv2.fillPoly(mask, [ring], 1.0, lineType=cv2.LINE_AA, shift=2)
                mask = cv2.GaussianBlur(mask, (0, 0), sigma)[..., None] * use
                box = out[by0:by1, bx0:bx1]
                mix = box * (1.0 - mask) + rendered[by0:by1, bx0:bx1].astype(np.float32) * mask
                out[by0:by1, bx0:bx1] = np.clip(np.rint(mix), 0, 255).astype(np.uint8)
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


def _gap(inner: np.ndarray) -> float:
    """The inner ring's opening: upper against lower centre point distance (pixels)."""
    up = inner[ms.INNER_LIP.index(ms.UPPER_INNER)]
    lo = inner[ms.INNER_LIP.index(ms.LOWER_INNER)]
    return float(max(lo[1] - up[1], 0.0))
