"""Per-frame image and landmark metrics of a generated video against its reference, and their summaries.

Every measure is computed on the **evaluation crop**: the face-track crop box of the reference video (the region the
model regenerates, ``face.track.crop_box``) grown by 25 % on every side and resampled to 384x384 (bilinear,
out-of-frame pixels black), the same geometry for both videos. Inside it:

* **face region**: the central 256x256 pixels (exactly the track crop box);
* **mouth box**: centred on the mean of the 40 face-mesh lip points of the *reference* frame, 1.6 x the mouth width
  (distance of the mouth corners, points 61 and 291) wide and 1.0 x the mouth width tall;
* **skin outside the mouth**: the convex hull of the 36 face-oval points of the reference frame minus the mouth box.

Landmark distances are divided by the reference frame's **inter-ocular distance** (outer eye corners, points 33
and 263), so they are fractions of that distance, whatever the resolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import cv2
import numpy as np

# mediapipe FaceMesh topology (indices of the 478-point mesh)
LIP_POINTS: tuple[int, ...] = (
    0, 13, 14, 17, 37, 39, 40, 61, 78, 80, 81, 82, 84, 87, 88, 91, 95, 146, 178, 181,
    185, 191, 267, 269, 270, 291, 308, 310, 311, 312, 314, 317, 318, 321, 324, 375, 402, 405, 409, 415,
)  # the points of FACEMESH_LIPS (outer and inner lip contours)
FACE_OVAL_POINTS: tuple[int, ...] = (
    10, 21, 54, 58, 67, 93, 103, 109, 127, 132, 136, 148, 149, 150, 152, 162, 172, 176, 234, 251,
    284, 288, 297, 323, 332, 338, 356, 361, 365, 377, 378, 379, 389, 397, 400, 454,
)  # the points of FACEMESH_FACE_OVAL
INNER_LIP_TOP, INNER_LIP_BOTTOM = 13, 14
MOUTH_CORNERS = (61, 291)
EYE_OUTER_CORNERS = (33, 263)

EVAL_SIZE = 384  # evaluation crop side (pixels)
EVAL_MARGIN = 0.25  # growth of the track crop box on every side, fraction of its size
FACE_SLICE = slice(64, 320)  # the track crop box inside the evaluation crop
PSNR_CAP = 100.0  # dB reported for identical images


# --------------------------------------------------------------------------------------------- geometry
def eval_crop(frame: np.ndarray, box, size: int = EVAL_SIZE, margin: float = EVAL_MARGIN) -> np.ndarray:
    """The evaluation crop of a BGR frame for a track crop box (x1, y1, x2, y2): box grown by ``margin`` per side,
    resampled to ``size`` x ``size`` by an affine warp (bilinear; pixels outside the frame are black)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = x2 - x1, y2 - y1
    ex1, ey1 = x1 - margin * w, y1 - margin * h
    sx, sy = size / (w * (1 + 2 * margin)), size / (h * (1 + 2 * margin))
    m = np.array([[sx, 0.0, -ex1 * sx], [0.0, sy, -ey1 * sy]], dtype=np.float64)
    return cv2.warpAffine(frame, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def frame_units(lm: Optional[np.ndarray], aspect: float) -> Optional[np.ndarray]:
    """Landmarks (N, 2+) of an evaluation crop in units that are the same across and down, as in the frame: the crop
    stretches the track box (``aspect`` = its height / width, about 1.33) to a square, so its rows are ``aspect``
    times shorter than its columns. Distances between such points (LMD, the opening over the inter-ocular distance,
    jitter) then count a vertical movement as much as a sideways one (in crop pixels, 25 % less)."""
    if lm is None:
        return None
    return np.asarray(lm, np.float64)[:, :2] * np.array([1.0, float(aspect)])


def inter_ocular(lm: np.ndarray) -> float:
    """Distance between the outer eye corners (points 33 and 263), in the landmarks' pixels."""
    a, b = EYE_OUTER_CORNERS
    return float(np.hypot(*(lm[a, :2] - lm[b, :2])))


def mouth_box(lm: Optional[np.ndarray], size: int = EVAL_SIZE) -> tuple[int, int, int, int]:
    """The mouth box (x1, y1, x2, y2, integer pixels, exclusive ends) of the evaluation crop; see the module doc.

    Without landmarks: a fixed box round the typical mouth position of the track crop (centre x 0.54, y 0.76 of the
    face region, 0.5 x 0.31 of its size).
    """
    if lm is None:
        f0, fs = FACE_SLICE.start, FACE_SLICE.stop - FACE_SLICE.start
        cx, cy, bw, bh = f0 + 0.54 * fs, f0 + 0.76 * fs, 0.5 * fs, 0.31 * fs
    else:
        pts = lm[list(LIP_POINTS), :2]
        cx, cy = pts.mean(axis=0)
        a, b = MOUTH_CORNERS
        mw = max(float(np.hypot(*(lm[a, :2] - lm[b, :2]))), 8.0)
        bw, bh = 1.6 * mw, 1.0 * mw
    x1 = int(np.clip(round(cx - bw / 2), 0, size - 8))
    y1 = int(np.clip(round(cy - bh / 2), 0, size - 8))
    x2 = int(np.clip(round(cx + bw / 2), x1 + 8, size))
    y2 = int(np.clip(round(cy + bh / 2), y1 + 8, size))
    return x1, y1, x2, y2


def skin_mask(lm: Optional[np.ndarray], mbox: tuple[int, int, int, int], size: int = EVAL_SIZE) -> np.ndarray:
    """bool (size, size): inside the convex hull of the face-oval points, outside the mouth box.

    Without landmarks: the face region (track crop box) minus the mouth box.
    """
    mask = np.zeros((size, size), np.uint8)
    if lm is None:
        mask[FACE_SLICE, FACE_SLICE] = 1
    else:
        hull = cv2.convexHull(np.round(lm[list(FACE_OVAL_POINTS), :2]).astype(np.int32))
        cv2.fillConvexPoly(mask, hull, 1)
    x1, y1, x2, y2 = mbox
    mask[y1:y2, x1:x2] = 0
    return mask.astype(bool)


# --------------------------------------------------------------------------------------------- image measures
def psnr(a: np.ndarray, b: np.ndarray, cap: float = PSNR_CAP) -> float:
    """PSNR in dB of two uint8 images (peak 255), ``cap`` for identical ones."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return cap if mse == 0 else min(cap, 10.0 * math.log10(255.0**2 / mse))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two uint8 colour images (scikit-image: 7x7 uniform window, mean over the BGR channels)."""
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a, b, channel_axis=2, data_range=255))


def bgr_to_lab(img: np.ndarray) -> np.ndarray:
    """uint8 BGR (sRGB, D65) -> float64 CIE L*a*b* (L 0..100)."""
    from skimage.color import rgb2lab

    return rgb2lab(img[..., ::-1].astype(np.float64) / 255.0)


def delta_e(gen_lab: np.ndarray, ref_lab: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """(CIE76 delta E between the mean Lab colours of the masked pixels, mean per-pixel CIE76 delta E)."""
    if not mask.any():
        return float("nan"), float("nan")
    g, r = gen_lab[mask], ref_lab[mask]
    return float(np.linalg.norm(g.mean(axis=0) - r.mean(axis=0))), float(np.linalg.norm(g - r, axis=1).mean())


def laplacian_variance(img: np.ndarray) -> float:
    """Variance of the 3x3 Laplacian of the grey image (higher = sharper)."""
    grey = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY) if img.ndim == 3 else img
    return float(cv2.Laplacian(grey.astype(np.float64), cv2.CV_64F, ksize=3).var())


def mean_abs_diff(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Mean absolute difference of two uint8 images over the masked pixels and all channels (0..255)."""
    if not mask.any():
        return float("nan")
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64))[mask].mean())


def second_difference(points: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Landmark jitter per frame: mean over points of |p[t+1] - 2 p[t] + p[t-1]| / scale[t].

    ``points`` (T, K, 2) with NaN where a frame has no landmarks; returns (T,) with NaN at both ends and next to
    missing frames. Smooth motion (a talking mouth) gives small values; frame-to-frame shake gives large ones.
    """
    t = len(points)
    out = np.full(t, np.nan)
    if t >= 3:
        d2 = points[2:] - 2 * points[1:-1] + points[:-2]
        out[1:-1] = np.linalg.norm(d2, axis=2).mean(axis=1) / scale[1:-1]
    return out


def audio_loudness_db(wav: np.ndarray, times: np.ndarray, fps: float, sample_rate: int = 16000) -> np.ndarray:
    """RMS level (dBFS, floor -100) of the audio in a window of one frame period centred on each time (seconds)."""
    half = int(round(sample_rate / fps / 2))
    out = np.full(len(times), -100.0)
    for i, t in enumerate(times):
        c = int(round(t * sample_rate))
        seg = wav[max(0, c - half) : max(0, c + half)]
        if seg.size:
            rms = float(np.sqrt(np.mean(seg.astype(np.float64) ** 2)))
            out[i] = max(-100.0, 20 * math.log10(rms)) if rms > 0 else -100.0
    return out


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation over the entries where both are finite (NaN when fewer than 3, or either is constant:
    all its values equal, which float rounding can leave with a tiny non-zero spread)."""
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return float("nan")
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def _parts(n: int, segments: Optional[Sequence[int]]) -> list[tuple[int, int]]:
    """(start, end) of the consecutive parts of a series of ``n`` (one part without ``segments``)."""
    if segments is None:
        return [(0, n)]
    ends = np.cumsum([int(s) for s in segments])
    if len(ends) == 0 or ends[-1] != n:
        raise ValueError(f"segments {list(segments)} do not add up to the series' {n} entries")
    return list(zip([0, *ends[:-1].tolist()], ends.tolist()))


def correlation_at_lag(gen: np.ndarray, ref: np.ndarray, lag: int, segments: Optional[Sequence[int]] = None) -> float:
    """Pearson r of ``gen[t + lag]`` against ``ref[t]`` (NaN when fewer than 3 frames overlap). ``segments``: the
    lengths of the consecutive parts the series are made of (a tail of several clips): pairs never cross a part's
    end, where one clip's frame would be paired with another's."""
    gen, ref = np.asarray(gen, np.float64), np.asarray(ref, np.float64)
    n, lag = min(len(gen), len(ref)), int(lag)
    a, b = [], []
    for s, e in _parts(n, segments):
        m = e - s
        if abs(lag) >= m:
            continue
        g, r = gen[s:e], ref[s:e]
        a.append(g[lag:] if lag >= 0 else g[: m + lag])
        b.append(r[: m - lag] if lag >= 0 else r[-lag:])
    if not a or sum(len(x) for x in a) < 3:
        return float("nan")
    return pearson(np.concatenate(a), np.concatenate(b))


def lagged_correlation(gen: np.ndarray, ref: np.ndarray, max_lag: int = 10,
                       segments: Optional[Sequence[int]] = None) -> tuple[float, Optional[int], float]:
    """(r at lag 0, the lag of the cross-correlation peak, r at that lag) of two per-frame series; the lag is None
    (and its r NaN) where no lag gives a correlation (no mouth found, a constant series): not "in sync".

    A positive lag means ``gen`` follows ``ref`` that many frames late (``gen[t + lag]`` matches ``ref[t]``).
    ``segments``: as :func:`correlation_at_lag`."""
    gen, ref = np.asarray(gen, np.float64), np.asarray(ref, np.float64)
    n = min(len(gen), len(ref))
    gen, ref = gen[:n], ref[:n]
    longest = max((e - s for s, e in _parts(n, segments)), default=0)
    best_lag, best_r = None, float("nan")
    max_lag = max(0, min(max_lag, longest - 3))  # every lag keeps at least 3 overlapping frames
    for lag in range(-max_lag, max_lag + 1):
        r = correlation_at_lag(gen, ref, lag, segments)
        if math.isfinite(r) and (not math.isfinite(best_r) or r > best_r):
            best_lag, best_r = lag, r
    return pearson(gen, ref), best_lag, best_r


# --------------------------------------------------------------------------------------------- accumulation
def _opening(lm: Optional[np.ndarray]) -> float:
    if lm is None:
        return float("nan")
    from ..face.mouth_shape import mouth_opening

    return float(mouth_opening(np.asarray(lm, np.float64)[None])[0])


def _nanmean(x) -> float:
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else float("nan")


def _ratio(a: float, b: float) -> float:
    if not (math.isfinite(a) and math.isfinite(b)):
        return float("nan")
    if b == 0:
        return 1.0 if a == 0 else float("inf")
    return a / b


@dataclass
class FrameComparison:
    """Accumulates the per-frame measures of generated vs reference evaluation crops (see the module doc).

    Call :meth:`add` once per aligned frame pair, in order; :meth:`summary` gives the clip's numbers and
    :attr:`series` the per-frame curves.
    """

    series: dict[str, list] = field(default_factory=dict)
    _prev: Optional[tuple[np.ndarray, np.ndarray]] = None
    _lips_gen: list = field(default_factory=list)
    _lips_ref: list = field(default_factory=list)
    _iod: list = field(default_factory=list)
    n_frames: int = 0
    n_ref_landmarks: int = 0
    n_gen_landmarks: int = 0

    def _put(self, key: str, value: float) -> None:
        self.series.setdefault(key, []).append(float(value))

    def add(self, gen: np.ndarray, ref: np.ndarray, gen_lm: Optional[np.ndarray], ref_lm: Optional[np.ndarray],
            time: float, aspect: float = 1.0) -> tuple[int, int, int, int]:
        """One frame pair: ``gen``/``ref`` uint8 BGR evaluation crops (384x384), their landmarks (478,2+) or None,
        ``aspect`` the track box's height / width (distances between landmarks are taken in the frame's proportions,
        :func:`frame_units`). Returns the mouth box used (for contact sheets)."""
        if gen.shape != ref.shape:
            raise ValueError(f"evaluation crops differ in shape: {gen.shape} vs {ref.shape}")
        size = gen.shape[0]
        mb = mouth_box(ref_lm, size)
        skin = skin_mask(ref_lm, mb, size)
        x1, y1, x2, y2 = mb
        gm, rm = gen[y1:y2, x1:x2], ref[y1:y2, x1:x2]
        gf, rf = gen[FACE_SLICE, FACE_SLICE], ref[FACE_SLICE, FACE_SLICE]
        self._put("time", time)
        self._put("psnr_face", psnr(gf, rf))
        self._put("psnr_mouth", psnr(gm, rm))
        self._put("ssim_face", ssim(gf, rf))
        self._put("ssim_mouth", ssim(gm, rm))
        gl, rl = bgr_to_lab(gen), bgr_to_lab(ref)
        de_mean, de_pix = delta_e(gl, rl, skin)
        self._put("delta_e", de_mean)
        self._put("delta_e_pixel", de_pix)
        self._put("sharpness_gen", laplacian_variance(gm))
        self._put("sharpness_ref", laplacian_variance(rm))
        if self._prev is None:
            self._put("flicker_gen", float("nan"))
            self._put("flicker_ref", float("nan"))
        else:
            pg, pr = self._prev
            self._put("flicker_gen", mean_abs_diff(gen, pg, skin))
            self._put("flicker_ref", mean_abs_diff(ref, pr, skin))
        self._prev = (gen, ref)

        gu, ru = frame_units(gen_lm, aspect), frame_units(ref_lm, aspect)
        iod = inter_ocular(ru) if ru is not None else float("nan")
        self._iod.append(iod)
        nan_pts = np.full((len(LIP_POINTS), 2), np.nan)
        rlip = ru[list(LIP_POINTS)] if ru is not None else nan_pts
        glip = gu[list(LIP_POINTS)] if gu is not None else nan_pts
        self._lips_ref.append(rlip)
        self._lips_gen.append(glip)
        self._put("lmd", float(np.linalg.norm(glip - rlip, axis=1).mean() / iod))
        self._put("mouth_open_ref", (ru[INNER_LIP_BOTTOM, 1] - ru[INNER_LIP_TOP, 1]) / iod if ru is not None else np.nan)
        self._put("mouth_open_gen", (gu[INNER_LIP_BOTTOM, 1] - gu[INNER_LIP_TOP, 1]) / iod if gu is not None else np.nan)
        # the opening as a share of the face height (inner-lip gap / forehead-chin distance), the sync measure
        self._put("opening_ref", _opening(ref_lm))
        self._put("opening_gen", _opening(gen_lm))
        self.n_frames += 1
        self.n_ref_landmarks += ref_lm is not None
        self.n_gen_landmarks += gen_lm is not None
        return mb

    def jitter(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-frame mouth landmark jitter (generated, reference), fractions of the inter-ocular distance."""
        iod = np.asarray(self._iod, dtype=np.float64)
        return (second_difference(np.asarray(self._lips_gen).reshape(-1, len(LIP_POINTS), 2), iod),
                second_difference(np.asarray(self._lips_ref).reshape(-1, len(LIP_POINTS), 2), iod))

    def summary(self) -> dict[str, float]:
        """Clip means (NaN-aware) and the generated/reference ratios."""
        s = {k: np.asarray(v, dtype=np.float64) for k, v in self.series.items()}
        jg, jr = self.jitter()
        out = {
            "frames": self.n_frames,
            "frames_with_reference_landmarks": self.n_ref_landmarks,
            "frames_with_generated_landmarks": self.n_gen_landmarks,
        }
        for k in ("psnr_face", "psnr_mouth", "ssim_face", "ssim_mouth", "delta_e", "delta_e_pixel", "lmd"):
            out[k] = _nanmean(s.get(k, []))
        out["jitter_gen"], out["jitter_ref"] = _nanmean(jg), _nanmean(jr)
        out["jitter_ratio"] = _ratio(out["jitter_gen"], out["jitter_ref"])
        out["flicker_gen"], out["flicker_ref"] = _nanmean(s.get("flicker_gen", [])), _nanmean(s.get("flicker_ref", []))
        out["flicker_ratio"] = _ratio(out["flicker_gen"], out["flicker_ref"])
        out["sharpness_gen"], out["sharpness_ref"] = _nanmean(s.get("sharpness_gen", [])), _nanmean(s.get("sharpness_ref", []))
        out["sharpness_ratio"] = _ratio(out["sharpness_gen"], out["sharpness_ref"])
        og, orf = s.get("opening_gen", np.zeros(0)), s.get("opening_ref", np.zeros(0))
        r0, lag, r_peak = lagged_correlation(og, orf)
        out["opening_r"], out["opening_lag"], out["opening_r_peak"] = r0, lag, r_peak
        sd_g, sd_r = (float(np.nanstd(x)) if np.isfinite(x).any() else float("nan") for x in (og, orf))
        out["opening_amplitude"] = _ratio(sd_g, sd_r)
        return out
