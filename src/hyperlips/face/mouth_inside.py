"""The inside of a warped mouth: what shows between the lips once they have moved.

A mouth is read (by FaceMesh, and by people) from its inside as much as from its lips: the dark between them.
When :class:`~hyperlips.face.mouth_warp.MouthWarp` moves a frame's lips, the inside follows the new opening:

- :func:`paint_inside` paints the frame's own inside dark before the lips are moved, so that lips closing over
  teeth meet on a dark line, as closed lips do, instead of carrying slivers of teeth between them;
- :func:`draw_inside` draws the new opening's inside: the frame's own (its teeth and tongue) carried by the lips,
  its upper half with the upper lip and its lower half with the lower lip, each unstretched, shaded towards dark by
  the share the two openings agree (smaller gap / larger gap), and dark in the gap the halves leave between them
  (all of it where the frame's own mouth is closed). A mouth opening from closed shows a dark gap; the network's
  face, which filled it before, showed lips there, and FaceMesh read an opening mouth as closed. (The inside was
  first stretched to the new ring, shaded the same way: a smile opened wider showed tall grey teeth. Carried with
  the lips but not shaded, the teeth stay crisp, but FaceMesh followed the openings less well on 9 held-out speakers:
  r 0.434 against 0.449 for both shaded ways.)

Measured with the real mouth of the frame half a clip away given to each frame (6 held-out clips, FaceMesh's
reading of the warped faces against the opening given; runs-only script): r 0.77 with the network's face inside,
0.80 with the inner lips kept apart alone (``mouth_warp.keep_apart``), 0.89 with the inside drawn too.

:func:`fill_from` fills the new opening from the network's face instead, for the hybrid, whose mouth is the
network's and takes only the warped frame's fine detail.
"""

from __future__ import annotations

import cv2
import numpy as np


# a mouth's inside, the gap between its teeth and where no teeth show: the median colour round the ring (the box
# round it, grown by a third of its width, less the ring) times these, per channel (B, G, R). The darkest tenth of
# the inside of real open mouths is 0.26, 0.23 and 0.41 of it, dark and reddish (15 clips of real speakers, each one's
# widest-open fifth of frames, FaceMesh's inner ring eroded by 2 px; the median over the clips); drawn at 0.6 of
# that, as FaceMesh reads the openings of warped mouths nearly as well as with a black inside (0.15 of the colour
# round it in every channel, as drawn before): held-out r 0.441-0.445 against 0.449, at the real colour 0.440.
CAVITY = np.array([0.16, 0.14, 0.25], np.float32)
# CAVITY's red tint is kept whole round lips whose colour spreads over this share of its mean or more (max - min
# channel of the median colour round the ring, over its mean: 0.33-0.98 on the first frames of 32 real clips here),
# and lessened below it, to none round grey lips: a black-and-white video's mouth stays grey
FULL_TINT_SPREAD = 0.25
# a frame's black (the 0.5th percentile of its brightest channel) from which it is taken as lifted, and from which in
# full: the dark inside is then drawn over it. Every real clip here measures 18-53 (French 47-48, face5 40-53); a
# video faded to 0.3 of its contrast 90
LIFTED_BLACK = (55.0, 85.0)
BAR_LEVEL = 20  # the brightest a black bar's pixel is (letterbox, pillarbox; coded black is 16 in video range)


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


def frame_black(frame: np.ndarray) -> np.ndarray:
    """The black of a frame (H, W, 3) uint8 BGR where it is lifted (faded film, a washed-out transfer, log footage):
    the 0.5th percentile of each channel over every 16th pixel of every 16th row of the picture (less any black
    bars: rows or columns at the edges no brighter than :data:`BAR_LEVEL`; a letterboxed faded film read as not
    lifted), taken in full where the brightest of the three is :data:`LIFTED_BLACK`'s second value or more, in part
    above its first, else nothing (float32 (3,)). Every real clip here measures 18-53: none is lifted."""
    sample = frame[::16, ::16]
    rows = np.flatnonzero(sample.max(axis=(1, 2)) > BAR_LEVEL)
    cols = np.flatnonzero(sample.max(axis=(0, 2)) > BAR_LEVEL)
    if len(rows) and len(cols):
        sample = sample[rows[0]: rows[-1] + 1, cols[0]: cols[-1] + 1]
    black = np.percentile(sample.reshape(-1, 3), 0.5, axis=0).astype(np.float32)
    lo, hi = LIFTED_BLACK
    return black * np.float32(np.clip((float(black.max()) - lo) / (hi - lo), 0.0, 1.0))


def cavity_colour(image: np.ndarray, ring: np.ndarray, black: np.ndarray | None = None) -> np.ndarray:
    """The colour of a mouth's dark inside for a ring (n, 2) of ``image`` (h, w, 3) uint8 BGR: :data:`CAVITY` times
    the median colour round the ring (float32 (3,)), its red tint lessened round lips of little colour
    (:data:`FULL_TINT_SPREAD`; none round grey ones); over a lifted ``black`` (:func:`frame_black`), CAVITY times
    what the colour round it has above that black, plus the black: a faded picture's mouth is as dark as its
    darkest (it was drawn near-black, 2-11, in a picture whose darkest was 84)."""
    around = _around(image, ring)
    if black is None or not black.any():
        return _tinted(around)
    return black + _tinted(np.maximum(around - black, 0.0))


def _around(image: np.ndarray, ring: np.ndarray) -> np.ndarray:
    """The median colour round a ring (n, 2) of ``image``: float32 (3,)."""
    h, w = image.shape[:2]
    width = float(np.ptp(ring[:, 0])) if len(ring) else 0.0
    box = ring_box(ring, int(np.ceil(width / 3)) + 2, w, h)
    if box is None:
        return np.median(image.reshape(-1, 3), axis=0).astype(np.float32)
    x0, y0, x1, y1 = box
    # every other pixel of every other row: the same median at a quarter of the cost
    around = ring_mask(ring, box)[::2, ::2] < 0.5
    block = image[y0:y1:2, x0:x1:2]
    pixels = block[around] if around.any() else block.reshape(-1, 3)
    return np.median(pixels, axis=0).astype(np.float32)


def _tinted(around: np.ndarray) -> np.ndarray:
    """:data:`CAVITY` times the colour ``around`` (3,), its tint raised to the power of how colourful that is."""
    spread = float(around.max() - around.min()) / max(float(around.mean()), 1.0)
    if spread >= FULL_TINT_SPREAD:
        return CAVITY * around
    level = np.float32(CAVITY.mean())
    return level * (CAVITY / level) ** np.float32(spread / FULL_TINT_SPREAD) * around


def _blend(out: np.ndarray, box: tuple[int, int, int, int], layer, mask: np.ndarray) -> np.ndarray:
    """``out``'s pixels in ``box`` mixed with ``layer`` (float32, the box's size or a colour) by ``mask`` (the
    box's size, 1 channel), in place. Returns ``out``."""
    x0, y0, x1, y1 = box
    mix = out[y0:y1, x0:x1] * (1.0 - mask) + layer * mask
    out[y0:y1, x0:x1] = np.clip(np.rint(mix), 0, 255).astype(np.uint8)
    return out


def paint_inside(image: np.ndarray, ring: np.ndarray, black: np.ndarray | None = None) -> np.ndarray:
    """A copy of ``image`` (h, w, 3) uint8 with the polygon of ``ring`` (n, 2) painted dark (anti-aliased; over a
    lifted ``black``, :func:`cavity_colour`)."""
    h, w = image.shape[:2]
    box = ring_box(ring, 2, w, h)
    if box is None:
        return image.copy()
    return _blend(image.copy(), box, cavity_colour(image, ring, black), ring_mask(ring, box)[..., None])


def _arcs(ring: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A ring in ``mouth_shape.INNER_LIP``'s order (a corner, the lower arc, the other corner, the upper arc back):
    its corners (2, 2), its lower arc, the upper arc point facing each lower one (k, 2 each), and their midpoints."""
    n = len(ring)
    lower = ring[1:n // 2]
    upper = ring[n - 1:n // 2:-1]
    return ring[[0, n // 2]], lower, upper, (lower + upper) / 2


def _along(xs: np.ndarray, values: np.ndarray, at: np.ndarray) -> np.ndarray:
    """``values`` given at ``xs`` (points along the mouth's width), read at ``at`` (linear, held beyond the ends)."""
    order = np.argsort(xs, kind="stable")
    return np.interp(at, xs[order], values[order])


def _with_lips(region: np.ndarray, src_ring: np.ndarray, dst_ring: np.ndarray, box, sigma: float) -> tuple:
    """``region``'s inside of ``src_ring`` as the lips of ``dst_ring`` carry it, for the pixels of ``box``: the upper
    half (above the line midway between the inner lips) moved with the upper lip, the lower half with the lower lip,
    column by column, neither stretched (upper teeth stay under the upper lip, lower ones go down with the jaw).
    Returns (pixels float32 (h, w, 3), weight float32 (h, w, 1)): where a half lands (1), and the gap left between
    them as a mouth opens wider than the frame's (0), the edges soft over ``sigma`` px. Where the halves overlap (a
    mouth closing), the upper one is in front."""
    x0, y0, x1, y1 = box
    corners, lo_s, up_s, mid_s = _arcs(src_ring)
    _, lo_d, up_d, _ = _arcs(dst_ring)
    corners_d = dst_ring[[0, len(dst_ring) // 2]]
    xs = np.arange(x0, x1, dtype=np.float64)
    ys = np.arange(y0, y1, dtype=np.float64)[:, None]
    mid_x, mid_y = np.r_[corners[:, 0], mid_s[:, 0]], np.r_[corners[:, 1], mid_s[:, 1]]
    layers, edges = [], []
    for arc_s, arc_d in ((up_s, up_d), (lo_s, lo_d)):
        pts_s, pts_d = np.vstack([corners, arc_s]), np.vstack([corners_d, arc_d])
        sx = _along(pts_d[:, 0], pts_s[:, 0], xs)  # each column's source column
        dy = _along(pts_d[:, 0], pts_d[:, 1] - pts_s[:, 1], xs)  # and how far this lip moved down there
        map_x = np.broadcast_to(sx, (len(ys), len(xs))).astype(np.float32)
        map_y = (ys - dy).astype(np.float32)
        layers.append(cv2.remap(region, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
                      .astype(np.float32))
        edges.append(_along(mid_x, mid_y, sx) + dy)  # the midway line, moved with this lip (per column)
    soft = max(float(sigma), 0.5)
    upper = np.clip((edges[0] - ys) / soft + 0.5, 0.0, 1.0)  # above the upper half's moved midway line
    lower = np.minimum(np.clip((ys - edges[1]) / soft + 0.5, 0.0, 1.0), 1.0 - upper)  # below the lower half's
    pixels = layers[0] * upper[..., None] + layers[1] * lower[..., None]
    weight = (upper + lower)[..., None]
    return pixels / np.maximum(weight, 1e-6), weight.astype(np.float32)


def draw_inside(out: np.ndarray, region: np.ndarray, src_ring: np.ndarray, dst_ring: np.ndarray, gap_src: float,
                gap_dst: float, sigma: float, black: np.ndarray | None = None) -> np.ndarray:
    """Draw, in place in ``out`` (h, w, 3) uint8, the inside of the new inner-lip ring ``dst_ring`` (rings in
    ``mouth_shape.INNER_LIP``'s order): ``region``'s own inside (``src_ring``, open ``gap_src`` px) carried with the
    lips (:func:`_with_lips`: its upper half with the upper lip, its lower half with the lower lip) and shaded
    towards dark by the share the two openings agree (``min(gaps) / max(gaps)``: the further the mouth is from the
    frame's own, the darker its inside), dark in the gap the halves leave between them and everywhere when the
    frame's own mouth is closed; the ring's edge blurred by ``sigma`` px; the dark over a lifted ``black``
    (:func:`cavity_colour`). Returns ``out``."""
    h, w = out.shape[:2]
    box = ring_box(dst_ring, int(np.ceil(3 * sigma)) + 2, w, h)
    if box is None or gap_dst <= 0:
        return out
    x0, y0, x1, y1 = box
    layer = np.empty((y1 - y0, x1 - x0, 3), np.float32)
    layer[:] = cavity_colour(out, dst_ring, black)
    if gap_src >= 1.0:
        pixels, weight = _with_lips(region, src_ring, dst_ring, box, sigma)
        layer += (min(gap_src, gap_dst) / max(gap_src, gap_dst)) * weight * (pixels - layer)
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
