"""A piecewise-affine image warp: points moved, the image between them carried along triangle by triangle."""

from __future__ import annotations

import cv2
import numpy as np

MIN_AREA = 0.5  # px^2: a moved triangle smaller than this (points that met) is not drawn; its map would be singular


def _signed_area(points: np.ndarray, simplices: np.ndarray) -> np.ndarray:
    c = points[simplices]  # (T, 3, 2)
    e1, e2 = c[:, 1] - c[:, 0], c[:, 2] - c[:, 0]
    return 0.5 * (e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0])


class PiecewiseAffine:
    """The piecewise-affine map taking points ``dst`` (n, 2) to ``src`` (n, 2); identity outside the triangles.
    Used backwards, as an image warp reads (for each output pixel, where in the source to read it).

    The triangles are the source points' own (a Delaunay triangulation of ``src``) laid on the moved points: the
    image keeps its arrangement, so where a mouth closes the lower lip stays joined to the lower lip and the inside
    between the lips folds away to a line. (A triangulation of the moved points instead joined the upper inner lip
    to the lower lip's outer edge once the lips met, and that triangle carried the inside over the lower lip: dark
    blots under closed lips.) A triangle the move flattens below :data:`MIN_AREA` is left out, and one it turns over
    (a sliver before it, such as the inside of a closed mouth that opens, turns nothing) with every triangle that
    shares a point with it; the pixels they leave are read through the moved points' own Delaunay triangles round
    them, which cannot fold. ``own_triangles=False`` uses that triangulation alone (the hybrid mouth's warp, whose
    lips are the network's, not the frame's). Call it on (m, 2) points, or take a whole block of pixels with
    :meth:`grid`."""

    def __init__(self, src: np.ndarray, dst: np.ndarray, own_triangles: bool = True) -> None:
        from scipy.spatial import Delaunay

        self.src, self.dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
        still = np.all(np.abs(self.src - self.dst) < 1e-9, axis=1)
        turned = None
        if own_triangles:
            own = Delaunay(self.src).simplices
            area_src, area_dst = _signed_area(self.src, own), _signed_area(self.dst, own)
            # a triangle the move turns over is left out, and so is every triangle that shares a point with it (they
            # fold over its place); a sliver, before or after (the inside of a closed mouth opening), turns nothing
            turned = ((np.sign(area_src) != np.sign(area_dst)) & (np.abs(area_dst) >= MIN_AREA)
                      & (np.abs(area_src) >= MIN_AREA))
            drawn = np.abs(area_dst) >= MIN_AREA
        if turned is None or turned.any():  # the moved points' own triangles below (where their points moved), the
            # kept ones over them, still ones too (the identity, over whatever the moved points' triangles drew)
            fallback = Delaunay(self.dst).simplices
            fallback = fallback[~still[fallback].all(axis=1) & (np.abs(_signed_area(self.dst, fallback)) >= MIN_AREA)]
            kept = fallback[:0]
            if turned is not None:
                touched = np.zeros(len(self.src), bool)
                touched[own[turned].ravel()] = True
                near = touched[own].any(axis=1)
                kept = own[drawn & ~near]
                # below the kept triangles, only the moved points' triangles round the place of those left out
                around = np.zeros(len(self.src), bool)
                around[own[near].ravel()] = True
                fallback = fallback[around[fallback].any(axis=1)]
        else:  # the source's triangles tile the moved points' hull: those that move are all there is to draw
            fallback = own[:0]
            kept = own[drawn & ~still[own].all(axis=1)]
        self.simplices = np.vstack([fallback, kept]).astype(np.int64)
        self.n_fallback = len(fallback)
        self.area = np.abs(_signed_area(self.dst, self.simplices))
        self.moves = not still.all()
        corners = self.dst[self.simplices]
        d = np.concatenate([corners, np.ones((len(corners), 3, 1))], axis=2)  # (D, 3, 3)
        self.affine = np.transpose(np.linalg.solve(d, self.src[self.simplices]), (0, 2, 1))  # (D, 2, 3)

    def _order(self) -> np.ndarray:
        """The drawing order: the moved points' triangles, then the kept source ones, each by area (the largest
        last, so a pixel on an edge or where kept triangles overlap takes the larger one's map)."""
        fb = np.argsort(self.area[:self.n_fallback], kind="stable")
        own = self.n_fallback + np.argsort(self.area[self.n_fallback:], kind="stable")
        return np.concatenate([fb, own])

    def __call__(self, q: np.ndarray) -> np.ndarray:
        q = np.asarray(q, np.float64)
        out = q.copy()
        if not self.moves:
            return out
        corners = self.dst[self.simplices]  # (D, 3, 2)
        v0, v1 = corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]
        det = v0[:, 0] * v1[:, 1] - v0[:, 1] * v1[:, 0]
        r = q[:, None, :] - corners[None, :, 0]  # (m, D, 2)
        b1 = (r[..., 0] * v1[:, 1] - r[..., 1] * v1[:, 0]) / det
        b2 = (v0[:, 0] * r[..., 1] - v0[:, 1] * r[..., 0]) / det
        eps = 1e-9
        inside = (b1 >= -eps) & (b2 >= -eps) & (b1 + b2 <= 1 + eps)  # (m, D)
        order = self._order()
        rank = np.empty(len(self.simplices), np.int64)
        rank[order] = np.arange(len(self.simplices))
        best = np.where(inside, rank[None], -1).max(axis=1)  # the triangle drawn last over each point
        hit = best >= 0
        which = order[best[hit]]
        a = self.affine[which]  # (h, 2, 3)
        out[hit] = np.einsum("mij,mj->mi", a, np.concatenate([q[hit], np.ones((hit.sum(), 1))], axis=1))
        return out

    def grid(self, width: int, height: int) -> tuple[tuple[int, int, int, int], np.ndarray, np.ndarray] | None:
        """The pixels this map moves, within a (height, width) image: their bounding box (x0, y0, x1, y1) and the
        source x and y of every pixel in it (float32 (y1 - y0, x1 - x0)); None when nothing moves. The triangles
        are rasterised (each pixel takes the affine map of the triangle drawn last over it: far faster than
        locating every pixel); the other pixels stay where they are."""
        if not self.moves or not len(self.simplices):
            return None
        moved = ~np.all(np.abs(self.affine - [[1, 0, 0], [0, 1, 0]]) < 1e-9, axis=(1, 2))
        if not moved.any():
            return None
        tris = self.dst[self.simplices[moved]]
        x0, y0 = np.maximum(np.floor(tris.reshape(-1, 2).min(axis=0)).astype(int) - 1, 0)
        x1, y1 = np.minimum(np.ceil(tris.reshape(-1, 2).max(axis=0)).astype(int) + 2, [width, height])
        if x1 <= x0 or y1 <= y0:
            return None
        index = np.full((y1 - y0, x1 - x0), -1, np.int32)
        corners = np.round((self.dst[self.simplices] - [x0, y0]) * 16).astype(np.int32)  # 4 fraction bits
        # a triangle that does not move is drawn as "no map" (the pixel stays where it is), and only where it may
        # cover a moved points' triangle below it (their box)
        if self.n_fallback:
            below = self.dst[self.simplices[:self.n_fallback]].reshape(-1, 2)
            lo, hi = below.min(axis=0), below.max(axis=0)
            box = self.dst[self.simplices]
            reach = (box.max(axis=1) >= lo).all(axis=1) & (box.min(axis=1) <= hi).all(axis=1)
        for k in self._order():  # a filled triangle takes the pixels on its edges too
            if moved[k]:
                cv2.fillConvexPoly(index, corners[k], int(k), lineType=cv2.LINE_8, shift=4)
            elif self.n_fallback and reach[k]:
                cv2.fillConvexPoly(index, corners[k], -1, lineType=cv2.LINE_8, shift=4)
        ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        mx, my = xs.copy(), ys.copy()
        hit = index >= 0
        a = self.affine.reshape(-1, 6).T.astype(np.float32)[:, index[hit]]  # (6, m): each hit pixel's map
        x, y = xs[hit], ys[hit]
        mx[hit] = a[0] * x + a[1] * y + a[2]
        my[hit] = a[3] * x + a[4] * y + a[5]
        return (int(x0), int(y0), int(x1), int(y1)), mx, my
