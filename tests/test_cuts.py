"""Edits made of shots: where a video cuts, and that the face track, the blends and the mouth start afresh there.

Tried as a dubbing editor would (hard cuts between people, a cutaway without a face, a fade to black), the track
followed a face by its place across a cut onto another person, smoothed and blended the mouth across it, bridged a
short cutaway and held the last box over black frames, painting a mouth on them."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import cut_video, spied_frames, write_wav

from hyperlips.face.cuts import CutFinder, is_flat


def _textured(seed: int, h: int = 72, w: int = 128) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
    return np.kron(small, np.ones((8, 8, 1), np.uint8))


def test_a_cut_is_a_jump_far_beyond_the_motion_before_it():
    a, b = _textured(0), _textured(1)
    frames = [a] * 5 + [b] * 5
    finder = CutFinder()
    assert [finder.is_cut(f) for f in frames] == [False] * 5 + [True] + [False] * 4
    # a camera that moves a lot on every frame (each frame far from the one before) is no cut, nor is the second
    # frame of a clip (nothing known of its motion)
    wide = np.concatenate([_textured(s) for s in range(8)], axis=1)
    panning = [np.ascontiguousarray(wide[:, 8 * k: 8 * k + 128]) for k in range(30)]
    finder = CutFinder()
    assert not any(finder.is_cut(f) for f in panning)
    finder = CutFinder()
    assert [finder.is_cut(f) for f in (a, b, b)] == [False, False, False]
    # shots of two and three frames end in cuts of their own; a flash frame is a shot of its own (two cuts)
    finder = CutFinder()
    c = _textured(2)
    edit = [a] * 5 + [b] * 2 + [a] * 3 + [c] * 3 + [a] * 4
    assert [k for k, f in enumerate(edit) if finder.is_cut(f)] == [5, 7, 10, 13]
    finder = CutFinder()
    flash = [a] * 5 + [np.full_like(a, 250)] + [a] * 4
    assert [k for k, f in enumerate(flash) if finder.is_cut(f)] == [5, 6]
    # a cut into a shot whose camera moves a lot: one cut, not one per frame of it
    finder = CutFinder()
    moving = [a] * 5 + panning[20:30]
    assert [k for k, f in enumerate(moving) if finder.is_cut(f)] == [5]
    # a fade to black: small steps
    finder = CutFinder()
    fade = [(a * (1 - k / 20)).astype(np.uint8) for k in range(21)]
    assert not any(finder.is_cut(f) for f in fade)
    assert is_flat(fade[-1], (0, 0, 128, 72)) and not is_flat(a, (0, 0, 128, 72))


@pytest.fixture(scope="module")
def two_people(real_data, tmp_path_factory):
    """20 frames of one person, then 20 of another at about the same place, 360 px."""
    from hyperlips.media.video import FrameReader

    folder = tmp_path_factory.mktemp("cuts")
    shots = []
    for name in ("face2", "face3"):
        clip = cut_video(real_data / "retalking" / f"{name}.mp4", folder / f"{name}.mp4", 20, size=360)
        with FrameReader(clip) as r:
            shots.append([f.image for f in r.iter_range(0, 20)])
    return folder, shots


def _track_boxes(frames, with_images=True):
    from hyperlips.face.detect import FaceDetector
    from hyperlips.face.track_online import OnlineTrack

    track = OnlineTrack(25.0, frame_size=(360, 360))
    boxes = []
    with FaceDetector() as det:
        for f in frames:
            boxes += [b for _, b in track.push(det.detect(f), f if with_images else None)]
    boxes += [b for _, b in track.finish()]
    return track, boxes


def test_after_a_cut_the_track_is_the_new_shots_own(two_people):
    _, (a, b) = two_people
    track, boxes = _track_boxes(a + b)
    assert track.shot_starts == [0, 20] and track.shot_of == [0] * 20 + [1] * 20
    _, alone = _track_boxes(b)
    for got, want in zip(boxes[20:], alone):  # chosen, bridged and smoothed as if the second shot were a video
        np.testing.assert_array_equal(got.as_array(), want.as_array())
    _, blind = _track_boxes(a + b, with_images=False)  # without the frames, smoothed across the cut as before
    assert any(not np.array_equal(x.as_array(), y.as_array()) for x, y in zip(blind[18:22], boxes[18:22]))


def test_an_edit_syncs_each_shot_and_leaves_a_cutaway_and_black_frames_alone(two_people, recwarn):
    """face2, a 6-frame cutaway without a face, face3 fading to black over 10 frames: the cutaway and the black
    frame reach the encoder exactly as decoded, each person's shot gets a mouth of its own, and the cuts are said."""
    from media_builders import write_video

    from hyperlips.media.video import FrameReader
    from hyperlips.pipeline import LipSync

    folder, (a, b) = two_people
    cutaway = [np.ascontiguousarray(np.kron(_textured(7, 45, 45), np.ones((8, 8, 1), np.uint8))[:360, :360])] * 6
    fade = [(b[-1] * (1 - k / 10)).astype(np.uint8) for k in range(1, 11)]  # small steps: no cut
    edit = write_video(folder / "edit.mp4", a + cutaway + b + fade, options={"crf": "0"}, pix_fmt="yuv444p")
    with FrameReader(edit) as r:
        decoded = [f.image for f in r.iter_range(0, 56)]
    speech = write_wav(folder / "speech.wav", 56 / 25)
    ls = LipSync(untrained=True, model="lite", device="cpu", progress=False)
    out = spied_frames(lambda: ls.sync(edit, speech, folder / "out.mp4"))
    assert len(out) == 56
    for k in list(range(20, 26)) + [55]:
        np.testing.assert_array_equal(out[k], decoded[k], err_msg=f"frame {k} was changed")
    assert all(not np.array_equal(out[k], decoded[k]) for k in (0, 19, 26, 45))  # both people are synced
    said = " ".join(str(w.message) for w in recwarn)
    assert "the video cuts to another shot 2 times (at 0.80 s, 1.04 s)" in said, said
    assert "1 shot without the face to follow is left as it is (0.80-1.04 s)" in said, said


def test_faces_are_not_blended_with_a_neighbour_of_another_shot():
    """The temporal blend and the input blend took a neighbour whose crop was near: across a cut to another person
    at the same place, a mix of two people's mouths."""
    from hyperlips.streaming import FrameJob, blended_inputs, steady_batches

    image = np.full((64, 64, 3), 100, np.uint8)
    box = (8.0, 8.0, 56.0, 56.0)

    def jobs(shots):
        return [FrameJob(j, j, image.copy(), box=box, face=np.full((16, 16, 3), 40 * (j + 1), np.uint8), shot=s)
                for j, s in enumerate(shots)]

    out = [j for batch in steady_batches(iter([jobs([0, 1, 1])]), 0.25) for j in batch]
    assert (out[0].face == 40).all()  # alone in its shot: as rendered
    assert (out[1].face == round(0.75 * 80 + 0.25 * 120)).all()  # its shot's neighbour only
    same = [j for batch in steady_batches(iter([jobs([0, 0, 0])]), 0.25) for j in batch]
    assert (same[0].face == round(0.75 * 40 + 0.25 * 80)).all()
    images = [np.full((64, 64, 3), v, np.uint8) for v in (50, 150)]
    pair = [FrameJob(j, j, images[j], box=box, shot=j) for j in range(2)]
    assert all(float(job.crop.mean()) in (50.0, 150.0) for job in blended_inputs(iter(pair), 0.25))


def test_preprocess_tracks_an_edit_shot_by_shot_and_says_so(two_people, tmp_path, real_data):
    """A person's footage for `finetune` is often an edit: preprocess followed one face across its cuts (onto
    whoever the next shot showed at that place) and smoothed the boxes across them, without a word."""
    from hyperlips.data import preprocess as pp
    from hyperlips.errors import InputWarning
    from hyperlips.media.audio import load_audio
    from hyperlips.media.writer import VideoWriter

    _, (a, b) = two_people
    src = tmp_path / "src"
    src.mkdir()
    speech = load_audio(real_data / "retalking" / "audio1.wav", 16000)[:16000 * 40 // 25]
    with VideoWriter(src / "edit.mp4", 360, 360, 25, audio=speech, sample_rate=16000) as vw:
        for f in a + b:
            vw.write(f)
    with pytest.warns(InputWarning, match=r"edit.mp4: the clip cuts to another shot 1 time: the face is taken anew"):
        report = pp.preprocess(src, tmp_path / "ds", pp.PreprocessOptions(), workers=1, progress=False)
    assert report.done == 1
    boxes = np.load(next((tmp_path / "ds").rglob("boxes.npy")))
    _, alone = _track_boxes(b)  # the second shot's boxes are its own, as if it were a clip of its own
    np.testing.assert_allclose(boxes[20:], np.array([x.as_array() for x in alone], np.float32), atol=4.0)  # re-encoded


def test_a_face_that_leaves_the_shot_is_said_with_the_frames_left_undubbed(real_data, tmp_path, recwarn):
    """The camera pans off the speaker in one shot: the face leaves at about 1 s, and the rest of the video (half
    of it) was written as it was, undubbed, without a word (a cut to a shot without a face was said; this not)."""
    from media_builders import write_video

    from hyperlips.media.video import FrameReader
    from hyperlips.pipeline import LipSync

    clip = cut_video(real_data / "retalking" / "face2.mp4", tmp_path / "face2.mp4", 50, size=300)
    with FrameReader(clip) as r:
        frames = [f.image for f in r.iter_range(0, 50)]
    canvas = [np.concatenate([f, np.full((300, 600, 3), 90, np.uint8)], axis=1) for f in frames]
    panned = [c[:, round(k * 9.0):round(k * 9.0) + 300] for k, c in enumerate(canvas)]  # 9 px a frame: no cut
    video = write_video(tmp_path / "pan.mp4", panned)
    speech = write_wav(tmp_path / "speech.wav", 2.0)
    ls = LipSync(untrained=True, model="lite", device="cpu", progress=False)
    report = ls.sync(video, speech, tmp_path / "out.mp4")
    said = [str(w.message) for w in recwarn if "no face was found" in str(w.message)]
    missing = report.frames - report.frames_with_face
    assert 10 <= missing <= 45, (report.frames, report.frames_with_face)  # (the face in its first frames)
    assert len(said) == 1 and f"no face was found on {missing} of the 50 frames written" in said[0], said
    assert not any("cuts to another shot" in str(w.message) for w in recwarn)
