"""``face.track_online.OnlineTrack``: the face track computed frame by frame gives exactly the boxes of
``face.track.track_faces`` on the whole video, never later than its stated look-ahead."""

from __future__ import annotations

import random

import pytest

from hyperlips.errors import NoFaceError
from hyperlips.face.detect import Box
from hyperlips.face.track import track_faces
from hyperlips.face.track_online import OnlineTrack


def random_detections(rng: random.Random, n: int) -> list[list[Box]]:
    """A face drifting and jumping in size, missed in runs of any length, and a second face coming and going."""
    out, x, y, present = [], rng.uniform(100, 300), rng.uniform(50, 150), True
    for _ in range(n):
        if rng.random() < 0.15:
            present = not present
        dets = []
        if present and rng.random() > 0.1:
            x, y, w = x + rng.gauss(0, 5), y + rng.gauss(0, 5), rng.uniform(80, 120)
            dets.append(Box(x, y, x + w, y + 1.2 * w, rng.random()))
        if rng.random() < 0.3:
            x2 = rng.uniform(0, 500)
            dets.append(Box(x2, 50, x2 + 60, 130, rng.random()))
        out.append(dets)
    return out


def online(detections, fps, **kw):
    """(boxes by frame, the largest number of frames ever waiting for their box) from feeding frames one by one."""
    track = OnlineTrack(fps, **kw)
    got, lag = {}, 0
    for dets in detections:
        for t, b in track.push(dets):
            assert t not in got and t == len(got), "frames must come out once each, in order"
            got[t] = b
        lag = max(lag, track.n - track.done)
    for t, b in track.finish():
        assert t == len(got)
        got[t] = b
    return [got[t] for t in range(len(detections))], lag, track


@pytest.mark.parametrize("seed", range(4))
def test_same_boxes_as_the_whole_video_track(seed):
    rng = random.Random(seed)
    checked = 0
    for _ in range(300):
        dets = random_detections(rng, rng.randint(1, 90))
        kw = rng.choice([{}, {}, {"face_index": rng.randint(0, 1)}, {"box": (100, 50, 300, 250)}])
        fps, window = rng.choice([5, 10, 25, 30]), rng.choice([1, 3, 5, 7])
        kw.update(window=window, frame_size=rng.choice([None, (400, 300)]))
        try:
            want = track_faces(dets, fps=fps, **kw)
        except NoFaceError:
            with pytest.raises(NoFaceError):
                online(dets, fps, **kw)
            continue
        got, lag, track = online(dets, fps, **kw)
        assert got == want.boxes  # exact floats: the same arithmetic in the same order
        assert track.best() == want.best_index
        assert lag <= track.max_gap + window // 2 + 1
        checked += 1
    assert checked > 200


def test_boxes_are_final_two_frames_later_while_the_face_is_seen():
    """With a detection in every frame, a box is given out as soon as the smoothing window's two later frames are in."""
    dets = [[Box(100 + t, 50, 200 + t, 170, 0.9)] for t in range(20)]
    track = OnlineTrack(25.0, frame_size=(640, 480))
    ready = [len(track.push(d)) for d in dets]
    assert ready == [0, 0] + [1] * 18
    assert len(track.finish()) == 2


def test_best_among_the_first_frames():
    dets = [[]] * 3 + [[Box(10, 10, 60, 70, s)] for s in (0.5, 0.7, 0.6, 0.9, 0.95)]
    track = OnlineTrack(25.0)
    for d in dets:
        track.push(d)
    assert track.anchor == 3
    assert track.best(first=3) == 4 and track.best(first=4) == 6 and track.best() == 7


def test_no_face_and_bad_face_index_name_the_video():
    track = OnlineTrack(25.0, source="clip.mp4")
    for _ in range(5):
        track.push([])
    with pytest.raises(NoFaceError, match=r"clip\.mp4.*5 frame"):
        track.finish()
    track = OnlineTrack(25.0, face_index=2, source="clip.mp4")
    track.push([])
    track.push([Box(0, 0, 10, 10)])  # one face: face 2 may still come (a later frame, or shot)
    with pytest.raises(NoFaceError, match=r"--face 2: clip\.mp4 shows 1 face at most \(in any of its 2 frames\), so "
                                          r"the faces to choose from are 0\.\.0"):
        track.finish()
