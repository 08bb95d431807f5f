"""End to end on real clips: ``hyperlips sync`` with random weights saved in the official checkpoint format.

Checks what a user sees: the output plays, keeps the input's resolution and frame rate, carries an AAC track,
lasts as long as the audio (within one frame), and leaves everything above the face untouched.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from helpers import cut_audio, probe_streams, psnr, random_base_checkpoint, random_hr_checkpoint, read_frames, run_cli


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return random_base_checkpoint(tmp_path_factory.mktemp("ckpt") / "base_random.pth")


def face_top(frame: np.ndarray) -> int:
    """Top row of the largest detected face in ``frame``."""
    from hyperlips.face.detect import FaceDetector

    with FaceDetector() as det:
        boxes = det.detect(frame)
    assert boxes, "the input frame should show a face"
    return int(boxes[0].y1)


def check_output(out, video, audio_seconds, *, still=False, compare_frames=8):
    import warnings

    from hyperlips.media.timing import open_timeline

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a variable frame rate is announced; here only its rate matters
        with open_timeline(video) as timeline:
            src, rate = timeline.info, float(timeline.fps)
    got = probe_streams(out)
    assert (got["width"], got["height"]) == (src.width + src.width % 2, src.height + src.height % 2)
    if not still:
        assert got["fps"] == pytest.approx(rate, rel=1e-3)  # the nominal rate, or the average one when it varies
    assert got["video_codec"] == "h264"
    assert got["audio_codec"] == "aac"
    fps = got["fps"]
    assert abs(got["frames"] / fps - audio_seconds) <= 1.0 / fps + 1e-6, (got, audio_seconds)
    if still or not compare_frames:
        return got
    # rows above the face are unchanged up to codec loss
    ins, outs = read_frames(video, compare_frames), read_frames(out, compare_frames)
    for a, b in zip(ins, outs):
        top = face_top(a)
        assert top > 8
        assert psnr(a[:top], b[:top]) > 40
    return got


def run_sync(video, audio, out, ckpt, *extra):
    r = run_cli("sync", video, audio, "-o", out, "--checkpoint", ckpt, "--quiet", *extra)
    assert r.returncode == 0, r.stderr
    return r


def test_sync_30fps_clip_short_audio(real_data, ckpt, tmp_path):
    """Fast smoke test: a close-up tagged 30 fps whose frames come at 22.1 fps on average (variable rate), 1.2 s of
    another clip's speech (audio shorter: output stops there), rendered at the average rate."""
    video = real_data / "retalking" / "face1.mp4"
    audio = cut_audio(real_data / "retalking" / "audio1.wav", tmp_path / "a.wav", 1.2)
    out = tmp_path / "out.mp4"
    run_sync(video, audio, out, ckpt)
    got = check_output(out, video, 1.2, compare_frames=0)  # frames repeat where the source's intervals are long
    assert 22.0 < got["fps"] < 22.3 and got["frames"] == round(1.2 * got["fps"])


def test_sync_pingpong_when_audio_longer(real_data, ckpt, tmp_path):
    """A 0.6 s cut of a 720p clip driven by 1.4 s of speech: the video plays forward then backward."""
    from hyperlips.media.video import FrameReader
    from hyperlips.media.writer import VideoWriter

    src = real_data / "hyperlips" / "video2.mp4"
    short = tmp_path / "short.mp4"
    with FrameReader(src) as r, VideoWriter(short, r.width, r.height, 25.0) as w:
        for fr in r.iter_range(0, 15):
            w.write(fr.image)
    audio = cut_audio(real_data / "hyperlips" / "audio2.wav", tmp_path / "a.wav", 1.4)
    out = tmp_path / "out.mp4"
    run_sync(short, audio, out, ckpt)
    check_output(out, short, 1.4, compare_frames=0)
    got_frames = read_frames(out)
    src_frames = read_frames(short)
    assert len(got_frames) == 35
    # output frame 16 shows source frame 12 (0..14 forward, then 13, 12, ...): compare the rows above the face
    top = face_top(src_frames[12])
    assert psnr(got_frames[16][:top], src_frames[12][:top]) > psnr(got_frames[16][:top], src_frames[2][:top])
    assert psnr(got_frames[16][:top], src_frames[12][:top]) > 35


def test_sync_still_image(ckpt, tmp_path):
    from hyperlips.demo import demo_face

    img = tmp_path / "face.png"
    cv2.imwrite(str(img), demo_face())
    from helpers import write_wav

    audio = write_wav(tmp_path / "a.wav", 0.8, sr=22050, channels=2)
    out = tmp_path / "out.mp4"
    run_sync(img, audio, out, ckpt)
    got = check_output(out, img, 0.8, still=True)
    assert got["fps"] == 25.0
    # the top of the photo (above the face) is unchanged up to codec loss: as close to the photo as a plain
    # re-encode of the photo (this detailed picture loses about 38 dB to H.264 at our default quality)
    from hyperlips.media.writer import VideoWriter

    plain = tmp_path / "plain.mp4"
    with VideoWriter(plain, 512, 512, 25.0) as w:
        for _ in range(got["frames"]):
            w.write(demo_face())
    top = face_top(demo_face())
    codec_only = psnr(read_frames(plain, 1)[0][:top], demo_face()[:top])
    assert psnr(read_frames(out, 1)[0][:top], demo_face()[:top]) > codec_only - 1.0


def test_sync_hr_decoder_128(real_data, ckpt, tmp_path):
    video = real_data / "retalking" / "face3.mp4"
    audio = cut_audio(real_data / "retalking" / "audio2.wav", tmp_path / "a.wav", 0.6)
    hr = random_hr_checkpoint(tmp_path / "hr128.pth", 128)
    out = tmp_path / "out.mp4"
    r = run_sync(video, audio, out, ckpt, "--hr-checkpoint", hr, "--size", "128")
    check_output(out, video, 0.6, compare_frames=3)
    said = r.stdout.strip().splitlines()[-1]  # the HR decoder is named too (only the generator was)
    assert said.endswith(f"and the HR decoder {hr} (hyperlips-hr-128)") and str(ckpt) in said, said


@pytest.mark.slow
@pytest.mark.parametrize("i", [1, 2, 3, 4])
def test_sync_official_examples(real_data, ckpt, tmp_path, i):
    """The official examples: each video_i with its audio_i (mixed rates and channel counts), full length."""
    from hyperlips.media.audio import load_audio

    video, audio = real_data / "hyperlips" / f"video{i}.mp4", real_data / "hyperlips" / f"audio{i}.wav"
    out = tmp_path / "out.mp4"
    run_sync(video, audio, out, ckpt)
    check_output(out, video, len(load_audio(audio)) / 16000)


@pytest.mark.slow
def test_sync_30fps_full(real_data, ckpt, tmp_path):
    from hyperlips.media.audio import load_audio

    video, audio = real_data / "retalking" / "face1.mp4", real_data / "retalking" / "audio1.wav"
    out = tmp_path / "out.mp4"
    run_sync(video, audio, out, ckpt)
    check_output(out, video, len(load_audio(audio)) / 16000)


@pytest.mark.slow
def test_sync_audio_twice_as_long(real_data, ckpt, tmp_path):
    from hyperlips.media.video import probe

    video = real_data / "retalking" / "face2.mp4"
    seconds = probe(video).duration
    audio = cut_audio(real_data / "retalking" / "audio2.wav", tmp_path / "a.wav", 0, repeat=3)
    from hyperlips.media.audio import load_audio

    wav = load_audio(audio)[: int(2 * seconds * 16000)]
    import soundfile as sf

    sf.write(str(audio), wav, 16000)
    out = tmp_path / "out.mp4"
    run_sync(video, audio, out, ckpt)
    check_output(out, video, len(wav) / 16000)
