"""What ``hyperlips sync`` writes, as a player sees it: H.264 4:2:0 at every input size (odd sides padded by one
repeated pixel, the size the run reports), the exact-size 4:4:4 option, ``--crf``/``--preset``, audio starting
with the first frame, and one-line errors for bad encoder settings. Real close-ups cut to odd and even sizes."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import cut_audio, psnr, random_base_checkpoint, read_frames, run_cli

AUDIO_SECONDS = 0.6  # 15 frames at 25 fps


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return random_base_checkpoint(tmp_path_factory.mktemp("ckpt") / "base_random.pth")


@pytest.fixture(scope="module")
def speech(real_data, tmp_path_factory):
    return cut_audio(real_data / "retalking" / "audio1.wav", tmp_path_factory.mktemp("speech") / "a.wav", AUDIO_SECONDS)


def cut_clip(real_data, path, w: int, h: int, n: int = 8):
    """The first ``n`` frames of a real 25 fps close-up, cut to ``w`` x ``h`` around the face, stored 4:4:4
    (so odd sizes are kept exactly in the input)."""
    from hyperlips.media.video import FrameReader
    from hyperlips.media.writer import VideoWriter

    src = real_data / "retalking" / "face3.mp4"  # square 25 fps close-up
    with FrameReader(src) as r:
        y, x = (r.height - h) // 2, (r.width - w) // 2
        with VideoWriter(path, w, h, 25, pix_fmt="yuv444p", crf=10) as out:
            for f in r.iter_range(0, n):
                out.write(np.ascontiguousarray(f.image[y : y + h, x : x + w]))
    return path


def streams(path) -> dict:
    import av

    with av.open(str(path)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        return {"width": v.codec_context.width, "height": v.codec_context.height, "pix_fmt": v.codec_context.pix_fmt,
                "profile": v.codec_context.profile, "codec": v.codec_context.name, "audio": a.codec_context.name,
                "video_start": float(v.start_time * v.time_base), "audio_start": float(a.start_time * a.time_base),
                "frames": sum(1 for _ in c.decode(video=0)), "bytes": path.stat().st_size}


@pytest.fixture(scope="module")
def lipsync(ckpt):
    from hyperlips.pipeline import LipSync

    return LipSync(ckpt, device="cpu", progress=False)


def x264_settings(path) -> str:
    """The settings libx264 records in the stream (its SEI text: ``crf=18.0 ... subme=2 ...``)."""
    data = path.read_bytes()
    i = data.index(b"x264 - core")
    return data[i : data.index(b"\x00", i)].decode("ascii", "replace")


@pytest.mark.parametrize("size", [(331, 301), (330, 300)], ids=["odd", "even"])
def test_default_output_is_420_at_the_documented_size(real_data, lipsync, speech, tmp_path, size):
    w, h = size
    video = cut_clip(real_data, tmp_path / "in.mp4", w, h)
    out = tmp_path / "out.mp4"
    report = lipsync.sync(video, speech, out)
    got = streams(out)
    want = (w + w % 2, h + h % 2)  # 4:2:0 codes even sides only: an odd one gains one repeated column / row
    assert (got["width"], got["height"]) == want == (report.width, report.height), got  # the report is the file's
    assert got["pix_fmt"] == "yuv420p" and got["profile"] == "High" and got["codec"] == "h264", got
    assert got["frames"] == round(AUDIO_SECONDS * 25) and got["audio"] == "aac", got
    assert got["video_start"] == got["audio_start"] == 0, got  # the speech starts with the first frame
    assert " crf=18.0 " in x264_settings(out) and " subme=2 " in x264_settings(out)  # veryfast, CRF 18
    ins, outs = read_frames(video, 3), read_frames(out, 3)
    for a, b in zip(ins, outs):  # the picture keeps its place: the top rows (above the face) match the input
        assert psnr(a[:40, :w], b[:40, :w]) > 38
    if w % 2:
        assert np.abs(outs[0][:h, w].astype(int) - outs[0][:h, w - 1]).mean() < 2  # the repeated column


def test_444_option_keeps_the_exact_size(real_data, lipsync, speech, tmp_path):
    video = cut_clip(real_data, tmp_path / "in.mp4", 331, 301)
    out = tmp_path / "out.mp4"
    report = lipsync.sync(video, speech, out, pix_fmt="yuv444p")
    got = streams(out)
    assert (got["width"], got["height"], got["pix_fmt"]) == (331, 301, "yuv444p") == (report.width, report.height,
                                                                                       "yuv444p"), got
    assert got["video_start"] == got["audio_start"] == 0, got


def test_stereo_speech_stays_stereo(real_data, lipsync, tmp_path):
    """A stereo speech track (a dub's mix) comes out in stereo, each side its own; the network hears their mean."""
    import soundfile as sf

    from hyperlips.media.audio import load_audio

    video = cut_clip(real_data, tmp_path / "in.mp4", 330, 300)
    left = load_audio(real_data / "retalking" / "audio1.wav", 44100)[: int(AUDIO_SECONDS * 44100)]
    right = load_audio(real_data / "retalking" / "audio2.wav", 44100)[: len(left)]
    speech = tmp_path / "stereo.wav"
    sf.write(str(speech), np.stack([left, right], 1), 44100, subtype="FLOAT")
    out = tmp_path / "out.mp4"
    lipsync.sync(video, speech, out)
    import av

    with av.open(str(out)) as c:
        assert c.streams.audio[0].codec_context.channels == 2
    got, want = load_audio(out, 44100, keep_stereo=True), load_audio(speech, 44100, keep_stereo=True)
    n = min(got.shape[1], want.shape[1])
    assert abs(got.shape[1] - want.shape[1]) <= 0.025 * 44100
    corr = np.corrcoef(np.concatenate([got[:, :n], want[:, :n]]))[:2, 2:]  # rows: output sides, columns: input's
    assert corr[0, 0] > 0.95 and corr[1, 1] > 0.95, corr
    assert abs(corr[0, 1]) < 0.3 and abs(corr[1, 0]) < 0.3, corr  # not mixed together


def test_crf_trades_size_for_quality(real_data, lipsync, speech, tmp_path):
    video = cut_clip(real_data, tmp_path / "in.mp4", 330, 300)
    sizes = {}
    for crf in (12, 30):
        out = tmp_path / f"crf{crf}.mp4"
        lipsync.sync(video, speech, out, crf=crf)
        sizes[crf] = streams(out)["bytes"]
    assert sizes[12] > 1.5 * sizes[30], sizes  # lower CRF: better quality, bigger file


def test_command_line_encoder_options(real_data, ckpt, speech, tmp_path):
    """``--crf``, ``--preset`` and ``--pix-fmt`` reach the encoder; ``--timings`` prints the written size."""
    video = cut_clip(real_data, tmp_path / "in.mp4", 331, 301)
    out = tmp_path / "out.mp4"
    r = run_cli("sync", video, speech, "-o", out, "--checkpoint", ckpt, "--quiet", "--timings",
                "--crf", "30", "--preset", "ultrafast", "--pix-fmt", "yuv444p")
    assert r.returncode == 0, r.stderr
    got = streams(out)
    assert (got["width"], got["height"], got["pix_fmt"]) == (331, 301, "yuv444p"), got
    settings = x264_settings(out)
    assert " crf=30.0 " in settings and " subme=0 " in settings, settings  # ultrafast: no subpixel refinement
    assert "331x301" in r.stdout, r.stdout


@pytest.mark.parametrize("bad", [["--crf", "-1"], ["--crf", "52"], ["--crf", "high"], ["--crf", "18.5"],
                                 ["--preset", "turbo"], ["--pix-fmt", "yuv422p"], ["--pix-fmt", "rgb24"]],
                         ids=lambda b: " ".join(b))
def test_bad_encoder_settings_are_one_line_errors(real_data, tmp_path, bad):
    out = tmp_path / "out.mp4"
    r = run_cli("sync", real_data / "retalking" / "face3.mp4", real_data / "retalking" / "audio1.wav", "-o", out,
                "--untrained", "--quiet", *bad)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("hyperlips: error:"), r.stderr
    assert bad[0] in lines[0] and "Traceback" not in r.stderr
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("kw", [{"crf": 99}, {"preset": "fastest"}, {"pix_fmt": "yuv422p"}])
def test_python_api_refuses_bad_settings_before_any_work(real_data, tmp_path, kw):
    from hyperlips.errors import UserError
    from hyperlips.pipeline import LipSync

    ls = LipSync(untrained=True, progress=False, device="cpu")
    out = tmp_path / "out.mp4"
    with pytest.raises(UserError, match=rf"--{next(iter(kw)).replace('_', '-')} \({next(iter(kw))}\) must be"):
        ls.sync(real_data / "retalking" / "face3.mp4", real_data / "retalking" / "audio1.wav", out, **kw)
    assert not list(tmp_path.iterdir())


def test_an_output_folder_removed_while_writing_is_said_in_words(tmp_path):
    """The output's folder deleted mid-run raised a raw FileNotFoundError naming the hidden partial file."""
    import shutil

    from hyperlips.errors import MediaError
    from hyperlips.media.writer import VideoWriter

    folder = tmp_path / "renders"
    folder.mkdir()
    w = VideoWriter(folder / "out.mp4", 64, 64, 25, audio=np.zeros(16000, np.float32), sample_rate=16000)
    for k in range(10):
        w.write(np.full((64, 64, 3), 20 * k, np.uint8))
    shutil.rmtree(folder)
    with pytest.raises(MediaError, match=r"out.mp4: its folder was removed or moved while it was being written"):
        w.close()
    assert not tmp_path.joinpath("renders").exists()


def test_partial_files_of_killed_runs_are_removed_by_the_next_run(tmp_path):
    """A run killed outright (SIGKILL, out of memory) leaves its hidden partial file; later runs never removed it."""
    import os
    import time

    from hyperlips.media.writer import STALE_PARTIAL_S, VideoWriter

    old, fresh, other = (tmp_path / ".out.0a1b2c3d.partial.mp4", tmp_path / ".out.4e5f6a7b.partial.mp4",
                         tmp_path / ".other.0a1b2c3d.partial.mp4")
    # the partials of other outputs whose names begin as this one's (out.b.mp4, "out.final cut.mp4"): a paused run's
    # was deleted, and it failed at its very end
    longer = (tmp_path / ".out.b.0a1b2c3d.partial.mp4", tmp_path / ".out.final cut.0a1b2c3d.partial.mp4")
    for p in (old, fresh, other, *longer):
        p.write_bytes(b"\0" * 100)
    long_ago = time.time() - STALE_PARTIAL_S - 60
    for p in (old, other, *longer):
        os.utime(p, (long_ago, long_ago))
    w = VideoWriter(tmp_path / "out.mp4", 64, 64, 25)
    w.write(np.zeros((64, 64, 3), np.uint8))
    w.close()
    assert not old.exists() and fresh.exists() and other.exists()  # a run may still be writing the fresh one
    assert all(p.exists() for p in longer)


def test_the_same_frames_make_the_same_file(tmp_path):
    """libx264's AVX-512 code coded the same frames differently from run to run after other FFmpeg work in the
    process (here the previous file decoded, its reader left open, as sync's reader runs beside its writer): 5-7 of
    8 files differed. Where the CPU has no AVX-512 this holds anyway."""
    import hashlib

    import av

    from hyperlips.media.writer import VideoWriter

    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
    digests, readers = [], []
    for run in range(5):
        if run:  # decode what the last run wrote, and leave its reader open
            readers.append(av.open(str(tmp_path / f"out{run - 1}.mp4")))
            for f in readers[-1].decode(video=0):
                f.to_ndarray(format="rgb24")
        out = tmp_path / f"out{run}.mp4"
        w = VideoWriter(out, 320, 240, 25, audio=np.zeros(32000, np.float32), sample_rate=16000)
        for k in range(50):
            w.write(np.roll(base, 3 * k, axis=1))
        w.close()
        digests.append(hashlib.sha256(out.read_bytes()).hexdigest())
    for r in readers:
        r.close()
    assert len(set(digests)) == 1, f"{len(set(digests))} different files from the same frames"


@pytest.mark.parametrize("flags, params", [
    ({"avx2", "avx512f", "avx512bw"}, {"x264-params": "asm=AVX2,Cache64"}),
    ({"avx2", "fma"}, {}),
    ({"neon", "asimd"}, {}),
    (set(), {}),
])
def test_libx264_is_kept_off_its_avx512_code_only_where_there_is_some(flags, params):
    from hyperlips.media.writer import x264_params

    assert x264_params(frozenset(flags)) == params


def test_an_output_too_large_to_play_on_phones_is_said():
    """A 12-megapixel phone photo gave a 4000x3000 H.264 file (level 6) with no word, while the docs said the
    default output plays in every browser and phone."""
    from hyperlips.media.writer import too_large_to_play

    assert too_large_to_play(4000, 3000) and "scale the input down" in too_large_to_play(4000, 3000)
    assert too_large_to_play(4096, 2304) is None and too_large_to_play(1920, 1080) is None
    assert too_large_to_play(3840, 2160) is None and too_large_to_play(2160, 3840) is None  # 4K, either way up
    # frames a second count too: 4K at 120 fps, 4096x2304 at 60, are coded above level 5.2 (they said nothing)
    assert "--fps 60 (or less)" in too_large_to_play(3840, 2160, 120)
    assert "--fps 56 (or less)" in too_large_to_play(4096, 2304, 60)
    assert too_large_to_play(3840, 2160, 60) is None and too_large_to_play(1920, 1080, 240) is None
    assert too_large_to_play(1920, 1080, 30000 / 1001) is None


def test_an_output_path_too_long_for_the_system_is_said_so(tmp_path):
    """An output whose whole path nears 4096 bytes: its working file's path passed the limit, said as "File name too
    long; choose a folder you can write to" (the folder was writable)."""
    import os

    from hyperlips.errors import MediaError
    from hyperlips.media.writer import VideoWriter

    folder = str(tmp_path)
    while len(os.fsencode(folder)) < 3900:
        folder = os.path.join(folder, "d" * 200)
        os.mkdir(folder)
    name = "o" * (4090 - len(os.fsencode(folder)) - 5) + ".mp4"
    with pytest.raises(MediaError, match="the path of its working file beside it .* passes the 4096 bytes this system "
                                         "takes: choose a shorter path"):
        VideoWriter(os.path.join(folder, name), 64, 64, 25)


def test_an_output_written_over_keeps_its_permissions(tmp_path):
    """A group-writable output on a team's share, written again: the new file had this user's defaults (664 became
    644, and this user's group: the team could no longer replace it). A new output gets the defaults."""
    import os
    import stat

    from hyperlips.media.writer import VideoWriter

    out = tmp_path / "perm.mp4"
    out.write_bytes(b"the old render")
    mine = os.stat(out).st_gid
    team = next((g for g in (os.getgroups() if os.geteuid() else [mine + 100]) if g != mine), None)  # (root: any)
    if team is not None:  # the share's group, not this user's own: the group mode was for it
        os.chown(out, -1, team)
    os.chmod(out, 0o664)
    old = os.umask(0o022)
    try:
        for path in (out, tmp_path / "new.mp4"):
            with VideoWriter(path, 64, 64, 25) as w:
                w.write(np.zeros((64, 64, 3), np.uint8))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o664 and out.read_bytes() != b"the old render"
    if team is not None:
        assert os.stat(out).st_gid == team, (os.stat(out).st_gid, team)
    assert stat.S_IMODE(os.stat(tmp_path / "new.mp4").st_mode) == 0o644


def test_an_output_that_is_a_link_is_written_where_it_points(tmp_path):
    """A batch writing over out.mp4, a link to a delivery copy: the file renamed into place replaced the link, and
    the copy it pointed to stayed the old one. It is written through the link, as writing a file through one is."""
    import os

    from hyperlips.media.writer import VideoWriter

    target = tmp_path / "delivery" / "final.mp4"
    target.parent.mkdir()
    target.write_bytes(b"old")
    link = tmp_path / "out.mp4"
    os.symlink(target, link)
    with VideoWriter(link, 64, 64, 25) as w:
        for _ in range(3):
            w.write(np.zeros((64, 64, 3), np.uint8))
    assert link.is_symlink() and target.stat().st_size > 100
    assert len(read_frames(link)) == 3
