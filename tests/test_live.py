"""The live API (``LipSync.stream``, ``hyperlips live``): frames of an idle video driven by speech that arrives in
chunks. With the offline mel statistics its frames are ``sync``'s byte for byte; a frame comes out once the speech
its window needs is in, not at the end; the running statistics HyperLips-Lite uses by default converge to the
offline ones."""

from __future__ import annotations

import queue
import threading
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from helpers import cut_audio, cut_video, run_cli, spied_frames, write_wav

from hyperlips.media.video import FrameReader, probe


@pytest.fixture(scope="module")
def clip(real_data, tmp_path_factory):
    """An idle clip of 20 frames (0.8 s, 360 px) and 1.6 s of speech (ping-pong, 40 frames)."""
    from hyperlips.media.audio import load_audio

    folder = tmp_path_factory.mktemp("live")
    speech = cut_audio(real_data / "retalking" / "audio1.wav", folder / "speech.wav", 1.6)
    return SimpleNamespace(folder=folder, speech=speech, wav=load_audio(speech),
                           video=cut_video(real_data / "retalking" / "face2.mp4", folder / "idle.mp4", 20, size=360))


def chunks(wav, ms=40):
    n = int(16000 * ms / 1000)
    return [wav[i : i + n] for i in range(0, len(wav), n)]


class MelTint(torch.nn.Module):
    """A generator with Base's 16-step windows (no ``mel_steps``) whose face is the reference with a contrast set by
    its mel window (colour matching keeps contrast), so the window's values reach the pixels."""

    def forward(self, audio, faces):  # (N,1,80,16), (N,6,128,128) -> (N,3,128,128)
        level = torch.sigmoid(audio.mean(dim=(1, 2, 3)) * 2.0)[:, None, None, None]
        ref = faces[:, 3:]
        return (ref.mean(dim=(2, 3), keepdim=True) + (ref - ref.mean(dim=(2, 3), keepdim=True)) * 2 * level).clamp(0, 1)


def offline_and_live(clip, ls, stats=None):
    offline = spied_frames(lambda: ls.sync(clip.video, clip.speech, clip.folder / "offline.mp4"))
    live = [f.image.copy() for f in ls.stream(clip.video, iter(chunks(clip.wav)), speech_stats=stats)]
    return offline, live


@pytest.mark.parametrize("smooth", [0, 12])
def test_lite_with_the_speech_statistics_streams_the_offline_frames(clip, smooth):
    """Also for a network that reads the log-mel smoothed across frequency (``mel_smooth``)."""
    from hyperlips.live import SpeechStats
    from hyperlips.media.audio import melspectrogram
    from hyperlips.models import HyperLipsLite, LiteConfig
    from hyperlips.pipeline import LipSync

    torch.manual_seed(0)
    net = HyperLipsLite(LiteConfig(mel_smooth=smooth)).eval()
    ls = LipSync(network=net, device="cpu", progress=False, batch_size=1)
    offline, live = offline_and_live(clip, ls, SpeechStats.of(melspectrogram(clip.wav), smooth))
    assert len(offline) == len(live) == 40
    for j, (a, b) in enumerate(zip(offline, live)):
        assert np.array_equal(a, b), f"streamed frame {j} differs from sync's"


def test_phoneme_timings_close_the_streamed_warped_mouth_as_sync_does(clip):
    """The starter's warped mouth with phoneme timings known in advance: the stream's frames are those of ``sync``
    given the same timings (its network reading them as its phones), and not those without them."""
    from hyperlips.live import SpeechStats
    from hyperlips.media.audio import melspectrogram
    from hyperlips.media.phone_marks import PhoneMark
    from hyperlips.pipeline import LipSync

    ls = LipSync(device="cpu", progress=False, batch_size=4, mouth="warp", precision="fp32")
    assert ls.given_phones  # the starter reads phones
    stats = SpeechStats.of(melspectrogram(clip.wav), ls.base.mel_smooth)
    marks = [PhoneMark(0.0, 0.2, "AA"), PhoneMark(0.2, 0.6, "M"), PhoneMark(0.6, 1.6, "AA")]
    offline = spied_frames(lambda: ls.sync(clip.video, clip.speech, clip.folder / "marks.mp4", phonemes=marks))
    live = [f.image.copy() for f in ls.stream(clip.video, iter(chunks(clip.wav)), speech_stats=stats, phonemes=marks)]
    plain = [f.image.copy() for f in ls.stream(clip.video, iter(chunks(clip.wav)), speech_stats=stats)]
    assert len(offline) == len(live) == len(plain) == 40
    for j, (a, b) in enumerate(zip(offline, live)):
        assert np.abs(a.astype(int) - b).max() <= 1, f"streamed frame {j} differs from sync's"
    changed = {j for j in range(40) if not np.array_equal(live[j], plain[j])}
    assert set(range(5, 16)) <= changed, changed  # 0.2-0.6 s: the /m/


def test_base_windows_stream_the_offline_frames(clip):
    """Base's mel needs no statistics: the stream is sync, including the first and last frames (whose windows reach
    before the start and past the end of the speech)."""
    from hyperlips.pipeline import LipSync

    ls = LipSync(network=MelTint(), device="cpu", progress=False, batch_size=1, precision="fp32")
    offline, live = offline_and_live(clip, ls)
    assert len(offline) == len(live) == 40
    for j, (a, b) in enumerate(zip(offline, live)):
        assert np.array_equal(a, b), f"streamed frame {j} differs from sync's"
    # the frames do depend on the windows: speech 40 ms later changes them
    late = [f.image for f in ls.stream(clip.video, iter(chunks(np.concatenate([np.zeros(640, np.float32), clip.wav]))))]
    assert sum(not np.array_equal(a, b) for a, b in zip(offline, late)) > 30


def test_a_frame_comes_out_before_the_speech_ends(clip):
    """Speech is given 40 ms at a time; after 0.6 s of it (and nothing more) the first frames come out."""
    from hyperlips.pipeline import LipSync

    torch.manual_seed(0)
    ls = LipSync(untrained=True, model="lite", device="cpu", progress=False, batch_size=4)
    q: queue.Queue = queue.Queue()

    def speech():
        while (c := q.get()) is not None:
            yield c

    frames = ls.stream(clip.video, speech())
    first = []
    t = threading.Thread(target=lambda: first.append(next(frames)))
    t.start()
    for c in chunks(clip.wav[: int(0.6 * 16000)]):
        q.put(c)
    t.join(timeout=300)
    assert first and first[0].index == 0 and first[0].image.shape == (360, 360, 3)
    q.put(None)  # the speech ends after 0.6 s: 15 frames in all
    assert [f.index for f in frames] == list(range(1, 15))


@pytest.mark.parametrize("smooth", [0, 12])
def test_running_statistics_converge_to_the_speech_statistics(real_data, smooth):
    """Lite's windows with the statistics of the speech so far against sync's (the whole speech's): far apart in the
    first half second, within 0.25 (normalised mel units; the windows' mean magnitude is about 0.85) from the second
    to the fourth second, within 0.1 after."""
    from hyperlips.live import MelFeed
    from hyperlips.media.audio import centred_mel_windows, load_audio, melspectrogram, normalise_utterance

    wav = load_audio(real_data / "retalking" / "audio1.wav")
    net = SimpleNamespace(mel_steps=56, mel_norm="utterance", mel_smooth=smooth)
    mel = normalise_utterance(melspectrogram(wav), smooth)
    n = int(len(wav) / 16000 * 25)
    want = centred_mel_windows(mel, np.arange(n) / 25, 56, fill=mel.min(axis=1))
    feed = MelFeed(net, 25.0, 16000)
    feed.feed(chunks(wav))
    got = np.concatenate([feed.windows([j]) for j in range(n)])
    err = np.abs(got - want).reshape(n, -1).mean(axis=1)
    assert err[:12].mean() > 0.2
    assert err[50:100].max() < 0.25 and err[100:].max() < 0.1, err


def test_stream_mistakes(clip):
    from hyperlips.errors import UserError
    from hyperlips.pipeline import LipSync

    ls = LipSync(network=MelTint(), device="cpu", progress=False, precision="fp32")
    for rate in (16000.5, "16000", 100):
        with pytest.raises(UserError, match="sample_rate must be the chunks' sample rate in Hz"):
            next(ls.stream(clip.video, iter(chunks(clip.wav)), sample_rate=rate))
    with pytest.raises(UserError, match=r"1-D mono .*several channels\? pass one, e.g. chunk\[:, 0\]"):
        list(ls.stream(clip.video, iter([np.zeros((640, 2), np.float32)])))
    import array

    raw = array.array("B", np.zeros(1280, np.uint8).tobytes())  # a sound library's raw buffer of int16 PCM bytes
    with pytest.raises(UserError, match=r"not bytes: .*np.frombuffer\(chunk, np.int16\)"):
        list(ls.stream(clip.video, iter([raw])))


def test_a_stream_at_another_rate_gives_the_frames_of_the_same_speech_read_from_a_file(clip, real_data):
    """A microphone's 48 kHz or a speech synthesiser's 22.05 kHz were refused ("resample them first", pointing at a
    file reader); resampling each chunk on its own put a seam at every chunk edge (the mouth up to 55 grey levels
    off). The chunks are resampled as they come, with the file's filter kept running: `sync`'s frames of the file."""
    import soundfile as sf

    from hyperlips.media.audio import load_audio
    from hyperlips.pipeline import LipSync

    ls = LipSync(network=MelTint(), device="cpu", progress=False, precision="fp32", batch_size=1)
    for rate in (48000, 22050):
        wav = load_audio(real_data / "retalking" / "audio1.wav", rate)[: int(1.6 * rate)]
        path = clip.folder / f"speech_{rate}.wav"
        sf.write(str(path), wav, rate, subtype="FLOAT")
        offline = spied_frames(lambda: ls.sync(clip.video, path, clip.folder / "offline_rate.mp4"))
        n = int(rate * 0.04)
        live = [f.image for f in ls.stream(clip.video, iter([wav[i: i + n] for i in range(0, len(wav), n)]),
                                           sample_rate=rate)]
        assert len(live) == len(offline) == 40
        assert max(np.abs(a.astype(int) - b).max() for a, b in zip(offline, live)) <= 1, rate


def test_speech_statistics_of_a_mel_smoothed_otherwise_are_refused(clip):
    """`SpeechStats.of(mel)` without the network's smoothing (the starter reads its mel smoothed with 12) was taken,
    and put the mouth up to 73 grey levels off on every frame of the stream; `ls.speech_stats(voice)` measures them
    as the network reads its mel."""
    from hyperlips.errors import UserError
    from hyperlips.live import SpeechStats
    from hyperlips.media.audio import melspectrogram
    from hyperlips.models import HyperLipsLite, LiteConfig
    from hyperlips.pipeline import LipSync

    ls = LipSync(network=HyperLipsLite(LiteConfig(mel_smooth=12)).eval(), device="cpu", progress=False)
    with pytest.raises(UserError, match="measured on a mel smoothed with 0, and this network reads it smoothed with 12"):
        next(ls.stream(clip.video, iter(chunks(clip.wav)), speech_stats=SpeechStats.of(melspectrogram(clip.wav))))
    stats = ls.speech_stats(clip.speech)
    assert stats.smooth == 12
    assert np.allclose(stats.mean, SpeechStats.of(melspectrogram(clip.wav), 12).mean)
    assert np.allclose(ls.speech_stats(clip.wav).std, stats.std)
    # samples as a stream takes them: int16 scaled (its statistics were 6 off in the mean), NaN silenced and said
    # (the statistics were NaN)
    assert np.allclose(ls.speech_stats((clip.wav * 32767).astype(np.int16)).mean, stats.mean, atol=0.05)
    from hyperlips.errors import InputWarning

    nan = clip.wav.copy()
    nan[100] = np.nan
    with pytest.warns(InputWarning, match="not numbers"):
        assert np.isfinite(ls.speech_stats(nan).mean).all()


def test_stream_samples_are_read_as_sync_reads_a_file(clip):
    """Samples that are not numbers became NaN mel windows and a blank mouth from there on, silently (``sync`` reads
    them as silence, with a warning): the stream now does the same; int16 values given as floats, other integer
    types, a lone number for a chunk, no sample at all, and a batch size of 0 are refused in one line each."""
    from hyperlips.errors import InputWarning, UserError
    from hyperlips.pipeline import LipSync

    ls = LipSync(network=MelTint(), device="cpu", progress=False, precision="fp32")
    clean = [f.image for f in ls.stream(clip.video, iter(chunks(clip.wav)))]
    nan = clip.wav.copy()
    nan[8000] = np.nan  # one sample, 0.5 s in
    silenced = clip.wav.copy()
    silenced[8000] = 0.0
    with pytest.warns(InputWarning, match="not numbers .* replaced by silence"):
        got = [f.image for f in ls.stream(clip.video, iter(chunks(nan)))]
    want = [f.image for f in ls.stream(clip.video, iter(chunks(silenced)))]
    assert len(got) == len(want) == len(clean) and all(np.array_equal(a, b) for a, b in zip(got, want))
    as_int16 = [f.image for f in ls.stream(clip.video, iter(chunks(np.round(clip.wav * 32767).astype(np.int16))))]
    assert max(np.abs(a.astype(int) - b).max() for a, b in zip(as_int16, clean)) <= 2
    loud = clip.wav / np.abs(clip.wav).max() * 1.5
    with pytest.warns(InputWarning, match="beyond full scale"):
        clipped = [f.image for f in ls.stream(clip.video, iter(chunks(loud)))]
    assert len(clipped) == len(clean)
    for speech, words in ((clip.wav * 32767, "int16 values given as floats"),
                          ((clip.wav * 2**31).astype(np.int32), "got int32"), (clip.wav, "a single number"),
                          ([], "without a sample")):
        with pytest.raises(UserError, match=words):
            list(ls.stream(clip.video, iter(chunks(speech) if len(speech) and words != "a single number" else speech)))
    # what was given, said as what it is: None and a string were "a single number", complex samples "integer PCM"
    for chunk, words in ((None, "got None"), ("abc", "got a string"), (["a", "b"], "list holding <U1"),
                         (clip.wav[:640].astype(np.complex64), "complex ones"), ([object()], "holding object")):
        with pytest.raises(UserError, match=f"speech chunks must be .*{words}"):
            list(ls.stream(clip.video, iter([chunk])))
    with pytest.raises(UserError, match="batch_size must be a whole number of at least 1"):
        next(ls.stream(clip.video, iter(chunks(clip.wav)), batch_size=0))


def test_a_voice_sample_without_speech_is_refused(clip, tmp_path):
    """A silent (or very short) voice sample gave statistics that divided the speech by about nothing: a blank
    mouth, silently. Refused now, in the API and in `live --voice-sample`."""
    from hyperlips.errors import UserError
    from hyperlips.live import SpeechStats
    from hyperlips.media.audio import melspectrogram

    assert SpeechStats.of(melspectrogram(clip.wav)).std.min() > 0.1  # real speech passes
    with pytest.raises(UserError, match="voice sample is silent"):
        SpeechStats.of(melspectrogram(np.zeros(32000, np.float32)))
    with pytest.raises(UserError, match="at least 0.5 s of speech"):
        SpeechStats.of(melspectrogram(clip.wav[:1000]))
    silent = write_wav(tmp_path / "silence.wav", 2.0)
    import soundfile as sf

    sf.write(str(silent), np.zeros(32000, np.float32), 16000)
    r = run_cli("live", clip.video, clip.speech, "-o", tmp_path / "o.mp4", "--untrained", "--model", "lite",
                "--no-pace", "--quiet", "--voice-sample", silent)
    assert r.returncode == 2 and "voice sample is silent" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = run_cli("live", clip.video, clip.speech, "-o", tmp_path / "o.mp4", "--untrained", "--model", "lite",
                "--no-pace", "--quiet", "--voice-sample", tmp_path / "nope.wav")  # read as if it were AUDIO's
    assert r.returncode == 2 and "--voice-sample not found: " in r.stderr, r.stderr


def test_live_command_writes_the_stream_and_reports_latency(clip):
    out = clip.folder / "live.mp4"
    r = run_cli("live", clip.video, clip.speech, "-o", out, "--untrained", "--model", "lite", "--no-pace", "--quiet",
                "--chunk-ms", "20")
    assert r.returncode == 0, r.stderr
    for words in ("40 frames", "fed as fast as possible", "frames/s", "x real time", "latency is measured when"):
        assert words in r.stdout, r.stdout
    assert "latency median" not in r.stdout  # unpaced, a frame's delay after its time would be negative
    from helpers import probe_streams

    got = probe_streams(out)
    assert (got["frames"], got["width"], got["height"], got["audio_codec"]) == (40, 360, 360, "aac")
    assert probe(out).sample_aspect == 1


def test_live_keeps_the_videos_pixel_shape(clip):
    """An anamorphic idle video (pixels shown 4/3 as wide as high) gives a stream shown with the same shape."""
    from media_builders import write_video

    with FrameReader(clip.video) as r:
        frames = [f.image for f in r][:8]
    wide = write_video(clip.folder / "anamorphic.mp4", frames, sample_aspect=Fraction(4, 3))
    out = clip.folder / "live_anamorphic.mp4"
    r = run_cli("live", wide, clip.speech, "-o", out, "--untrained", "--model", "lite", "--no-pace", "--quiet")
    assert r.returncode == 0, r.stderr
    assert probe(out).sample_aspect == Fraction(4, 3)


@pytest.mark.parametrize("args, words", [
    (("--chunk-ms", "0"), ("--chunk-ms",)),
    (("--precision", "fp16", "--device", "cpu"), ("fp16", "CUDA")),
])
def test_live_command_mistakes_are_one_line(clip, args, words):
    out = clip.folder / "bad.mp4"
    r = run_cli("live", clip.video, clip.speech, "-o", out, "--untrained", "--model", "lite", "--quiet", *args)
    lines = [x for x in r.stderr.splitlines() if x.startswith("hyperlips:")]
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert all(w in lines[0] for w in words), lines
    assert not out.exists()
    r = run_cli("live", clip.folder / "missing.mp4", clip.speech, "-o", out, "--untrained", "--quiet")
    assert r.returncode == 2 and "missing.mp4" in r.stderr and "Traceback" not in r.stderr


def test_the_live_summary_gives_latencies_only_for_speech_fed_in_real_time():
    from hyperlips.live import LiveReport

    lat = np.array([0.52, 0.44, 0.43, 0.61])
    paced = LiveReport(Path("o.mp4"), 4, 25.0, 0.16, 0.7, lat, 0.36, 40.0, True, 0.81).summary()
    assert "4 frames" in paced and "first frame latency 520 ms" in paced and "max 610 ms" in paced
    assert ("look-ahead alone: 360 ms); real-time factor 4.38 (timed from the first chunk read; before it, 0.81 s to "
            "open the idle clip and find its face)") in paced, paced
    # a short reply: the fixed look-ahead makes the factor large, yet the frames kept their pace (they were said to
    # fall behind, "each frame later than the one before", with latencies falling)
    assert "behind" not in paced
    keeping_up = LiveReport(Path("o.mp4"), 4, 25.0, 0.16, 0.17, lat, 0.36, 40.0, True).summary()
    assert "real-time factor 1.06 (timed from the first chunk read)" in keeping_up and "behind" not in keeping_up
    growing = np.linspace(0.45, 1.45, 50)  # 2 s of speech rendered at 2/3 of real time
    behind = LiveReport(Path("o.mp4"), 50, 25.0, 2.0, 3.45, growing, 0.36, 40.0, True).summary()
    assert ("warning: it fell behind the speech (its frames came 1.0 s later by the end than at the start: the last "
            "1.4 s late); this machine cannot render this stream in real time: a lower --fps, HyperLips-Lite or other "
            "programs stopped would help") in behind, behind
    lite = LiveReport(Path("o.mp4"), 50, 25.0, 2.0, 3.45, growing, 0.36, 40.0, True, lite=True).summary()
    assert "a lower --fps or other programs stopped would help" in lite  # not advised to use what it uses
    # a warped mouth (the starter's default) is the slower: at 720p on two cores it fell behind where --mouth render
    # kept up (real-time factor 1.39 against 1.10), and the advice left render out
    warped = LiveReport(Path("o.mp4"), 50, 25.0, 2.0, 3.45, growing, 0.36, 40.0, True, lite=True, mouth="warp")
    assert "real time: --mouth render, a lower --fps or other programs stopped would help" in warped.summary()
    hybrid = LiveReport(Path("o.mp4"), 50, 25.0, 2.0, 3.45, growing, 0.36, 40.0, True, lite=True, mouth="hybrid")
    assert "--mouth render, a lower --fps" in hybrid.summary()
    jitter = LiveReport(Path("o.mp4"), 50, 25.0, 2.0, 2.5, growing * 0 + 0.5 + 0.2 * (np.arange(50) % 2), 0.36,
                        40.0, True).summary()
    assert "behind" not in jitter
    fast = LiveReport(Path("o.mp4"), 1, 25.0, 0.04, 0.02, lat[:1] - 1.0, 0.36, 40.0, False).summary()
    assert "1 frame @" in fast and "50.0 frames/s, 2.00x real time" in fast and "latency median" not in fast


def _native_threads() -> int:
    import os

    return len(os.listdir(f"/proc/{os.getpid()}/task"))


def test_one_call_at_a_time_per_lipsync_and_its_trackers_released(clip):
    """Two calls on one LipSync at once (two threads, or two streams read in turn) closed each other's mouth tracker:
    an internal AttributeError or a MediaPipe timestamp error. A LipSync dropped kept its trackers' native threads
    and about 30 MB each (12 LipSyncs made and dropped: 6 -> 24 MediaPipe threads)."""
    import gc

    from hyperlips.errors import UserError
    from hyperlips.pipeline import LipSync

    ls = LipSync(untrained=True, model="lite", device="cpu", progress=False, batch_size=4, mouth="warp")
    stream = ls.stream(clip.video, iter(chunks(clip.wav)))
    assert next(stream).index == 0  # the stream holds the LipSync now
    with pytest.raises(UserError, match="this LipSync is busy with a stream: it runs one sync or stream at a time"):
        ls.sync(clip.video, clip.speech, clip.folder / "busy.mp4")
    with pytest.raises(UserError, match="busy with a stream"):
        next(ls.stream(clip.video, iter(chunks(clip.wav))))
    stream.close()
    ls.sync(clip.video, clip.speech, clip.folder / "after.mp4")  # free again
    assert ls._natives.get("mouth") is not None
    held = _native_threads()
    ls.close()
    assert _native_threads() < held and not ls._natives  # the FaceMesh graph's threads are gone
    ls.sync(clip.video, clip.speech, clip.folder / "again.mp4")  # and it still works
    assert _native_threads() >= held - 1
    before = _native_threads()
    del ls
    gc.collect()
    assert _native_threads() < before  # freed with the LipSync, without close()


def test_ctrl_c_while_the_speech_pauses_reaches_the_caller_at_once(clip):
    """A consumer interrupted while it waits for frames of speech that has paused (a microphone between utterances)
    got its KeyboardInterrupt 30 s late: the chain's threads were joined before the speech feed was released."""
    import subprocess
    import sys

    code = f"""
import os, queue, signal, threading, time
import numpy as np
signal.signal(signal.SIGINT, signal.default_int_handler)  # a test runner's worker may hand SIGINT down ignored
from hyperlips.media.audio import load_audio
from hyperlips.pipeline import LipSync
ls = LipSync(untrained=True, model="lite", device="cpu", progress=False, batch_size=4)
wav = load_audio({str(clip.speech)!r})
q = queue.Queue()
for i in range(0, 9600, 640):
    q.put(wav[i:i + 640])  # 0.6 s of speech, then nothing (and no end)
def speech():
    while True:
        yield q.get()
seen = []
def interrupt():
    while len(seen) < 3:
        time.sleep(0.05)
    time.sleep(1.0)  # the consumer now waits inside the stream for frames that need more speech
    seen.append(time.perf_counter())
    os.kill(os.getpid(), signal.SIGINT)  # a real signal: it wakes a wait, as Ctrl-C does
threading.Thread(target=interrupt, daemon=True).start()
try:
    for frame in ls.stream({str(clip.video)!r}, speech()):
        seen.append(frame.index)
except KeyboardInterrupt:
    print("late", round(time.perf_counter() - seen[-1], 2))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.startswith("late"), res.stderr[-2000:]
    assert float(res.stdout.split()[1]) < 5.0, res.stdout


def test_bytes_and_no_speech_are_refused_with_what_to_pass(clip):
    """A websocket's bytes were told "a single number" or "uint8"; ``speech=None`` ended in a bare TypeError."""
    from hyperlips.errors import UserError
    from hyperlips.pipeline import LipSync

    ls = LipSync(network=MelTint(), device="cpu", progress=False, precision="fp32")
    pcm = (clip.wav[:640] * 32767).astype(np.int16).tobytes()
    for chunk in (pcm, bytearray(pcm)):
        with pytest.raises(UserError, match=r"not bytes: .*np\.frombuffer\(chunk, np\.int16\)"):
            list(ls.stream(clip.video, iter([chunk])))
    for speech in (None, pcm):
        with pytest.raises(UserError, match="speech must be an iterable of chunks"):
            next(ls.stream(clip.video, speech))

    async def agen():  # an async generator (a web framework's) or a number: said at once, not as a bare TypeError
        yield clip.wav[:640]  # from the feeding thread after the set-up

    with pytest.raises(UserError, match=r"got async_generator\) \(an async iterable: feed its chunks from a thread"):
        next(ls.stream(clip.video, agen()))
    with pytest.raises(UserError, match=r"speech must be an iterable of chunks .*\(got int\)"):
        next(ls.stream(clip.video, 5))
    from hyperlips.media.audio import melspectrogram

    mel = melspectrogram(clip.wav, ls.audio_cfg)
    for stats in (mel, {"mean": 0}, "stats.npy"):  # the mel itself, not its statistics: numpy's "truth value..."
        with pytest.raises(UserError, match=r"speech_stats must be a hyperlips.live.SpeechStats, e.g. ls.speech_stats\(VOICE_SAMPLE\)"):
            next(ls.stream(clip.video, iter([clip.wav]), speech_stats=stats))


def test_live_checks_phoneme_timings_against_the_speech_and_makes_no_folder_for_a_failed_run(clip, tmp_path):
    """``live --phonemes`` said nothing of timings past the end of the speech (``sync`` warns); a run that failed on
    its input (no face) left the output's folders behind."""
    marks = tmp_path / "marks.txt"
    marks.write_text("0.10 p\n4.80 a\n")  # the speech is 1.6 s long
    out = tmp_path / "o.mp4"
    r = run_cli("live", clip.video, clip.speech, "-o", out, "--untrained", "--no-pace", "--phonemes", marks, "--quiet")
    assert r.returncode == 0 and "the phoneme timings run to 4.80 s, past the end of the speech (1.60 s)" in r.stderr, \
        r.stderr
    blank = tmp_path / "blank.png"
    import cv2

    cv2.imwrite(str(blank), np.full((64, 64, 3), 128, np.uint8))
    r = run_cli("live", blank, clip.speech, "-o", tmp_path / "new" / "a" / "o.mp4", "--untrained", "--no-pace")
    assert r.returncode == 2 and "no face" in r.stderr, r.stderr
    assert not (tmp_path / "new").exists()


def test_speech_stats_checks_the_sample_rate_as_a_stream_does(clip):
    """``speech_stats(samples, sample_rate=48)`` (kHz by mistake) resampled them x333 and called the voice silent;
    ``sample_rate=1`` asked for gigabytes. Both are refused as ``stream`` refuses them; a float holding a whole value
    (24000.0, 16000.0) is taken by both."""
    from hyperlips.errors import UserError
    from hyperlips.pipeline import LipSync

    ls = LipSync(network=MelTint(), device="cpu", progress=False, precision="fp32")
    for rate, wav in ((48, clip.wav), (1, clip.wav[:800]), (24000.5, clip.wav), ("16000", clip.wav)):
        with pytest.raises(UserError, match=r"sample_rate must be the samples' sample rate in Hz, a whole number "
                                            r"from 4000 to 384000 \(got"):
            ls.speech_stats(wav, sample_rate=rate)
    assert np.array_equal(ls.speech_stats(clip.wav, sample_rate=16000.0).mean, ls.speech_stats(clip.wav).mean)
    assert len(list(ls.stream(clip.video, iter(chunks(clip.wav)), sample_rate=16000.0))) == 40


def test_several_channels_are_refused_with_advice_for_their_layout(clip):
    """Channel-first stereo (2, N) was told to pass ``chunk[:, 0]``, which takes 2 samples of it (1 s of speech
    streamed as 1 frame, without a word); a (1, 2) chunk, one stereo frame, was read as 2 mono samples."""
    from hyperlips.errors import UserError
    from hyperlips.live import pcm_samples
    from hyperlips.pipeline import LipSync

    two = np.stack([clip.wav[:640], clip.wav[:640]])
    with pytest.raises(UserError, match=r"shape \(2, 640\) .*e\.g\. chunk\[0\] for these channels by sample, or their "
                                        r"mean, chunk\.mean\(axis=0\)"):
        pcm_samples(two)
    with pytest.raises(UserError, match=r"e\.g\. chunk\[:, 0\] for these samples by channel, or their mean, "
                                        r"chunk\.mean\(axis=1\)"):
        pcm_samples(two.T)
    with pytest.raises(UserError, match=r"shape \(1, 2\): one frame of 2 channels, or 2 samples of one\?"):
        pcm_samples(np.array([[0.1, 0.1]], np.float32))
    assert pcm_samples(two[:1]).shape == (640,) and pcm_samples(two[:1].T).shape == (640,)  # one channel: mono
    ls = LipSync(network=MelTint(), device="cpu", progress=False, precision="fp32")
    with pytest.raises(UserError, match=r"chunk\[0\] for these channels by sample"):
        ls.speech_stats(np.stack([clip.wav, clip.wav]))


def test_live_help_says_which_sync_a_voice_sample_of_the_speech_gives():
    """``--voice-sample SPEECH`` "reproduces sync", said its help: with the starter (which reads phones) the frames
    are those of ``sync --no-phones``, every frame up to 54 grey levels off plain ``sync``'s."""
    import argparse

    from hyperlips.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: a.help for a in sub.choices["live"]._actions}
    assert "reproduces sync" not in helps["voice_sample"]
    assert "the frames of sync --no-phones, as a stream reads no phones" in helps["voice_sample"], helps["voice_sample"]
    assert "sync --phonemes FILE where --phonemes FILE is given to both" in helps["voice_sample"]


def test_a_voice_sample_for_base_is_said_to_be_unused(clip, tmp_path):
    """HyperLips-Base's mel takes no statistics: a voice sample was read, measured and dropped without a word
    (``--phonemes`` in the same case is warned of)."""
    from hyperlips.errors import InputWarning
    from hyperlips.pipeline import LipSync

    ls = LipSync(network=MelTint(), device="cpu", progress=False, precision="fp32")
    with pytest.warns(InputWarning, match=r"a voice sample \(--voice-sample, speech_stats\) is not used by the given "
                                          r"MelTint network: HyperLips-Base's mel needs no statistics"):
        assert len(list(ls.stream(clip.video, iter(chunks(clip.wav)), speech_stats=ls.speech_stats(clip.wav)))) == 40
    r = run_cli("live", clip.video, clip.speech, "-o", tmp_path / "o.mp4", "--untrained", "--model", "base",
                "--no-pace", "--quiet", "--voice-sample", clip.speech)
    assert r.returncode == 0 and "a voice sample (--voice-sample, speech_stats) is not used by untrained (random) " \
        "weights" in r.stderr, r.stderr


def test_a_path_given_as_the_speech_says_how_to_stream_a_file(clip):
    """``stream(video, Path("speech.wav"))`` was told only "(got PosixPath)" (``speech_stats`` takes a path)."""
    from hyperlips.errors import UserError
    from hyperlips.pipeline import LipSync

    ls = LipSync(network=MelTint(), device="cpu", progress=False, precision="fp32")
    for speech in (clip.speech, str(clip.speech)):
        with pytest.raises(UserError, match=r"speech must be an iterable of chunks .*\(got (PosixPath|str)\): to "
                                            r"stream a file, read it first, e\.g\. "
                                            r"\[hyperlips\.media\.audio\.load_audio\(path\)\] .* or run hyperlips live"):
            next(ls.stream(clip.video, speech))


def test_big_endian_int16_chunks_are_read_as_int16():
    """``np.frombuffer(payload, '>i2')`` (RTP's L16 is big-endian) was refused as "got >i2 (convert other integer
    PCM to float first)"; big-endian float was taken."""
    from hyperlips.live import pcm_samples

    pcm = ((np.arange(640) % 100 - 50) * 300).astype(np.int16)
    want = pcm_samples(pcm)
    assert np.array_equal(pcm_samples(pcm.astype(">i2")), want)
    assert np.array_equal(pcm_samples(np.frombuffer(pcm.astype(">i2").tobytes(), ">i2")), want)


def test_speech_stats_built_by_hand_are_checked_when_the_stream_starts(clip):
    """``SpeechStats`` is public (a voice's statistics cached, say as JSON): lists failed mid-stream as a bare
    TypeError, a wrong bin count as a bare ValueError, and NaN or zero spreads streamed without a word."""
    from hyperlips.errors import UserError
    from hyperlips.live import SpeechStats
    from hyperlips.media.audio import melspectrogram
    from hyperlips.models import HyperLipsLite, LiteConfig
    from hyperlips.pipeline import LipSync

    ls = LipSync(network=HyperLipsLite(LiteConfig()).eval(), device="cpu", progress=False, batch_size=1)
    good = SpeechStats.of(melspectrogram(clip.wav))
    nan = good.mean.copy()
    nan[3] = np.nan
    for stats, words in (
            (SpeechStats(good.mean[:40], good.std[:40], good.floor[:40], 0),
             r"speech_stats\.mean must hold 80 numbers, one per mel bin \(got an array of shape \(40,\)\)"),
            (SpeechStats(good.mean, "std", good.floor, 0), r"speech_stats\.std must hold 80 numbers, .*\(got str\)"),
            (SpeechStats(nan, good.std, good.floor, 0), r"speech_stats\.mean holds values that are not numbers "
                                                        r"\(NaN or infinite\) in 1 of its 80 bins"),
            (SpeechStats(good.mean, good.std * 0, good.floor, 0), r"speech_stats\.std must be a spread .* a median "
                                                                  r"of 0, least 0\)")):
        with pytest.raises(UserError, match=words):
            next(ls.stream(clip.video, iter(chunks(clip.wav)), speech_stats=stats))
    # read back from JSON: lists, taken as the arrays they hold (the same frames)
    as_lists = SpeechStats(good.mean.tolist(), good.std.tolist(), good.floor.tolist(), 0)
    a = [f.image for f in ls.stream(clip.video, iter(chunks(clip.wav[:8000])), speech_stats=as_lists)]
    b = [f.image for f in ls.stream(clip.video, iter(chunks(clip.wav[:8000])), speech_stats=good)]
    assert len(a) == len(b) == 12 and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_the_readme_microphone_example_passes_speech_stats():
    """README's live example streams a microphone (always on) without ``speech_stats``, which docs/inference.md says
    such a stream needs (its pauses pull the running statistics towards silence); its keywords are stream's own."""
    import inspect
    import re

    from hyperlips.pipeline import LipSync

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Live: frames while the speech arrives", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "microphone_chunks()" in code and "ls.speech_stats(" in code and "speech_stats=" in code, code
    call = code[code.index(".stream("):]
    assert set(re.findall(r"(\w+)=", call)) <= set(inspect.signature(LipSync.stream).parameters), call
