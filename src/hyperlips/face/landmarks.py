"""Face landmarks on a face crop (mediapipe FaceMesh, 478 points), HR sketches and lip masks (reference §4.5, §7.7).

Landmarks are float arrays in **crop pixel** coordinates: ``(x, y, z)`` with ``z`` scaled by the crop width (as
mediapipe's normalised z is). FaceMesh runs on a crop around the face, not on the full frame: its own detector is
short-range and misses the faces of 720p video.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Optional, Sequence, Union

import cv2
import numpy as np

from hyperlips.face.detect import check_frame, import_mediapipe, quiet_native_logs

N_LANDMARKS = 478

# Ring round the mouth used for the HR lip mask (§7.7): under the nose, past both corners, to the chin crease.
LIP_RING: tuple[int, ...] = (
    164, 167, 165, 92, 186, 57, 43, 106, 182, 83, 18, 313, 406, 335, 273, 287, 410, 322, 391, 393,
)

# Custom nose edges of the original (§4.5): the bridge 168-6-197-195-5-4 and the two nostril arcs.
NOSE_PATHS: tuple[tuple[int, ...], ...] = (
    (168, 6, 197, 195, 5, 4),
    (4, 45, 220, 115, 48),
    (4, 275, 440, 344, 278),
)

# The face oval is drawn from landmark 389 (right temple) down round the chin (152) to 162 (left temple);
# the forehead arc between 162 and 389 is left out.
OVAL_FROM, OVAL_VIA, OVAL_TO = 389, 152, 162


def _path_edges(path: Sequence[int]) -> list[tuple[int, int]]:
    return list(zip(path[:-1], path[1:]))


def _oval_walk(oval_edges, start: int, via: int, stop: int) -> list[tuple[int, int]]:
    """Edges of the closed ``oval_edges`` cycle from ``start`` to ``stop`` going the way that passes ``via``."""
    adj: dict[int, list[int]] = {}
    for a, b in oval_edges:
        adj.setdefault(a, []).append(b)
        adj.setdefault(b, []).append(a)
    if any(len(v) != 2 for v in adj.values()) or start not in adj:
        raise ValueError("FACEMESH_FACE_OVAL is not a simple cycle through the expected landmarks")
    for first in adj[start]:
        path, prev, cur = [start], start, first
        while True:
            path.append(cur)
            if cur == stop or cur == start:
                break
            nxt = [v for v in adj[cur] if v != prev][0]
            prev, cur = cur, nxt
        if path[-1] == stop and via in path:
            return _path_edges(path)
    raise ValueError(f"no oval path from {start} via {via} to {stop}")


@lru_cache(maxsize=1)
def roi_edges() -> np.ndarray:
    """The sketch's edge set (§4.5) as an int array (125, 2): lips, eyes, brows, the truncated face oval, the nose.

    Connection sets are taken from mediapipe's ``FACEMESH_*`` constants (sorted, so the order is fixed).
    """
    fm = import_mediapipe().solutions.face_mesh
    edges: list[tuple[int, int]] = []
    for group in (
        fm.FACEMESH_LIPS,
        fm.FACEMESH_LEFT_EYE,
        fm.FACEMESH_LEFT_EYEBROW,
        fm.FACEMESH_RIGHT_EYE,
        fm.FACEMESH_RIGHT_EYEBROW,
    ):
        edges += sorted(tuple(e) for e in group)
    edges += _oval_walk(fm.FACEMESH_FACE_OVAL, OVAL_FROM, OVAL_VIA, OVAL_TO)
    for path in NOSE_PATHS:
        edges += _path_edges(path)
    arr = np.array(edges, dtype=np.int64)
    arr.setflags(write=False)
    return arr


class FaceMesh:
    """mediapipe FaceMesh (refine_landmarks=True → 478 points, one face) on BGR face crops.

    ``static=False`` tracks landmarks across consecutive calls (video); ``static=True`` detects every image anew.
    Use as a context manager or call :meth:`close`.
    """

    def __init__(self, static: bool = False, min_detection_confidence: float = 0.5, min_tracking_confidence: float = 0.5):
        mp = import_mediapipe()
        self.static = bool(static)
        with quiet_native_logs():
            self._fm = mp.solutions.face_mesh.FaceMesh(
                static_image_mode=self.static,
                max_num_faces=1,
                refine_landmarks=True,
                min_detection_confidence=min_detection_confidence,
                min_tracking_confidence=min_tracking_confidence,
            )
            # the graph sets up its models (and logs it) on its threads, by the first frame: a blank one, here (no
            # face in it, so nothing is tracked from it)
            self._fm.process(np.zeros((64, 64, 3), np.uint8))
        self._quiet_until_a_face = True  # its first face logs a warning meant for graph authors (NORM_RECT ...)

    def landmarks(self, crop_bgr: np.ndarray) -> Optional[np.ndarray]:
        """(478, 3) float32 landmarks in crop pixels ``(x, y, z·width)``, or None when no face is found."""
        if self._fm is None:
            raise RuntimeError("FaceMesh is closed")
        check_frame(crop_bgr, "face crop")
        h, w = crop_bgr.shape[:2]
        rgb = cv2.cvtColor(crop_bgr, cv2.COLOR_BGR2RGB)  # RGB, not the original's BGR (§9.13d)
        if self._quiet_until_a_face:
            with quiet_native_logs():
                res = self._fm.process(rgb)
            self._quiet_until_a_face = not res.multi_face_landmarks
        else:
            res = self._fm.process(rgb)
        if not res.multi_face_landmarks:
            return None
        pts = np.array([(p.x, p.y, p.z) for p in res.multi_face_landmarks[0].landmark], dtype=np.float32)
        pts *= np.array([w, h, w], dtype=np.float32)
        return pts

    def close(self) -> None:
        if self._fm is not None:
            self._fm.close()
            self._fm = None

    def __enter__(self) -> "FaceMesh":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _hw(size: Union[int, Sequence[int]]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    h, w = (int(v) for v in size)
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {size}")
    return h, w


def _check_landmarks(landmarks_xy: np.ndarray, need: int) -> np.ndarray:
    pts = np.asarray(landmarks_xy, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[0] < need or pts.shape[1] < 2:
        raise ValueError(f"landmarks must be an (N>={need}, 2 or 3) array, got shape {pts.shape}")
    return pts[:, :2]


def _draw_edges(canvas: np.ndarray, pts_norm: np.ndarray, thickness: int) -> None:
    """White lines for the ROI edges, placed as mediapipe's drawing_utils does: floor(x·W), points outside the image
    dropped together with their edges."""
    ch, cw = canvas.shape[:2]
    inside = np.all((pts_norm >= 0.0) & (pts_norm <= 1.0), axis=1)
    px = np.minimum(np.floor(pts_norm[:, 0] * cw), cw - 1).astype(np.int64)
    py = np.minimum(np.floor(pts_norm[:, 1] * ch), ch - 1).astype(np.int64)
    for a, b in roi_edges():
        if inside[a] and inside[b]:
            cv2.line(canvas, (int(px[a]), int(py[a])), (int(px[b]), int(py[b])), 255, thickness)


def draw_sketch(
    landmarks_xy: np.ndarray,
    size: Union[int, Sequence[int]],
    out_size: Union[int, Sequence[int], None] = None,
    *,
    style: str = "inference",
    canvas_size: int = 128,
    thickness: int = 6,
    blur_ksize: int = 5,
    channels: int = 1,
) -> np.ndarray:
    """The HR stage's landmark sketch: white ROI edges (§4.5) on black.

    ``landmarks_xy`` (N≥478, 2+): pixel coordinates in an image of ``size`` = (h, w) or an int. Output: uint8
    (H, W) or (H, W, 3) with ``channels=3``, at ``out_size`` (default ``size``).

    ``style="inference"`` (default; what official HR checkpoints see at inference): lines of ``thickness`` on a
    ``canvas_size``² canvas, bilinearly resized to ``out_size``.
    ``style="training"`` (the original's training input): lines of ``thickness`` drawn at ``size`` itself, resized to
    ``out_size``, Gaussian blur with ``blur_ksize``, then every pixel > 0 set to 255.
    Use the same style for training and inference.
    """
    if style not in ("inference", "training"):
        raise ValueError(f"style must be 'inference' or 'training', got {style!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    h, w = _hw(size)
    oh, ow = _hw(out_size) if out_size is not None else (h, w)
    pts = _check_landmarks(landmarks_xy, N_LANDMARKS)
    norm = pts / np.array([w, h], dtype=np.float64)
    if style == "inference":
        canvas = np.zeros((canvas_size, canvas_size), np.uint8)
        _draw_edges(canvas, norm, thickness)
        out = cv2.resize(canvas, (ow, oh), interpolation=cv2.INTER_LINEAR)
    else:
        canvas = np.zeros((h, w), np.uint8)
        _draw_edges(canvas, norm, thickness)
        out = cv2.resize(canvas, (ow, oh), interpolation=cv2.INTER_LINEAR) if (oh, ow) != (h, w) else canvas
        if blur_ksize > 1:
            out = cv2.GaussianBlur(out, (blur_ksize, blur_ksize), 0)
        out = np.where(out > 0, 255, 0).astype(np.uint8)
    return np.repeat(out[:, :, None], 3, axis=2) if channels == 3 else out


def lip_mask(landmarks_xy: np.ndarray, size: Union[int, Sequence[int]]) -> np.ndarray:
    """uint8 (H, W) mask, 255 inside the polygon through the 20 :data:`LIP_RING` landmarks, 0 outside (§7.7)."""
    h, w = _hw(size)
    pts = _check_landmarks(landmarks_xy, max(LIP_RING) + 1)
    poly = np.floor(pts[list(LIP_RING)]).astype(np.int32)
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [poly], 255)
    return mask


def lip_box(mask: np.ndarray) -> Optional[tuple[int, int, int, int]]:
    """Bounding box ``(x1, y1, x2, y2)`` of the mask's non-zero pixels, **x2/y2 exclusive** (slice with
    ``img[y1:y2, x1:x2]``); None for an empty mask. Any value > 127 counts (JPEG-safe, unlike the original's == 255)."""
    m = np.asarray(mask)
    if m.ndim == 3:
        m = m[..., 0]
    on = m > 127
    rows, cols = np.flatnonzero(on.any(axis=1)), np.flatnonzero(on.any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def smooth_landmarks(
    seq: Sequence[Optional[np.ndarray]], window: int = 5
) -> list[Optional[np.ndarray]]:
    """Centred moving average over time of a landmark sequence (T × (N, D) arrays or None), ``window`` odd.

    Each frame becomes the mean of frames t−r..t+r of the *input* (r = window//2, shrunk symmetrically near the ends
    of a run of non-None frames); never recursive, never across a None frame. Returns new arrays.
    """
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be an odd number >= 1, got {window}")
    r = window // 2
    n = len(seq)
    out: list[Optional[np.ndarray]] = [None if s is None else np.array(s, dtype=np.float32) for s in seq]
    t = 0
    while t < n:
        if seq[t] is None:
            t += 1
            continue
        s = t
        while t < n and seq[t] is not None:
            t += 1
        seg = np.stack([np.asarray(seq[i], dtype=np.float64) for i in range(s, t)])  # (L, N, D)
        csum = np.concatenate([np.zeros((1,) + seg.shape[1:]), np.cumsum(seg, axis=0)])
        for i in range(len(seg)):
            k = min(r, i, len(seg) - 1 - i)
            out[s + i] = ((csum[i + k + 1] - csum[i - k]) / (2 * k + 1)).astype(np.float32)
    return out


__all__ = [
    "N_LANDMARKS",
    "LIP_RING",
    "NOSE_PATHS",
    "FaceMesh",
    "roi_edges",
    "draw_sketch",
    "lip_mask",
    "lip_box",
    "smooth_landmarks",
]
