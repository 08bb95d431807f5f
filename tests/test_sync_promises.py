"""End to end, the promises of ``hyperlips sync`` checked where a broken pipeline would show.

Random weights make a meaningless but deterministic mouth, which is all these checks need. The frames handed to
the encoder and the network's inputs are recorded by ``spies.spy_on_sync`` (nothing is replaced), so pixels are
compared byte for byte before H.264, and the decoded files are checked as well.

The test clip (built once per module from a real GRID clip): 14 frames without a face (smooth random colour
fields), then 16 frames of a speaker; every frame carries a 5-bit stamp in its top-left corner that tells which
source frame an output frame shows.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

from helpers import copying_base_checkpoint, cut_audio, probe_streams, random_base_checkpoint, random_hr_checkpoint, read_frames
from spies import SyncSpy, spy_on_sync

FPS = 25.0
N_FACELESS = 14  # longer than the half second of missing detections the tracker bridges
N_FACE = 16
N_SRC = N_FACELESS + N_FACE
AUDIO_SECONDS = 1.6  # 40 output frames: the 30 source frames, then 10 more (ping-pong or hold)
N_OUT = 40
STAMP = (slice(4, 16), slice(4, 64))  # rows, columns of the frame-number stamp: 5 bits, 12x12 blocks


@dataclass
class Clip:
    video: Path
    audio: Path
    frames: list  # the source frames as every reader decodes them (BGR uint8)
    regions: list  # per source frame: the tracked crop (x1, y1, x2, y2) in pixels, or None without a face
    best: int  # the frame with the most confident detection


@dataclass
class Run:
    out: Path
    spy: SyncSpy
    report: object = None


def _faceless(rng, h, w):
    import cv2

    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def _stamp(frame, i):
    for bit in range(5):
        frame[4:16, 4 + 12 * bit : 16 + 12 * bit] = 225 if (i >> bit) & 1 else 30
    return frame


def read_stamp(frame) -> int:
    """The number stamped into a frame, read back by thresholding (survives H.264)."""
    return sum(1 << bit for bit in range(5) if frame[4:16, 4 + 12 * bit : 16 + 12 * bit].mean() > 128)


def tracked(frames, fps):
    """The face track ``sync`` documents (largest face, bridged, smoothed, S3FD-like crop), from the public face API."""
    from hyperlips.face.detect import FaceDetector
    from hyperlips.face.track import pixel_region, track_faces

    h, w = frames[0].shape[:2]
    with FaceDetector() as det:
        detections = [det.detect(f) for f in frames]
    track = track_faces(detections, fps=fps, frame_size=(w, h))
    regions = [None if b is None else pixel_region(b, w, h) for b in track.boxes]
    return regions, track.best_index, detections


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return random_base_checkpoint(tmp_path_factory.mktemp("ckpt") / "base_random.pth")


@pytest.fixture(scope="module")
def clip(more_data, real_data, tmp_path_factory) -> Clip:
    import cv2

    from hyperlips.media.video import FrameReader

    from hyperlips.media.writer import VideoWriter

    folder = tmp_path_factory.mktemp("clip")
    rng = np.random.default_rng(7)
    video = folder / "faceless_then_face.mp4"
    with FrameReader(more_data / "grid_lipnet" / "lbax4n.mpg") as r:
        face_frames = [f.image for f in r.iter_range(20, 20 + N_FACE)]
    # the first face frame is blurred: a lower detection score, so "first" and "best" are different frames
    face_frames[0] = cv2.GaussianBlur(face_frames[0], (0, 0), 2.5)
    h, w = face_frames[0].shape[:2]
    with VideoWriter(video, w, h, FPS) as wr:
        for i in range(N_SRC):
            img = _faceless(rng, h, w) if i < N_FACELESS else face_frames[i - N_FACELESS].copy()
            wr.write(_stamp(img, i))
    audio = cut_audio(real_data / "speech" / "RD_Radio31_000.wav", folder / "speech.wav", AUDIO_SECONDS)
    frames = read_frames(video)
    assert len(frames) == N_SRC
    regions, best, detections = tracked(frames, FPS)
    # preconditions of every test below: faces exactly where the clip was built with them, stamps all distinct
    assert [bool(d) for d in detections] == [False] * N_FACELESS + [True] * N_FACE
    assert all(r is None for r in regions[:N_FACELESS]) and all(r is not None for r in regions[N_FACELESS:])
    assert [read_stamp(f) for f in frames] == list(range(N_SRC))
    assert best != N_FACELESS
    return Clip(video, audio, frames, regions, best)


def _cli_run(*args) -> SyncSpy:
    """``hyperlips sync ARGS`` in this process (so the spies see it); returns the spy."""
    from hyperlips.cli import main

    with spy_on_sync() as spy:
        code = main(["sync", *map(str, args), "--quiet", "--device", "cpu"])
    assert code == 0
    return spy


@pytest.fixture(scope="module")
def default_run(clip, ckpt, tmp_path_factory) -> Run:
    """The Python API with its defaults (ping-pong, best reference, batches of 16)."""
    from hyperlips.pipeline import LipSync

    out = tmp_path_factory.mktemp("default") / "out.mp4"
    with spy_on_sync() as spy:
        report = LipSync(ckpt, device="cpu", progress=False).sync(clip.video, clip.audio, out)
    return Run(out, spy, report)


@pytest.fixture(scope="module")
def hold_run(clip, ckpt, tmp_path_factory) -> Run:
    """The command line with ``--loop hold --batch-size 3``."""
    out = tmp_path_factory.mktemp("hold") / "out.mp4"
    spy = _cli_run(clip.video, clip.audio, "-o", out, "--checkpoint", ckpt, "--loop", "hold", "--batch-size", "3")
    return Run(out, spy)


# --------------------------------------------------------------------------------------------- helpers
def pingpong(n_src, n_out):
    """0 1 .. n-1 n-2 .. 0 1 .. written out here, independently of the code under test."""
    seq = list(range(n_src)) + list(range(n_src - 2, 0, -1))
    return [seq[j % len(seq)] for j in range(n_out)]


def hold(n_src, n_out):
    return [min(j, n_src - 1) for j in range(n_out)]


def traced_sources(frames, clip) -> list[int]:
    """Which source frame each frame shows, by its stamp (exact bytes; -1 when no stamp matches)."""
    stamps = {f[STAMP].tobytes(): i for i, f in enumerate(clip.frames)}
    return [stamps.get(f[STAMP].tobytes(), -1) for f in frames]


def frame_of_rows(spy, audio_path, n_out=N_OUT) -> list:
    """For each generator input row, the output frame whose mel window (``media.audio.mel_windows`` at j / fps,
    with the window length the loaded network takes) it holds exactly; None when it holds no frame's window."""
    from hyperlips.config import AudioConfig
    from hyperlips.media.audio import load_audio, mel_windows, melspectrogram

    audio, _ = spy.generator_inputs()
    cfg = replace(AudioConfig(), window_steps=int(audio.shape[3]))
    assert audio.shape[2] == cfg.n_mels
    mel = melspectrogram(load_audio(audio_path, cfg.sample_rate), cfg)
    want = mel_windows(mel, np.arange(n_out) / FPS, FPS, cfg)
    keys = {w.tobytes(): j for j, w in enumerate(want)}
    assert len(keys) == n_out  # real speech: every frame's window is different
    return [keys.get(row.astype(np.float32).tobytes()) for row in audio]


def lower_face(region, shape, margin=2):
    """Boolean mask of where paste-back may change pixels: the lower half of the tracked crop (the nose line is at
    about 58 % of its height), with ``margin`` pixels of slack round it."""
    x1, y1, x2, y2 = region
    m = np.zeros(shape[:2], bool)
    top = int(y1 + 0.5 * (y2 - y1)) - margin
    m[max(top, 0) : y2 + margin, max(x1 - margin, 0) : x2 + margin] = True
    return m


def mouth(region):
    """Central part of the mouth in the tracked crop (rows 68-84 %, columns 38-62 %)."""
    x1, y1, x2, y2 = region
    w, h = x2 - x1, y2 - y1
    return slice(int(y1 + 0.68 * h), int(y1 + 0.84 * h)), slice(int(x1 + 0.38 * w), int(x1 + 0.62 * w))


def changed(a, b):
    return np.any(a != b, axis=2)


# --------------------------------------------------------------------------------------------- pixels
def test_only_the_lower_face_changes_and_faceless_frames_pass_through(clip, default_run):
    """Before encoding: frames without a face are byte-identical to the source; in frames with a face every pixel
    outside the lower half of the tracked crop keeps its bytes, and the mouth is replaced."""
    frames = default_run.spy.frames
    assert len(frames) == N_OUT
    sources = pingpong(N_SRC, N_OUT)
    for j, (got, s) in enumerate(zip(frames, sources)):
        src = clip.frames[s]
        if clip.regions[s] is None:
            assert np.array_equal(got, src), f"output frame {j} (source {s}, no face) was changed"
            continue
        diff = changed(got, src)
        outside = diff & ~lower_face(clip.regions[s], src.shape)
        assert not outside.any(), f"output frame {j}: {int(outside.sum())} pixels changed outside the lower face"
        rows, cols = mouth(clip.regions[s])
        assert diff[rows, cols].mean() > 0.5, f"output frame {j}: the mouth was not replaced"


def test_the_encoded_file_shows_those_frames(clip, default_run):
    """The decoded output: faceless frames equal the source up to codec loss; in frames with a face the mouth
    differs from the source far beyond codec loss while the rest does not."""
    from helpers import psnr

    decoded = read_frames(default_run.out)
    assert len(decoded) == N_OUT
    sources = pingpong(N_SRC, N_OUT)
    for j, (dec, pre, s) in enumerate(zip(decoded, default_run.spy.frames, sources)):
        assert psnr(dec, pre) > 35, j
        src = clip.frames[s]
        if clip.regions[s] is None:
            assert psnr(dec, src) > 35, j
            continue
        rows, cols = mouth(clip.regions[s])
        top = clip.regions[s][1]  # everything above the face
        assert psnr(dec[:top], src[:top]) > 35, j
        assert psnr(dec[rows, cols], src[rows, cols]) < 30, j


def test_pingpong_and_hold_show_the_promised_source_frames(clip, default_run, hold_run):
    """Audio longer than the video: ping-pong plays 29 28 27 .. after the last frame, hold repeats frame 29."""
    assert traced_sources(default_run.spy.frames, clip) == pingpong(N_SRC, N_OUT)
    assert traced_sources(hold_run.spy.frames, clip) == hold(N_SRC, N_OUT)
    # and so do the decoded files (the stamps read back by thresholding)
    for run, want in ((default_run, pingpong(N_SRC, N_OUT)), (hold_run, hold(N_SRC, N_OUT))):
        assert [read_stamp(f) for f in read_frames(run.out)] == want


def test_results_do_not_depend_on_the_batch_size(default_run, hold_run):
    """The first 29 output frames are the same in both runs (batches of 16 and of 3; only the looping differs from
    frame 30 on, and frame 29's face is blended with frame 30's), up to float rounding: the network's
    batch-dependent kernels may move a value by one grey level."""
    for j in range(N_SRC - 1):
        a, b = default_run.spy.frames[j], hold_run.spy.frames[j]
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1, j  # float rounding at most


# --------------------------------------------------------------------------------------------- network inputs
@pytest.mark.parametrize("which", ["default", "hold"])
def test_every_frame_gets_the_mel_window_of_its_own_time(clip, default_run, hold_run, which):
    """Each network input row holds exactly ``media.audio.mel_windows`` for its output frame's time j / fps (window
    length as the loaded network takes it), and every output frame with a face gets its own, once."""
    run = default_run if which == "default" else hold_run
    got = frame_of_rows(run.spy, clip.audio)
    sources = pingpong(N_SRC, N_OUT) if which == "default" else hold(N_SRC, N_OUT)
    with_face = [j for j in range(N_OUT) if clip.regions[sources[j]] is not None]
    assert None not in got, f"{got.count(None)} network rows hold a window that belongs to no output frame"
    assert sorted(got) == with_face


def test_network_input_is_the_masked_face_and_the_reference(clip, default_run):
    """The lower half of the face input is zero; the reference half is the crop of the best-detected frame."""
    audio, faces = default_run.spy.generator_inputs()
    s = faces.shape[-1]
    assert faces.shape[1:] == (6, s, s)
    assert np.all(faces[:, :3, s // 2 :] == 0)
    assert np.all(faces[:, :3, : s // 2].reshape(len(faces), -1).max(1) > 0)
    ref = faces[:, 3:]
    assert all(np.array_equal(r, ref[0]) for r in ref)
    assert ref[0, :, s // 2 :].max() > 0  # the reference keeps its mouth
    row = frame_of_rows(default_run.spy, clip.audio).index(clip.best)  # output frame = source frame before 30
    assert np.array_equal(ref[0, :, : s // 2], faces[row, :3, : s // 2])


@pytest.mark.parametrize("reference, frame", [("first", N_FACELESS), ("21", 21)])
def test_reference_option(clip, ckpt, default_run, tmp_path, reference, frame):
    """``--reference first|N``: the reference half of every input is the crop of that frame."""
    if frame == clip.best:
        pytest.fail("the test clip's best frame must differ from the frame under test")
    audio = cut_audio(clip.audio, tmp_path / "a.wav", 0.92)  # 23 frames: frames 14..22 have a face
    spy = _cli_run(clip.video, audio, "-o", tmp_path / "out.mp4", "--checkpoint", ckpt, "--reference", reference)
    _, faces = spy.generator_inputs()
    s = faces.shape[-1]
    rows = frame_of_rows(spy, audio, 23)
    assert sorted(rows) == list(range(N_FACELESS, 23))
    ref = faces[:, 3:]
    assert all(np.array_equal(r, ref[0]) for r in ref)
    assert np.array_equal(ref[0, :, : s // 2], faces[rows.index(frame), :3, : s // 2])
    assert not np.array_equal(ref[0], default_run.spy.generator_inputs()[1][0, 3:])  # not the default (best) one


# --------------------------------------------------------------------------------------------- audio
def test_output_audio_is_the_driving_speech_aac_48k(clip, default_run):
    """The output's audio track is AAC at 48 kHz, as long as the driving speech, and is that speech."""
    import av

    from hyperlips.media.audio import load_audio

    with av.open(str(default_run.out)) as c:
        a = c.streams.audio[0]
        assert a.codec_context.name == "aac" and a.codec_context.sample_rate == 48000
        seconds = float(a.duration * a.time_base)
    assert seconds == pytest.approx(AUDIO_SECONDS, abs=0.025)
    want = load_audio(clip.audio, 16000)
    got = load_audio(default_run.out, 16000)
    assert abs(len(got) - len(want)) <= 0.025 * 16000
    n = min(len(got), len(want))
    corr = float(np.dot(got[:n], want[:n]) / np.sqrt(np.dot(got[:n], got[:n]) * np.dot(want[:n], want[:n])))
    assert corr > 0.95, corr


def test_python_api_report(clip, default_run):
    r = default_run.report
    assert r.output == default_run.out and default_run.out.is_file()
    assert (r.frames, r.fps, r.width, r.height) == (N_OUT, FPS, 360, 288)
    assert r.frames_with_face == sum(clip.regions[s] is not None for s in pingpong(N_SRC, N_OUT))
    assert r.audio_seconds == pytest.approx(AUDIO_SECONDS, abs=1e-3)
    assert {"decode", "faces", "network", "paste", "encode"} <= set(r.timings)
    got = probe_streams(default_run.out)
    assert (got["frames"], got["width"], got["height"], got["video_codec"]) == (N_OUT, 360, 288, "h264")


def test_python_arguments_are_taken_as_python_passes_them_or_refused_up_front(clip, ckpt, tmp_path):
    """Values a Python caller passes (a frame number from numpy, a torch.device, a path as bytes, a speech
    synthesiser's parsed JSON phonemes) work; the others are refused in one line before any frame is read (they
    failed deep inside: a TypeError after the reference search, another while the phonemes' error was being
    written, "the truth value of an array is ambiguous")."""
    import os

    import torch

    from hyperlips.errors import UserError
    from hyperlips.pipeline import LipSync

    ls = LipSync(ckpt, device=torch.device("cpu"), progress=False, batch_size=np.int64(8))
    spoken = [{"start": 0.0, "end": 0.4, "phone": "AA"}, {"start": 0.4, "end": 0.6, "phone": "B"}]
    report = ls.sync(os.fsencode(clip.video), clip.audio, tmp_path / "out.mp4", reference=np.int64(clip.best),
                     phonemes=spoken)
    assert report.frames == N_OUT
    # a generator of entries (read whole: it was used up by a first look), a path as bytes (read as numbers)
    words = tmp_path / "words.txt"
    words.write_text("0.0 0.4 AA\n0.4 0.6 B\n")
    want = ls.phoneme_marks(spoken, 1.6)
    assert ls.phoneme_marks((e for e in [(0.0, 0.4, "AA"), (0.4, 0.6, "B")]), 1.6) == want
    assert ls.phoneme_marks(os.fsencode(words), 1.6) == want
    refused = tmp_path / "refused.mp4"
    for kwargs, words in [({"face_index": "0"}, r"--face \(face_index\) must be a whole number from 0"),
                          ({"face_index": 0.0}, r"--face \(face_index\) must be a whole number from 0"),
                          ({"reference": True}, r"--reference \(reference\) must be best, first, a frame number"),
                          ({"reference": np.zeros((8, 8, 3), np.uint8)}, "not an array of pixels"),
                          ({"phonemes": [{"phone": "B"}]}, "needs a start"),
                          ({"phonemes": [(0.0, 0.1, "AA"), {0.1: "B"}]}, "needs a start"),
                          ({"crf": 52}, r"--crf \(crf\) must be a whole number"),
                          ({"preset": "quick"}, r"--preset \(preset\) must be one of"),
                          ({"pix_fmt": "rgb24"}, r"--pix-fmt \(pix_fmt\) must be yuv420p"),
                          ({"fps": 0}, r"--fps \(fps\) must be a number from 1")]:
        with pytest.raises(UserError, match=words):
            ls.sync(clip.video, clip.audio, refused, **kwargs)
    with pytest.raises(UserError, match="video must be a path"):
        ls.sync(np.zeros(3), clip.audio, refused)
    assert not refused.exists()
    for kwargs, words in [({"batch_size": "16"},
                           r"--batch-size \(batch_size\) must be a whole number, at least 1 \(got '16'\)"),
                          ({"size": "256"}, r"--size \(size\) must be 128, 256 or 512 \(got '256'\)"),
                          ({"device": 0}, "device must be auto, cpu"),
                          ({"precision": "fp8"}, r"--precision \(precision\) must be one of"),
                          ({"mouth": "open"}, r"--mouth \(mouth\) must be one of"),
                          ({"temporal_blend": 0.5}, r"--temporal-blend \(temporal_blend\): "),
                          ({"input_blend": 0.5}, r"--input-blend \(input_blend\): ")]:
        with pytest.raises(UserError, match=words):
            LipSync(ckpt, progress=False, **kwargs)


def test_a_network_given_directly_is_left_as_it_was():
    """`LipSync(network=net)` to preview a network still training: it was made ready for inference in place
    (weights cast to bf16 where that is the precision, gradients off, eval mode, channels-last), and the next
    training step failed or trained frozen, rounded weights."""
    import torch

    from hyperlips.models import create_model
    from hyperlips.pipeline import LipSync

    torch.manual_seed(0)
    net = create_model("hyperlips-lite")
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    ls = LipSync(network=net, device="cpu", progress=False, precision="fp32")
    assert ls.base is not net and not ls.base.training
    assert net.training and all(p.requires_grad for p in net.parameters())
    assert all(torch.equal(v, before[k]) and v.dtype == before[k].dtype for k, v in net.state_dict().items())
    assert all(p.is_contiguous() for p in net.parameters())  # not made channels-last


def test_each_call_reports_its_own_warnings_with_calls_in_two_threads(short_clip, ckpt, tmp_path):
    """Warnings were the only per-call channel, and catching them (`warnings.catch_warnings`) swaps one process-wide
    list: two calls at once in two threads, one LipSync each as advised, had each other's (the NaN speech's warning
    reported on the clean speech's call, and twice: its audio was read twice). Each report has its own, once each."""
    import threading

    import soundfile as sf

    from hyperlips.pipeline import LipSync

    video, audio, _ = short_clip
    wav, rate = sf.read(str(audio), dtype="float32")
    wav[::50] = np.nan
    nan = tmp_path / "nan.wav"
    sf.write(str(nan), wav, rate, subtype="FLOAT")
    reports, errors = {}, []

    def job(name, speech):
        try:
            ls = LipSync(ckpt, device="cpu", progress=False)
            for k in range(2):  # the second call said nothing once the first had shown it: each report has it
                reports[name, k] = ls.sync(video, speech, tmp_path / f"{name}{k}.mp4")
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=job, args=a) for a in (("nan", nan), ("clean", audio))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for k in range(2):
        said = reports["nan", k].warnings
        assert len([w for w in said if "not numbers (NaN or infinite)" in w]) == 1, said
        assert not [w for w in reports["clean", k].warnings if "NaN" in w], reports["clean", k].warnings
    import warnings

    with warnings.catch_warnings(record=True) as caught:  # every warning shown: the speech's problems once
        warnings.simplefilter("always")
        LipSync(ckpt, device="cpu", progress=False).sync(video, nan, tmp_path / "again.mp4")
    assert len([w for w in caught if "not numbers (NaN or infinite)" in str(w.message)]) == 1


def test_speech_that_ends_before_the_face_shows_says_so(clip, ckpt, tmp_path):
    """0.3 s of speech over a video whose face shows only after 0.56 s was refused as "no face found ... use a clip
    where the face is visible", as if the video had none."""
    from hyperlips.errors import NoFaceError
    from hyperlips.pipeline import LipSync

    short = cut_audio(clip.audio, tmp_path / "short.wav", 0.3)
    with pytest.raises(NoFaceError, match=rf"the speech, 0\.30 s, covers only the first 8 of its {N_SRC} frames, the "
                                          "only ones searched: if the face shows later, start the video there or give "
                                          "longer speech"):
        LipSync(ckpt, device="cpu", progress=False).sync(clip.video, short, tmp_path / "out.mp4")
    assert not (tmp_path / "out.mp4").exists()


def test_the_report_times_the_first_frame(clip, ckpt, tmp_path, monkeypatch):
    """``first_frame_seconds``: from the call to the first frame handed to the encoder (after the speech, the
    reference search and the first batch); the summary gives it and the pace after it."""
    import time

    from hyperlips.media.writer import VideoWriter
    from hyperlips.pipeline import LipSync

    writes, real_write = [], VideoWriter.write
    monkeypatch.setattr(VideoWriter, "write", lambda self, *a, **k: writes.append(time.perf_counter()) or
                        real_write(self, *a, **k))
    ls = LipSync(ckpt, device="cpu", progress=False)
    t0 = time.perf_counter()
    r = ls.sync(clip.video, clip.audio, tmp_path / "out.mp4")
    assert len(writes) == N_OUT
    assert writes[0] - t0 - 0.01 <= r.first_frame_seconds <= writes[0] - t0  # taken just before the first write
    assert 0 < r.first_frame_seconds < r.wall_seconds
    after = (N_OUT - 1) / (r.wall_seconds - r.first_frame_seconds)
    assert r.after_first_frame_fps() == pytest.approx(after)
    assert f"the first frame after {r.first_frame_seconds:.2f}s, then {after:.1f} fps" in r.summary()


def test_progress_reports_end_with_every_stage_complete(real_data, tmp_path):
    """The reference search stops once the face is sure, before its estimated length: it still ends at 100%."""
    import soundfile as sf

    from hyperlips.media.audio import load_audio
    from hyperlips.pipeline import LipSync

    speech = tmp_path / "speech.wav"
    sf.write(str(speech), load_audio(real_data / "hyperlips" / "audio2.wav", 16000)[:16000 * 5], 16000)
    events = []
    LipSync(None, device="cpu", progress=False, untrained=True).sync(
        real_data / "retalking" / "face2.mp4", speech, tmp_path / "out.mp4", on_progress=lambda *e: events.append(e))
    last = {}
    for stage, done, total in events:
        last[stage] = (done, total)
    assert "faces" in last and all(done == total > 0 for done, total in last.values()), last


# --------------------------------------------------------------------------------------------- HR decoder
@pytest.fixture(scope="module")
def short_clip(clip, tmp_path_factory):
    """Six frames with a face (source frames 14..19 of the test clip) and 0.24 s of speech: six output frames."""
    from hyperlips.media.writer import VideoWriter

    folder = tmp_path_factory.mktemp("short")
    video = folder / "short.mp4"
    with VideoWriter(video, 360, 288, FPS) as w:
        for f in clip.frames[N_FACELESS : N_FACELESS + 6]:
            w.write(f)
    return video, cut_audio(clip.audio, folder / "a.wav", 6 / FPS), read_frames(video)


def test_hr_checkpoint_changes_the_mouth_and_nothing_else(short_clip, tmp_path):
    """With ``--hr-checkpoint`` the HR decoder runs on every base output plus a face-mesh sketch of it, and its
    output is what is pasted: against the same run without it the mouth differs and nothing else does. (The base
    here copies its reference face, so its output has a mouth the sketch can be drawn from, see helpers.)"""
    from hyperlips.pipeline import LipSync

    video, audio, src = short_clip
    base = copying_base_checkpoint(tmp_path / "copying_base.pth")
    hr = random_hr_checkpoint(tmp_path / "hr128.pth", 128)
    runs = {}
    for name, hr_ckpt in (("base", None), ("hr", hr)):
        with spy_on_sync() as spy:
            LipSync(base, hr_ckpt, device="cpu", progress=False).sync(video, audio, tmp_path / f"{name}.mp4")
        runs[name] = spy
    gen, hr_calls = runs["hr"].generator_calls, runs["hr"].other_calls()
    assert len(hr_calls) == len(gen) and not runs["base"].other_calls()
    for g, h in zip(gen, hr_calls):
        x = h.inputs[0]
        assert x.shape[1] == 6 and h.output.shape == g.output.shape == (len(x), 3, 128, 128)
        np.testing.assert_allclose(x[:, :3], g.output, atol=1e-6)  # the HR decoder gets the base output, in [0, 1]
        sketch = x[:, 3:]
        assert np.array_equal(sketch[:, 0], sketch[:, 1]) and np.array_equal(sketch[:, 0], sketch[:, 2])
        assert set(np.unique(sketch)) <= {0.0, 1.0} and (sketch[:, 0].reshape(len(x), -1).mean(1) > 0.02).all()
    regions, _, _ = tracked(src, FPS)
    for j, (a, b, r) in enumerate(zip(runs["hr"].frames, runs["base"].frames, regions)):
        diff = np.abs(a.astype(int) - b.astype(int)).max(axis=2)
        assert not diff[~lower_face(r, a.shape)].any(), j
        rows, cols = mouth(r)
        assert (diff[rows, cols] > 8).mean() > 0.3, f"output frame {j}: the HR decoder's output was not pasted"


@pytest.mark.parametrize("size, args, frames", [(256, (), 3), (512, ("--size", "512"), 2)])
def test_hr_sizes_render_at_their_size(short_clip, ckpt, tmp_path, size, args, frames):
    """An HR 256/512 checkpoint renders its size (taken from the checkpoint, or matching ``--size``)."""
    video, audio, _ = short_clip
    audio = cut_audio(audio, tmp_path / "a.wav", frames / FPS)
    hr = random_hr_checkpoint(tmp_path / f"hr{size}.pth", size)
    out = tmp_path / "out.mp4"
    spy = _cli_run(video, audio, "-o", out, "--checkpoint", ckpt, "--hr-checkpoint", hr, *args)
    outs = [c.output.shape for c in spy.other_calls()]
    assert outs and all(o[1:] == (3, size, size) for o in outs)
    assert sum(o[0] for o in outs) == frames
    got = probe_streams(out)
    assert (got["frames"], got["width"], got["height"]) == (frames, 360, 288)


def test_hr_size_mismatch_is_a_one_line_error(short_clip, ckpt, tmp_path, capfd):
    from hyperlips.cli import main

    video, audio, _ = short_clip
    hr = random_hr_checkpoint(tmp_path / "hr256.pth", 256)
    out = tmp_path / "out.mp4"
    code = main(["sync", str(video), str(audio), "-o", str(out), "--checkpoint", str(ckpt), "--hr-checkpoint", str(hr),
                 "--size", "512", "--quiet"])
    err = capfd.readouterr().err
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.startswith("hyperlips:")]
    assert len(lines) == 1 and lines[0].startswith("hyperlips: error:"), err
    assert "hr256.pth" in lines[0] and "256" in lines[0] and "--size 512" in lines[0]
    assert not out.exists()


# --------------------------------------------------------------------------------------------- several faces
@pytest.fixture(scope="module")
def two_faces(more_data, real_data, tmp_path_factory):
    """Two GRID speakers side by side (720x288, the left face at x < 360), 8 frames, 0.32 s of speech."""
    from hyperlips.media.video import FrameReader
    from hyperlips.media.writer import VideoWriter

    folder = tmp_path_factory.mktemp("two")
    with FrameReader(more_data / "grid_lipnet" / "sbia1a.mpg") as a, FrameReader(more_data / "grid_lipnet" / "bbaf2n.mpg") as b:
        left = [f.image for f in a.iter_range(20, 28)]
        right = [f.image for f in b.iter_range(20, 28)]
    video = folder / "two.mp4"
    with VideoWriter(video, 720, 288, FPS) as w:
        for l, r in zip(left, right):
            w.write(np.concatenate([l, r], axis=1))
    audio = cut_audio(real_data / "speech" / "RD_Radio34_002.wav", folder / "a.wav", 0.32)
    return video, audio, read_frames(video)


@pytest.mark.parametrize("option, side", [(("--face", "0"), "left"), (("--face", "1"), "right"),
                                          (("--face-box", "400,0,720,288"), "right"),
                                          (("--face-box", "0,0,300,288"), "left")])
def test_face_choice_from_the_command_line(two_faces, ckpt, tmp_path, option, side):
    video, audio, src = two_faces
    spy = _cli_run(video, audio, "-o", tmp_path / "out.mp4", "--checkpoint", ckpt, *option)
    assert len(spy.frames) == len(src) == 8
    for got, s in zip(spy.frames, src):
        diff = changed(got, s)
        chosen, other = (diff[:, :360], diff[:, 360:]) if side == "left" else (diff[:, 360:], diff[:, :360])
        assert not other.any(), "the other person's face was changed"
        assert chosen.sum() > 500, "the chosen face was not changed"


# --------------------------------------------------------------------------------------------- options and details
def test_timings_option_prints_every_stage(short_clip, ckpt, tmp_path, capsys):
    import re

    video, audio, _ = short_clip
    _cli_run(video, audio, "-o", tmp_path / "out.mp4", "--checkpoint", ckpt, "--timings")
    out = capsys.readouterr().out
    for stage in ("decode", "faces", "network", "paste", "encode"):
        assert re.search(rf"\b{stage} [\d.]+s \([\d.]+ fps\)", out), (stage, out)
    # the time it gives leaves out loading the models (half a short command's time): said on the line
    assert re.search(r"[\d.]+s end to end once the models were loaded \(", out), out


def test_device_cuda_without_a_gpu_is_a_one_line_error(short_clip, ckpt, tmp_path, capfd):
    import torch

    from hyperlips.cli import main

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    video, audio, _ = short_clip
    code = main(["sync", str(video), str(audio), "-o", str(tmp_path / "out.mp4"), "--checkpoint", str(ckpt),
                 "--device", "cuda", "--quiet"])
    err = [line for line in capfd.readouterr().err.splitlines() if line.startswith("hyperlips:")]
    assert code == 2 and len(err) == 1 and "no CUDA GPU" in err[0] and "--device cpu" in err[0]
    assert not (tmp_path / "out.mp4").exists()


def test_network_output_is_rounded_not_truncated_and_left_alone():
    """Outputs in [0, 1] become uint8 by rounding (0.6/255 -> 1, not 0) and the tensor itself is not changed (the
    HR decoder takes it next)."""
    import torch

    from hyperlips.pipeline import to_uint8_images

    values = torch.tensor([0.0, 0.4 / 255, 0.6 / 255, 254.6 / 255, 1.2, -0.1])
    t = values.reshape(1, 1, 2, 3).repeat(1, 3, 1, 1)
    before = t.clone()
    img = to_uint8_images(t)
    assert img.shape == (1, 2, 3, 3) and img.dtype == np.uint8
    assert img[0, :, :, 0].ravel().tolist() == [0, 0, 1, 255, 255, 0]
    assert torch.equal(t, before)


def test_base_faces_are_the_checkpoints_network_on_every_row_paste_back_reads(tmp_path):
    """``sync`` folds the batch norms into the convolutions and, without an HR decoder, skips Base's rows above
    ``BASE_FIRST_ROW``: the faces it generates are the plain network's from there down (fp32, to float rounding).
    With an HR decoder the base face it reads is the whole of the plain network's, and the HR decoder skips the
    rows paste-back never reads of its own."""
    import torch

    from hyperlips.face.blend import first_row_read
    from hyperlips.models import create_model
    from hyperlips.pipeline import BASE_FIRST_ROW, LipSync

    torch.manual_seed(7)
    net = create_model("hyperlips-base")
    g = torch.Generator().manual_seed(0)
    for m in net.modules():  # batch norms that change something, so a wrong fold shows
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    net.eval()
    path = tmp_path / "base.pth"
    torch.save({"state_dict": net.state_dict()}, path)
    rng = np.random.default_rng(0)
    windows = rng.standard_normal((3, 1, 80, 16)).astype(np.float32)
    x = rng.random((3, 6, 128, 128), dtype=np.float32)
    with torch.no_grad():
        plain = net(torch.from_numpy(windows), torch.from_numpy(x)).numpy()
    expected = np.rint(np.clip(plain, 0, 1) * 255).transpose(0, 2, 3, 1)

    ls = LipSync(path, device="cpu", precision="fp32", progress=False)
    faces = ls.generate(windows, x).astype(int)
    d = np.abs(faces[:, BASE_FIRST_ROW:] - expected[:, BASE_FIRST_ROW:])
    assert d.max() <= 1 and d.mean() < 0.01
    assert (faces[:, : BASE_FIRST_ROW] != expected[:, : BASE_FIRST_ROW]).any()  # the rows above were skipped

    hr = random_hr_checkpoint(tmp_path / "hr256.pth", 256)
    ls = LipSync(path, hr, device="cpu", precision="fp32", progress=False)
    seen, hr_calls = [], []
    run_hr = ls._hr
    ls._hr = lambda base_out: seen.append(base_out.clone()) or run_hr(base_out)
    call = ls._hr_call
    ls._hr_call = lambda *args, **kwargs: hr_calls.append(kwargs) or call(*args, **kwargs)
    assert ls.generate(windows, x).shape == (3, 256, 256, 3)
    torch.testing.assert_close(seen[0].contiguous(), torch.from_numpy(plain), rtol=0, atol=1e-5)
    assert hr_calls == [{"first_row": first_row_read(256)}]  # the HR decoder skips the rows paste-back never reads
