"""The timestamp rule (``media.timing``): constant or variable rate, which source frame each output frame shows,
the constant-rate reader, and a variable-frame-rate clip lip-synced in step with its own audio."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from helpers import random_base_checkpoint
from media_builders import face_frames, read_stamp, shown_at, speech, stamps_of, write_video

from hyperlips.errors import InputWarning, UserError
from hyperlips.media.timing import RetimedReader, analyse_rate, check_fps, open_timeline, source_frames


# ------------------------------------------------------------------------------------------------ the rule
def test_constant_rate_maps_frame_to_frame_despite_rounded_timestamps():
    # 29.97 fps stored in milliseconds: timestamps are up to half a millisecond off k * 1001/30000
    times = np.round(np.arange(300) * 1001 / 30000, 3)
    rate = analyse_rate(times, 300 * 1001 / 30000, Fraction(30000, 1001), tick=0.001)
    assert not rate.variable and rate.fps == Fraction(30000, 1001)
    assert np.array_equal(source_frames(times, rate.fps, 300), np.arange(300))


def test_resampling_picks_the_frame_on_screen():
    t30 = np.arange(30) / 30
    idx = source_frames(t30, 25, 25)  # 30 -> 25: one frame in six dropped; a frame starting within a quarter of a
    assert idx.tolist() == shown_at(t30, 25, 25, slack=0.25 / 30)  # frame after the time counts as on screen
    assert np.all(np.abs(np.array(shown_at(t30, 25, 25)) - idx) <= 1)
    t25 = np.arange(25) / 25
    assert source_frames(t25, 50, 50).tolist() == [j // 2 for j in range(50)]  # 25 -> 50: each frame twice
    assert source_frames(t25, 50, 60).tolist()[-10:] == [24] * 10  # past the last frame: the last frame


def test_variable_rate_is_detected_and_read_at_its_average():
    # frames lasting one or two thirtieths of a second, tagged 30 fps (like a phone recording)
    dur = np.tile([1, 2, 1, 1, 2], 20) / 30
    times = np.concatenate([[0], np.cumsum(dur[:-1])])
    rate = analyse_rate(times, float(dur.sum()), Fraction(30), tick=1 / 15360)
    assert rate.variable and float(rate.average) == pytest.approx(100 / dur.sum())
    idx = source_frames(times, rate.fps, 100)
    assert idx.tolist() == shown_at(times, float(rate.fps), 100, slack=0.25 / float(rate.fps))
    out_t = np.arange(100) / float(rate.fps)  # every output frame's source started at most one output frame away
    assert np.all(np.abs(times[idx] - out_t) < 1 / float(rate.fps))


def test_a_dropped_frame_does_not_make_a_stream_variable():
    times = np.delete(np.arange(251) / 25, 100)
    rate = analyse_rate(times, 251 / 25, Fraction(25))
    assert not rate.variable and rate.fps == 25
    assert source_frames(times, 25, 251)[99:102].tolist() == [99, 99, 100]  # the gap holds the frame before


def test_fps_option_is_checked():
    check_fps(None)
    check_fps(12.5)
    for bad in (0, -5, 1000, float("nan"), "abc"):
        with pytest.raises(UserError, match="--fps"):
            check_fps(bad)


# ------------------------------------------------------------------------------------------------ the reader
@pytest.fixture(scope="module")
def vfr_clip(real_data, tmp_path_factory):
    """20 stamped face frames: ten at 30 fps, then ten lasting three times as long (a camera that slows down)."""
    dur = np.array([1] * 10 + [3] * 10) / 30
    times = np.concatenate([[0], np.cumsum(dur[:-1])])
    path = tmp_path_factory.mktemp("vfr") / "vfr.mp4"
    write_video(path, face_frames(real_data / "retalking" / "face2.mp4", 20), times=times)
    return path, times


def test_retimed_reader_shows_the_frame_of_each_time(vfr_clip):
    path, times = vfr_clip
    with pytest.warns(InputWarning, match="variable frame rate"):
        reader = open_timeline(path)
    with reader:
        assert reader.variable and reader.fps == pytest.approx(15, rel=1e-3)
        frames = list(reader)
        assert [f.index for f in frames] == list(range(reader.n_frames))
        assert [f.time for f in frames] == pytest.approx([j / reader.fps for j in range(reader.n_frames)])
        shown = [read_stamp(f.image) for f in frames]
        assert shown == shown_at(times, reader.fps, reader.n_frames, slack=0.25 / reader.fps)
        assert [read_stamp(f.image) for f in reader.iter_range(3, 14, reverse=True)] == shown[3:14][::-1]
    with RetimedReader(path, fps=60) as fast:  # the rate can be chosen; frames repeat where the source holds them
        assert fast.n_frames == 80
        assert [read_stamp(f.image) for f in fast] == shown_at(times, 60, fast.n_frames, slack=0.25 / 60)


def test_constant_rate_clip_reads_unchanged_without_warning(real_data, recwarn):
    with open_timeline(real_data / "retalking" / "face2.mp4") as r:
        assert not r.variable and r.fps == 25 and r.n_frames == len(r.source_times)
        assert np.array_equal(r.source_index, np.arange(r.n_frames))
    assert not [w for w in recwarn if issubclass(w.category, InputWarning)]


def test_a_constant_rate_clip_cut_short_keeps_its_rate(real_data, tmp_path):
    """An MP4 cut short in the middle of its frames loses the last B-frames before the last P-frame it holds: that
    gap of missing frames counted as a variable rate, so the clip was read (and re-synced) at 23.2 fps, not 25."""
    from hyperlips.media.writer import VideoWriter

    frames = face_frames(real_data / "retalking" / "face2.mp4", 50, size=(128, 128), stamped=True)
    whole = tmp_path / "whole.mp4"
    with VideoWriter(whole, 128, 128, 25) as w:  # index at the front: a cut file still opens
        for f in frames:
            w.write(f)
    data = whole.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[:int(len(data) * 0.55)])
    with pytest.warns(InputWarning) as said:
        reader = open_timeline(cut)
    with reader:
        gaps = np.diff(reader.source_times)
        assert gaps.max() > 1.5 / 25  # frames are missing before the last one (else this tests nothing)
        assert not reader.variable and reader.fps == 25
        shown = [read_stamp(f.image) for f in reader]  # (the frames before the cut's gap may be damaged, the
        assert shown[:7] == list(range(7)) and len(shown) == round(reader.source_times[-1] * 25) + 1  # last shown)
    assert any("cut short" in str(w.message) for w in said)
    assert not any("variable frame rate" in str(w.message) for w in said)


def test_a_clip_cut_short_is_said_once_as_cut_not_also_as_damaged(real_data, tmp_path):
    """The frames a cut went through are damaged; the file was said to be cut short, and they were said again as
    "3 of 22 frames are damaged", a second, vaguer cause. Damage before the cut's last second is still said."""
    import warnings

    from hyperlips.errors import collect_warnings
    from hyperlips.media.timing import report_damage
    from hyperlips.media.writer import VideoWriter

    frames = face_frames(real_data / "retalking" / "face2.mp4", 50, size=(128, 128))
    whole = tmp_path / "whole.mp4"
    with VideoWriter(whole, 128, 128, 25) as w:  # index at the front: a cut file still opens
        for f in frames:
            w.write(f)
    data = whole.read_bytes()

    def said_of(path):
        with collect_warnings() as said, warnings.catch_warnings():
            warnings.simplefilter("ignore", InputWarning)
            with open_timeline(path) as reader:
                for _ in reader:
                    pass
                report_damage(reader, reader.n_frames)
        return reader, said

    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[:int(len(data) * 0.7)])
    reader, said = said_of(cut)
    assert reader.damaged  # the frames the cut went through (else this tests nothing)
    assert len(said) == 1 and "(cut short: an interrupted copy" in said[0], said
    early = bytearray(data[:int(len(data) * 0.8)])
    for k in range(int(len(data) * 0.2), int(len(data) * 0.2) + 400, 7):  # damage near the start too
        early[k] ^= 0x5A
    cut.write_bytes(bytes(early))
    _, said = said_of(cut)
    assert len(said) == 2 and "frames are damaged (first at 0.00 s)" in said[1], said


def test_real_vfr_clip_face1(real_data):
    """retalking/face1 is tagged 30 fps but holds 135 frames over 6.1 s."""
    with RetimedReader(real_data / "retalking" / "face1.mp4") as r:
        assert r.variable and r.timing.nominal == 30
        assert r.fps == pytest.approx(135 / 6.1, abs=0.01) and r.n_frames == 135
        assert r.source_index.tolist() == shown_at(r.source_times, r.fps, r.n_frames, slack=0.25 / 30)
        assert len(set(r.source_index.tolist())) < 135  # frames that last two thirtieths are shown twice


def _grey_ramp(path, frames: int, step: int, fmt: str = "mp4", pix_fmt: str = "yuv420p", tags=None, zero_pts=False):
    """``frames`` flat grey frames (0, step, 2 step, ...) of 64 x 64 at 25 fps, H.264 in ``fmt``; ``tags``: colour
    tags of the stream (colorspace, primaries, transfer); ``zero_pts``: every frame and packet at time 0."""
    import av

    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 64, pix_fmt
        if zero_pts:
            stream.codec_context.time_base = Fraction(1, 25)
        if tags:
            cc = stream.codec_context
            cc.colorspace, cc.color_primaries, cc.color_trc = tags
        packets = []
        for k in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), step * k, np.uint8), format="rgb24")
            frame = frame.reformat(format=pix_fmt)
            if zero_pts:
                frame.pts = 0
            packets += stream.encode(frame)
        packets += stream.encode()
        for packet in packets:
            if zero_pts:
                packet.pts = packet.dts = 0
            out.mux(packet)
    return path


def test_frames_that_share_one_timestamp_are_read_in_stored_order(tmp_path):
    """A file whose frames all carry timestamp 0 (written with no pts) gave a still picture for the whole clip,
    silently (later with a warning): its frames are now read in the order they are stored, at its tagged rate, and
    the warning says so."""
    from hyperlips.errors import InputWarning
    from hyperlips.media.timing import open_timeline

    path = _grey_ramp(tmp_path / "zero_pts.mp4", 20, 10, zero_pts=True)
    with pytest.warns(InputWarning, match=r"19 of its 20 frames carry the timestamp of another frame .* shown in the "
                      r"order they are stored, at its tagged rate of 25 fps"):
        reader = open_timeline(path)
    with reader:
        assert reader.n_frames == 20 and reader.fps == 25.0
        grey = [int(round(f.image.mean())) for f in reader.iter_range(0, 20)]
        back = [int(round(f.image.mean())) for f in reader.iter_range(0, 20, reverse=True)]
    assert np.allclose(grey, np.arange(20) * 10, atol=2), grey  # every frame, in order (a still picture before)
    assert back == grey[::-1]


def test_a_raw_h264_stream_without_timestamps_is_read_in_order(tmp_path):
    """An elementary .h264 stream (as some cameras and screen recorders write) has no timestamps at all."""
    import warnings

    from hyperlips.media.timing import open_timeline

    path = _grey_ramp(tmp_path / "camera.h264", 20, 10, fmt="h264")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reader = open_timeline(path)
    with reader:
        assert reader.n_frames == 20 and reader.fps == 25.0
        grey = [int(round(f.image.mean())) for f in reader.iter_range(0, 20)]
    assert np.allclose(grey, np.arange(20) * 10, atol=2), grey


@pytest.mark.parametrize("trc, name", [(16, "PQ"), (18, "HLG")])
def test_high_dynamic_range_video_is_warned_of(tmp_path, trc, name):
    """A phone's HDR video (BT.2020, HLG or PQ, 10-bit) came out tagged as ordinary BT.709 video holding its HDR
    values, which players show washed out, without a word."""
    from hyperlips.errors import InputWarning
    from hyperlips.media.timing import open_timeline

    path = _grey_ramp(tmp_path / "hdr.mp4", 5, 40, pix_fmt="yuv420p10le", tags=(9, 9, trc))
    with pytest.warns(InputWarning, match=rf"hdr.mp4 is high dynamic range video \({name} transfer\): it is read "
                                          r"as ordinary \(SDR, BT.709, 8-bit\) video .* convert it to SDR first"):
        open_timeline(path).close()


def test_damaged_packets_are_counted_and_frames_kept(real_data, tmp_path):
    """Garbage over a few packets in the middle: the clip still gives every frame, and the damage is counted."""
    path = write_video(tmp_path / "clip.mp4", face_frames(real_data / "retalking" / "face2.mp4", 50),
                       options={"g": "12"})
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(0)
    for k in range(5):
        at = int(len(data) * 0.6) + 300 * k
        data[at:at + 200] = rng.bytes(200)
    (tmp_path / "damaged.mp4").write_bytes(bytes(data))
    with RetimedReader(tmp_path / "damaged.mp4") as r:
        frames = list(r)
        assert len(frames) == 50 and r.damaged
        assert r.source.bad_packets >= 1  # packets the decoder rejected: their frames are missing
        assert min(r.damaged) > 5  # the damage is where the garbage went, not at the start
        intact = list(range(min(r.damaged))) + list(range(48, 50))  # before the damage, and from the next keyframe
        assert [read_stamp(frames[j].image) for j in intact] == intact


# ------------------------------------------------------------------------------------------------ end to end
def test_vfr_clip_synced_at_the_average_rate_in_step_with_its_audio(real_data, vfr_clip, tmp_path):
    from hyperlips.pipeline import LipSync

    path, times = vfr_clip
    audio = tmp_path / "speech.wav"
    import soundfile as sf

    sf.write(str(audio), speech(real_data, 1.2), 16000)
    ls = LipSync(random_base_checkpoint(tmp_path / "base.pth"), batch_size=8, progress=False)
    with pytest.warns(InputWarning, match="variable frame rate"):
        rep = ls.sync(path, audio, tmp_path / "out.mp4")
    assert rep.fps == pytest.approx(15, rel=1e-3) and rep.frames == 18
    got = stamps_of(tmp_path / "out.mp4")
    assert got == shown_at(times, rep.fps, rep.frames, slack=0.25 / rep.fps)


def _self_sync_face1(real_data, tmp_path, seconds):
    """face1 lip-synced with its own audio: every output frame is the source frame of its time, and the output
    lasts as long as the audio."""
    import soundfile as sf

    from helpers import probe_streams
    from hyperlips.media.audio import load_audio
    from hyperlips.media.video import FrameReader
    from hyperlips.pipeline import LipSync

    src = real_data / "retalking" / "face1.mp4"
    wav = load_audio(src, 16000)[: int(seconds * 16000)] if seconds else load_audio(src, 16000)
    audio = tmp_path / "own.wav"
    sf.write(str(audio), wav, 16000)
    out = tmp_path / "face1_synced.mp4"
    ls = LipSync(random_base_checkpoint(tmp_path / "base.pth"), batch_size=8, progress=False)
    with pytest.warns(InputWarning, match="variable frame rate"):
        rep = ls.sync(src, audio, out)
    facts = probe_streams(out)
    assert facts["fps"] == pytest.approx(135 / 6.1, abs=0.01)
    assert abs(facts["frames"] / facts["fps"] - len(wav) / 16000) <= 0.5 / facts["fps"]
    assert facts["audio_seconds"] == pytest.approx(len(wav) / 16000, abs=0.03)
    with FrameReader(src) as r:
        source = [(f.time, f.image[: f.image.shape[0] // 3].astype(np.float32)) for f in r]
    src_t = np.array([t for t, _ in source])
    with FrameReader(out) as r:
        for f in r:  # the upper third of the frame is never changed: find the source frame it came from
            top = f.image[: f.image.shape[0] // 3].astype(np.float32)
            on_screen = shown_at(src_t, facts["fps"], f.index + 1)[-1]
            near = range(max(0, on_screen - 3), min(len(source), on_screen + 4))
            best = min(near, key=lambda i: float(np.mean((source[i][1] - top) ** 2)))
            assert abs(best - on_screen) <= 1, (f.index, f.time, best, on_screen)
    return rep


def test_face1_self_sync_first_two_seconds(real_data, tmp_path):
    rep = _self_sync_face1(real_data, tmp_path, 2.0)
    assert rep.frames == round(2.0 * 135 / 6.1)


@pytest.mark.slow
def test_face1_self_sync_whole_clip(real_data, tmp_path):
    _self_sync_face1(real_data, tmp_path, None)
