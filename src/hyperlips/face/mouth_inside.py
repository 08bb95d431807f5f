"""The inside of a warped mouth: what shows between the lips once they have moved.

A mouth is read (by FaceMesh, and by people) from its inside as much as from its lips: the dark between them.
When :class:`~hyperlips.face.mouth_warp.MouthWarp` moves a frame's lips, the inside follows the new opening:

- :func:`paint_inside` paints the frame's own inside dark before the lips are moved, so that lips closing over
  teeth meet on a dark line, as closed lips do, instead of carrying slivers of teeth between them;
- :func:`draw_inside` draws the new opening's inside: the frame's own (its teeth and tongue) stretched to the new
  ring in the share the two openings agree (smaller gap / larger gap), dark for the rest. A mouth opening from
  closed shows a dark gap; the network's face, which filled it before, showed lips there, and FaceMesh read an
  opening mouth as closed.

Measured with the real mouth of the frame half a clip away given to each frame (6 held-out clips, FaceMesh's
reading of the warped faces against the opening given; runs-only script): r 0.77 with the network's face inside,
0.80 with the inner lips kept apart alone (``mouth_warp.keep_apart``), 0.89 with the inside drawn too.

:func:`fill_from` fills the new opening from the network's face instead, for the hybrid, whose mouth is the
network's and takes only the warped frame's fine detail.
"""

from __future__ import annotations

import cv2
import numpy as np

from .piecewise import PiecewiseAffine

DARK = 0.15  # a mouth's inside: the median colour round it times this


def ring_box(ring: np.ndarray, reach: int, width: int, height: int) -> tuple[int, int, int, int] | None:
    """The box (x0, y0, x1, y1) round a ring of points (n, 2), widened by ``reach`` pixels, within the image."""
    x0, y0 = np.maximum(np.floor(ring.min(axis=0)).astype(int) - reach, 0)
    x1, y1 = np.minimum(np.ceil(ring.max(axis=0)).astype(int) + reach + 1, [width, height])
    return (int(x0), int(y0), int(x1), int(y1)) if x1 > x0 and y1 > y0 else None


def ring_mask(ring: np.ndarray, box: tuple[int, int, int, int], sigma: float = 0.0) -> np.ndarray:
    """The ring's polygon in ``box``, anti-aliased and blurred by ``sigma`` px: float32 (y1 - y0, x1 - x0) in 0..1."""
    x0, y0, x1, y1 = box
    mask = np.zeros((y1 - y0, x1 - x0), np.float32)
    cv2.fillPoly(mask, [np.round((ring - [x0, y0]) * 4).astype(np.int32)], 1.0, lineType=cv2.LINE_AA, shift=2)
    return cv2.GaussianBlur(mask, (0, 0), sigma) if sigma > 0 else mask


def _dark(pixels: np.ndarray) -> np.ndarray:
    return DARK * np.median(pixels.reshape(-1, 3), axis=0).astype(np.float32)


def _blend(out: np.ndarray, box: tuple[int, int, int, int], layer, mask: np.ndarray) -> np.ndarray:
    """``out``'s pixels in ``box`` mixed with ``layer`` (float32, the box's size or a colour) by ``mask`` (the
    box's size, 1 channel), in place. Returns ``out``."""
    x0, y0, x1, y1 = box
    mix = out[y0:y1, x0:x1] * (1.0 - mask) + layer * mask
    out[y0:y1, x0:x1] = np.clip(np.rint(mix), 0, 255).astype(np.uint8)
    return out


def paint_inside(image: np.ndarray, ring: np.ndarray) -> np.ndarray:
    """A copy of ``image`` (h, w, 3) uint8 with the polygon of ``ring`` (n, 2) painted dark (anti-aliased)."""
    h, w = image.shape[:2]
    box = ring_box(ring, 2, w, h)
    if box is None:
        return image.copy()
    x0, y0, x1, y1 = box
    return _blend(image.copy(), box, _dark(image[y0:y1, x0:x1]), ring_mask(ring, box)[..., None])


def _carried(image: np.ndarray, src_ring: np.ndarray, dst_ring: np.ndarray, box) -> np.ndarray:
    """``image``'s inside of ``src_ring`` carried onto ``dst_ring`` (the same points, in order), for the pixels of
    ``box``: float32 (y1 - y0, x1 - x0, 3), piecewise affine over each ring and its centre (``image`` as it is
    where the rings' points did not move)."""
    x0, y0, x1, y1 = box
    out = image[y0:y1, x0:x1].astype(np.float32)
    # a ring that changes shape turns its own triangles over: the moved points' triangulation
    f = PiecewiseAffine(np.vstack([src_ring, src_ring.mean(axis=0)]), np.vstack([dst_ring, dst_ring.mean(axis=0)]),
                        own_triangles=False)
    moved = f.grid(x1, y1)
    if moved is not None and moved[0][2] > x0 and moved[0][3] > y0:
        (gx0, gy0, gx1, gy1), mx, my = moved
        gx0, gy0 = max(gx0, x0), max(gy0, y0)
        mx, my = mx[gy0 - moved[0][1]:, gx0 - moved[0][0]:], my[gy0 - moved[0][1]:, gx0 - moved[0][0]:]
        out[gy0 - y0:gy1 - y0, gx0 - x0:gx1 - x0] = cv2.remap(image, mx, my, cv2.INTER_LINEAR,
                                                                borderMode=cv2.BORDER_REPLICATE)
    return out


def draw_inside(out: np.ndarray, region: np.ndarray, src_ring: np.ndarray, dst_ring: np.ndarray, gap_src: float,
                gap_dst: float, sigma: float) -> np.ndarray:
    """Draw, in place in ``out`` (h, w, 3) uint8, the inside of the new inner-lip ring ``dst_ring``: ``region``'s
    own inside (``src_ring``) carried onto it with the weight ``min(gaps) / max(gaps)``, dark for the rest; the
    ring's edge blurred by ``sigma`` px. Returns ``out``."""
    h, w = out.shape[:2]
    box = ring_box(dst_ring, int(np.ceil(3 * sigma)) + 2, w, h)
    if box is None or gap_dst <= 0:
        return out
    x0, y0, x1, y1 = box
    own = min(gap_src, gap_dst) / max(gap_src, gap_dst) if gap_src > 0 else 0.0
    layer = np.empty((y1 - y0, x1 - x0, 3), np.float32)
    layer[:] = _dark(out[y0:y1, x0:x1])
    if own > 0:
        layer += own * (_carried(region, src_ring, dst_ring, box) - layer)
    return _blend(out, box, layer, ring_mask(dst_ring, box, sigma)[..., None])


def fill_from(out: np.ndarray, face: np.ndarray, dst_ring: np.ndarray, gap_src: float, gap_dst: float,
              sigma: float) -> np.ndarray:
    """Fill, in place in ``out`` (h, w, 3) uint8, the new inner-lip ring ``dst_ring`` from ``face`` (the same size)
    with the weight ``1 - min(gaps) / max(gaps)``, the ring's edge blurred by ``sigma`` px (for the hybrid, whose
    mouth is the network's ``face``: the warped frame lends it only its fine detail). Returns ``out``."""
    h, w = out.shape[:2]
    wide = max(gap_src, gap_dst)
    use = 1.0 - min(gap_src, gap_dst) / wide if wide > 0 else 0.0
    box = ring_box(dst_ring, int(np.ceil(4 * sigma)) + 2, w, h)
    if use <= 0 or box is None:
        return out
    x0, y0, x1, y1 = box
    return _blend(out, box, face[y0:y1, x0:x1].astype(np.float32), ring_mask(dst_ring, box, sigma)[..., None] * use)
