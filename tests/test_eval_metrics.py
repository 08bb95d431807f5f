"""Evaluation metrics on constructed cases and on real clips: self-comparison, tinted copy, shaken copy, shifted audio."""

from __future__ import annotations

import json
import math
import warnings

import cv2
import numpy as np
import pytest
import torch

from hyperlips.eval import metrics as M
from hyperlips.eval.protocols import evaluate_pair

torch.set_num_threads(1)
UNSEEN_GRID_S1 = 60  # a GRID s1 clip (by name order) the trained expert neither trained nor validated on
TINT = (0.0, 5.0, -3.0)  # Lab shift given to the tinted copies: delta E = sqrt(34) = 5.83


def _tint(img: np.ndarray, shift=TINT) -> np.ndarray:
    from skimage.color import lab2rgb

    lab = M.bgr_to_lab(img) + np.asarray(shift)
    rgb = lab2rgb(lab)
    return np.clip(np.rint(rgb[..., ::-1] * 255), 0, 255).astype(np.uint8)


def _face_image() -> np.ndarray:
    from hyperlips.demo import demo_face

    return demo_face()


# --------------------------------------------------------------------------------------------- geometry
def test_landmark_sets_match_mediapipe():
    import mediapipe as mp

    fm = mp.solutions.face_mesh
    assert set(M.LIP_POINTS) == {i for e in fm.FACEMESH_LIPS for i in e}
    assert set(M.FACE_OVAL_POINTS) == {i for e in fm.FACEMESH_FACE_OVAL for i in e}


def test_eval_crop_places_the_box_in_the_face_region():
    frame = np.zeros((500, 700, 3), np.uint8)
    frame[100:300, 200:400] = 200  # the track crop box
    crop = M.eval_crop(frame, (200, 100, 400, 300))
    assert crop.shape == (384, 384, 3)
    assert crop[M.FACE_SLICE, M.FACE_SLICE][2:-2, 2:-2].min() == 200
    assert crop[:60].max() == 0 and crop[:, 330:].max() == 0
    # a box at the frame corner: what lies outside the frame is black, not stretched
    crop = M.eval_crop(np.full((100, 100, 3), 255, np.uint8), (0, 0, 60, 60))
    assert crop[:40, :40].max() == 0 and crop[200, 200, 0] == 255


def test_mouth_box_and_skin_mask_follow_landmarks():
    lm = np.zeros((478, 3))
    lm[list(M.LIP_POINTS), :2] = [200.0, 250.0]
    lm[61, :2], lm[291, :2] = (170, 250), (230, 250)  # mouth 60 px wide
    x1, y1, x2, y2 = M.mouth_box(lm)
    assert (x2 - x1, y2 - y1) == (96, 60) and abs((x1 + x2) / 2 - 199) < 2
    assert M.mouth_box(None) != (x1, y1, x2, y2)  # the fixed fallback box
    oval = np.array([[192 + 120 * math.cos(a), 192 + 150 * math.sin(a)] for a in np.linspace(0, 2 * np.pi, 36, endpoint=False)])
    lm[list(M.FACE_OVAL_POINTS), :2] = oval
    mask = M.skin_mask(lm, (x1, y1, x2, y2))
    assert mask[192, 192] and not mask[250, 200] and not mask[5, 5]


# --------------------------------------------------------------------------------------------- measures
def test_identical_images_score_perfectly():
    img = _face_image()[:384, :384]
    assert M.psnr(img, img) == M.PSNR_CAP
    assert M.ssim(img, img) == pytest.approx(1.0)
    lab = M.bgr_to_lab(img)
    mask = np.ones(img.shape[:2], bool)
    assert M.delta_e(lab, lab, mask) == (0.0, 0.0)
    noisy = np.clip(img.astype(int) + np.random.default_rng(0).integers(-10, 11, img.shape), 0, 255).astype(np.uint8)
    assert 25 < M.psnr(img, noisy) < 35 and M.ssim(img, noisy) < 0.95


def test_tinted_copy_shows_its_colour_shift():
    img = _face_image()[50:434, 64:448]
    tinted = _tint(img)
    mask = np.ones(img.shape[:2], bool)
    de_mean, de_pix = M.delta_e(M.bgr_to_lab(tinted), M.bgr_to_lab(img), mask)
    assert de_mean == pytest.approx(math.sqrt(34), abs=0.35)
    assert de_pix == pytest.approx(math.sqrt(34), abs=0.6)


def test_srgb_to_lab_reference_values():
    lab = M.bgr_to_lab(np.array([[[255, 255, 255], [0, 0, 255], [0, 0, 0]]], np.uint8))  # white, red (BGR), black
    np.testing.assert_allclose(lab[0, 0], [100, 0, 0], atol=0.01)
    np.testing.assert_allclose(lab[0, 1], [53.24, 80.09, 67.20], atol=0.05)
    np.testing.assert_allclose(lab[0, 2], [0, 0, 0], atol=0.01)


def test_jitter_separates_shake_from_smooth_motion():
    t = np.arange(40)
    base = np.stack([np.stack([100 + 2 * t + i, 200 + 0.5 * t], 1) for i in range(40)], 1).astype(float)  # (T,40,2)
    scale = np.full(40, 100.0)
    smooth = M.second_difference(base, scale)
    shake = base + np.random.default_rng(0).integers(-3, 4, (40, 1, 2))
    shaky = M.second_difference(shake, scale)
    assert np.isnan(smooth[0]) and np.isnan(smooth[-1])
    assert np.nanmax(smooth) < 1e-9 and np.nanmean(shaky) > 0.03


def test_frame_comparison_lmd_and_ratios():
    img = _face_image()[:384, :384]
    lm = np.zeros((478, 3))
    rng = np.random.default_rng(0)
    lm[:, :2] = rng.uniform(100, 300, (478, 2))
    lm[33, :2], lm[263, :2] = (120, 150), (270, 150)  # inter-ocular distance 150
    comp = M.FrameComparison()
    for k in range(5):
        moved = lm.copy()
        moved[list(M.LIP_POINTS), 0] += 3.0  # generated lips 3 px right of the reference's
        comp.add(img, img, moved, lm, k / 25)
    s = comp.summary()
    assert s["lmd"] == pytest.approx(3.0 / 150)
    assert s["psnr_face"] == M.PSNR_CAP and s["delta_e"] == 0.0
    assert s["flicker_ratio"] == 1.0 and s["sharpness_ratio"] == 1.0 and s["jitter_ratio"] == 1.0
    with pytest.raises(ValueError):
        comp.add(img, img[:100], None, None, 1.0)


def test_a_vertical_move_counts_as_much_as_a_sideways_one():
    """The evaluation crop squares the track box (about 1.33 times taller than wide), so landmark distances taken in
    its pixels counted a vertical move of the lips 25% short: LMD 0.0341 for a 4 px drop against 0.0447 sideways."""
    img = _face_image()[:384, :384]
    lm = np.zeros((478, 3))
    lm[:, :2] = np.random.default_rng(1).uniform(100, 300, (478, 2))
    lm[33, :2], lm[263, :2] = (120, 150), (270, 150)  # inter-ocular distance 150 crop pixels across
    aspect = 4 / 3  # the box is 4/3 as tall as wide: a crop row spans 4/3 of a crop column's frame pixels
    lmd = {}
    for axis, step in ((0, 4.0), (1, 3.0)):  # 4 crop px sideways and 3 crop px down: the same 4 units in the frame
        comp = M.FrameComparison()
        moved = lm.copy()
        moved[list(M.LIP_POINTS), axis] += step
        comp.add(img, img, moved, lm, 0.0, aspect)
        lmd[axis] = comp.summary()["lmd"]
    assert lmd[0] == pytest.approx(4.0 / 150) and lmd[1] == pytest.approx(lmd[0])


def test_the_lag_of_a_series_without_a_correlation_is_none_not_zero():
    """A clip with no mouth (all NaN openings) reported a peak lag of 0, counted "within 1 frame" in the summary; a
    constant series slipped past the constant check (float rounding) to an r of -3e-18 at an arbitrary lag."""
    from hyperlips.eval.report import aggregate

    wave = np.sin(np.arange(100) / 3.0)
    assert M.lagged_correlation(np.full(100, np.nan), wave)[1] is None
    r0, lag, peak = M.lagged_correlation(np.full(100, 0.05), wave)
    assert lag is None and math.isnan(r0) and math.isnan(peak)
    assert M.lagged_correlation(np.roll(wave, 2), wave)[1] == 2
    share = aggregate([{"opening_lag": None, "opening_r": None}, {"opening_lag": 6, "opening_r": 0.4},
                       {"opening_lag": 0, "opening_r": 0.7}])["opening_lag_within_1_share"]
    assert share == 0.5


def test_the_lag_search_never_pairs_frames_across_segments():
    """A tail of several clips is scored as one series; a lag paired the end of one clip with the start of the next."""
    rng = np.random.default_rng(3)
    parts = [rng.normal(size=40) for _ in range(3)]
    ref = np.concatenate(parts)
    gen = np.concatenate([np.r_[p[2:], rng.normal(size=2)] for p in parts])  # each part 2 frames early, its own end
    assert M.correlation_at_lag(gen, ref, -2, segments=[40, 40, 40]) == pytest.approx(1.0)
    assert M.correlation_at_lag(gen, ref, -2) < 0.999  # pooled as one, the lag pairs across the ends
    assert M.lagged_correlation(gen, ref, segments=[40, 40, 40])[1] == -2
    with pytest.raises(ValueError):
        M.correlation_at_lag(gen, ref, 0, segments=[40, 40])


def test_audio_loudness():
    t = np.arange(16000) / 16000
    wav = np.concatenate([np.zeros(8000), np.sin(2 * np.pi * 440 * t[:8000])]).astype(np.float32)
    db = M.audio_loudness_db(wav, np.array([0.1, 0.8]), 25.0)
    assert db[0] == -100.0 and db[1] == pytest.approx(-3.01, abs=0.1)
    assert np.isnan(M.pearson(np.ones(5), np.arange(5.0)))
    assert M.pearson(np.arange(5.0), 2 * np.arange(5.0)) == pytest.approx(1.0)


# --------------------------------------------------------------------------------------------- real clips
def _write(path, frames, fps, audio=None):
    from hyperlips.media.writer import VideoWriter

    h, w = frames[0].shape[:2]
    with VideoWriter(path, w, h, fps, audio=audio, sample_rate=16000) as vw:
        for f in frames:
            vw.write(f)
    return path


def _frames(path, n):
    from hyperlips.media.video import FrameReader

    with FrameReader(path) as r:
        return [fr.image for fr in r.iter_range(0, n)]


def test_real_video_against_itself_is_perfect(real_data):
    clip = real_data / "hyperlips" / "video2.mp4"
    r = evaluate_pair(clip, clip, max_seconds=1.2, perceptual=False)
    m = r.metrics
    assert r.protocol == "self-reconstruction" and r.frames == 30
    assert m["frames_with_reference_landmarks"] >= 28
    assert m["psnr_face"] == M.PSNR_CAP and m["psnr_mouth"] == M.PSNR_CAP
    assert m["ssim_face"] == pytest.approx(1.0) and m["ssim_mouth"] == pytest.approx(1.0)
    assert m["delta_e"] == 0.0 and m["delta_e_pixel"] == 0.0 and m["lmd"] == 0.0
    assert m["jitter_ratio"] == 1.0 and m["flicker_ratio"] == 1.0 and m["sharpness_ratio"] == 1.0
    assert m["jitter_gen"] > 0 and m["flicker_gen"] > 0  # a real clip moves: the ratios compare real numbers
    assert r.sync["lse"]["status"].startswith("unavailable")
    assert any(w.startswith("only 30 frames (1.20 s) of ") for w in r.warnings), r.warnings  # too few to compare
    assert not any("frames (" in w for w in evaluate_pair(clip, clip, max_seconds=2.0, perceptual=False).warnings)


def test_a_result_without_a_mouth_keeps_the_references_sync_score(real_data, tmp_path):
    """Both sync scores were taken in one try: a generated video without a face lost the reference's score too, and
    opening_r_recording then said the reference had none ("--expert off, or too short")."""
    from hyperlips.eval.sync_score import SyncResult
    from hyperlips.media.audio import load_audio
    from hyperlips.models import shipped

    if shipped.judge() is None:
        pytest.skip("needs the shipped sync judge")
    ref = real_data / "retalking" / "face2.mp4"
    grey = [np.full((844, 844, 3), 128, np.uint8)] * 75  # face2 is 844 x 844
    gen = _write(tmp_path / "grey.mp4", grey, 25, audio=load_audio(ref, 16000)[:48000])
    r = evaluate_pair(gen, ref, max_seconds=3.0, perceptual=False, expert=shipped.judge().path)
    entry = r.sync["expert"]
    assert entry["status"].startswith("unavailable") and isinstance(entry.get("reference"), SyncResult), entry
    assert r.metrics.get("opening_lag") is None  # no mouth: no lag (it said 0, "in sync")


@pytest.fixture(scope="module")
def face_clip(real_data, tmp_path_factory):
    """One second of a real close-up, re-encoded, with copies: tinted in Lab, and shaken by random translations."""
    src = real_data / "retalking" / "face3.mp4"
    folder = tmp_path_factory.mktemp("metric_clips")
    frames = _frames(src, 25)
    rng = np.random.default_rng(0)
    shaken = []
    for f in frames:
        dx, dy = rng.integers(-6, 7, 2)
        m = np.array([[1, 0, dx], [0, 1, dy]], np.float64)
        shaken.append(cv2.warpAffine(f, m, (f.shape[1], f.shape[0]), borderMode=cv2.BORDER_REPLICATE))
    return {
        "plain": _write(folder / "plain.mp4", frames, 25),
        "tinted": _write(folder / "tinted.mp4", [_tint(f) for f in frames], 25),
        "shaken": _write(folder / "shaken.mp4", shaken, 25),
    }


def test_tinted_copy_of_real_clip(face_clip):
    r = evaluate_pair(face_clip["tinted"], face_clip["plain"], protocol="self", perceptual=False)
    m = r.metrics
    assert m["delta_e"] == pytest.approx(5.8, abs=0.1)  # sqrt(34) = 5.83 before H.264; docs/evaluation.md: 5.8
    assert m["lmd"] < 0.02  # same face, same mouth
    assert 0.7 < m["jitter_ratio"] < 1.4


def test_a_missing_sound_track_is_said_and_kept_in_the_report(real_data, face_clip, tmp_path):
    """Which speech a pair is scored against, and whether it is a self-reconstruction, was guessed without a word
    when one of the videos has no sound: a silent result was scored against the reference's speech, and a silent
    reference made auto call any result cross-audio, "no ground truth for the mouth"."""
    from hyperlips.eval.report import write_clip_report
    from hyperlips.media.audio import load_audio

    speech = load_audio(real_data / "retalking" / "face3.mp4", 16000)[:16000]
    voiced = _write(tmp_path / "voiced.mp4", _frames(face_clip["plain"], 25), 25, audio=speech)
    silent = face_clip["plain"]  # the same frames, no sound track

    with pytest.warns(UserWarning, match="has no sound track: scored against .*voiced.mp4's own speech"):
        r = evaluate_pair(silent, voiced, perceptual=False)
    said = [w for w in r.warnings if "sound" in w]  # (and that 1 s is too short to compare)
    assert r.protocol == "self-reconstruction" and len(said) == 1 and "plain.mp4 has no sound" in said[0]
    paths = write_clip_report(r, tmp_path / "report")
    assert "## Warnings" in paths["markdown"].read_text() and said[0] in paths["markdown"].read_text()
    assert json.loads(paths["json"].read_text())["warnings"] == r.warnings

    with pytest.warns(UserWarning, match="plain.mp4 has no sound track, so whether .* cannot be told"):
        r = evaluate_pair(voiced, silent, perceptual=False)
    assert r.protocol == "cross-audio" and r.metrics["lmd"] is None and "no sound track" in r.notes["lmd"]
    with warnings.catch_warnings():  # told, or both with their sound: nothing to warn of
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", r"only 25 frames")
        r = evaluate_pair(voiced, silent, protocol="self", perceptual=False)
        assert r.protocol == "self-reconstruction" and r.metrics["lmd"] < 0.02
        assert evaluate_pair(voiced, voiced, perceptual=False).protocol == "self-reconstruction"


def test_another_face_in_view_is_said_and_choosing_one_quiets_it(real_data, face_clip, tmp_path):
    """The largest face was measured without a word where two people are in view (sync says it the same way)."""
    size = (256, 256)
    left = [cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in _frames(face_clip["plain"], 25)]
    right = [cv2.resize(f, size, interpolation=cv2.INTER_AREA)
             for f in _frames(real_data / "retalking" / "face2.mp4", 25)]
    two = _write(tmp_path / "two.mp4", [np.concatenate([a, b], axis=1) for a, b in zip(left, right)], 25)
    with pytest.warns(UserWarning, match=r"two.mp4: 25 of its 25 frames with a face show more than one; the largest "
                                         r"at the start is measured \(--face N"):
        evaluate_pair(two, two, perceptual=False)
    r = evaluate_pair(two, two, perceptual=False, face_index=1)
    assert not any("more than one" in w for w in r.warnings) and r.metrics["lmd"] == 0.0


def test_shaken_copy_of_real_clip(face_clip):
    shaken = evaluate_pair(face_clip["shaken"], face_clip["plain"], protocol="self", perceptual=False).metrics
    # docs/evaluation.md: a jitter ratio of about 4.3 and a flicker ratio of about 2.5 (measured 4.35 and 2.50)
    assert 3.5 < shaken["jitter_ratio"] < 5.2
    assert 2.2 < shaken["flicker_ratio"] < 2.8
    assert shaken["delta_e"] < 1.0  # moved, not recoloured


def _pattern_video(folder, delay):
    """A still face whose brightness blinks in a random pattern, with tone bursts that follow the pattern
    ``delay`` frames late. Returns (video, wav path)."""
    import soundfile as sf

    from hyperlips.demo import demo_face

    rng = np.random.default_rng(3)
    n = 60
    pattern = rng.integers(0, 2, n)
    face = cv2.resize(demo_face(), (320, 320), interpolation=cv2.INTER_AREA)
    frames = []
    for p in pattern:
        f = np.full((480, 640, 3), 90, np.uint8)
        f[80:400, 160:480] = face
        frames.append(np.clip(f.astype(np.float32) * (1.0 if p else 0.6), 0, 255).astype(np.uint8))
    wav = (rng.standard_normal(n * 640) * 1e-4).astype(np.float32)
    tone = 0.3 * np.sin(2 * np.pi * 300 * np.arange(n * 640) / 16000)
    for j in range(n):
        if 0 <= j - delay < n and pattern[j - delay]:
            wav[j * 640 : (j + 1) * 640] += tone[j * 640 : (j + 1) * 640]
    sf.write(str(folder / "speech.wav"), wav, 16000)
    return _write(folder / "blink.mp4", frames, 25), folder / "speech.wav"


class _ProbeLSE:
    """See-through public SyncNet: bright/dark frames against loud/quiet 25 ms MFCC steps."""

    def __init__(self, thr):
        self.thr = thr

    def forward_lip(self, x):
        b = x.mean(dim=(1, 3, 4))
        return (b > self.thr).float() * 10

    def forward_aud(self, x):
        return (x[:, 0, 0, 0:20:4] > 15).float() * 10


class _ProbeExpert:
    @staticmethod
    def face_encoder(x):
        b = x.view(len(x), 5, 3, 64, 128).mean(dim=(2, 3, 4))
        return b - b.mean(dim=1, keepdim=True)

    @staticmethod
    def audio_encoder(x):
        e = x.amax(dim=(1, 2))[:, [2, 5, 8, 11, 14]]
        return e - e.mean(dim=1, keepdim=True)


def test_shifted_audio_is_found_at_its_offset(tmp_path):
    """The whole chain (decode, face track, protocol crops, MFCC / mel windows, offset search) with see-through
    networks: audio 3 frames late is reported at offset +3 by both scores."""
    video, wav = _pattern_video(tmp_path, delay=3)
    r = evaluate_pair(video, None, wav, syncnet_model=_ProbeLSE(thr=95.0), expert_model=_ProbeExpert(), perceptual=False)
    assert r.protocol == "no reference"
    assert r.sync["lse"]["generated"].offset == 3
    assert r.sync["lse"]["generated"].to_dict()["syncnet_av_offset"] == -3
    assert r.sync["expert"]["generated"].offset == 3
    assert r.metrics["psnr_face"] is None and "reference" in r.notes["psnr_face"]


def test_frames_are_paired_by_timestamp_when_the_rates_differ(real_data, tmp_path):
    """A result at 12.5 fps (every second frame) against its 25 fps original: each result frame is compared with
    the original frame shown at its time (0.08 s apart: 0, 2, 4, ...), not with the frame of the same index. Every
    source frame gets its own brightness, so a frame paired with the wrong one shows."""
    from hyperlips.media.video import FrameReader
    from hyperlips.media.writer import VideoWriter

    with FrameReader(real_data / "retalking" / "face3.mp4") as r:
        frames = [f.image for f in r.iter_range(0, 30)]
    h, w = frames[0].shape[:2]
    frames = [np.clip(f.astype(np.float32) * (0.55 + 0.015 * k), 0, 255).astype(np.uint8) for k, f in enumerate(frames)]
    ref, gen = tmp_path / "original.mp4", tmp_path / "result.mp4"
    with VideoWriter(ref, w, h, 25.0) as a, VideoWriter(gen, w, h, 12.5) as b:
        for k, f in enumerate(frames):
            a.write(f)
            if k % 2 == 0:
                b.write(f)
    r = evaluate_pair(gen, ref, protocol="self", perceptual=False)
    assert r.frames == 15 and r.fps == 12.5
    assert r.metrics["psnr_face"] > 35 and r.metrics["delta_e"] < 1.0
    # paired by index instead, the same frames would be far apart (checked here on the decoded frames)
    from helpers import psnr, read_frames

    dg, dr = read_frames(gen), read_frames(ref)
    assert np.mean([psnr(dg[k], dr[k]) for k in range(1, 15)]) < 30


@pytest.mark.slow  # the session's trained_expert costs about 7 minutes; the default run checks the shipped expert
def test_trained_expert_finds_a_three_frame_delay(trained_expert, more_data, tmp_path):
    """The expert the slow run trains (the session's ``trained_expert``, one speaker: GRID s1) on a GRID s1 clip
    it never saw: the clip with its own speech is reported at offset 0, and with that speech delayed by 3 frames
    (120 ms of silence in front) at +3."""
    import soundfile as sf

    from conftest import GRID_S1_TRAINED
    from hyperlips.eval.sync_score import load_expert
    from hyperlips.media.audio import load_audio

    clip = sorted((more_data / "grid_s1").glob("*.mpg"))[UNSEEN_GRID_S1]
    assert UNSEEN_GRID_S1 >= GRID_S1_TRAINED and clip.name not in trained_expert.clips
    expert = load_expert(trained_expert.model)
    wav = load_audio(clip, 16000)
    delayed = tmp_path / "delayed.wav"
    sf.write(str(delayed), np.concatenate([np.zeros(3 * 640, np.float32), wav]), 16000)
    on_time = evaluate_pair(clip, None, None, expert_model=expert, perceptual=False).sync["expert"]["generated"]
    late = evaluate_pair(clip, None, delayed, expert_model=expert, perceptual=False).sync["expert"]["generated"]
    print("expert offsets", on_time.offset, late.offset, "confidence", round(on_time.confidence, 3))
    # a six-minute expert may place the in-sync peak one frame off; the 3-frame delay must move it by exactly 3
    assert abs(on_time.offset) <= 1 and late.offset - on_time.offset == 3, (on_time.offset, late.offset)


def test_a_reference_with_a_gap_of_missing_frames_is_paired_by_time():
    """A 25 fps reference missing frames 30-44 (its timestamps kept) is no longer read as variable-rate, so its
    re-synced result is 25 fps too: paired by index, every frame after the gap was compared with the reference frame
    0.6 s later (an exact copy scored opening r 0.46)."""
    from hyperlips.eval.pair import _pairing

    ref = np.delete(np.arange(75) / 25, range(30, 45))  # 60 frames, a 0.64 s gap
    gen = np.arange(75) / 25  # the result: every frame time, the gap held on the frame before it
    pair = _pairing(gen, ref, same_rate=True)
    assert pair[:30].tolist() == list(range(30))
    assert pair[30:45].tolist() == [29] * 15  # the frame on screen during the gap
    assert pair[45:].tolist() == list(range(30, 60))
    assert _pairing(gen, gen, same_rate=True).tolist() == list(range(75))  # evenly spaced: by index


def test_perceptual_status_needs_no_home_folder(tmp_path, monkeypatch):
    """A container run as a user id with no account and no HOME: eval measured everything, then ended in a traceback
    looking for torch's cache (TORCH_HOME set or not), and wrote no report. FID and LPIPS are said unavailable."""
    import pathlib

    from hyperlips.eval.pair import perceptual_status

    def no_home():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(pathlib.Path, "home", staticmethod(no_home))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    assert all(v["status"].startswith("unavailable") for v in perceptual_status().values())
    monkeypatch.delenv("TORCH_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert all(v["status"].startswith("unavailable") for v in perceptual_status().values())
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert sorted(perceptual_status()) == ["fid", "lpips"]
    import os

    from hyperlips.eval.pair import _torch_home

    monkeypatch.setenv("TORCH_HOME", "~/models/torch")  # (a service's environment leaves ~ as it is; torch expands it)
    assert _torch_home() == os.path.expanduser("~/models/torch") and not _torch_home().startswith("~")

