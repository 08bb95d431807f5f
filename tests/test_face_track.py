"""Face tracks: choosing a face, following it, bridging gaps, smoothing, crop geometry (synthetic and real)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from hyperlips.errors import NoFaceError
from hyperlips.face.detect import Box, FaceDetector
from hyperlips.face.track import (
    DEFAULT_PAD,
    FaceTrack,
    crop_box,
    fill_gaps,
    pixel_extent,
    pixel_region,
    select_faces,
    smooth_boxes,
    track_faces,
)
from helpers import frames_at as read_frames




def square(cx, cy, s, score=0.9):
    return Box(cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2, score)


# ---------------------------------------------------------------- choosing and following


def test_follows_the_first_largest_face_even_when_the_other_grows():
    # person A (right) starts larger; person B (left) walks towards the camera and becomes larger at frame 5
    dets = []
    for t in range(10):
        a = square(900 + t, 300, 200)
        b = square(300, 300, 150 + 20 * t)
        dets.append([b, a] if t % 2 else [a, b])  # detector order must not matter
    chosen = select_faces(dets)
    assert all(c is not None and c.center[0] > 800 for c in chosen)


def test_the_largest_face_is_the_largest_seen():
    """Boxes now reach past the frame's edge (a face the edge cuts keeps its proportions): an interviewer's head at
    the edge, two thirds of it outside, had a box larger than the speaker's whole face and was followed instead."""
    from hyperlips.face.detect import Box

    speaker = square(640, 360, 240)  # all of it in the 1280 x 720 frame
    shoulder = Box(1180.0, 100.0, 1580.0, 600.0, 0.9)  # 400 x 500, of which 100 x 500 inside (the speaker: 240 x 240)
    assert select_faces([[shoulder, speaker]], frame_size=(1280, 720))[0] is speaker
    assert select_faces([[shoulder, speaker]])[0] is shoulder  # (without the frame's size: by the whole box)
    from hyperlips.face.track_online import OnlineTrack

    track = OnlineTrack(25.0, frame_size=(1280, 720))
    chosen = [b for _ in range(3) for _, b in track.push([shoulder, speaker], None)] + [b for _, b in track.finish()]
    assert chosen and all(b is not None and abs(b.center[0] - 640) < 60 for b in chosen), chosen


def test_face_index_counts_left_to_right():
    dets = [[square(900, 300, 200), square(300, 300, 150), square(600, 300, 120)] for _ in range(4)]
    assert select_faces(dets, face_index=0)[0].center[0] == 300
    assert select_faces(dets, face_index=1)[0].center[0] == 600
    assert select_faces(dets, face_index=2)[3].center[0] == 900
    with pytest.raises(NoFaceError, match=r"clip.mp4.*face_index 3.*no frame shows more than 3 face\(s\): use 0..2"):
        FaceTrack.from_detections(dets, 25, face_index=3, source="clip.mp4")
    # a frame showing fewer faces than asked for does not end the search: a later one may show them (a two-shot
    # after a close-up)
    later = [[square(300, 300, 150)]] * 2 + dets
    assert select_faces(later, face_index=1)[:3] == [None, None, dets[0][2]]


def test_user_box_picks_the_overlapping_face():
    dets = [[], [square(900, 300, 200), square(300, 300, 150)], [square(905, 300, 200), square(300, 300, 150)]]
    chosen = select_faces(dets, box=(200, 200, 420, 420))
    assert chosen[0] is None and chosen[1].center[0] == 300 and chosen[2].center[0] == 300
    with pytest.raises(NoFaceError, match="no face found in v.mp4: no detected face overlaps"):
        FaceTrack.from_detections(dets, 25, box=(0, 600, 50, 700), source="v.mp4")
    with pytest.raises(ValueError):
        select_faces(dets, box=(10, 10, 5, 20))
    with pytest.raises(ValueError):
        select_faces(dets, box=(0, 0, 1, 1), face_index=0)


def test_other_face_is_not_taken_when_the_followed_one_disappears():
    dets = [[square(900, 300, 200), square(300, 300, 150)]] * 5 + [[square(300, 300, 150)]] * 3
    chosen = select_faces(dets)
    assert all(c.center[0] == 900 for c in chosen[:5])
    assert chosen[5:] == [None, None, None]


def test_fast_motion_is_followed_by_centre_distance():
    # 60 px per frame with a 100 px face: IoU drops below 0.3 but it is still the same face
    dets = [[square(200 + 60 * t, 300, 100)] for t in range(6)]
    chosen = select_faces(dets)
    assert all(c is not None for c in chosen)


def test_no_face_anywhere_names_the_video():
    with pytest.raises(NoFaceError, match=r"no face found in talk\.mp4"):
        track_faces([[], [], []], 25, source="talk.mp4")
    with pytest.raises(NoFaceError):
        track_faces([], 25)


# ---------------------------------------------------------------- gaps


def test_inner_gap_is_interpolated_linearly():
    boxes = [Box(0, 0, 10, 10), None, None, None, Box(40, 8, 50, 18)]
    out = fill_gaps(boxes, max_gap=3)
    for t in range(5):
        np.testing.assert_allclose(out[t].as_array(), [10 * t, 2 * t, 10 + 10 * t, 10 + 2 * t])


def test_long_gaps_stay_empty_and_short_ends_hold():
    b1, b2 = Box(0, 0, 10, 10), Box(100, 0, 110, 10)
    boxes = [None, None, b1, None, None, None, None, b2] + [None] * 5
    out = fill_gaps(boxes, max_gap=3)
    assert out[:2] == [b1, b1]  # leading 2 <= 3: held
    assert out[3:7] == [None] * 4  # inner 4 > 3: left alone
    assert out[8:] == [None] * 5  # trailing 5 > 3: left alone
    assert fill_gaps([None, None], 5) == [None, None]
    with pytest.raises(ValueError):
        fill_gaps(boxes, -1)


def test_max_gap_defaults_to_half_a_second():
    dets = [[square(300, 300, 100)]] + [[]] * 15 + [[square(300, 300, 100)]]
    assert FaceTrack.from_detections(dets, 30).n_found == 17  # 15 <= 15
    assert FaceTrack.from_detections(dets, 25).n_found == 2  # 15 > 12
    assert FaceTrack.from_detections(dets, 25).max_gap == 12


# ---------------------------------------------------------------- smoothing


def test_smoothing_is_centred_and_keeps_straight_motion():
    boxes = [Box(3.0 * t, 1.5 * t, 100 + 3.0 * t, 120 + 1.5 * t) for t in range(12)]
    out = smooth_boxes(boxes, 5)
    for a, b in zip(boxes, out):  # a linear path is unchanged, including its ends: no lag, no lead
        np.testing.assert_allclose(a.as_array(), b.as_array(), atol=1e-9)


def test_smoothing_spreads_a_spike_symmetrically():
    boxes = [Box(0, 0, 100, 100)] * 11
    boxes[5] = Box(10, 0, 110, 100)
    out = smooth_boxes(boxes, 5)
    x1 = [b.x1 for b in out]
    np.testing.assert_allclose(x1, [0, 0, 0, 2, 2, 2, 2, 2, 0, 0, 0])
    assert isinstance(x1[3], float)


def test_smoothing_does_not_cross_empty_frames():
    boxes = [Box(0, 0, 10, 10)] * 3 + [None] + [Box(50, 0, 60, 10)] * 3
    out = smooth_boxes(boxes, 5)
    assert out[3] is None
    assert [b.x1 for b in out[:3]] == [0, 0, 0] and [b.x1 for b in out[4:]] == [50, 50, 50]
    assert smooth_boxes(boxes, 1) == boxes
    with pytest.raises(ValueError):
        smooth_boxes(boxes, 4)


def test_best_index_is_the_highest_scoring_real_detection():
    dets = [[square(300, 300, 100, 0.7)], [], [square(300, 300, 100, 0.95)], [square(300, 300, 100, 0.8)]]
    tr = track_faces(dets, 25)
    assert tr.best_index == 2 and tr.raw[1] is None and tr.boxes[1] is not None


# ---------------------------------------------------------------- crop geometry


def test_crop_box_padding():
    b = Box(100, 100, 300, 300)
    c = crop_box(b, 1280, 720, pad=(0.15, 0.0, -0.05, -0.085))
    np.testing.assert_allclose(c.as_array(), [110, 70, 283, 300])
    c = crop_box(b, 1280, 720, pad=(0, 0, 0, 0), pad_px=(0, 10, 0, 0))  # the official inference padding
    np.testing.assert_allclose(c.as_array(), [100, 100, 300, 310])
    c = crop_box(Box(-50, 600, 100, 760), 1280, 720, pad=(0.1, 0.1, 0.1, 0.1))  # a face the corner cuts:
    np.testing.assert_allclose(c.as_array(), [-65, 584, 115, 776])  # not clipped (the face is not squeezed)
    with pytest.raises(ValueError):
        crop_box(b, 1280, 720, pad=(0, 0))
    with pytest.raises(ValueError):
        crop_box(Box(2000, 10, 2100, 100), 1280, 720)
    with pytest.raises(ValueError):  # a pixel of it inside is not a face to crop
        crop_box(Box(-100, 10, 1, 100), 1280, 720, pad=(0, 0, 0, 0))


def test_frame_size_turns_boxes_into_crops():
    dets = [[square(640, 360, 200)] for _ in range(3)] + [[Box(1270, 300, 1280, 310)]]
    tr = track_faces(dets, 25, frame_size=(1280, 720), window=1, max_gap=0)
    np.testing.assert_allclose(tr.boxes[0].as_array(), crop_box(tr.face_boxes[0], 1280, 720).as_array())
    assert tr.boxes[0].height / tr.boxes[0].width == pytest.approx(1.15 / 0.865)


def test_pixel_region_rounds_and_clips():
    assert pixel_region(Box(10.4, 10.5, 20.5, 30.49), 100, 100) == (10, 11, 21, 30)
    assert pixel_region(Box(-3, -3, 150, 150), 100, 100) == (0, 0, 100, 100)
    assert pixel_region(Box(50.2, 50.2, 50.3, 50.3), 100, 100) == (50, 50, 51, 51)  # never empty
    assert pixel_extent(Box(10.4, 10.5, 20.5, 30.49)) == (10, 11, 21, 30)  # inside the frame: the region
    assert pixel_extent(Box(-3.4, -3.6, 150.5, 150.2)) == (-3, -4, 151, 150)  # past its edges: not clipped
    assert pixel_extent(Box(50.2, 50.2, 50.3, 50.3)) == (50, 50, 51, 51)


# ---------------------------------------------------------------- real video


@pytest.fixture(scope="module")
def detector():
    with FaceDetector() as d:
        yield d


def test_two_people_tracked_apart(detector, more_data):
    frames = read_frames(more_data / "visualvoice" / "interview.mp4", list(range(0, 60, 2)))
    dets = [detector.detect(f) for f in frames]
    left = track_faces(dets, 12.5, face_index=0, source="interview.mp4")
    right = track_faces(dets, 12.5, face_index=1, source="interview.mp4")
    assert left.n_found >= 28 and right.n_found >= 28
    assert all(b.center[0] < 640 for b in left.boxes if b is not None)
    assert all(b.center[0] > 640 for b in right.boxes if b is not None)
    by_box = track_faces(dets, 12.5, box=tuple(right.raw[next(i for i, b in enumerate(right.raw) if b)].as_array()))
    assert by_box.boxes == right.boxes


def test_real_track_is_smoother_than_raw(detector, real_data):
    frames = read_frames(real_data / "hyperlips" / "video2.mp4", list(range(40)))
    dets = [detector.detect(f) for f in frames]
    tr = track_faces(dets, 25)
    raw = np.stack([b.as_array() for b in tr.raw])
    sm = np.stack([b.as_array() for b in tr.face_boxes])
    jitter = lambda a: np.abs(np.diff(a, 2, axis=0)).mean()  # noqa: E731  (frame-to-frame acceleration)
    assert jitter(sm) < 0.6 * jitter(raw)
    assert np.abs(sm - raw).mean() < 5.0  # and it stays on the face


def test_default_crop_spans_brows_to_chin(detector, real_data):
    """The default crop geometry (DEFAULT_PAD) on real 720p frames: brows inside near the top, chin at the bottom,
    eyes in the upper half and the mouth in the lower half (the layout of the training crops)."""
    from hyperlips.face.landmarks import FaceMesh

    assert DEFAULT_PAD[0] > 0
    with FaceMesh(static=True) as mesh:
        for name in ("video1.mp4", "video3.mp4", "video4.mp4"):
            (frame,) = read_frames(real_data / "hyperlips" / name, [50])
            h, w = frame.shape[:2]
            x1, y1, x2, y2 = pixel_region(crop_box(detector.detect(frame)[0], w, h), w, h)
            lm = mesh.landmarks(frame[y1:y2, x1:x2])
            assert lm is not None, name
            y = lm[:, 1] / (y2 - y1)
            assert 0.08 < min(y[105], y[334]) < 0.40, name  # brows
            assert max(y[33], y[263]) < 0.5, name  # eye corners
            assert 0.5 < y[13] < 0.85, name  # upper lip
            assert 0.92 < y[152] < 1.06, name  # chin


def test_a_face_the_frames_edge_cuts_keeps_its_place_in_the_crop(detector, real_data):
    """A face the frame's edge cuts (a close-up's forehead, a face at the side of the picture): its crop reaches past
    the edge, so FaceMesh finds the mouth where it is in the whole face's crop. Clipped to the frame (the official
    crop), the top cut moved the mouth up the crop by a sixth of its height and in the side cut FaceMesh found none."""
    from hyperlips.face.landmarks import FaceMesh
    from hyperlips.generator_io import face_crop

    (frame,) = read_frames(real_data / "retalking" / "face2.mp4", [10])
    h, w = frame.shape[:2]
    mouth = [13, 14, 61, 291]  # the inner lips' middles and the corners
    with FaceMesh(static=True) as mesh:
        whole = mesh.landmarks(face_crop(frame, crop_box(detector.detect(frame)[0], w, h), 256))[mouth, :2]
        for name, cut in (("top", frame[340:]), ("left", frame[:, 330:])):
            cut = np.ascontiguousarray(cut)
            (face,) = detector.detect(cut)
            assert face.y1 < 0 if name == "top" else face.x1 < 0, (name, face)  # the whole face's box, past the edge
            box = crop_box(face, cut.shape[1], cut.shape[0])
            lm = mesh.landmarks(face_crop(cut, box, 256))
            assert lm is not None, name
            assert np.abs(lm[mouth, :2] - whole).mean() < 6.0, (name, lm[mouth, :2], whole)
