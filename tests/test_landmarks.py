"""FaceMesh landmarks on real crops, the sketch edge set, sketches, lip masks and landmark smoothing."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from hyperlips.face.detect import FaceDetector, import_mediapipe
from hyperlips.face.landmarks import (
    LIP_RING,
    N_LANDMARKS,
    FaceMesh,
    draw_sketch,
    lip_box,
    lip_mask,
    roi_edges,
    smooth_landmarks,
)
from hyperlips.face.track import crop_box, pixel_region
from helpers import frames_at as read_frames




@pytest.fixture(scope="module")
def astronaut_crop():
    """The astronaut's face crop (BGR) cut with the detector and the default crop geometry."""
    skimage_data = pytest.importorskip("skimage.data")
    img = cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR)
    with FaceDetector() as d:
        b = d.detect(img)[0]
    x1, y1, x2, y2 = pixel_region(crop_box(b, 512, 512, pad=(0.4, 0.2, 0.2, 0.2)), 512, 512)
    return np.ascontiguousarray(img[y1:y2, x1:x2])


@pytest.fixture(scope="module")
def astronaut_landmarks(astronaut_crop):
    with FaceMesh(static=True) as m:
        lm = m.landmarks(astronaut_crop)
    assert lm is not None
    return lm


def test_the_first_face_leaves_stderr_clean_in_a_library_caller(astronaut_crop, tmp_path):
    """A program using the library (no CLI silencing stderr) got MediaPipe's "W0000 ... Using NORM_RECT without
    IMAGE_DIMENSIONS ..." line, meant for graph authors, with the first face each FaceMesh found."""
    import subprocess
    import sys

    np.save(tmp_path / "crop.npy", astronaut_crop)
    code = ("import numpy as np, sys\n"
            "from hyperlips.face.landmarks import FaceMesh\n"
            f"crop = np.load({str(tmp_path / 'crop.npy')!r})\n"
            "for static in (False, True):\n"
            "    with FaceMesh(static=static) as m:\n"
            "        assert m.landmarks(np.zeros_like(crop)) is None\n"
            "        assert all(m.landmarks(crop) is not None for _ in range(3))\n"
            "print('ok', file=sys.stderr)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stderr.strip() == "ok", res.stderr  # ours still gets through; MediaPipe's is gone


# ---------------------------------------------------------------- edge set


def test_roi_edge_set_counts():
    e = roi_edges()
    assert e.shape == (125, 2)
    assert len(np.unique(e)) == 131
    assert len({tuple(sorted(x)) for x in e.tolist()}) == 125  # no edge twice
    assert 10 not in e and 151 not in e  # forehead arc and irises (468..477) are not drawn
    assert e.max() < 468


def test_truncated_oval_runs_from_389_round_the_chin_to_162():
    fm = import_mediapipe().solutions.face_mesh
    n_fixed = len(fm.FACEMESH_LIPS) + 2 * len(fm.FACEMESH_LEFT_EYE) + 2 * len(fm.FACEMESH_LEFT_EYEBROW)
    oval = roi_edges()[n_fixed : n_fixed + 24]
    assert oval[0, 0] == 389 and oval[-1, 1] == 162
    assert np.all(oval[1:, 0] == oval[:-1, 1])  # a connected path
    assert 152 in oval  # through the chin
    ovalset = {tuple(sorted(x)) for x in fm.FACEMESH_FACE_OVAL}
    assert all(tuple(sorted(x)) in ovalset for x in oval.tolist())
    nose = roi_edges()[n_fixed + 24 :]
    assert nose.tolist()[:5] == [[168, 6], [6, 197], [197, 195], [195, 5], [5, 4]] and len(nose) == 13


# ---------------------------------------------------------------- FaceMesh


def test_mesh_on_astronaut(astronaut_crop, astronaut_landmarks):
    lm = astronaut_landmarks
    h, w = astronaut_crop.shape[:2]
    assert lm.shape == (N_LANDMARKS, 3) and lm.dtype == np.float32
    assert np.all((lm[:, 0] > 0) & (lm[:, 0] < w) & (lm[:, 1] > 0) & (lm[:, 1] < h))
    # anatomy: brows above eyes above nose tip above lips above chin; her right eye (33) left of her left eye (263)
    assert lm[105, 1] < lm[33, 1] < lm[1, 1] < lm[13, 1] < lm[14, 1] < lm[152, 1]
    assert lm[33, 0] < lm[263, 0]


def test_mesh_gets_rgb(astronaut_crop, astronaut_landmarks):
    """Same points as mediapipe given the RGB crop directly (the original passed BGR, §9.13d)."""
    fm = import_mediapipe().solutions.face_mesh
    with fm.FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=True) as m:
        res = m.process(cv2.cvtColor(astronaut_crop, cv2.COLOR_BGR2RGB)).multi_face_landmarks[0].landmark
    h, w = astronaut_crop.shape[:2]
    ref = np.array([(p.x * w, p.y * h) for p in res])
    np.testing.assert_allclose(astronaut_landmarks[:, :2], ref, atol=1e-3)


def test_mesh_none_without_face_and_bad_input():
    with FaceMesh(static=True) as m:
        assert m.landmarks(np.full((200, 200, 3), 127, np.uint8)) is None
        with pytest.raises(ValueError):
            m.landmarks(np.zeros((200, 200), np.uint8))
    with pytest.raises(RuntimeError):
        m.landmarks(np.zeros((200, 200, 3), np.uint8))


def test_mesh_tracks_real_720p_crops(real_data):
    frames = read_frames(real_data / "hyperlips" / "video3.mp4", list(range(0, 20)))
    with FaceDetector() as d:
        b = d.detect(frames[0])[0]
    x1, y1, x2, y2 = pixel_region(crop_box(b, 1280, 720), 1280, 720)
    with FaceMesh(static=False) as m:
        lms = [m.landmarks(f[y1:y2, x1:x2]) for f in frames]
    assert all(lm is not None for lm in lms)
    chin = np.array([lm[152, :2] for lm in lms])
    assert np.abs(np.diff(chin, axis=0)).max() < 15  # tracking: no jumps between consecutive frames


# ---------------------------------------------------------------- sketch


def test_inference_sketch(astronaut_landmarks, astronaut_crop):
    h, w = astronaut_crop.shape[:2]
    sk = draw_sketch(astronaut_landmarks, (h, w), 256)
    assert sk.shape == (256, 256) and sk.dtype == np.uint8
    assert sk.max() == 255 and 0.05 < (sk > 0).mean() < 0.5
    # a lip edge's midpoint is on a line; the middle of the forehead (no edge there) is black
    a, b = roi_edges()[0]
    mid = (astronaut_landmarks[a, :2] + astronaut_landmarks[b, :2]) / 2 * np.array([256 / w, 256 / h])
    assert sk[int(mid[1]), int(mid[0])] == 255
    fx, fy = astronaut_landmarks[10, :2] * np.array([256 / w, 256 / h])
    assert sk[int(fy) + 8, int(fx)] == 0
    # drawn at 128 then resized: at 128 it is binary, at 256 the resize leaves grey edges
    assert set(np.unique(draw_sketch(astronaut_landmarks, (h, w), 128)).tolist()) <= {0, 255}
    assert len(np.unique(sk)) > 2
    rgb = draw_sketch(astronaut_landmarks, (h, w), 256, channels=3)
    assert rgb.shape == (256, 256, 3) and np.array_equal(rgb[:, :, 1], sk)


def test_training_sketch_is_binary_and_blur_widens_it(astronaut_landmarks, astronaut_crop):
    h, w = astronaut_crop.shape[:2]
    k = 4  # as if the crop were 4x larger (~600 px): 6 px lines there are ~1.3 px at 128 before the blur
    tr = draw_sketch(astronaut_landmarks * k, (h * k, w * k), 128, style="training")
    inf = draw_sketch(astronaut_landmarks * k, (h * k, w * k), 128)
    assert tr.shape == inf.shape == (128, 128)
    assert set(np.unique(tr).tolist()) == {0, 255}
    thin = draw_sketch(astronaut_landmarks * k, (h * k, w * k), 128, style="training", blur_ksize=1)
    assert (thin > 0).mean() < 0.7 * (tr > 0).mean()  # blur + "> 0" threshold widens every line
    assert np.all(tr[thin > 0] == 255)
    assert (cv2.bitwise_and(tr, inf) > 0).sum() > 0.5 * (tr > 0).sum()  # same lines


def test_sketch_drops_edges_leaving_the_image(astronaut_landmarks):
    lm = astronaut_landmarks.copy()
    full = draw_sketch(lm, 300, 128)
    lm[152, 0] = -5.0  # the chin point outside: its two oval edges go
    assert (draw_sketch(lm, 300, 128) > 0).sum() < (full > 0).sum()


def test_sketch_bad_arguments(astronaut_landmarks):
    with pytest.raises(ValueError):
        draw_sketch(astronaut_landmarks, 128, style="fancy")
    with pytest.raises(ValueError):
        draw_sketch(astronaut_landmarks[:100], 128)
    with pytest.raises(ValueError):
        draw_sketch(astronaut_landmarks, 128, channels=2)


# ---------------------------------------------------------------- lip mask and box


def test_lip_mask_covers_the_mouth_only(astronaut_landmarks, astronaut_crop):
    h, w = astronaut_crop.shape[:2]
    m = lip_mask(astronaut_landmarks, (h, w))
    assert m.shape == (h, w) and set(np.unique(m).tolist()) == {0, 255}
    mouth = ((astronaut_landmarks[13, :2] + astronaut_landmarks[14, :2]) / 2).astype(int)
    assert m[mouth[1], mouth[0]] == 255
    for i in (33, 263, 1, 152):  # eyes, nose tip, chin tip are outside
        x, y = astronaut_landmarks[i, :2].astype(int)
        assert m[y, x] == 0, i
    x1, y1, x2, y2 = lip_box(m)
    ring = astronaut_landmarks[list(LIP_RING), :2]
    assert x1 == int(np.floor(ring[:, 0].min())) and x2 == int(np.floor(ring[:, 0].max())) + 1
    assert y1 == int(np.floor(ring[:, 1].min())) and y2 == int(np.floor(ring[:, 1].max())) + 1


def test_lip_box_ends_are_exclusive_and_jpeg_safe():
    m = np.zeros((20, 30), np.uint8)
    m[3:6, 2:8] = 255
    assert lip_box(m) == (2, 3, 8, 6)
    assert np.all(m[3:6, 2:8] == 255)  # slicing with the box gives exactly the mask's pixels
    assert lip_box(np.zeros((5, 5), np.uint8)) is None
    big = np.zeros((128, 128), np.uint8)
    big[60:90, 40:100] = 255
    ok, buf = cv2.imencode(".jpg", big, [cv2.IMWRITE_JPEG_QUALITY, 75])
    jpg = cv2.imdecode(buf, cv2.IMREAD_COLOR)  # lossy, 3 channels: few pixels stay exactly 255
    assert lip_box(jpg) == (40, 60, 100, 90)


# ---------------------------------------------------------------- smoothing


def test_smooth_landmarks_centred_and_not_recursive():
    t = np.arange(9, dtype=np.float64)
    seq = [np.stack([t[i] * np.ones(3), 2 * t[i] * np.ones(3)]) for i in range(9)]  # (2, 3) per frame, linear
    out = smooth_landmarks(seq, 5)
    for a, b in zip(seq, out):
        np.testing.assert_allclose(a, b, atol=1e-5)  # linear motion unchanged, ends included
    spike = [np.zeros((1, 2)) for _ in range(9)]
    spike[4] = np.full((1, 2), 5.0)
    out = smooth_landmarks(spike, 5)
    np.testing.assert_allclose([o[0, 0] for o in out], [0, 0, 1, 1, 1, 1, 1, 0, 0])  # mean of the *input*
    assert spike[4][0, 0] == 5.0  # input untouched


def test_smooth_landmarks_gaps_and_noise():
    rng = np.random.default_rng(0)
    truth = [np.full((478, 3), 100.0) for _ in range(30)]
    noisy = [x + rng.normal(0, 2, x.shape) for x in truth]
    noisy[10] = None
    out = smooth_landmarks(noisy, 5)
    assert out[10] is None
    err_in = np.mean([np.abs(n - t).mean() for n, t in zip(noisy, truth) if n is not None])
    err_out = np.mean([np.abs(o - t).mean() for o, t in zip(out, truth) if o is not None])
    assert err_out < 0.7 * err_in
    np.testing.assert_allclose(out[9], noisy[9])  # last frame before the gap: window shrinks to itself
    with pytest.raises(ValueError):
        smooth_landmarks(noisy, 4)
