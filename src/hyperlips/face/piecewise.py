"""A piecewise-affine image warp: points moved, the image between them carried along triangle by triangle."""

from __future__ import annotations

import cv2
import numpy as np


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
