"""Steady mouths (``face.steady``, ``streaming.steady_batches``): each generated face blended with its neighbours
in time, the neighbours first moved into the frame's own crop."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from hyperlips.face.steady import blend_neighbours, check_weight, into_region, is_near
from hyperlips.generator_io import face_crop
from hyperlips.streaming import FrameJob, steady_batches


def textured_frame(h=360, w=480, seed=0) -> np.ndarray:
    """A smooth random texture (bilinear resampling of it is nearly exact)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 12, w // 12, 3), dtype=np.uint8)
    return cv2.GaussianBlur(cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC), (0, 0), 2.0)


def test_a_neighbours_face_is_moved_into_the_frames_crop():
    frame = textured_frame()
    here, there = (150, 90, 310, 250), (156, 86, 320, 250)  # 6 px right, 4 px up, 4 px larger
    own, other = face_crop(frame, here, 128), face_crop(frame, there, 128)
    moved = into_region(other, there, here, 128)
    inner = (slice(8, 120), slice(8, 120))  # away from the repeated edges
    err_moved = np.abs(moved.astype(float) - own)[inner].mean()
    err_raw = np.abs(other.astype(float) - own)[inner].mean()
    assert err_moved < 1.5 and err_raw > 5 * err_moved, (err_moved, err_raw)
    # a face of another size (an HR decoder's 256 px) is moved the same way
    big = into_region(face_crop(frame, there, 256), there, here, 128)
    assert np.abs(big.astype(float) - own)[inner].mean() < 2.0
    np.testing.assert_array_equal(into_region(own, here, here, 128), own)


def test_weights_missing_neighbours_and_cuts():
    region = (100, 100, 228, 228)
    a, b, c = (np.full((128, 128, 3), v, np.uint8) for v in (40, 100, 200))
    got = blend_neighbours(b, region, (a, region), (c, region), 0.25)
    assert got.dtype == np.uint8 and np.all(got == round(0.25 * 40 + 0.5 * 100 + 0.25 * 200))
    third = blend_neighbours(b, region, (a, region), (c, region), 1 / 3)
    assert np.all(third == round((40 + 100 + 200) / 3))
    # a missing neighbour gives its weight to the frame itself
    assert np.all(blend_neighbours(b, region, None, (c, region), 0.25) == round(0.75 * 100 + 0.25 * 200))
    assert blend_neighbours(b, region, None, None, 0.25).tolist() == b.tolist()
    # a neighbour whose crop is far away (a cut, a jump of the track) is not blended
    far = (300, 100, 428, 228)
    assert not is_near(far, region) and is_near((105, 98, 232, 229), region)
    assert np.all(blend_neighbours(b, region, (a, far), (c, region), 0.25) == round(0.75 * 100 + 0.25 * 200))
    assert blend_neighbours(b, region, (a, region), (c, region), 0.0) is b


@pytest.mark.parametrize("bad", [-0.01, 0.34, 0.5, float("nan")])
def test_weights_outside_zero_to_a_third_are_refused(bad):
    with pytest.raises(ValueError, match="between 0 and 1/3"):
        check_weight(bad)
    assert check_weight(1 / 3) == pytest.approx(1 / 3) and check_weight(0) == 0.0


def _jobs(values, faceless=()):
    image = np.zeros((400, 400, 3), np.uint8)
    jobs = []
    for j, v in enumerate(values):
        box = None if j in faceless else (100.0, 100.0, 228.0, 228.0)
        face = None if box is None else np.full((128, 128, 3), v, np.uint8)
        jobs.append(FrameJob(j=j, s=j, image=image, box=box, face=face))
    return jobs


def test_each_face_is_blended_with_its_neighbours_as_rendered_across_batches():
    rng = np.random.default_rng(3)
    values = rng.integers(0, 256, 11)
    jobs = _jobs(values, faceless={6})
    batches = [jobs[0:4], jobs[4:8], jobs[8:11]]
    seen = [[job.j for job in b] for b in steady_batches(iter(batches), 0.25)]
    assert sum(seen, []) == list(range(11))  # every job once, in order
    assert seen[0] == [0, 1, 2]  # a job waits for the next one's face: one job later than it came
    v = values.astype(float)
    for j, job in enumerate(jobs):
        if j == 6:
            assert job.face is None
            continue
        before = v[j - 1] if j > 0 and j - 1 != 6 else v[j]  # missing: the frame's own face instead
        after = v[j + 1] if j < 10 and j + 1 != 6 else v[j]
        want = round(0.25 * before + 0.5 * v[j] + 0.25 * after)
        assert abs(int(job.face[0, 0, 0]) - want) <= 1, (j, job.face[0, 0, 0], want)


def test_weight_zero_passes_the_batches_through():
    jobs = _jobs([10, 20, 30])
    batches = [jobs[:2], jobs[2:]]
    out = list(steady_batches(iter(batches), 0.0))
    assert out == batches and [int(j.face[0, 0, 0]) for j in jobs] == [10, 20, 30]


def test_steadier_lips_on_a_real_clip(real_data, tmp_path):
    """The shipped starter on the first 3 s of an official test video with its test speech: the lips' jitter
    (eval's second difference of the lip points, over the face's size) falls with the blend (measured on the four test pairs: 1.05-1.20
    of the real video's without it, 0.85-0.96 with it)."""
    import soundfile as sf

    from hyperlips.eval.protocols import evaluate_pair
    from hyperlips.media.audio import load_audio
    from hyperlips.pipeline import LipSync

    video = real_data / "hyperlips" / "video4.mp4"
    speech = tmp_path / "speech.wav"
    sf.write(str(speech), load_audio(real_data / "hyperlips" / "audio4.wav", 16000)[: 3 * 16000], 16000)
    jitter = {}
    for w in (0.0, 0.25):
        out = tmp_path / f"w{w}.mp4"
        LipSync(progress=False, temporal_blend=w).sync(video, speech, out)
        res = evaluate_pair(out, None, speech, expert_model=None, perceptual=False)
        jitter[w] = res.metrics["jitter_gen"]
    assert jitter[0.25] < 0.93 * jitter[0.0], jitter
