"""The input corpus: real and broken inputs for ``hyperlips``, generated at test time from ``../shared/data``.

Nothing is stored: clips are cut from the shared recordings at 128 px, re-encoded into other containers, codecs,
rates and sizes, damaged, truncated or emptied into a temporary folder (:class:`Materials`, built lazily, once per
test session). Frames carry a stamp (their source number, ``media_builders.stamp``) so a test can tell which source
frame every output frame shows.

Commands run through :class:`Runner` (``cli_runner.py``: a warm interpreter forks a fresh process per command), so
each case sees the real exit status, stdout and stderr of ``hyperlips`` at the file-descriptor level.

A :class:`Case` is a command line with placeholders (``{h264.mp4}`` is a material, ``{out}`` the output path,
``{work}`` the case's folder) and what must come of it: an exit code, the words of the one error line, the warnings,
and for good inputs the output's size, rate, frame count, duration and which source frame each frame shows.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from media_builders import face_frames, shown_at, speech, stamp, write_audio, write_video

HERE = Path(__file__).resolve().parent
SIZE = 128  # frame side of the generated clips
FRAMES = 25  # one second at 25 fps
SPEECH_SECONDS = 0.32  # 8 output frames at 25 fps


# ---------------------------------------------------------------------------------------------- running commands
@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    signalled: bool = False
    signal_at: float | None = None  # when the signal was sent, in seconds from the start
    timed_out: bool = False

    @property
    def screen(self) -> list[str]:
        """stderr as it stays on a terminal: per line, what follows the last carriage return; blank lines dropped."""
        return [ln.split("\r")[-1].rstrip() for ln in self.stderr.split("\n") if ln.split("\r")[-1].strip()]

    @property
    def errors(self) -> list[str]:
        return [ln for ln in self.screen if ln.startswith("hyperlips: error:")]

    @property
    def warnings(self) -> list[str]:
        return [ln for ln in self.screen if ln.startswith("hyperlips: warning:")]

    def describe(self) -> str:
        sent = "" if self.signal_at is None else f", signalled at {self.signal_at:.2f} s"
        return (f"rc={self.rc} ({self.seconds:.1f} s, {self.cpu_seconds:.1f} s CPU{sent})\n"
                f"--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}")


class Runner:
    """A ``cli_runner.py`` process: ``run(argv, cwd)`` forks a fresh ``hyperlips`` for each command."""

    def __init__(self) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
        self.proc = subprocess.Popen([sys.executable, str(HERE / "cli_runner.py")], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env, cwd=str(HERE))
        hello = self.proc.stdout.readline()
        if not hello or not json.loads(hello).get("ready"):
            raise RuntimeError(f"the command runner did not start: {hello!r}")

    def run(self, argv: Sequence, cwd: Path, *, timeout: float = 1800, env: dict | None = None,
            signal: str | None = None, signal_after: str = "", signal_delay: float = 0.3,
            fsize: int | None = None, ignore: Sequence[str] = ()) -> Result:
        req = {"argv": [str(a) for a in argv], "cwd": str(cwd), "timeout": timeout, "env": env or {},
               "signal": signal, "signal_after": signal_after, "signal_delay": signal_delay, "fsize": fsize,
               "ignore": list(ignore)}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        if not answer:
            raise RuntimeError("the command runner died")
        return Result(**json.loads(answer))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


# ---------------------------------------------------------------------------------------------- materials
@dataclass(frozen=True)
class VideoFacts:
    """What a test knows about a generated video: frame times, displayed size, the rate it is read at."""

    times: tuple[float, ...]
    width: int
    height: int
    fps: float  # the rate hyperlips must choose by default (nominal, or average for a variable rate)
    stamped: bool = True
    duration: float = 0.0  # 0: last time + one nominal period

    def timeline(self, fps: float) -> list[int]:
        """Source frame of each frame of the constant-rate timeline at ``fps``."""
        times = np.asarray(self.times)
        period = float(np.median(np.diff(times))) if len(times) > 1 else 1 / fps
        duration = self.duration or float(times[-1]) + period
        m = max(1, int(round(duration * fps + 1e-9)))
        return shown_at(times, fps, m, slack=0.25 * min(1 / fps, period))


_BUILDERS: dict[str, Callable[["Materials", Path], Optional[VideoFacts]]] = {}


def material(*names: str):
    def register(fn):
        for n in names:
            _BUILDERS[n] = fn
        return fn

    return register


class Materials:
    """Input files built on first use in ``root`` from the shared recordings in ``real`` (``data/real``)."""

    def __init__(self, root: Path, real: Path, more: Path):
        self.root, self.real, self.more = Path(root), Path(real), Path(more)
        self.root.mkdir(parents=True, exist_ok=True)
        self.facts: dict[str, VideoFacts] = {}
        self._frames: dict[tuple, list[np.ndarray]] = {}

    def __getitem__(self, name: str) -> Path:
        path = self.root / name
        if not path.exists():
            if name not in _BUILDERS:
                raise KeyError(f"no such material: {name}")
            facts = _BUILDERS[name](self, path)
            if facts is not None:
                self.facts[name] = facts
        return path

    def fact(self, name: str) -> VideoFacts:
        self[name]
        return self.facts[name]

    def frames(self, clip: str = "face2", n: int = FRAMES, size: tuple[int, int] = (SIZE, SIZE)) -> list[np.ndarray]:
        key = (clip, n, size)
        if key not in self._frames:
            self._frames[key] = face_frames(self.real / "retalking" / f"{clip}.mp4", n, size)
        return self._frames[key]

    def speech(self, seconds: float = SPEECH_SECONDS, rate: int = 16000) -> np.ndarray:
        return speech(self.real, seconds, rate)

    def video(self, path: Path, frames, fps: float = 25, **kw) -> VideoFacts:
        write_video(path, frames, fps, **kw)
        h, w = frames[0].shape[:2]
        times = kw.get("times")
        times = tuple(times) if times is not None else tuple(k / fps for k in range(len(frames)))
        return VideoFacts(times, w, h, fps)


def _cfr(codec: str, pix_fmt: str = "yuv420p", fps: float = 25, **kw):
    def build(m: Materials, path: Path) -> VideoFacts:
        return m.video(path, m.frames(n=int(round(FRAMES * fps / 25))), fps, codec=codec, pix_fmt=pix_fmt, **kw)

    return build


for _name, _builder in {
    "h264.mp4": _cfr("libx264"),
    "h264.mov": _cfr("libx264"),
    "h264.mkv": _cfr("libx264"),
    "h265.mp4": _cfr("libx265"),
    "vp8.webm": _cfr("libvpx"),
    "vp9.webm": _cfr("libvpx-vp9"),
    "av1.mkv": _cfr("libsvtav1"),
    "mjpeg.avi": _cfr("mjpeg", "yuvj420p"),
    "mpeg4.avi": _cfr("mpeg4", options={"qscale": "2"}),
    "mpeg2.ts": _cfr("mpeg2video", options={"qscale": "2"}),
    "prores.mov": _cfr("prores", "yuv422p10le"),
    "ffv1.mkv": _cfr("ffv1"),
    "yuv444.mp4": _cfr("libx264", "yuv444p"),
    "fps30.mp4": _cfr("libx264", fps=30),
    "fps60.mp4": _cfr("libx264", fps=60),
    "fps12.mp4": _cfr("libx264", fps=12),
    "fps5.mp4": _cfr("libx264", fps=5),
    "bframes.mp4": _cfr("libx264", options={"bf": "3", "g": "8"}),
}.items():
    material(_name)(_builder)


@material("grid.mpg", "lrs2.mp4")
def _real(m: Materials, path: Path) -> VideoFacts:
    """Real recordings as they were published: GRID (MPEG-1 + MP2 in MPEG-PS, 360x288) and an LRS2 crop (MPEG-4
    Part 2 + AAC, 160x160), both 25 fps; linked, not copied."""
    src = m.more / ("grid_s1/bbaf3s.mpg" if path.suffix == ".mpg" else "lrs2_deep_avsr/00001.mp4")
    path.symlink_to(src)
    w, h, n = (360, 288, 75) if path.suffix == ".mpg" else (160, 160, 120)
    return VideoFacts(tuple(k / 25 for k in range(n)), w, h, 25.0, stamped=False)


@material("ntsc.mp4")
def _ntsc(m: Materials, path: Path) -> VideoFacts:
    facts = m.video(path, m.frames(n=30), Fraction(30000, 1001))
    return VideoFacts(facts.times, SIZE, SIZE, 30000 / 1001)


@material("with_audio.mp4")
def _with_audio(m: Materials, path: Path) -> VideoFacts:
    return m.video(path, m.frames(), 25, audio=m.speech(1.0, 48000), audio_rate=48000)


@material("vfr.mp4")
def _vfr(m: Materials, path: Path) -> VideoFacts:
    """A camera that slows down: 10 frames at 30 fps, then 10 lasting three times as long (15 fps on average)."""
    dur = np.array([1] * 10 + [3] * 10) / 30
    times = np.concatenate([[0.0], np.cumsum(dur[:-1])])
    write_video(path, m.frames(n=20), 30, times=times)
    return VideoFacts(tuple(times), SIZE, SIZE, 20 / float(dur.sum()), duration=float(dur.sum()))


@material("vfr_alternating.mkv")
def _vfr_alt(m: Materials, path: Path) -> VideoFacts:
    """Frames lasting 20 and 60 ms in turn, stored with millisecond timestamps and tagged 50 fps (the container
    gives the last frame the tagged 20 ms): 23 frames over 0.9 s."""
    dur = np.array([0.02, 0.06] * 11 + [0.02])
    times = np.concatenate([[0.0], np.cumsum(dur[:-1])])
    write_video(path, m.frames(n=23), 50, times=times)
    return VideoFacts(tuple(times), SIZE, SIZE, 23 / 0.9, duration=0.9)


@material("odd_size.mp4")
def _odd(m: Materials, path: Path) -> VideoFacts:
    import cv2

    frames = [cv2.copyMakeBorder(f, 0, 1, 0, 3, cv2.BORDER_REPLICATE) for f in m.frames()]  # 131 x 129
    return m.video(path, frames, 25, pix_fmt="yuv444p")


@material("wide.mp4")
def _wide(m: Materials, path: Path) -> VideoFacts:
    import cv2

    frames = [stamp(cv2.copyMakeBorder(f, 0, 0, 64, 64, cv2.BORDER_CONSTANT, value=(90, 90, 90)), k)
              for k, f in enumerate(m.frames())]
    return m.video(path, frames, 25)


@material("rotated90.mp4")
def _rot(m: Materials, path: Path) -> VideoFacts:
    """Stored turned a quarter clockwise, tagged to be shown turned back: displayed upright, 128 x 160."""
    import cv2

    frames = [cv2.copyMakeBorder(f, 16, 16, 0, 0, cv2.BORDER_CONSTANT, value=(90, 90, 90)) for f in m.frames()]
    stored = [np.ascontiguousarray(np.rot90(f, -1)) for f in frames]  # 160 x 128 coded
    write_video(path, stored, 25, rotation=90)
    return VideoFacts(tuple(k / 25 for k in range(FRAMES)), 128, 160, 25.0, stamped=False)


@material("anamorphic.mp4", "anamorphic_rotated.mp4")
def _anamorphic(m: Materials, path: Path) -> VideoFacts:
    """Non-square pixels: 96 wide and 128 high, tagged to be shown 4/3 as wide (a square picture); the second stored
    turned a quarter clockwise with the tag on its stored pixels (upright, each is 3/4 as wide as high)."""
    import cv2

    frames = [stamp(cv2.resize(f, (96, SIZE), interpolation=cv2.INTER_AREA), k) for k, f in enumerate(m.frames())]
    if "rotated" not in path.name:
        return m.video(path, frames, 25, sample_aspect=Fraction(4, 3))
    write_video(path, [np.ascontiguousarray(np.rot90(f, -1)) for f in frames], 25, rotation=90,
                sample_aspect=Fraction(4, 3))
    return VideoFacts(tuple(k / 25 for k in range(FRAMES)), 96, SIZE, 25.0, stamped=False)


@material("two_faces.mp4")
def _two(m: Materials, path: Path) -> VideoFacts:
    left = m.frames("face3", FRAMES, (SIZE, SIZE))
    right = m.frames("face2")
    frames = [np.concatenate([a, b], axis=1) for a, b in zip(left, right)]  # face3's stamp is on the left
    return m.video(path, frames, 25)


@material("face_lost.mp4")
def _lost(m: Materials, path: Path) -> VideoFacts:
    """The face is covered for frames 4 to 9 (a grey card with the stamp kept)."""
    frames = [f.copy() for f in m.frames()]
    for k in range(4, 10):
        frames[k][8:] = 128
    return m.video(path, frames, 25)


@material("face_late.mp4")
def _late(m: Materials, path: Path) -> VideoFacts:
    """No face in the first 6 frames."""
    frames = [f.copy() for f in m.frames()]
    for k in range(6):
        frames[k][8:] = 128
    return m.video(path, frames, 25)


@material("wall.mp4")
def _wall(m: Materials, path: Path) -> VideoFacts:
    frames = [np.full((SIZE, SIZE, 3), 120 + k, np.uint8) for k in range(FRAMES)]
    return m.video(path, frames, 25)


@material("silent.mp4")
def _silent(m: Materials, path: Path) -> VideoFacts:
    return m.video(path, m.frames(), 25)


@material("long.mp4")
def _long(m: Materials, path: Path) -> VideoFacts:
    """Four seconds (for runs that must still be going when a signal arrives)."""
    frames = m.frames()
    return m.video(path, (frames + frames[::-1]) * 2, 25)


@material("damaged.mp4")
def _damaged(m: Materials, path: Path) -> VideoFacts:
    """Garbage over packets in the middle: rendered, the damaged frames counted in a warning."""
    src = path.with_name(".damaged_src.mp4")
    facts = m.video(src, m.frames(n=50), 25, options={"g": "12"})
    data = bytearray(src.read_bytes())
    rng = np.random.default_rng(0)
    for k in range(5):
        at = int(len(data) * 0.6) + 300 * k
        data[at:at + 200] = rng.bytes(200)
    path.write_bytes(bytes(data))
    src.unlink()
    return VideoFacts(facts.times, SIZE, SIZE, 25.0, stamped=False)


@material("truncated_moov_end.mp4")
def _trunc(m: Materials, path: Path) -> None:
    data = m["h264.mp4"].read_bytes()  # the index (moov) is written last: cut it away
    path.write_bytes(data[: len(data) * 6 // 10])


@material("truncated_faststart.mp4")
def _trunc_fast(m: Materials, path: Path) -> VideoFacts:
    """Index first, then the data, cut after 60 %: the last frames are missing."""
    src = path.with_name(".fast_src.mp4")
    write_video(src, m.frames(n=50), 25)
    import av

    with av.open(str(src)) as i, av.open(str(path.with_name(".fast.mp4")), "w", options={"movflags": "faststart"}) as o:
        s = o.add_stream_from_template(i.streams.video[0])
        for pkt in i.demux(i.streams.video[0]):
            if pkt.dts is None:
                continue
            pkt.stream = s
            o.mux(pkt)
    data = path.with_name(".fast.mp4").read_bytes()
    path.write_bytes(data[: len(data) * 6 // 10])
    src.unlink()
    path.with_name(".fast.mp4").unlink()
    return VideoFacts(tuple(k / 25 for k in range(50)), SIZE, SIZE, 25.0, stamped=False)


@material("garbage.mp4", "garbage.wav", "garbage.pth", "garbage.jpg")
def _garbage(m: Materials, path: Path) -> None:
    path.write_bytes(np.random.default_rng(1).bytes(40_000))


@material("empty.mp4", "empty_file.wav", "empty.pth")
def _empty(m: Materials, path: Path) -> None:
    path.write_bytes(b"")


@material("text.mp4", "text.mp3", "text.pth")
def _text(m: Materials, path: Path) -> None:
    path.write_text("this is not a media file\n" * 50)


@material("face.png", "face.jpg", "face.bmp", "face.webp", "face.tiff")
def _still(m: Materials, path: Path) -> VideoFacts:
    import cv2

    img = m.frames()[0]
    assert cv2.imwrite(str(path), img)
    return VideoFacts((0.0,), SIZE, SIZE, 25.0, stamped=False)


@material("face_rgba.png", "face_gray.png", "face_16bit.png")
def _still_kinds(m: Materials, path: Path) -> VideoFacts:
    import cv2

    img = m.frames()[0]
    if "rgba" in path.name:
        img = np.concatenate([img, np.full(img.shape[:2] + (1,), 200, np.uint8)], axis=2)
    elif "gray" in path.name:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    else:
        img = img.astype(np.uint16) * 257
    assert cv2.imwrite(str(path), img)
    return VideoFacts((0.0,), SIZE, SIZE, 25.0, stamped=False)


@material("odd_still.png")
def _odd_still(m: Materials, path: Path) -> VideoFacts:
    import cv2

    img = cv2.copyMakeBorder(m.frames()[0], 0, 3, 0, 1, cv2.BORDER_REPLICATE)  # 129 x 131
    assert cv2.imwrite(str(path), img)
    return VideoFacts((0.0,), 129, 131, 25.0, stamped=False)


@material("truncated.png")
def _trunc_png(m: Materials, path: Path) -> None:
    data = m["face.png"].read_bytes()
    path.write_bytes(data[: len(data) // 2])


@material("wall.png")
def _wall_png(m: Materials, path: Path) -> None:
    import cv2

    cv2.imwrite(str(path), np.full((SIZE, SIZE, 3), 128, np.uint8))


# audio ----------------------------------------------------------------------------------------------------------
@material("speech.wav", "speech_8k.wav", "speech_44k_stereo.wav", "speech_48k_float.wav", "speech_24bit.wav",
          "speech_u8.wav", "speech_51.wav", "speech.flac", "speech_22k_stereo.flac")
def _wav(m: Materials, path: Path) -> None:
    name = path.name
    rate = 8000 if "8k" in name else 44100 if "44k" in name else 48000 if "48k" in name else \
        22050 if "22k" in name else 16000
    channels = 2 if "stereo" in name else 6 if "51" in name else 1
    subtype = "FLOAT" if "float" in name else "PCM_24" if "24bit" in name else "PCM_U8" if "u8" in name else None
    write_audio(path, m.speech(rate=rate), rate, channels=channels, subtype=subtype)


@material("speech.mp3", "speech.m4a", "speech.ogg", "speech_alac.m4a", "speech.ac3", "speech.mp2")
def _coded_audio(m: Materials, path: Path) -> None:
    codec = {"speech.mp3": "libmp3lame", "speech.m4a": "aac", "speech.ogg": "libopus", "speech_alac.m4a": "alac",
             "speech.ac3": "ac3", "speech.mp2": "mp2"}[path.name]
    rate = 48000 if codec in ("libopus", "ac3") else 44100
    write_audio(path, m.speech(rate=rate), rate, codec=codec, channels=2 if codec == "ac3" else 1)


@material("long_speech.wav")
def _long_speech(m: Materials, path: Path) -> None:
    write_audio(path, m.speech(1.6), 16000)  # longer than the one-second clips: they loop


@material("speech_4s.wav")
def _speech_4s(m: Materials, path: Path) -> None:
    write_audio(path, np.tile(m.speech(1.0), 4), 16000)


@material("blip.wav")
def _blip(m: Materials, path: Path) -> None:
    write_audio(path, m.speech(0.02), 16000)  # shorter than one frame


@material("silence.wav")
def _silence(m: Materials, path: Path) -> None:
    write_audio(path, np.zeros(16000, np.float32), 16000)  # a second of digital silence


@material("nan.wav")
def _nan(m: Materials, path: Path) -> None:
    y = m.speech().copy()
    y[1000:1100] = np.nan
    y[3000] = np.inf
    y[3001] = -np.inf
    write_audio(path, y, 16000, subtype="FLOAT")


@material("loud.wav")
def _loud(m: Materials, path: Path) -> None:
    write_audio(path, 400 * m.speech(), 16000, subtype="FLOAT")  # far beyond full scale: scaled down, not clipped


@material("empty.wav")
def _empty_wav(m: Materials, path: Path) -> None:
    write_audio(path, np.zeros(0, np.float32), 16000)


@material("truncated.wav")
def _trunc_wav(m: Materials, path: Path) -> None:
    path.write_bytes(m["speech.wav"].read_bytes()[:30])  # half a header


# checkpoints ----------------------------------------------------------------------------------------------------
@material("base.pth")
def _base(m: Materials, path: Path) -> None:
    from helpers import random_base_checkpoint

    random_base_checkpoint(path)


@material("base.safetensors")
def _base_st(m: Materials, path: Path) -> None:
    from helpers import random_base_checkpoint

    random_base_checkpoint(path, official=False)


@material("hr128.pth", "hr256.pth")
def _hr(m: Materials, path: Path) -> None:
    from helpers import random_hr_checkpoint

    random_hr_checkpoint(path, 256 if "256" in path.name else 128)


@material("syncnet.pth")
def _syncnet(m: Materials, path: Path) -> None:
    import torch

    from hyperlips.models import create_model

    torch.save({"state_dict": create_model("syncnet").state_dict()}, path)


@material("truncated.pth", "truncated.safetensors")
def _trunc_ckpt(m: Materials, path: Path) -> None:
    data = m["base.pth" if path.suffix == ".pth" else "base.safetensors"].read_bytes()
    path.write_bytes(data[: len(data) // 3])


@material("list.pth")
def _list(m: Materials, path: Path) -> None:
    import torch

    torch.save([1, 2, 3], path)


@material("wrong_shapes.pth", "missing_keys.pth")
def _bad_state(m: Materials, path: Path) -> None:
    import torch

    state = torch.load(m["base.pth"], map_location="cpu")["state_dict"]
    keys = sorted(state)
    if "missing" in path.name:
        state = {k: state[k] for i, k in enumerate(keys) if i % 2}
    else:
        big = max(keys, key=lambda k: state[k].numel())
        state[big] = torch.zeros(tuple(s + 1 for s in state[big].shape))
    torch.save({"state_dict": state}, path)


@material("ckpt_folder")
def _folder(m: Materials, path: Path) -> None:
    path.mkdir()
    (path / "notes.txt").write_text("no weights here\n")


@material("a_folder")
def _a_folder(m: Materials, path: Path) -> None:
    path.mkdir()


# ---------------------------------------------------------------------------------------------- cases
@dataclass
class Case:
    """One command line and what must come of it.

    ``argv``: strings with ``{material}``, ``{out}`` (``out.mp4`` in the case's folder) and ``{work}``.
    ``rc``: exit code; ``error``: words of the single error line (rc 2); ``warnings``: words, one tuple per warning
    line expected. Good sync runs: ``video``/``audio`` name the inputs for the output checks, ``fps`` the rate
    expected (default: the video's), ``loop`` the loop mode, ``stamps=False`` skips the frame-identity check.
    ``prepare(work, materials)`` runs first (e.g. copy an input into the case's folder).
    """

    id: str
    argv: list[str]
    rc: int = 0
    error: tuple[str, ...] = ()
    warnings: tuple[tuple[str, ...], ...] = ()
    video: str | None = None
    audio: str | None = None
    fps: float | None = None
    loop: str = "pingpong"
    stamps: bool = True
    quiet: bool = True
    signal: str | None = None
    signal_after: str = ""
    ignore: tuple[str, ...] = ()  # signals ignored when the command starts (SIGHUP under nohup)
    fsize: int | None = None
    prepare: Callable[[Path, Materials], None] | None = None
    output: str = "out.mp4"
    env: dict = field(default_factory=dict)  # extra environment of the run
    slow: bool = False
    marks: tuple = field(default_factory=tuple)


CKPT = ["--checkpoint", "{base.pth}"]


def sync(video: str, audio: str = "speech.wav", *extra: str, **kw) -> Case:
    """A good ``sync`` run of ``video`` with ``audio``."""
    name = kw.pop("id", None) or f"sync-{video}-{audio}" + ("-" + "-".join(e.strip("-") for e in extra) if extra else "")
    return Case(name, ["sync", "{" + video + "}", "{" + audio + "}", "-o", "{out}", *CKPT, *extra, "--quiet"],
                video=video, audio=audio, **kw)


def bad(name: str, argv: list[str], *words: str, rc: int = 2, **kw) -> Case:
    """A ``sync`` (or other) command that must fail with one line holding ``words``."""
    return Case(name, argv, rc=rc, error=words, **kw)


def _slot(x: str) -> str:
    return x if x.startswith("{") else "{" + x + "}"


def bad_sync(name: str, video: str = "h264.mp4", audio: str = "speech.wav", *extra: str, words=(), ckpt=True,
             **kw) -> Case:
    """``sync`` with a mistake. ``video``/``audio``: material names, or ``{work}/...`` for files that do not exist."""
    argv = ["sync", _slot(video), _slot(audio), "-o", "{out}", *(CKPT if ckpt else []), *extra]
    if not kw.pop("progress", False):
        argv.append("--quiet")
    return Case(name, argv, rc=2, error=tuple(words), quiet="--quiet" in argv, **kw)


def _copy_video_to_work(work: Path, m: Materials) -> None:
    shutil.copy(m["h264.mp4"], work / "in.mp4")


def _symlink_out_to_video(work: Path, m: Materials) -> None:
    shutil.copy(m["h264.mp4"], work / "in.mp4")
    (work / "link.mp4").symlink_to(work / "in.mp4")


def _file_as_parent(work: Path, m: Materials) -> None:
    (work / "afile").write_text("a file, not a folder\n")


def _existing_output(work: Path, m: Materials) -> None:
    (work / "out.mp4").write_bytes(b"an old result")


VFR = ("variable frame rate",)
# good inputs the default run includes (one per family); the others are marked slow
FAST_VIDEOS = {"h264.mp4", "vp9.webm", "mjpeg.avi", "grid.mpg", "fps30.mp4", "ntsc.mp4", "face.png", "face_rgba.png",
               "odd_still.png"}
FAST_AUDIO = {"speech_44k_stereo.wav", "speech_48k_float.wav", "speech_u8.wav", "speech_51.wav", "speech.mp3",
              "speech.ogg", "with_audio.mp4"}
SYNC_CASES: list[Case] = [
    # --- containers and codecs (the default run takes one of each family; -m slow runs them all)
    *[sync(v, slow=v not in FAST_VIDEOS) for v in (
        "h264.mp4", "h264.mov", "h264.mkv", "h265.mp4", "vp8.webm", "vp9.webm", "av1.mkv", "mjpeg.avi", "mpeg4.avi",
        "mpeg2.ts", "prores.mov", "ffv1.mkv", "yuv444.mp4", "bframes.mp4", "grid.mpg", "lrs2.mp4")],
    # --- frame rates, variable ones included
    *[sync(v, slow=v not in FAST_VIDEOS) for v in ("fps30.mp4", "ntsc.mp4", "fps60.mp4", "fps12.mp4")],
    sync("fps5.mp4", warnings=(("fps5.mp4", "5 frames a second", "--fps 25"),)),
    sync("fps5.mp4", "speech.wav", "--fps", "25", fps=25.0),
    sync("vfr.mp4", warnings=(VFR,)),
    sync("vfr_alternating.mkv", warnings=(VFR,)),
    sync("vfr.mp4", "speech.wav", "--fps", "30", warnings=(VFR,), fps=30.0),
    sync("h264.mp4", "speech.wav", "--fps", "15", fps=15.0, slow=True),
    # --- sizes and rotation
    sync("odd_size.mp4"), sync("wide.mp4", slow=True), sync("rotated90.mp4"),
    sync("anamorphic.mp4"), sync("anamorphic_rotated.mp4", slow=True),
    # --- stills
    *[sync(v, slow=v not in FAST_VIDEOS) for v in (
        "face.png", "face.jpg", "face.bmp", "face.webp", "face.tiff", "face_gray.png", "face_16bit.png",
        "odd_still.png")],
    sync("face_rgba.png", warnings=(("face_rgba.png", "transparent parts are shown over white"),)),
    # --- audio: sample formats, rates, channel layouts, codecs, a video's audio track
    *[sync("h264.mp4", a, slow=a not in FAST_AUDIO) for a in (
        "speech_8k.wav", "speech_44k_stereo.wav", "speech_48k_float.wav", "speech_24bit.wav", "speech_u8.wav",
        "speech_51.wav", "speech.flac", "speech_22k_stereo.flac", "speech.mp3", "speech.m4a", "speech.ogg",
        "speech_alac.m4a", "speech.ac3", "speech.mp2", "with_audio.mp4")],
    sync("h264.mp4", "nan.wav", warnings=(("nan.wav", "not numbers", "silence"),)),
    sync("h264.mp4", "silence.wav", warnings=(("silence.wav", "silent", "nothing to follow"),)),
    sync("h264.mp4", "loud.wav", warnings=(("loud.wav", "times full scale", "scaled down"),)),
    # --- lengths: audio longer than the video (loops) or shorter than a frame
    sync("h264.mp4", "long_speech.wav"),
    sync("h264.mp4", "blip.wav", warnings=(("blip.wav", "20.0 ms", "less than one frame"),)),
    sync("h264.mp4", "long_speech.wav", "--loop", "hold", loop="hold", slow=True),
    sync("vfr.mp4", "long_speech.wav", warnings=(VFR,)),
    # --- faces: lost mid-clip, found late, several
    # a grey card over the frame is a cut (into it): the card is left alone, not bridged with a mouth on it
    sync("face_lost.mp4", warnings=(("cuts to another shot", "1 shot without the face", "left as it is"),)),
    sync("face_late.mp4", slow=True),
    sync("two_faces.mp4", warnings=(("two_faces.mp4", "frames with a face show more than one", "the largest at the "
                                     "start is followed", "--face N"),)),
    sync("two_faces.mp4", "speech.wav", "--face", "0", slow=True),
    sync("two_faces.mp4", "speech.wav", "--face-box", "130,0,256,128"),
    sync("two_faces.mp4", "speech.wav", "--face-box=130,-50,1e308,1e308", id="sync-face-box-past-the-edges"),
    sync("h264.mp4", "speech.wav", "--reference", "first", slow=True),
    sync("h264.mp4", "speech.wav", "--reference", "5", slow=True),
    # --- damaged but readable
    sync("damaged.mp4", "long_speech.wav", warnings=(("damaged.mp4", "damaged"),), stamps=False),
    sync("truncated_faststart.mp4", "long_speech.wav", warnings=(("truncated_faststart.mp4", "damaged"),),
         stamps=False, slow=True),
    # --- other checkpoint formats
    Case("sync-safetensors-checkpoint", ["sync", "{h264.mp4}", "{speech.wav}", "-o", "{out}", "--checkpoint",
                                         "{base.safetensors}", "--quiet"], video="h264.mp4", audio="speech.wav",
         slow=True),
    Case("sync-hr-decoder", ["sync", "{h264.mp4}", "{speech.wav}", "-o", "{out}", *CKPT, "--hr-checkpoint",
                             "{hr256.pth}", "--size", "256", "--quiet"], video="h264.mp4", audio="speech.wav",
         slow=True),
    # --- output paths that work
    sync("h264.mp4", id="sync-output-in-new-folders", output="new/deeper/out.mp4"),
    sync("h264.mp4", id="sync-output-replaces-old-file", prepare=_existing_output),
    sync("h264.mp4", id="sync-output-mov", output="out.mov", slow=True),
    sync("h264.mp4", id="sync-output-name-with-spaces-and-accents", output="résultat final.mp4", slow=True),

    # === mistakes: one line, exit code 2, nothing written
    # --- options
    bad_sync("model-without-untrained", "h264.mp4", "speech.wav", "--model", "lite", words=("--model", "--untrained")),
    # --- video
    bad_sync("video-missing", "{work}/nope.mp4", words=("not found", "nope.mp4")),
    bad_sync("video-is-a-folder", "a_folder", words=("folder", "a_folder")),
    bad_sync("video-empty-file", "empty.mp4", words=("empty", "empty.mp4")),
    bad_sync("video-garbage", "garbage.mp4", words=("garbage.mp4",)),
    bad_sync("video-text-file", "text.mp4", words=("text.mp4", "corrupt media file: Invalid data found when processing input)")),
    bad_sync("video-truncated-index", "truncated_moov_end.mp4", words=("truncated_moov_end.mp4",)),
    bad_sync("video-truncated-png", "truncated.png", words=("truncated.png",)),
    bad_sync("video-garbage-jpg", "garbage.jpg", words=("garbage.jpg",)),
    bad_sync("video-is-audio", "speech.wav", words=("speech.wav", "video")),
    # --- audio
    bad_sync("audio-missing", "h264.mp4", "{work}/nope.wav", words=("not found", "nope.wav")),
    bad_sync("audio-zero-samples", "h264.mp4", "empty.wav", words=("empty.wav",)),
    bad_sync("audio-empty-file", "h264.mp4", "empty_file.wav", words=("empty_file.wav",)),
    bad_sync("audio-garbage", "h264.mp4", "garbage.wav", words=("garbage.wav",)),
    bad_sync("audio-truncated-header", "h264.mp4", "truncated.wav", words=("truncated.wav",)),
    bad_sync("audio-text-as-mp3", "h264.mp4", "text.mp3", words=("text.mp3",)),
    bad_sync("audio-has-no-audio-track", "h264.mp4", "silent.mp4", words=("silent.mp4", "audio")),
    bad_sync("audio-is-a-folder", "h264.mp4", "a_folder", words=("a_folder",)),
    # --- faces
    bad_sync("no-face-in-video", "wall.mp4", words=("no face", "wall.mp4")),
    bad_sync("no-face-in-photo", "wall.png", words=("no face", "wall.png")),
    bad_sync("face-index-too-high", "h264.mp4", "speech.wav", "--face", "3", words=("--face 3", "shows 1 face", "0..0")),
    bad_sync("face-box-outside-frame", "h264.mp4", "speech.wav", "--face-box", "1000,1000,1100,1100",
             words=("--face-box", "1000,1000,1100,1100", "128x128")),
    bad_sync("face-box-on-no-face", "wide.mp4", "speech.wav", "--face-box", "0,0,30,30",
             words=("no face", "0,0,30,30")),
    bad_sync("reference-out-of-range", "h264.mp4", "speech.wav", "--reference", "9999", words=("--reference", "9999")),
    bad_sync("reference-not-a-number", "h264.mp4", "speech.wav", "--reference", "middle", words=("--reference",)),
    # the same mistakes with progress bars on: the error is still alone on its own, last, line
    bad_sync("no-face-in-video-with-progress", "wall.mp4", words=("no face",), progress=True),
    bad_sync("no-face-in-photo-with-progress", "wall.png", words=("no face",), progress=True),
    bad_sync("face-index-with-progress", "h264.mp4", "speech.wav", "--face", "3", words=("face",), progress=True),
    bad_sync("reference-with-progress", "h264.mp4", "speech.wav", "--reference", "9999", words=("9999",),
             progress=True),
    bad_sync("face-box-with-progress", "h264.mp4", "speech.wav", "--face-box", "1000,1000,1100,1100",
             words=("1000,1000,1100,1100",), progress=True),
    # --- options
    bad_sync("fps-zero", "h264.mp4", "speech.wav", "--fps", "0", words=("--fps",)),
    bad_sync("fps-too-high", "h264.mp4", "speech.wav", "--fps", "1000", words=("--fps",)),
    bad_sync("fps-not-a-number", "h264.mp4", "speech.wav", "--fps", "fast", words=("--fps",)),
    bad_sync("batch-size-zero", "h264.mp4", "speech.wav", "--batch-size", "0", words=("--batch-size",)),
    bad_sync("temporal-blend-too-high", "h264.mp4", "speech.wav", "--temporal-blend", "0.5",
             words=("--temporal-blend", "1/3")),
    bad_sync("temporal-blend-negative", "h264.mp4", "speech.wav", "--temporal-blend", "-0.1",
             words=("--temporal-blend",)),
    bad_sync("face-box-malformed", "h264.mp4", "speech.wav", "--face-box", "1,2,3", words=("--face-box",)),
    bad_sync("face-box-nan", "h264.mp4", "speech.wav", "--face-box=nan,0,100,100", words=("--face-box", "finite")),
    bad_sync("face-negative", "h264.mp4", "speech.wav", "--face", "-1", words=("--face", "at least 0")),
    bad_sync("loop-unknown", "h264.mp4", "speech.wav", "--loop", "bounce", words=("--loop",)),
    bad_sync("size-without-hr", "h264.mp4", "speech.wav", "--size", "256", words=("--hr-checkpoint",)),
    bad_sync("unknown-option", "h264.mp4", "speech.wav", "--frobnicate", words=("--frobnicate", "see: hyperlips sync --help")),
    # --- checkpoints
    # a build without shipped weights and no --checkpoint
    bad_sync("checkpoint-none", ckpt=False, words=("--checkpoint",), env={"HYPERLIPS_NO_SHIPPED": "1"}),
    *[bad_sync(f"checkpoint-{n}", "h264.mp4", "speech.wav", "--checkpoint", "{" + f + "}", ckpt=False,
               words=(f,)) for n, f in (("empty", "empty.pth"), ("garbage", "garbage.pth"), ("text", "text.pth"),
                                        ("truncated", "truncated.pth"), ("truncated-safetensors", "truncated.safetensors"),
                                        ("list", "list.pth"), ("wrong-shapes", "wrong_shapes.pth"),
                                        ("missing-keys", "missing_keys.pth"), ("hr-as-base", "hr128.pth"),
                                        ("syncnet-as-base", "syncnet.pth"), ("folder-without-weights", "ckpt_folder"))],
    bad_sync("checkpoint-missing", "h264.mp4", "speech.wav", "--checkpoint", "{work}/nope.pth", ckpt=False,
             words=("nope.pth",)),
    bad_sync("hr-checkpoint-is-base", "h264.mp4", "speech.wav", "--hr-checkpoint", "{base.pth}", words=("base.pth",)),
    bad_sync("hr-size-mismatch", "h264.mp4", "speech.wav", "--hr-checkpoint", "{hr128.pth}", "--size", "512",
             words=("--size", "hr128.pth")),
    # the starter's mouth is warped by default: an HR decoder was loaded and went unused, silently
    bad_sync("hr-with-warped-mouth", "h264.mp4", "speech.wav", "--hr-checkpoint", "{hr128.pth}", ckpt=False,
             words=("HR decoder", "warped", "--mouth render or hybrid")),
    # --- output paths
    Case("output-same-as-video", ["sync", "{work}/in.mp4", "{speech.wav}", "-o", "{work}/in.mp4", *CKPT, "--quiet"],
         rc=2, error=("same file",), prepare=_copy_video_to_work, output="in.mp4"),
    Case("output-same-as-audio", ["sync", "{h264.mp4}", "{work}/in.mp4", "-o", "{work}/in.mp4", *CKPT, "--quiet"],
         rc=2, error=("same file",), prepare=_copy_video_to_work, output="in.mp4"),
    Case("output-symlink-to-video", ["sync", "{work}/in.mp4", "{speech.wav}", "-o", "{work}/link.mp4", *CKPT,
                                     "--quiet"], rc=2, error=("same file",), prepare=_symlink_out_to_video,
         output="link.mp4"),
    bad_sync("output-wrong-suffix", output="out.txt", words=("out.txt",)),
    bad_sync("output-no-suffix", output="out", words=("output",)),
    bad_sync("output-is-a-folder", output="a_dir.mp4", words=("folder",), prepare=lambda w, m: (w / "a_dir.mp4").mkdir()),
    bad_sync("output-parent-is-a-file", output="afile/out.mp4", words=("afile",), prepare=_file_as_parent),
    bad_sync("output-disk-full", "long.mp4", "speech_4s.wav", output="out.mp4", fsize=30_000,  # (a file-size
             words=("out.mp4", "file-size limit")),  # limit: EFBIG, said as such; it was "free some space")
    # --- signals: stopped mid-run, cleaned up like Ctrl-C
    *[Case(f"signal-{s.lower()}-{stage}", ["sync", "{long.mp4}", "{speech_4s.wav}", "-o", "{out}", *CKPT,
                                           "--batch-size", "2"],
           rc={"SIGINT": 130, "SIGTERM": 143, "SIGHUP": 129}[s], signal=s, signal_after=stage + ":", quiet=False)
      for s, stage in (("SIGTERM", "lip-sync"), ("SIGHUP", "lip-sync"), ("SIGINT", "lip-sync"), ("SIGTERM", "faces"))],
    # under nohup SIGHUP is ignored from the start: a closed terminal must not stop the run
    Case("signal-sighup-under-nohup",
         ["sync", "{long.mp4}", "{speech_4s.wav}", "-o", "{out}", *CKPT, "--batch-size", "2"], video="long.mp4", audio="speech_4s.wav", signal="SIGHUP", signal_after="lip-sync:", ignore=("SIGHUP",),
         quiet=False, stamps=False),  # (long.mp4 plays its frames forward and back: their stamps repeat)
]

def expand(argv: Sequence[str], work: Path, materials: Materials, output: str) -> list[str]:
    """Fill the placeholders: materials by name, ``{out}``, ``{work}``."""
    out = []
    for a in argv:
        a = a.replace("{out}", str(work / output)).replace("{work}", str(work))
        for name in re.findall(r"\{([^{}]+)\}", a):
            a = a.replace("{" + name + "}", str(materials[name]))
        out.append(a)
    return out


# ---------------------------------------------------------------------------------------------- running a case
def run_case(case: Case, runner: Runner, materials: Materials, work: Path) -> Result:
    if case.prepare is not None:
        case.prepare(work, materials)
    argv = expand(case.argv, work, materials, case.output)
    return runner.run(argv, work, signal=case.signal, signal_after=case.signal_after, fsize=case.fsize,
                      env=case.env or None, ignore=case.ignore)


def assert_warnings(case: Case, res: Result) -> None:
    assert len(res.warnings) == len(case.warnings), res.describe()
    for line, words in zip(res.warnings, case.warnings):
        for w in words:
            assert w.lower() in line.lower(), (w, line)


def assert_failure(case: Case, res: Result, work) -> None:
    assert not res.timed_out, res.describe()
    assert res.rc == case.rc, res.describe()
    assert "Traceback" not in res.stderr, res.describe()
    screen = res.screen
    if case.signal:
        assert res.signalled and screen and screen[-1].startswith("hyperlips: interrupted:"), res.describe()
        assert sum(ln.startswith("hyperlips: ") for ln in screen) == 1, res.describe()
        if case.argv[0] == "preprocess":  # (it said only "stopped by SIGTERM")
            assert "are kept in" in res.stderr and "run the same command again" in res.stderr, res.describe()
    else:
        assert res.errors and screen[-1] == res.errors[0] and len(res.errors) == 1, res.describe()
        if case.quiet:  # nothing but the error (and any warning) on stderr, nothing on stdout
            assert screen == res.warnings + res.errors and not res.stdout.strip(), res.describe()
        for w in case.error:
            assert w.lower() in res.errors[0].lower(), (w, res.errors[0])
        assert "np.float" not in res.errors[0] and "array(" not in res.errors[0]
    out = work / case.output
    assert not out.exists() or out.is_dir() or case.id.startswith(("output-same", "output-sym")), out
    assert not leftovers(work), leftovers(work)


def leftovers(folder: Path) -> list[Path]:
    """Temporary files (hidden partial outputs, .tmp files) anywhere under ``folder``."""
    return [p for p in folder.rglob("*") if ".partial" in p.name or p.name.endswith(".tmp") or ".tmp-" in p.name]


# ---------------------------------------------------------------------------------------------- the other jobs
def _talking_clip(m: Materials, path: Path, clip: str = "face2", times=None, audio_codec: str = "aac",
                  audio: np.ndarray | None = None) -> None:
    """A one-second talking clip with speech as its own audio track."""
    n = len(times) if times is not None else FRAMES
    write_video(path, m.frames(clip, n), 25, times=times, audio=m.speech(1.0, 48000) if audio is None else audio,
                audio_rate=48000, audio_codec=audio_codec)


@material("clips")
def _clips(m: Materials, path: Path) -> None:
    """Three speakers: two good clips, a variable-frame-rate one, one whose float audio holds NaN, a broken one."""
    for d in ("anna", "ben", "carl"):
        (path / d).mkdir(parents=True)
    _talking_clip(m, path / "anna" / "a1.mp4")
    _talking_clip(m, path / "ben" / "b1.mp4", "face3")
    dur = np.array([1] * 10 + [3] * 10) / 30
    _talking_clip(m, path / "ben" / "vfr.mp4", "face3", times=np.concatenate([[0.0], np.cumsum(dur[:-1])]),
                  audio=m.speech(1.35, 48000))  # as long as its picture (a shorter sound cuts the clip)
    wav = m.speech(1.0, 48000).copy()
    wav[5000:5200] = np.nan
    _talking_clip(m, path / "anna" / "nan_audio.mkv", audio_codec="pcm_f32le", audio=wav)
    (path / "carl" / "broken.mp4").write_bytes(np.random.default_rng(2).bytes(30_000))


@material("train_clips")
def _train_clips(m: Materials, path: Path) -> None:
    for d, clip in (("anna", "face2"), ("ben", "face3")):
        (path / d).mkdir(parents=True)
        _talking_clip(m, path / d / f"{d}.mp4", clip)


@material("broken_clips")
def _broken_clips(m: Materials, path: Path) -> None:
    path.mkdir()
    (path / "x.mp4").write_bytes(np.random.default_rng(3).bytes(20_000))
    (path / "y.mov").write_text("not a video\n")


@material("talking.mp4")
def _talking(m: Materials, path: Path) -> VideoFacts:
    _talking_clip(m, path)
    return VideoFacts(tuple(k / 25 for k in range(FRAMES)), SIZE, SIZE, 25.0)


@material("dataset")
def _dataset(m: Materials, path: Path) -> None:
    """A preprocessed dataset of the two train clips (made in-process, once)."""
    from hyperlips.data.preprocess import PreprocessOptions, preprocess

    preprocess(m["train_clips"], path, PreprocessOptions(), workers=1, progress=False)


def _dataset_copy(work: Path, m: Materials) -> Path:
    dst = work / "data"
    shutil.copytree(m["dataset"], dst)
    return dst


def _damage_dataset(how: str):
    def prepare(work: Path, m: Materials) -> None:
        data = _dataset_copy(work, m)
        clip = data / "clips" / "ben" / "ben"  # the training clip (anna is held out)
        if how == "no-manifest":
            (data / "manifest.json").unlink()
        elif how == "bad-manifest":
            (data / "manifest.json").write_text("{ this is not json")
        elif how == "clip-missing":
            shutil.rmtree(clip)
        elif how == "mel-missing":
            (clip / "mel.npy").unlink()
        elif how == "mel-corrupt":
            (clip / "mel.npy").write_bytes(b"\x93NUMPY garbage" * 10)
        elif how == "images-corrupt":
            stack = clip / "face128.bin"
            stack.write_bytes(np.random.default_rng(4).bytes(stack.stat().st_size))
        elif how == "images-truncated":
            stack = clip / "face128.bin"
            stack.write_bytes(stack.read_bytes()[:1000])
        elif how == "times-missing":
            (clip / "times.npy").unlink()
        else:
            raise ValueError(how)

    return prepare


def _make_file(name: str):
    def prepare(work: Path, m: Materials) -> None:
        (work / name).write_text("a file\n")

    return prepare


def _empty_dir(work: Path, m: Materials) -> None:
    (work / "empty").mkdir()


def _data_and_file(work: Path, m: Materials) -> None:
    _dataset_copy(work, m)
    (work / "afile").write_text("a file\n")


def _data_and_run_file(work: Path, m: Materials) -> None:
    _dataset_copy(work, m)
    (work / "run").write_text("a file where the run folder should go\n")


TRAIN = ["--max-steps", "2", "--batch-size", "2", "--workers", "0", "--val-every", "0", "--quiet"]


def train(name: str, words: tuple, prepare=None, *extra: str, data: str = "{work}/data", **kw) -> Case:
    return Case(f"train-{name}", ["train", "sync", data, "--out", "{work}/run", *TRAIN, *extra], rc=2, error=words,
                prepare=prepare or _dataset_copy, output="run/model.safetensors", **kw)


JOB_CASES: list[Case] = [
    # --- preprocess
    Case("preprocess-mixed-folder", ["preprocess", "{clips}", "{work}/ds", "--workers", "1", "--quiet"],
         warnings=(("nan_audio.mkv", "not numbers"), ("ben/vfr.mp4", "variable frame rate"))),
    Case("preprocess-two-workers-signal-sigterm", ["preprocess", "{clips}", "{work}/ds", "--workers", "2"],
         rc=143, signal="SIGTERM", signal_after="preprocess:", quiet=False, output="ds/manifest.json"),
    bad("preprocess-source-missing", ["preprocess", "{work}/nope", "{work}/ds", "--quiet"], "not found", "nope"),
    bad("preprocess-source-empty", ["preprocess", "{work}/empty", "{work}/ds", "--quiet"], "no video files",
        prepare=_empty_dir),
    bad("preprocess-only-broken-clips", ["preprocess", "{broken_clips}", "{work}/ds", "--workers", "1", "--quiet"],
        "no usable clips", output="ds/clips/x"),
    bad("preprocess-one-file-not-a-video", ["preprocess", "{text.mp4}", "{work}/ds", "--quiet"], "no usable clips",
        output="ds/clips/text"),
    bad("preprocess-output-is-a-file", ["preprocess", "{train_clips}", "{work}/afile", "--quiet"], "afile",
        prepare=_make_file("afile"), output="afile/manifest.json"),
    bad("preprocess-output-under-a-file", ["preprocess", "{train_clips}", "{work}/afile/ds", "--quiet"], "afile",
        prepare=_make_file("afile"), output="afile/ds/manifest.json"),
    bad("preprocess-workers-zero", ["preprocess", "{train_clips}", "{work}/ds", "--workers", "0", "--quiet"],
        "--workers"),
    bad("preprocess-val-fraction", ["preprocess", "{train_clips}", "{work}/ds", "--val-fraction", "2", "--quiet"],
        "--val-fraction"),
    bad("preprocess-disk-full", ["preprocess", "{train_clips}", "{work}/ds", "--workers", "1", "--quiet"],
        "file-size limit", fsize=20_000, output="ds/manifest.json"),
    # --- train
    train("data-missing", ("not found", "nope"), None, data="{work}/nope"),
    train("data-not-a-dataset", ("not a preprocessed dataset",), _empty_dir, data="{work}/empty"),
    train("no-manifest", ("manifest",), _damage_dataset("no-manifest")),
    train("bad-manifest", ("manifest",), _damage_dataset("bad-manifest")),
    train("clip-folder-missing", ("ben",), _damage_dataset("clip-missing")),
    train("mel-missing", ("mel.npy",), _damage_dataset("mel-missing")),
    train("mel-corrupt", ("mel.npy",), _damage_dataset("mel-corrupt")),
    train("times-missing", ("times.npy",), _damage_dataset("times-missing")),
    train("images-corrupt", ("face128",), _damage_dataset("images-corrupt")),
    train("images-truncated", ("face128",), _damage_dataset("images-truncated")),
    train("images-corrupt-in-loader-process", ("face128",), _damage_dataset("images-corrupt"), "--workers", "1"),
    train("out-is-a-file", ("run",), _data_and_run_file),
    train("out-under-a-file", ("afile",), _data_and_file, "--out", "{work}/afile/run"),
    train("resume-without-checkpoints", ("--resume",), None, "--resume"),
    train("unknown-setting", ("nonsense",), None, "--set", "nonsense=1"),
    train("config-missing", ("nope.yaml",), None, "--config", "{work}/nope.yaml"),
    train("init-garbage", ("garbage.pth",), None, "--init", "{garbage.pth}"),
    train("disk-full", ("file-size limit",), None, fsize=200_000),
    Case("train-signal-sigterm", ["train", "sync", "{work}/data", "--out", "{work}/run", "--max-steps", "100000",
                                  "--batch-size", "2", "--workers", "0", "--val-every", "0", "--log-every", "1"],
         rc=143, signal="SIGTERM", signal_after="step 1/", quiet=False, prepare=_dataset_copy,
         output="run/no-such-output"),  # it stops after the step with a checkpoint, as on Ctrl-C (test_lite_training)
    # --- finetune
    bad("finetune-video-missing", ["finetune", "{work}/nope.mp4", "-o", "{work}/me.safetensors", "--quiet"],
        "nope.mp4", output="me.safetensors"),
    bad("finetune-no-face", ["finetune", "{wall.mp4}", "-o", "{work}/me.safetensors", "--quiet"], "wall.mp4",
        output="me.safetensors"),
    bad("finetune-no-audio", ["finetune", "{silent.mp4}", "-o", "{work}/me.safetensors", "--quiet"], "silent.mp4",
        output="me.safetensors"),
    bad("finetune-too-short", ["finetune", "{talking.mp4}", "-o", "{work}/me.safetensors", "--quiet"], "too short",
        output="me.safetensors"),
    bad("finetune-wrong-suffix", ["finetune", "{talking.mp4}", "-o", "{work}/me.zip", "--quiet"], "me.zip",
        output="me.zip"),
    *[bad(f"finetune-{flag.strip('-')}-{value}", ["finetune", "{talking.mp4}", "-o", "{work}/me.safetensors", flag,
                                                    value, "--quiet"], flag, value, output="me.safetensors")
      for flag, value in (("--batch-size", "0"), ("--lr", "-1"), ("--threads", "-2"), ("--workers", "-1"))],
    *[bad(f"{cmd[-1]}-threads-negative", [*cmd, "--threads", "-2"], "--threads", "at least 0")
      for cmd in (["train", "judge"], ["bench"], ["serve"])],
    bad("finetune-output-unwritable", ["finetune", "{talking.mp4}", "-o", "/proc/me.safetensors", "--quiet"],
        "cannot write -o /proc/me.safetensors"),  # found before preprocessing and training, not after them
    bad("finetune-checkpoint-garbage", ["finetune", "{talking.mp4}", "-o", "{work}/me.safetensors", "--checkpoint",
                                        "{garbage.pth}", "--steps", "1", "--quiet"], "garbage.pth",
        output="me.safetensors"),
    # --- eval
    bad("eval-generated-missing", ["eval", "{work}/nope.mp4", "--reference", "{h264.mp4}", "-o", "{work}/rep",
                                   "--quiet"], "nope.mp4", output="rep/report.json"),
    bad("eval-generated-garbage", ["eval", "{garbage.mp4}", "--reference", "{h264.mp4}", "-o", "{work}/rep",
                                   "--quiet"], "garbage.mp4", output="rep/report.json"),
    bad("eval-generated-is-a-photo", ["eval", "{face.png}", "--reference", "{h264.mp4}", "-o", "{work}/rep",
                                      "--quiet"], "face.png", output="rep/report.json"),
    bad("eval-reference-other-size", ["eval", "{h264.mp4}", "--reference", "{wide.mp4}", "-o", "{work}/rep",
                                      "--quiet"], "128x128", output="rep/report.json"),
    bad("eval-syncnet-garbage", ["eval", "{h264.mp4}", "--reference", "{h264.mp4}", "--syncnet", "{garbage.pth}",
                                 "-o", "{work}/rep", "--quiet"], "garbage.pth", output="rep/report.json"),
    bad("eval-no-pairs", ["eval", "{work}/empty", "--reference", "{work}/empty", "-o", "{work}/rep", "--quiet"],
        "empty", prepare=_empty_dir, output="rep/report.json"),
    bad("eval-output-under-a-file", ["eval", "{talking.mp4}", "--reference", "{talking.mp4}", "-o",
                                     "{work}/afile/rep", "--quiet"], "afile", prepare=_make_file("afile"),
        output="afile/rep/report.json"),
]
