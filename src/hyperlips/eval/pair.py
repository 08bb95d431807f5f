"""One generated clip measured against its reference (:func:`evaluate_pair`), the protocol it falls under, and the
result (:class:`ClipResult`).

* **self-reconstruction**: a clip re-synced to its own speech; the original frames are ground truth, so every
  metric applies (PSNR/SSIM/LMD included).
* **cross-audio**: a clip re-synced to another clip's speech; the mouth has no ground truth, so PSNR, SSIM and LMD
  are not reported; sync, colour shift, flicker, jitter and sharpness are.

:func:`evaluate_pair` decides between the two (``protocol="auto"``) by comparing the driving audio with the
reference's own audio track: a normalised correlation above 0.9 over their common length means self-reconstruction.
Frames are paired by index when the frame rates match, else by nearest timestamp; the shorter video sets the length.
All crops use the face track of the reference video (detected once, smoothed), so both videos are measured on
exactly the same pixels.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import MediaError, UserError, collect_warnings, require_file, warn
from . import metrics as M

SHEET_FRAMES = 8
SHEET_CROP = (128, 80)  # (w, h) of each mouth crop on the contact sheet
PROTOCOLS = ("auto", "self", "cross")
SAME_AUDIO_CORRELATION = 0.9
# metrics that need the reference mouth as ground truth
# cross-audio: the mouth follows other speech than the reference's, so nothing compares it with the reference's mouth
SHORT_CLIP_S = 2.0  # a scored stretch shorter than this is warned of (a correlation of 25 frames: +-0.4 by chance)
SHORT_AUDIO_S = 0.2  # speech shorter than the scored video by more than this is warned (frames scored on silence)
MISSED_MOUTHS_SHARE = 0.05  # a result whose mouth is not found on more of the reference's frames than this: warned
GROUND_TRUTH_METRICS = ("psnr_face", "psnr_mouth", "ssim_face", "ssim_mouth", "lmd", "opening_r", "opening_lag",
                        "opening_r_peak", "opening_r_recording")
# against a photo: the motion measures compare with a reference that does not move
STILL_REFERENCE_NA = ("jitter_ratio", "flicker_ratio", "opening_r", "opening_lag", "opening_r_peak", "opening_amplitude")


@dataclass
class ClipResult:
    """Everything measured on one clip: summary numbers, per-frame curves, sync searches, contact-sheet crops."""

    generated: str
    reference: Optional[str]
    audio: str
    protocol: str  # "self-reconstruction", "cross-audio" or "no reference"
    fps: float
    width: int
    height: int
    frames: int
    metrics: dict = field(default_factory=dict)
    notes: dict = field(default_factory=dict)  # metric -> why it is not reported
    series: dict = field(default_factory=dict)
    sync: dict = field(default_factory=dict)  # "lse"/"expert" -> {"generated": SyncResult|None, "reference": ..., "status": ...}
    perceptual: dict = field(default_factory=dict)
    shifted_source: bool = False  # made from the reference's frames shifted by half (shifted_copy), not its own
    sheet: list = field(default_factory=list)  # [(frame index, gen mouth crop, ref mouth crop or None)]
    warnings: list = field(default_factory=list)  # what the measurement warned of, in order (also printed)
    seconds: float = 0.0

    @property
    def name(self) -> str:
        return Path(self.generated).stem


# --------------------------------------------------------------------------------------------- helpers
def _same_audio(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised correlation (zero lag) of two 16 kHz signals over their common length."""
    n = min(len(a), len(b))
    if n < 1600:
        return 0.0
    x, y = a[:n].astype(np.float64), b[:n].astype(np.float64)
    den = math.sqrt(float(np.dot(x, x)) * float(np.dot(y, y)))
    return float(np.dot(x, y) / den) if den > 0 else 0.0


def _pairing(gen_times: np.ndarray, ref_times: Optional[np.ndarray], same_rate: bool) -> np.ndarray:
    """Reference frame index for each generated frame: by index at equal rates, else the reference frame on screen
    at the generated frame's time (the rule ``sync`` made it by, ``media.timing``: the last one whose timestamp is
    at most that time plus a quarter of the shorter frame period; a variable-rate reference is read so)."""
    if ref_times is None:
        return np.arange(len(gen_times))
    if same_rate and _regular(gen_times) and _regular(ref_times):  # (a reference with a gap of missing frames is
        return np.arange(min(len(gen_times), len(ref_times)))  # read by time, as sync read it)
    from ..media.timing import on_screen

    g = gen_times - gen_times[0]
    r = ref_times - ref_times[0]
    period = float(np.median(np.diff(r))) if len(r) > 1 else 0.04
    idx = on_screen(r, g, float(np.median(np.diff(g))) if len(g) > 1 else period)
    return idx[g <= r[-1] + period / 2]


def _regular(times: np.ndarray) -> bool:
    """Whether frames at ``times`` (seconds) are evenly spaced: each interval within a quarter of the median one."""
    d = np.diff(np.asarray(times, np.float64))
    return len(d) == 0 or bool(np.all(np.abs(d - np.median(d)) <= 0.25 * np.median(d)))


def _frame_times(path: Path, limit: int) -> np.ndarray:
    from ..media.video import FrameReader

    with FrameReader(path) as reader:
        return np.array([fr.time for fr in reader.iter_range(0, limit)], dtype=np.float64)


def _filled(boxes: list) -> list:
    """Boxes with None replaced by the nearest box before (else after) it; all None stays all None."""
    out = list(boxes)
    last = None
    for i, b in enumerate(out):
        if b is None:
            out[i] = last
        else:
            last = b
    nxt = None
    for i in range(len(out) - 1, -1, -1):
        if boxes[i] is not None:
            nxt = boxes[i]
        elif out[i] is None:
            out[i] = nxt
    return out


def _track(path: Path, info, n: int, face_index: Optional[int], progress: bool, face_box=None) -> list:
    """The crop box of the followed face on each of the first ``n`` frames (None where there is none), tracked as
    ``sync`` tracks it: shot by shot where the video cuts."""
    from ..face.detect import FaceDetector
    from ..face.track_online import OnlineTrack
    from ..media.video import FrameReader
    from ..streaming import check_face_box, report_several_faces

    face_box = check_face_box(face_box, info.width, info.height)  # said at once, and clipped, as sync does: the
    # same box picks the same person in both
    track = OnlineTrack(float(info.fps), face_index=face_index, box=face_box, source=str(path),
                        frame_size=(info.width, info.height))
    boxes: list = []
    with FaceDetector() as det, FrameReader(path) as reader:
        for fr in _bar(reader.iter_range(0, n), n, f"faces {path.name}", progress):
            boxes += [b for _, b in track.push(det.detect(fr.image), fr.image)]
    boxes += [b for _, b in track.finish()]
    report_several_faces(track, "measured")
    return boxes


def _bar(it, total, desc, progress):
    if not progress:
        return it
    from ..bars import bar

    return bar(it, total=total, desc=desc, unit="frame")


def _box_array(b) -> np.ndarray:
    return b.as_array() if hasattr(b, "as_array") else np.asarray(b, dtype=np.float64)


# --------------------------------------------------------------------------------------------- one pair
def _probe_as(probe, path, role: str):
    """``probe(path)``, its error saying which input ``path`` was given as (a sound file given for a video)."""
    try:
        return probe(path)
    except MediaError as e:
        raise MediaError(f"{role}: {e}") from None


def _keeping_warnings(measure):
    """``measure`` with the warnings it issued kept in its result (``ClipResult.warnings``), for the report."""

    @functools.wraps(measure)
    def run(*args, **kwargs):
        with collect_warnings() as said:
            res = measure(*args, **kwargs)
        res.warnings = list(said)
        return res

    return run


@_keeping_warnings
def evaluate_pair(
    generated: str | os.PathLike,
    reference: str | os.PathLike | None = None,
    audio: str | os.PathLike | None = None,
    *,
    protocol: str = "auto",
    syncnet: str | os.PathLike | None = None,
    expert: str | os.PathLike | None = None,
    max_seconds: float | None = None,
    face_index: int | None = None,
    face_box=None,
    device: str = "cpu",
    perceptual: bool = True,
    progress: bool = False,
    syncnet_model=None,
    expert_model=None,
) -> ClipResult:
    """Measure ``generated`` against ``reference`` (the original video) with ``audio`` (the driving speech; default:
    the generated video's own audio track). ``syncnet``: path of the public ``syncnet_v2.model`` for LSE-C/LSE-D
    (without it they are reported as unavailable); ``expert``: a sync judge or expert checkpoint (``hyperlips eval``
    uses the shipped judge, ``models.shipped.judge().path``; None: no such score). ``syncnet_model`` /
    ``expert_model`` pass already-built networks instead of paths."""
    import time as _time

    import cv2

    from ..face.landmarks import FaceMesh
    from ..media.audio import SILENT_DBFS, is_silent, load_audio, melspectrogram
    from ..media.video import FrameReader, probe
    from ..pipeline import face_crop
    from .sync_judge import judge_score
    from .sync_score import expert_score, load_expert, lse_score, resample_indices
    from .syncnet_v2 import load_public_syncnet, protocol_crop, protocol_crop_params

    t_start = _time.perf_counter()
    if protocol not in PROTOCOLS:
        raise UserError(f"--protocol must be one of {', '.join(PROTOCOLS)} (got {protocol!r})")
    gen_path = Path(generated)
    ref_path = Path(reference) if reference is not None else None
    require_file(gen_path, "generated video")
    if ref_path is not None:
        require_file(ref_path, "reference video")
    if audio is not None:
        require_file(audio, "audio")
    gi = _probe_as(probe, gen_path, "the generated video")
    ri = _probe_as(probe, ref_path, "the reference video (--reference)") if ref_path is not None else None
    if gi.is_image:
        raise UserError(f"{gen_path} is a still image; evaluation needs a video")
    crop = None  # (height, width) the generated frames are cut to
    if ri is not None and (gi.width, gi.height) != (ri.width, ri.height):
        from ..media.writer import coded_size

        if (gi.width, gi.height) != coded_size(ri.width, ri.height):
            raise UserError(f"the generated video is {gi.width}x{gi.height} but the reference is {ri.width}x"
                            f"{ri.height}; pixel comparisons need the same frame size (evaluate the output of a run "
                            "on that reference)")
        crop = (ri.height, ri.width)  # an odd-sized reference's output: 4:2:0 repeated its last column or row

    # networks first: a bad weights path fails before any decoding
    if syncnet_model is None and syncnet is not None:
        syncnet_model = load_public_syncnet(syncnet, device)
    if expert_model is None and expert is not None:
        expert_model = load_expert(expert, device)

    # audio
    if audio is not None:
        wav = load_audio(audio, 16000)
        audio_desc = str(audio)
    elif gi.has_audio:
        wav = load_audio(gen_path, 16000)
        audio_desc = f"{gen_path} (its own audio track)"
    elif ri is not None and ri.has_audio:
        wav = load_audio(ref_path, 16000)
        audio_desc = f"{ref_path} (the reference's audio track)"
    elif syncnet_model is not None or expert_model is not None:
        raise MediaError(f"no audio to score sync against: {gen_path} has no audio track; pass --audio")
    else:
        wav, audio_desc = None, "none (neither video has an audio track)"
    ref_wav = load_audio(ref_path, 16000) if ri is not None and ri.has_audio else None

    unknown_speech = False  # auto called it cross-audio only because the reference has no speech to compare with
    if ri is None:
        proto = "no reference"
    elif protocol == "self":
        proto = "self-reconstruction"
        if audio is not None and ref_wav is not None and wav is not None \
                and _same_audio(wav, ref_wav) <= SAME_AUDIO_CORRELATION:  # what auto would have called cross-audio
            warn(f"--protocol self, but {audio} is not {ref_path}'s own speech: the mouth's PSNR, SSIM and LMD "
                 "compare mouths saying different things (--protocol auto or cross leaves them out)")
    elif protocol == "cross":
        proto = "cross-audio"
    else:
        same = audio is None and not gi.has_audio
        if not same and ref_wav is not None and wav is not None:
            same = _same_audio(wav, ref_wav) > SAME_AUDIO_CORRELATION
        proto = "self-reconstruction" if same else "cross-audio"
        if same and ref_wav is not None and audio is None and not gi.has_audio:  # assumed: nothing said it was
            warn(f"{gen_path} has no sound track: scored against {ref_path}'s own speech, as a self-reconstruction "
                 "(pass --audio with the speech it was made from if it is another)")
        elif not same and ref_wav is None and wav is not None:  # nothing to compare the speech with
            unknown_speech = True
            warn(f"{ref_path} has no sound track, so whether {audio_desc} is its own speech cannot be told: scored as "
                 "cross-audio, without the mouth's PSNR, SSIM, LMD and opening (--protocol self if it is its own)")

    # frames and pairing
    limit_g = gi.n_frames if not max_seconds else min(gi.n_frames, max(1, int(round(max_seconds * gi.fps))))
    gen_times = _frame_times(gen_path, limit_g)
    if ri is not None:
        limit_r = ri.n_frames if not max_seconds else min(ri.n_frames, max(1, int(round(max_seconds * ri.fps))))
        ref_times = _frame_times(ref_path, limit_r)
        if ri.is_image:  # a photo driven by speech: every generated frame against the one picture
            pair = np.zeros(len(gen_times), dtype=np.int64)
        else:
            pair = _pairing(gen_times, ref_times, abs(float(gi.fps) - float(ri.fps)) < 1e-3)
    else:
        ref_times, pair = None, np.arange(len(gen_times))
    n = len(pair)
    if n < 1:
        raise MediaError(f"no frames could be decoded from {gen_path}")
    scored = float(gen_times[n - 1] - gen_times[0]) + 1.0 / float(gi.fps)  # the video's time scored
    if scored < SHORT_CLIP_S:
        warn(f"only {n} frames ({scored:.2f} s) of {gen_path} are scored: correlations, lags and ratios over so few "
             f"frames move a lot from one clip to the next; score at least {SHORT_CLIP_S:g} s for figures to compare")
    if wav is not None and len(wav) / 16000 < scored - SHORT_AUDIO_S:  # (the frames after it read as silence)
        warn(f"the speech ({audio_desc}) lasts {len(wav) / 16000:.2f} s, the video {scored:.2f} s: the frames after "
             "the speech are scored against silence, which throws the sync scores and the mouth-loudness "
             "correlation off (an exact copy read 15 frames out of sync); give the speech the video was made from, "
             "or --max-seconds to score only the part it covers")

    # pass 1: the face track (on the reference: both videos are cropped by the same boxes)
    track_path, track_info = (ref_path, ri) if ri is not None else (gen_path, gi)
    n_track = int(pair[-1]) + 1
    tracked = _track(track_path, track_info, n_track, face_index, progress, face_box)
    boxes = _filled([tracked[int(j)] for j in pair])
    if all(b is None for b in boxes):
        raise MediaError(f"no face could be tracked in {track_path}")
    box_arr = np.stack([_box_array(b) for b in boxes])
    lse_params = protocol_crop_params(box_arr)

    # pass 2: per-frame measures
    want_lse = syncnet_model is not None
    want_exp = expert_model is not None
    judge = want_exp and hasattr(expert_model, "window_score")  # models.sync_judge.SyncJudge
    comp = M.FrameComparison()
    sheet_at = set(np.linspace(0, n - 1, min(SHEET_FRAMES, n)).round().astype(int).tolist())
    lse_gen, lse_ref, exp_gen, exp_ref, sheet = [], [], [], [], []
    gen_only = []  # (mouth opening, sharpness) when there is no reference
    mesh = FaceMesh(static=True)
    try:
        with FrameReader(gen_path) as gr, (FrameReader(ref_path) if ref_path else _Null()) as rr:
            gen_iter = gr.iter_range(0, limit_g)
            ref_iter = rr.iter_range(0, int(pair[-1]) + 1) if ref_path else None
            ref_cache: dict[int, np.ndarray] = {}
            ref_next = 0
            for k, gfr in enumerate(_bar(gen_iter, n, f"eval {gen_path.name}", progress)):
                if k >= n:
                    break
                gimg = gfr.image if crop is None else gfr.image[:crop[0], :crop[1]]
                rimg = None
                if ref_iter is not None:
                    j = int(pair[k])
                    while ref_next <= j:
                        ref_cache[ref_next] = next(ref_iter).image
                        ref_next += 1
                    rimg = ref_cache[j]
                    for old in [i for i in ref_cache if i < j]:
                        del ref_cache[old]
                box = box_arr[k]
                aspect = float((box[3] - box[1]) / (box[2] - box[0]))  # the crop squares the box: rows are shorter
                ge = M.eval_crop(gimg, box)
                glm = mesh.landmarks(ge)
                if rimg is not None:
                    re_ = M.eval_crop(rimg, box)
                    rlm = mesh.landmarks(re_)
                    mb = comp.add(ge, re_, glm, rlm, float(gen_times[k] - gen_times[0]), aspect)
                else:
                    mb = M.mouth_box(glm)
                    x1, y1, x2, y2 = mb
                    gu = M.frame_units(glm, aspect)
                    iod = M.inter_ocular(gu) if gu is not None else float("nan")
                    op = (gu[M.INNER_LIP_BOTTOM, 1] - gu[M.INNER_LIP_TOP, 1]) / iod if gu is not None else float("nan")
                    gen_only.append((float(gen_times[k] - gen_times[0]), op, M.laplacian_variance(ge[y1:y2, x1:x2]),
                                     gu[list(M.LIP_POINTS)] if gu is not None else None, iod))
                if k in sheet_at:
                    x1, y1, x2, y2 = mb
                    gcrop = cv2.resize(ge[y1:y2, x1:x2], SHEET_CROP, interpolation=cv2.INTER_AREA)
                    rcrop = cv2.resize(re_[y1:y2, x1:x2], SHEET_CROP, interpolation=cv2.INTER_AREA) if rimg is not None else None
                    sheet.append((k, gcrop, rcrop))
                if want_lse:
                    cx, cy, hs = lse_params[k]
                    lse_gen.append(protocol_crop(gimg, cx, cy, hs))
                    if rimg is not None and ref_wav is not None:
                        lse_ref.append(protocol_crop(rimg, cx, cy, hs))
                if want_exp and judge:  # the judge reads the mouth from the landmarks already found
                    exp_gen.append(_landmarks_or_nan(glm))
                    if rimg is not None and ref_wav is not None:
                        exp_ref.append(_landmarks_or_nan(rlm))
                elif want_exp:
                    exp_gen.append(face_crop(gimg, box, 128))
                    if rimg is not None and ref_wav is not None:
                        exp_ref.append(face_crop(rimg, box, 128))
    finally:
        mesh.close()

    res = ClipResult(str(gen_path), str(ref_path) if ref_path else None, audio_desc, proto, float(gi.fps),
                     crop[1] if crop else gi.width, crop[0] if crop else gi.height, n)
    times = gen_times[:n] - gen_times[0]
    if ri is not None:
        res.metrics = comp.summary()
        res.series = {k: list(v) for k, v in comp.series.items()}
        lost = comp.n_ref_landmarks - comp.n_gen_landmarks
        if lost > max(1, MISSED_MOUTHS_SHARE * comp.n_ref_landmarks):  # (30 black frames of 125 scored as a copy)
            warn(f"{gen_path}: no mouth was found on {lost} of the {comp.n_ref_landmarks} frames where the reference "
                 "shows one (a face covered, turned away, blurred or broken there?): LMD and the mouth-opening "
                 "measures leave those frames out, so they score only the rest")
        jg, jr = comp.jitter()
        res.series["jitter_gen"], res.series["jitter_ref"] = list(jg), list(jr)
        if proto == "cross-audio":
            for k in GROUND_TRUTH_METRICS:
                res.metrics[k] = None
                res.notes[k] = "not applicable: cross-audio has no ground truth for the mouth" + (
                    " (the reference has no sound track to tell its own speech by: --protocol self if it is)"
                    if unknown_speech else "")
        if ri.is_image:  # nothing moves in a photo: no motion to compare with
            for k in STILL_REFERENCE_NA:
                if k in res.metrics:
                    res.metrics[k] = None
                    res.notes[k] = "not applicable: the reference is a still image"
    else:
        t, op, sh, lips, iod = zip(*gen_only)
        pts = np.stack([p if p is not None else np.full((len(M.LIP_POINTS), 2), np.nan) for p in lips])
        jit = M.second_difference(pts, np.asarray(iod, dtype=np.float64))
        res.series = {"time": list(t), "mouth_open_gen": list(op), "sharpness_gen": list(sh), "jitter_gen": list(jit)}
        res.metrics = {"frames": n, "jitter_gen": M._nanmean(jit), "sharpness_gen": M._nanmean(sh)}
        for k in ("psnr_face", "psnr_mouth", "ssim_face", "ssim_mouth", "lmd", "delta_e", "delta_e_pixel",
                  "jitter_ratio", "flicker_gen", "flicker_ratio", "sharpness_ratio"):
            res.metrics[k] = None
            res.notes[k] = "needs --reference"
    if wav is not None:
        loud = M.audio_loudness_db(wav, times, float(gi.fps))
        res.series["audio_db"] = list(loud)
        res.metrics["mouth_audio_correlation"] = M.pearson(np.asarray(res.series["mouth_open_gen"], dtype=np.float64), loud)
    else:
        res.metrics["mouth_audio_correlation"] = None
        res.notes["mouth_audio_correlation"] = "no audio"
    res.sheet = sheet

    # sync scores
    fps = float(gi.fps)
    silent = wav is not None and is_silent(wav)  # any offset found against silence would be noise
    silent_status = {"status": f"unavailable: the speech is silent (no sample above {SILENT_DBFS:g} dBFS)"}
    if silent:
        res.sync["lse"] = dict(silent_status)
    elif want_lse:
        sel = resample_indices(times)
        entry = {"generated": lse_score(syncnet_model, np.stack(lse_gen)[sel], wav, device=device)}
        if lse_ref:
            rsel = resample_indices(ref_times[pair] - ref_times[pair][0])
            entry["reference"] = lse_score(syncnet_model, np.stack(lse_ref)[rsel], ref_wav, device=device)
        res.sync["lse"] = entry
    else:
        res.sync["lse"] = {"status": "unavailable: pass --syncnet PATH to the public syncnet_v2.model weights"}
    scorer = {"scorer": "judge"} if judge else {}  # for the report's title when there is no score to show
    if silent:
        res.sync["expert"] = {**silent_status, **scorer}
    elif want_exp and judge:
        entry = {}
        try:  # each scored on its own: a generated video without a mouth leaves the reference's score standing
            entry["generated"] = judge_score(expert_model, np.stack(exp_gen), times, melspectrogram(wav), fps)
        except ValueError as e:  # too short, or too few frames with a face: the other figures still stand
            entry.update(status=f"unavailable: {e}", **scorer)
        if exp_ref:
            rt = ref_times[pair] - ref_times[pair][0]
            try:
                entry["reference"] = judge_score(expert_model, np.stack(exp_ref), rt, melspectrogram(ref_wav),
                                                 float(ri.fps))
            except ValueError as e:
                entry.setdefault("status", f"unavailable for the reference: {e}")
        res.sync["expert"] = entry
    elif want_exp:
        entry = {"generated": expert_score(expert_model, np.stack(exp_gen), times, melspectrogram(wav), fps, device=device)}
        if exp_ref:
            rt = ref_times[pair] - ref_times[pair][0]
            entry["reference"] = expert_score(expert_model, np.stack(exp_ref), rt, melspectrogram(ref_wav),
                                              float(ri.fps), device=device)
        res.sync["expert"] = entry
    else:
        from ..models.shipped import absent

        res.sync["expert"] = {"status": f"unavailable: not asked for (--expert off), or {absent('sync judge')}; "
                                        "pass --expert PATH, a judge from `hyperlips train judge` or an expert from "
                                        "`hyperlips train sync`"}
    if res.metrics.get("opening_r") is not None:
        _opening_at_recording_offset(res)
    res.perceptual = perceptual_status() if perceptual else {}
    res.seconds = _time.perf_counter() - t_start
    return res


def _opening_at_recording_offset(res: ClipResult) -> None:
    """``opening_r_recording``: the mouth-opening r with the reference shifted by the offset the sync scorer finds
    in the reference recording itself (a recording whose own sound is k frames late shows each mouth k frames before
    its sound; a model driven by that sound draws it k frames later). Unlike ``opening_r_peak`` the lag is not
    chosen to suit the generated video."""
    ref_sync = res.sync.get("expert", {}).get("reference")
    if ref_sync is None or ref_sync.offset is None:
        res.metrics["opening_r_recording"] = None
        res.notes["opening_r_recording"] = "no sync score of the reference recording (--expert off, or too short)"
        return
    res.metrics["opening_r_recording"] = M.correlation_at_lag(res.series.get("opening_gen", []),
                                                              res.series.get("opening_ref", []), ref_sync.offset)


def _landmarks_or_nan(lm) -> np.ndarray:
    """FaceMesh's (478, 3) landmarks of a frame, or NaN ones where it found no face."""
    return np.full((478, 3), np.nan, np.float32) if lm is None else np.asarray(lm, np.float32)


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# --------------------------------------------------------------------------------------------- FID / LPIPS
def _torch_home() -> str:
    """Where torch keeps downloaded weights, found by torch itself (``$TORCH_HOME``, ``~`` expanded, else
    ``$XDG_CACHE_HOME/torch``, else ``~/.cache/torch``): it never fails where no home folder can be found (a container
    run as a user id with no account and no HOME), where ``Path.home()`` did: eval measured everything, then ended
    in a traceback with no report, TORCH_HOME set or not."""
    import torch

    return str(Path(torch.hub.get_dir()).parent)


def perceptual_status() -> dict:
    """FID and LPIPS need ImageNet-trained networks (Inception, AlexNet) whose weights are not shipped and are
    never downloaded here: each is reported with the reason it is unavailable unless its weights are cached
    locally (``$TORCH_HOME/hub/checkpoints``)."""
    import importlib.util

    home = Path(_torch_home()) / "hub" / "checkpoints"
    out = {}
    need = {
        "lpips": ("lpips", "alexnet-owt-7be5be79.pth", "the lpips package, torchvision and AlexNet ImageNet weights"),
        "fid": ("torch_fidelity", "weights-inception-2015-12-05-6726825d.pth",
                "torch-fidelity and its Inception weights"),
    }
    for name, (pkg, weights, what) in need.items():
        missing = [p for p in (pkg, "torchvision") if importlib.util.find_spec(p) is None]
        if missing:
            out[name] = {"status": f"unavailable: needs {what}; not installed: {', '.join(missing)}"}
        elif not (home / weights).is_file():
            out[name] = {"status": f"unavailable: weights {weights} not found in {home} (never downloaded at run time)"}
        else:
            out[name] = {"status": "weights present but not computed by this version"}
    return out
