"""Writers of test media: clips in any container/codec/rate (variable ones too), stamped frames, audio formats.

Frames can carry a **stamp**: their source number as a row of black and white blocks in the top-left corner, which
survives lossy coding and which paste-back never touches (it only changes the lower face). Reading the stamp of an
output frame tells which source frame it shows.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Sequence

import numpy as np

STAMP_BITS = 8
STAMP_BLOCK = 8  # pixels per bit (square)


def stamp(image: np.ndarray, number: int) -> np.ndarray:
    """A copy of ``image`` with ``number`` (0..255) written as 8 blocks in its top-left corner."""
    out = image.copy()
    for b in range(STAMP_BITS):
        value = 255 if (number >> b) & 1 else 0
        out[:STAMP_BLOCK, b * STAMP_BLOCK:(b + 1) * STAMP_BLOCK] = value
    return out


def read_stamp(image: np.ndarray) -> int:
    """The number :func:`stamp` wrote into ``image``."""
    n = 0
    for b in range(STAMP_BITS):
        block = image[1:STAMP_BLOCK - 1, b * STAMP_BLOCK + 1:(b + 1) * STAMP_BLOCK - 1]
        n |= int(block.mean() > 127) << b
    return n


def face_frames(video: Path, n: int, size: tuple[int, int] = (128, 128), stamped: bool = True) -> list[np.ndarray]:
    """The first ``n`` frames of ``video`` (BGR), resized to ``size`` = (width, height), stamped 0..n-1."""
    import cv2

    from hyperlips.media.video import FrameReader

    out = []
    with FrameReader(video) as r:
        for fr in r.iter_range(0, n):
            img = cv2.resize(fr.image, size, interpolation=cv2.INTER_AREA)
            out.append(stamp(img, len(out)) if stamped else img)
    assert len(out) == n, f"{video} has fewer than {n} frames"
    return out


def write_video(
    path: Path,
    frames: Sequence[np.ndarray],
    fps: float = 25,
    *,
    times: Sequence[float] | None = None,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    options: dict | None = None,
    rotation: int = 0,
    audio: np.ndarray | None = None,
    audio_rate: int = 16000,
    audio_codec: str = "aac",
    sample_aspect: Fraction | None = None,
) -> Path:
    """Encode BGR ``frames`` into ``path`` (the container follows the suffix).

    ``times``: each frame's timestamp in seconds (a variable frame rate, millisecond resolution); else frame k is at
    k / fps. ``rotation``: display rotation tag (degrees counter-clockwise). ``audio``: mono float samples.
    ``sample_aspect``: the pixels' shape as shown (non-square: an anamorphic video).
    """
    import av

    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as c:
        rate = Fraction(fps).limit_denominator(1001)
        s = c.add_stream(codec, rate=rate)
        s.width, s.height, s.pix_fmt = w, h, pix_fmt
        if times is not None:
            s.codec_context.time_base = Fraction(1, 1000)
            s.time_base = Fraction(1, 1000)
        opts = {"crf": "12"} if codec in ("libx264", "libx265") else {}
        if codec == "libx265":
            opts["x265-params"] = "log-level=none"
        opts.update(options or {})
        s.options = opts
        if rotation:
            s.set_display_rotation(rotation)
        if sample_aspect is not None:
            s.codec_context.sample_aspect_ratio = Fraction(sample_aspect)
        a = None
        if audio is not None:
            a = c.add_stream(audio_codec, rate=audio_rate, layout="mono")
        for k, img in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="bgr24")
            if times is not None:
                vf.pts = int(round(times[k] * 1000))
                vf.time_base = Fraction(1, 1000)
            else:
                vf.pts = k
            for p in s.encode(vf):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
        if a is not None:
            _encode_audio(c, a, np.asarray(audio, np.float32), audio_rate)
    return path


def encode_frames(container, stream, images: Sequence[np.ndarray], start: int = 0, rate: int = 25) -> None:
    """Encode RGB ``images`` into the open video ``stream`` of ``container``, frame ``k`` stamped ``start + k`` (in
    1/``rate`` s), and flush the encoder."""
    import av

    for k, img in enumerate(images):
        f = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24").reformat(format=stream.pix_fmt)
        f.pts, f.time_base = start + k, Fraction(1, rate)
        for pkt in stream.encode(f):
            container.mux(pkt)
    for pkt in stream.encode(None):
        container.mux(pkt)


def _encode_audio(container, stream, samples: np.ndarray, rate: int) -> None:
    import av

    size = stream.codec_context.frame_size or 1024
    fmt = stream.codec_context.format.name
    for pos in range(0, len(samples), size):
        chunk = samples[pos:pos + size]
        af = av.AudioFrame.from_ndarray(chunk[None, :].astype(np.float32), format="fltp", layout="mono")
        af.sample_rate = rate
        af.pts = pos
        if fmt not in ("fltp",):
            af = av.AudioResampler(format=fmt, layout="mono", rate=rate).resample(af)[0]
            af.pts = pos
        for p in stream.encode(af):
            container.mux(p)
    for p in stream.encode(None):
        container.mux(p)


def write_audio(path: Path, samples: np.ndarray, rate: int, *, codec: str | None = None, channels: int = 1,
                subtype: str | None = None) -> Path:
    """Write mono float ``samples`` (copied to ``channels`` channels) as wav/flac (soundfile, ``subtype`` e.g. PCM_U8,
    PCM_24, FLOAT) or with an FFmpeg ``codec`` (mp3, m4a, ogg/opus, ...) chosen by the suffix."""
    samples = np.asarray(samples, np.float32)
    if codec is None:
        import soundfile as sf

        data = samples if channels == 1 else np.stack([samples] * channels, axis=1)
        sf.write(str(path), data, rate, subtype=subtype)
        return path
    import av

    layout = {1: "mono", 2: "stereo", 6: "5.1"}[channels]
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=rate, layout=layout)
        size = s.codec_context.frame_size or 1024
        resampler = av.AudioResampler(format=s.codec_context.format.name, layout=layout, rate=rate)
        data = np.stack([samples] * channels)
        for pos in range(0, len(samples), size):
            af = av.AudioFrame.from_ndarray(np.ascontiguousarray(data[:, pos:pos + size]), format="fltp", layout=layout)
            af.sample_rate = rate
            af.pts = pos
            for rf in resampler.resample(af):
                for p in s.encode(rf):
                    c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return path


def speech(real_data: Path, seconds: float, rate: int = 16000) -> np.ndarray:
    """The first ``seconds`` of a real speech recording, mono float32 at ``rate``."""
    from hyperlips.media.audio import load_audio

    wav = load_audio(real_data / "hyperlips" / "audio1.wav", rate)
    return wav[: int(round(seconds * rate))]


def stamps_of(path: Path) -> list[int]:
    """The stamp of every frame of a video, in order."""
    from hyperlips.media.video import FrameReader

    with FrameReader(path) as r:
        return [read_stamp(f.image) for f in r]


def shown_at(times: Sequence[float], fps: float, n: int, slack: float = 0.001) -> list[int]:
    """The source frame on screen at ``j / fps`` for j < n: the last one that started at or before that time
    (``slack`` seconds allowed for timestamp rounding). A plain statement of the timing rule, for checking."""
    t = np.asarray(times, dtype=np.float64)
    return [int(np.flatnonzero(t <= j / fps + slack)[-1]) for j in range(n)]
