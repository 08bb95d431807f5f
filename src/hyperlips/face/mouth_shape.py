"""The mouth's shape as numbers: lip and jaw landmarks with the head's pose taken out.

FaceMesh points (:mod:`hyperlips.face.landmarks`) move with the head and with speech. Aligning every frame's
stable points (eye corners, brows, nose bridge; they do not move when a person talks) to their average over the
clip by a similarity transform removes position, scale and roll; what is left of the lip and jaw points, minus
their average, is the shape speech gives the mouth. Units: the clip's mean outer-eye-corner distance, times
:data:`SCALE`, so shapes are comparable across people and crop sizes.

:func:`mouth_opening` is the measure the evaluation uses: the inner-lip gap divided by the face height.
"""

from __future__ import annotations

import numpy as np

# points that do not move with speech: eye corners, brows, nose bridge and tip, forehead
STABLE: tuple[int, ...] = (33, 133, 362, 263, 168, 6, 197, 195, 5, 4, 1, 10, 151, 9, 127, 356, 70, 300, 105, 334)
OUTER_LIP: tuple[int, ...] = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185)
INNER_LIP: tuple[int, ...] = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 415, 310, 311, 312, 13, 82, 81, 80, 191)
JAW: tuple[int, ...] = (172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397)
MOVING: tuple[int, ...] = OUTER_LIP + INNER_LIP + JAW
N_SHAPE = 2 * len(MOVING)  # 106
SCALE = 50.0
UPPER_INNER, LOWER_INNER, FOREHEAD, CHIN = 13, 14, 10, 152
EYE_OUTER = (33, 263)

# FaceMesh's left-right pairs among the moving points: both lip rings run corner, lower arc, corner, upper arc
# (centre points 17/14 and 0/13 their own mirrors), the jaw from one side to the other
_LIP_MIRROR = tuple(10 - i for i in range(11)) + tuple(30 - i for i in range(11, 20))  # within one ring of 20
MIRROR: tuple[int, ...] = (_LIP_MIRROR + tuple(20 + i for i in _LIP_MIRROR) + tuple(40 + 12 - i for i in range(13)))


def _xy(landmarks: np.ndarray) -> np.ndarray:
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.ndim != 3 or lm.shape[1] < 468 or lm.shape[2] < 2:
        raise ValueError(f"landmarks must be (N, 468 or 478, 2+), got {lm.shape}")
    return lm[:, :, :2]


def similarity_to(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """Scale a, rotation R (2x2), source and target centroids such that a * (src - mu_s) @ R + mu_d ~ dst."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    u, sv, vt = np.linalg.svd(s.T @ d)
    sign = np.sign(np.linalg.det(u @ vt)) or 1.0
    corr = np.diag([1.0, sign])
    rot = u @ corr @ vt
    a = float((sv * np.diag(corr)).sum() / max((s ** 2).sum(), 1e-12))
    return a, rot, mu_s, mu_d


def _canonical(points: np.ndarray) -> np.ndarray:
    """Stable points moved to a fixed pose: centred, eye-corner line horizontal, eye-corner distance 1."""
    a, b = points[STABLE.index(EYE_OUTER[0])], points[STABLE.index(EYE_OUTER[1])]
    d = b - a
    iod = float(np.hypot(*d))
    c, s = d / max(iod, 1e-12)
    rot = np.array([[c, -s], [s, c]])  # row vectors @ rot turns d onto +x
    return (points - points.mean(0)) @ rot / max(iod, 1e-12)


def stable_template(landmarks: np.ndarray, iterations: int = 3) -> np.ndarray:
    """The average shape of the stable points (len(STABLE), 2) in a fixed pose (generalised Procrustes mean over
    the frames that have landmarks, centred, eye-corner line horizontal, eye-corner distance 1)."""
    xy = _xy(landmarks)[:, list(STABLE)]
    ok = np.isfinite(xy).all(axis=(1, 2))
    if not ok.any():
        raise ValueError("no frame has landmarks")
    frames = xy[ok]
    tpl = _canonical(frames[len(frames) // 2])
    for _ in range(iterations):
        aligned = []
        for f in frames:
            a, rot, mu_s, mu_d = similarity_to(f, tpl)
            aligned.append(a * (f - mu_s) @ rot + mu_d)
        tpl = _canonical(np.mean(aligned, axis=0))
    return tpl


def aligned_moving_points(landmarks: np.ndarray, template: np.ndarray | None = None) -> np.ndarray:
    """(N, len(MOVING), 2) lip/jaw points in the template's frame, in units of its eye-corner distance
    (NaN rows where a frame has no landmarks). ``template``: :func:`stable_template` (default: of these frames)."""
    xy = _xy(landmarks)
    tpl = stable_template(landmarks) if template is None else np.asarray(template, np.float64)
    iod = float(np.linalg.norm(tpl[STABLE.index(EYE_OUTER[0])] - tpl[STABLE.index(EYE_OUTER[1])]))
    out = np.full((len(xy), len(MOVING), 2), np.nan)  # template units: eye-corner distance 1
    for i, frame in enumerate(xy):
        st = frame[list(STABLE)]
        if not np.isfinite(st).all() or not np.isfinite(frame[list(MOVING)]).all():
            continue
        a, rot, mu_s, mu_d = similarity_to(st, tpl)
        out[i] = (a * (frame[list(MOVING)] - mu_s) @ rot + mu_d) / max(iod, 1e-9)
    return out


def mouth_shapes(landmarks: np.ndarray, mean: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """-> (shapes (N, N_SHAPE) float32, NaN where no landmarks; the mean aligned points used, (len(MOVING), 2)).

    A shape is the frame's aligned lip/jaw points minus ``mean`` (default: their average over these frames), x SCALE.
    """
    pts = aligned_moving_points(landmarks)
    ok = np.isfinite(pts).all(axis=(1, 2))
    if mean is None:
        if not ok.any():
            raise ValueError("no frame has landmarks")
        mean = pts[ok].mean(axis=0)
    shapes = ((pts - mean) * SCALE).reshape(len(pts), -1).astype(np.float32)
    return shapes, np.asarray(mean)


def mirror_shapes(shapes):
    """Shapes (..., N_SHAPE) of the horizontally mirrored face: x negated, each point swapped with its mirror
    (``MIRROR``). Numpy arrays or torch tensors; the mirror of the mirror is the shape itself."""
    s = shapes.reshape(*shapes.shape[:-1], len(MOVING), 2)[..., list(MIRROR), :]
    sign = s.new_tensor([-1.0, 1.0]) if hasattr(s, "new_tensor") else np.array([-1.0, 1.0], dtype=s.dtype)
    return (s * sign).reshape(shapes.shape)


def shape_opening(shapes: np.ndarray) -> np.ndarray:
    """Inner-lip gap change (lower minus upper inner-lip centre, y) of shapes (N, N_SHAPE), in shape units."""
    s = np.asarray(shapes).reshape(len(shapes), len(MOVING), 2)
    return s[:, MOVING.index(LOWER_INNER), 1] - s[:, MOVING.index(UPPER_INNER), 1]


def mouth_opening(landmarks: np.ndarray) -> np.ndarray:
    """Per-frame mouth opening: inner-lip gap (points 13-14) / face height (10-152); NaN without landmarks."""
    xy = _xy(landmarks)
    gap = np.linalg.norm(xy[:, UPPER_INNER] - xy[:, LOWER_INNER], axis=1)
    height = np.linalg.norm(xy[:, FOREHEAD] - xy[:, CHIN], axis=1)
    return gap / np.where(height > 0, height, np.nan)


def moving_points(shape: np.ndarray, landmarks: np.ndarray, template: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Where the lip and jaw points (:data:`MOVING`) of mouth ``shape`` (N_SHAPE,) lie in one frame: the inverse of
    :func:`aligned_moving_points` (``mean`` + shape / SCALE in ``template`` units, taken back to the frame's pose,
    which its stable points give). ``landmarks`` (468+, 2+) of that frame -> (len(MOVING), 2) in its pixels."""
    tpl = np.asarray(template, np.float64)
    iod = float(np.linalg.norm(tpl[STABLE.index(EYE_OUTER[0])] - tpl[STABLE.index(EYE_OUTER[1])]))
    a, rot, mu_s, mu_d = similarity_to(np.asarray(landmarks, np.float64)[list(STABLE), :2], tpl)
    q = (np.asarray(mean, np.float64) + np.asarray(shape, np.float64).reshape(len(MOVING), 2) / SCALE) * iod
    return (q - mu_d) @ rot.T / max(a, 1e-12) + mu_s
