"""Video input and output with PyAV (FFmpeg libraries; no ffmpeg binary, no OpenCV video I/O).

Frames are ``numpy.uint8`` H x W x 3 **BGR** with the container's rotation applied.

Frame identity: a frame's ``index`` is its position in presentation order among the stream's packets (found by
a demux-only scan, no decoding), and its ``time`` is its pts in seconds relative to the first frame. Both are
the same whether a frame is reached by decoding forward from the start or after a seek, also for
variable-frame-rate files (where ``index / fps`` is not the frame's time). AVI stores no presentation times:
there frames are counted in display order and ``time = index / fps``.

Colour: BT.709-tagged (and untagged, as BT.601) YUV is converted with exact rounding and full chroma
interpolation both ways, so pixels that pass through decode -> encode -> decode keep their levels. A reader with
``keep_source`` hands each frame's decoded picture along where it is coded as the writer codes (4:2:0, BT.709,
limited range, unrotated); given it and the region that changed, the writer copies the rest of the picture as it
was decoded (its chroma unmoved by the 4:2:0 round trip) and converts only that region.

Output is H.264 (libx264) tagged BT.709 limited range, plus AAC audio, written to a hidden temporary file beside
the target and renamed only when :meth:`VideoWriter.close` succeeds. The default picture format is ``yuv420p``
(4:2:0), the one every browser, phone and editor plays. 4:2:0 H.264 can only code even widths and heights, so an
odd-sized frame is stored one pixel larger: its last column and/or row is repeated (nothing of the picture is
lost or moved; :func:`coded_size` gives the stored size). ``pix_fmt="yuv444p"`` keeps the exact size and full
colour resolution instead, but 4:4:4 H.264 has no hardware decoders: Safari, phones and TVs do not play it. Video
and audio both start at time 0 (the first frame and the first audible sample are presented together); MP4 and MOV
files carry their index at the front, so players start before the whole file has arrived.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import secrets
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import MediaError, UserError, decoder_reason, require_file

__all__ = ["IMAGE_SUFFIXES", "PIX_FMTS", "PRESETS", "VideoInfo", "Frame", "probe", "FrameReader", "VideoWriter",
           "check_encoding", "coded_size", "rotate_image", "as_rate"]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})
STILL_FPS = 25.0  # a still image acts as a one-frame video at this rate
_STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EIO})
AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000)
PIX_FMTS = ("yuv420p", "yuv444p")  # 4:2:0 plays everywhere (the default); 4:4:4: exact size, full colour, few players
PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
           "placebo")  # libx264
DEFAULT_CRF, DEFAULT_PRESET, DEFAULT_PIX_FMT = 18, "veryfast", "yuv420p"
MAX_CRF = 51  # libx264's worst quality (8-bit); 0 is lossless


def check_encoding(crf: int = DEFAULT_CRF, preset: str = DEFAULT_PRESET, pix_fmt: str = DEFAULT_PIX_FMT,
                   names: tuple[str, str, str] = ("--crf", "--preset", "--pix-fmt")) -> None:
    """Raise :class:`UserError` for an encoder setting libx264 would refuse, naming the option (as ``names``
    spells the three: the command line's flags by default) and its range."""
    if isinstance(crf, bool) or not isinstance(crf, (int, np.integer)) or not 0 <= crf <= MAX_CRF:
        raise UserError(f"{names[0]} must be a whole number from 0 (lossless, largest) to {MAX_CRF} (smallest, worst); "
                        f"got {crf!r} (18, the default, is visually lossless)")
    if preset not in PRESETS:
        raise UserError(f"{names[1]} must be one of {', '.join(PRESETS)} (got {preset!r})")
    if pix_fmt not in PIX_FMTS:
        raise UserError(f"{names[2]} must be yuv420p (plays everywhere) or yuv444p (exact size, full colour) "
                        f"(got {pix_fmt!r})")


def coded_size(width: int, height: int, pix_fmt: str = DEFAULT_PIX_FMT) -> tuple[int, int]:
    """The size a ``width`` x ``height`` picture is stored at: 4:2:0 rounds odd sides up by one (the last column
    or row is repeated); 4:4:4 keeps the size."""
    if pix_fmt == "yuv420p":
        return width + width % 2, height + height % 2
    return width, height


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe` found. ``width``/``height`` are after rotation; ``rotation`` is in degrees
    counter-clockwise (0, 90, 180 or 270) applied to the decoded picture for display."""

    path: str
    width: int
    height: int
    fps: float
    rate: Fraction  # the same frame rate as an exact fraction (e.g. 30000/1001)
    n_frames: int
    duration: float  # seconds the video stream is shown: last pts - first pts + last frame's duration
    rotation: int
    has_audio: bool
    is_image: bool
    codec: str


@dataclass
class Frame:
    index: int  # presentation-order position, 0-based
    time: float  # seconds from the first frame (container pts)
    image: np.ndarray  # (H, W, 3) uint8 BGR, rotation applied
    damaged: bool = False  # the decoder reported damaged data in this frame and concealed it
    # the decoded picture, kept when the reader was asked to (``keep_source``) and it is coded as VideoWriter codes
    # (:func:`writer_coded`) and shown unrotated: VideoWriter.write copies its unchanged pixels instead of converting
    source: Any = None


# ---------------------------------------------------------------------------------------------- helpers
def _is_image(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def _read_image(path: str) -> np.ndarray:
    import cv2

    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise MediaError(f"cannot read image {path}: {e.strerror or e}") from None
    img = cv2.imdecode(data, cv2.IMREAD_COLOR)  # BGR, EXIF orientation applied, alpha dropped, 16 bit -> 8 bit
    if img is None:
        raise MediaError(f"cannot decode image {path} (unreadable or corrupt file)")
    return img


def rotate_image(image: np.ndarray, rotation: int) -> np.ndarray:
    """Rotate ``image`` counter-clockwise by ``rotation`` degrees (a multiple of 90)."""
    k = (int(rotation) // 90) % 4
    return image if k == 0 else np.ascontiguousarray(np.rot90(image, k))


def _norm_rotation(deg: float) -> int:
    """Nearest multiple of 90 in [0, 360)."""
    return int(round(float(deg) / 90.0)) % 4 * 90


def _frame_rotation(frame, stream) -> int:
    rot = getattr(frame, "rotation", None)  # DISPLAYMATRIX side data, counter-clockwise degrees (PyAV >= 14)
    if rot:
        return _norm_rotation(rot)
    tag = stream.metadata.get("rotate") if stream.metadata else None  # legacy tag: clockwise degrees
    if tag:
        try:
            return _norm_rotation(-float(tag))
        except ValueError:
            pass
    return 0


def _stream_rate(stream) -> Fraction:
    for r in (getattr(stream, "guessed_rate", None), stream.average_rate, getattr(stream, "base_rate", None)):
        if r is not None and r > 0 and float(r) < 1000:
            return Fraction(r)
    return Fraction(25)


def as_rate(fps: float | Fraction) -> Fraction:
    """A float frame rate as a fraction: NTSC rates become n*1000/1001, others the nearest p/q with q <= 1001."""
    if isinstance(fps, Fraction):
        return fps
    f = float(fps)
    if not (f > 0 and math.isfinite(f)):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    for base in (24, 30, 48, 60, 120):
        if abs(f - base * 1000 / 1001) < 5e-4 * base / 30:
            return Fraction(base * 1000, 1001)
    return Fraction(f).limit_denominator(1001)


def _video_stream(container, path: str):
    for s in container.streams.video:
        disp = getattr(s, "disposition", None)
        if disp is not None and "attached_pic" in str(disp).lower():
            continue  # cover art of an audio file, not a video
        return s
    raise MediaError(f"{path} has no video stream")


def _open(path: str):
    import av

    try:
        return av.open(path)
    except av.error.FFmpegError as e:
        reason = decoder_reason(e)
        raise MediaError(f"cannot open {path} (unreadable or corrupt media file: {reason})") from None


@dataclass
class _Index:
    """Demux-only scan of the video stream.

    With trustworthy pts (every container but AVI), ``pts`` holds every frame's presentation timestamp, sorted,
    and a frame's index is its position there. Otherwise (AVI stores decode-order counters; packets without
    pts) ``pts`` is None, frames are counted in output order, and a keyframe's index is its decode-order
    position (exact for closed GOPs).
    """

    pts: np.ndarray | None  # (n,) int64 sorted presentation timestamps
    keys: list[tuple[int, int]]  # (frame index, seek timestamp) of keyframes, ascending
    n_frames: int
    last_duration: int  # duration of the last frame in stream time_base units (0 if unknown)
    time_base: Fraction | None = None  # seconds per pts unit


def _scan(container, stream) -> _Index:
    import av

    packets: list[tuple[int | None, int | None, bool, int]] = []
    try:
        for pkt in container.demux(stream):
            if pkt.size == 0 or getattr(pkt, "is_discard", False):
                continue
            packets.append((pkt.pts, pkt.dts, bool(pkt.is_keyframe), int(pkt.duration or 0)))
    except av.error.FFmpegError:
        pass  # a damaged tail: the table covers what could be read; decoding stops there too
    n = len(packets)
    trust_pts = "avi" not in container.format.name.split(",")
    if n and trust_pts and all(p[0] is not None for p in packets):
        arr = np.unique(np.asarray([p[0] for p in packets], dtype=np.int64))
        keys = sorted(
            (int(np.searchsorted(arr, p[0])), p[1] if p[1] is not None else p[0]) for p in packets if p[2]
        )
        last = max(packets, key=lambda p: p[0])
        return _Index(arr, keys, len(arr), last[3])
    keys = [(i, p[1]) for i, p in enumerate(packets) if p[2]] if all(p[1] is not None for p in packets) else []
    return _Index(None, keys, n, 0)


def _probe_video(path: str) -> tuple[VideoInfo, _Index]:
    import av

    with _open(path) as c:
        stream = _video_stream(c, path)
        rate = _stream_rate(stream)
        tb = stream.time_base
        has_audio = bool(c.streams.audio)
        codec = stream.codec_context.name
        declared = int(stream.frames or 0)
        stream_duration = float(stream.duration * tb) if stream.duration and tb else None
        container_duration = c.duration / 1e6 if c.duration else None
        try:
            first = next(iter(c.decode(stream)), None)
        except av.error.FFmpegError as e:
            reason = decoder_reason(e)
            raise MediaError(f"cannot decode video from {path} (corrupt file: {reason})") from None
        if first is None:
            raise MediaError(f"{path}: no video frame could be decoded")
        rotation = _frame_rotation(first, stream)
        w, h = first.width, first.height
    with _open(path) as c:  # a fresh demuxer for the packet scan
        stream = _video_stream(c, path)
        index = _scan(c, stream)
        index.time_base = Fraction(stream.time_base) if stream.time_base else None
    fps = float(rate)
    if index.pts is not None:
        n_frames = index.n_frames
        last = index.last_duration * tb if index.last_duration else 1 / rate
        duration = float((int(index.pts[-1]) - int(index.pts[0])) * tb + last)
    else:
        duration = stream_duration or container_duration or 0.0
        n_frames = index.n_frames or declared or max(1, int(round(duration * fps)))
        duration = duration or n_frames / fps
    if rotation in (90, 270):
        w, h = h, w
    info = VideoInfo(os.fspath(path), int(w), int(h), fps, rate, int(n_frames), duration, rotation, has_audio,
                     False, codec)
    return info, index


def probe(path: str | os.PathLike) -> VideoInfo:
    """Size, frame rate, exact frame count, duration, rotation and audio presence of a video or still image.

    Raises :class:`MediaError` for a missing or unreadable file, or one without a video stream.
    """
    require_file(path, "video file")
    p = os.fspath(path)
    if _is_image(p):
        return _image_info(p, _read_image(p))
    return _probe_video(p)[0]


def _image_info(path: str, img: np.ndarray) -> VideoInfo:
    h, w = img.shape[:2]
    return VideoInfo(path, w, h, STILL_FPS, Fraction(int(STILL_FPS)), 1, 1 / STILL_FPS, 0, False, True, "image")


# ---------------------------------------------------------------------------------------------- reading
class FrameReader:
    """Streaming decoder: BGR frames with rotation applied, forward or in reverse with bounded memory.

    ``iter(reader)`` yields every frame; :meth:`iter_range` yields ``start <= index < stop``, in reverse by
    decoding chunks of ``chunk`` frames (seek to the keyframe before each chunk, decode forward, emit the chunk
    backwards), so at most one chunk is ever held. A still image is a one-frame video.
    """

    def __init__(self, path: str | os.PathLike, chunk: int = 32, threads: int = 0, keep_source: bool = False):
        require_file(path, "video file")
        self.path = os.fspath(path)
        self.chunk = max(1, int(chunk))
        self._threads = int(threads)
        self.keep_source = bool(keep_source)  # frames carry their decoded picture where a writer can copy it
        self._container = None
        self._stream = None
        self._image: np.ndarray | None = None
        if _is_image(self.path):
            self._image = _read_image(self.path)
            self.info = _image_info(self.path, self._image)
            self._index = None
        else:
            self.info, self._index = _probe_video(self.path)
        self._tb = None
        self._t0 = None
        self._reformatter = None
        self.bad_packets = 0  # packets the decoder rejected so far (damaged data)

    # -- facts
    @property
    def width(self) -> int:
        return self.info.width

    @property
    def height(self) -> int:
        return self.info.height

    @property
    def fps(self) -> float:
        return self.info.fps

    @property
    def n_frames(self) -> int:
        return self.info.n_frames

    @property
    def rotation(self) -> int:
        return self.info.rotation

    def __len__(self) -> int:
        return self.info.n_frames

    @property
    def time_base(self) -> Fraction | None:
        """The unit of the stream's timestamps (None for still images and AVI, whose frames are counted)."""
        return self._index.time_base if self._index is not None and self._index.pts is not None else None

    @property
    def times(self) -> np.ndarray:
        """(n_frames,) float64: every frame's timestamp in seconds from the first frame, from the packet scan."""
        if self._index is None:
            return np.zeros(1)
        if self._index.pts is None:
            return np.arange(self.n_frames, dtype=np.float64) / self.fps
        pts = self._index.pts
        return ((pts - pts[0]).astype(np.float64) * float(self._index.time_base))

    # -- lifecycle
    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None
            self._stream = None

    def __enter__(self) -> "FrameReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # -- iteration
    def __iter__(self) -> Iterator[Frame]:
        return self.iter_range(0, None)

    def iter_range(self, start: int = 0, stop: int | None = None, reverse: bool = False) -> Iterator[Frame]:
        """Frames with ``start <= index < stop`` (``stop=None``: to the end), ascending or, with ``reverse``,
        from ``stop - 1`` down to ``start``."""
        start = max(0, int(start))
        if self._image is not None:
            if start == 0 and (stop is None or stop > 0):
                yield Frame(0, 0.0, self._image.copy())
            return
        end = self.n_frames if stop is None else min(int(stop), self.n_frames)
        if stop is not None and start >= end:
            return
        if not reverse:
            yield from self._forward(start, None if stop is None else end)
            return
        hi = end
        while hi > start:
            lo = max(start, hi - self.chunk)
            frames = list(self._forward(lo, hi))
            yield from reversed(frames)
            del frames
            hi = lo

    # -- internals
    def _reopen(self):
        self.close()
        self._container = _open(self.path)
        s = _video_stream(self._container, self.path)
        s.thread_type = "AUTO"
        if self._threads:
            s.codec_context.thread_count = self._threads
        self._stream = s
        self._tb = s.time_base
        if self._index.pts is not None:
            self._t0 = int(self._index.pts[0])
        return s

    def _locate(self, frame, ordinal: int) -> tuple[int, float]:
        """(index, time) of a decoded frame: from its pts, or from its output-order ``ordinal`` without a table."""
        table = self._index.pts
        if table is not None and frame.pts is not None:
            pts = frame.pts
            i = int(np.searchsorted(table, pts))
            if i >= len(table) or (i > 0 and pts - table[i - 1] < table[i] - pts):
                i -= 1
            return max(0, i), float((pts - self._t0) * self._tb)
        return ordinal, ordinal / self.fps

    def _decode_from(self, key) -> Iterator[tuple[int, float, object]]:
        """Decode forward from keyframe ``key`` = (index, seek timestamp), or from the very start (None).

        A packet the decoder rejects (damaged data) is skipped and counted in ``bad_packets``, as FFmpeg's own tools
        do: its frame is missing from the output and the frames that refer to it come back as the decoder concealed
        them. A container that cannot be read further ends the stream there."""
        import av

        s = self._reopen() if key is None or self._container is None else self._stream
        ordinal = 0
        if key is not None:
            self._container.seek(key[1], stream=s, backward=True, any_frame=False)
            ordinal = key[0]
        packets = self._container.demux(s)
        while True:
            try:
                pkt = next(packets)
            except StopIteration:
                return
            except av.error.FFmpegError:
                self.bad_packets += 1
                return
            try:
                frames = pkt.decode()
            except av.error.FFmpegError:
                self.bad_packets += 1
                continue
            for frame in frames:
                yield (*self._locate(frame, ordinal), frame)
                ordinal += 1

    def _candidates(self, start: int) -> list:
        """Keyframes to try for reaching frame ``start``, nearest first; None means decode from the start."""
        if start == 0:
            return [None]
        if self._index.pts is not None and start >= len(self._index.pts):
            return []
        keys = [k for k in self._index.keys if 0 < k[0] <= start]
        keys.reverse()
        if self._index.pts is None:
            return keys[:1] + [None] if keys else [None]
        return keys[:3] + [None]

    def _forward(self, start: int, stop: int | None) -> Iterator[Frame]:
        for key in self._candidates(start):
            overshoot = False
            first = True
            for idx, t, fr in self._decode_from(key):
                if first:
                    first = False
                    if key is not None and self._index.pts is not None and idx > start:
                        overshoot = True  # the seek landed after the wanted frame: try an earlier keyframe
                        break
                if idx < start:
                    continue
                if stop is not None and idx >= stop:
                    return
                keep = self.keep_source and not self.info.rotation and writer_coded(fr)
                yield Frame(idx, t, self._to_bgr(fr), bool(fr.is_corrupt), fr if keep else None)
            if not overshoot:
                return

    def _to_bgr(self, frame) -> np.ndarray:
        if self._reformatter is None:
            from av.video.reformatter import Interpolation, VideoReformatter

            self._reformatter = VideoReformatter()
            # exact rounding and full-resolution chroma: swscale's fast YUV->RGB path is ~1 level too dark
            self._flags = Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT
        img = self._reformatter.reformat(frame, format="bgr24", interpolation=self._flags).to_ndarray()
        return rotate_image(img, self.info.rotation)


# ---------------------------------------------------------------------------------------------- writing
def writer_coded(picture) -> bool:
    """True for a decoded picture coded as :class:`VideoWriter` codes by default: 8-bit 4:2:0, BT.709, limited range,
    even sides. Its pixels can go to the encoder as they are (``VideoWriter.write``'s ``source``)."""
    return (picture.format.name == "yuv420p" and int(picture.colorspace) == 1 and int(picture.color_range) == 1
            and picture.width % 2 == 0 and picture.height % 2 == 0)


SOURCE_MARGIN = 8  # pixels around a changed region converted with it: 4:2:0's chroma there mixes both sides


def _changed_span(changed, width: int, height: int) -> tuple[int, int, int, int]:
    """``changed`` grown by :data:`SOURCE_MARGIN`, to even edges (whole chroma samples), clipped to the frame."""
    x1, y1, x2, y2 = (int(v) for v in changed)
    m = SOURCE_MARGIN
    return (max(0, (x1 - m) // 2 * 2), max(0, (y1 - m) // 2 * 2),
            min(width, -(-(x2 + m) // 2) * 2), min(height, -(-(y2 + m) // 2) * 2))


def _yuv420_planes(packed: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Views of Y (H, W), U and V (H/2, W/2) in PyAV's packed 4:2:0 array (the three planes one after another)."""
    flat = packed.reshape(-1)
    n, c = width * height, (width // 2) * (height // 2)
    return (flat[:n].reshape(height, width), flat[n : n + c].reshape(height // 2, width // 2),
            flat[n + c : n + 2 * c].reshape(height // 2, width // 2))


class VideoWriter:
    """H.264 + AAC writer with an atomic result.

    ``write(frame)`` takes (height, width, 3) uint8 BGR frames; the file stores them at ``coded_width`` x
    ``coded_height`` (see :func:`coded_size`: with ``pix_fmt="yuv420p"``, the default, an odd side gains one
    repeated column or row). ``crf`` (0-51, lower is better and larger) and ``preset`` (libx264's speed/size
    trade-off) set the quality; ``threads``: encoder threads (0: libx264's choice, about 1.5 per core).
    ``audio`` is mono float32 at ``sample_rate`` (written in full, interleaved with the video as frames arrive).
    Output goes to a hidden temporary file in the target folder and is renamed to ``path`` by :meth:`close`;
    :meth:`abort` (or an exception inside a ``with`` block) deletes it, so no file appears at ``path`` unless
    writing succeeded.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        width: int,
        height: int,
        fps: float | Fraction,
        audio: np.ndarray | None = None,
        sample_rate: int = 16000,
        crf: int = DEFAULT_CRF,
        preset: str = DEFAULT_PRESET,
        threads: int = 0,
        pix_fmt: str = DEFAULT_PIX_FMT,
    ):
        import av
        from av.video.reformatter import ColorRange, Colorspace

        self.path = Path(path)
        self.width, self.height = int(width), int(height)
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"bad frame size {width}x{height}")
        check_encoding(crf, preset, pix_fmt)
        self.coded_width, self.coded_height = coded_size(self.width, self.height, pix_fmt)
        self.rate = as_rate(fps)
        self.fps = float(self.rate)
        self.frames_written = 0
        # audio: mono float32 in [-1, 1] at a rate AAC supports (prepared before any file exists)
        self._audio = None
        self._audio_pos = 0
        if audio is not None:
            a = np.asarray(audio, dtype=np.float32)
            if a.ndim != 1:
                raise ValueError(f"audio must be 1-D mono samples, got shape {a.shape}")
            sr = int(sample_rate)
            if sr not in AAC_RATES:
                from .resample import resample_poly

                g = math.gcd(48000, sr)
                a = resample_poly(a, 48000 // g, sr // g)
                sr = 48000
            self._audio = np.clip(a, -1.0, 1.0)
            self.sample_rate = sr

        from av.video.reformatter import Interpolation, VideoReformatter

        self._reformatter = VideoReformatter()
        self._colour = dict(dst_colorspace=Colorspace.ITU709, dst_color_range=ColorRange.MPEG,
                            interpolation=Interpolation.BILINEAR | Interpolation.ACCURATE_RND)
        self._pix_fmt = pix_fmt
        self._container = None
        folder = self.path.parent
        if not folder.is_dir():
            raise MediaError(f"output folder does not exist: {folder}")
        suffix = self.path.suffix or ".mp4"
        self._tmp = folder / f".{self.path.stem}.{secrets.token_hex(4)}.partial{suffix}"
        self._closed = False
        try:  # FFmpeg opens the file only at the first frame, and its errors then name no file: try it now
            with open(self._tmp, "xb"):
                pass
        except OSError as e:
            raise MediaError(f"cannot write {self.path}: {os.strerror(e.errno) if e.errno else e}; choose a folder you "
                             "can write to") from None
        # from here on the temporary file exists: whatever stops the set-up (an error, Ctrl-C, SIGTERM) removes it
        try:
            try:
                # MP4/MOV: the index goes at the front, so a browser starts playing before the whole file has arrived
                faststart = {"movflags": "+faststart"} if suffix.lower() in (".mp4", ".mov", ".m4v") else {}
                self._container = av.open(str(self._tmp), "w", options=faststart)
            except (av.error.FFmpegError, ValueError) as e:
                raise MediaError(f"cannot write {self.path}: {str(e).splitlines()[0] if str(e) else e}") from None
            v = self._container.add_stream("libx264", rate=self.rate)
            v.width, v.height, v.pix_fmt = self.coded_width, self.coded_height, self._pix_fmt
            cc = v.codec_context
            cc.colorspace, cc.color_primaries, cc.color_trc, cc.color_range = 1, 1, 1, 1  # BT.709, limited range
            v.options = {"crf": str(crf), "preset": preset, **({"threads": str(int(threads))} if threads else {})}
            self._v = v
            self._a = None
            if self._audio is not None:
                a_stream = self._container.add_stream("aac", rate=self.sample_rate, layout="mono")
                a_stream.bit_rate = 128000
                self._a = a_stream
        except BaseException:
            self.abort()
            raise

    # -- public
    def write(self, frame: np.ndarray, source: Any = None, changed: tuple | None = None) -> None:
        """Append one (height, width, 3) uint8 BGR frame.

        ``source``: the decoded picture the frame was made from (``Frame.source`` of a reader with ``keep_source``),
        which the frame equals outside ``changed`` = (x1, y1, x2, y2) pixels (None: everywhere). Where it is coded as
        this writer codes (:func:`writer_coded`, 4:2:0 output of the same size), those pixels go to the encoder as
        decoded, not converted back from BGR: the rest of the frame stays exactly the decoded picture, and a 720p
        frame costs 1-2 ms of CPU less."""
        if self._closed:
            raise RuntimeError("write() after close()/abort()")
        if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
            raise ValueError(f"frame must be ({self.height}, {self.width}, 3) uint8 BGR, got {frame.shape} {frame.dtype}")
        vf = self._from_source(frame, source, changed) if source is not None else None
        if vf is None:
            vf = self._converted(frame)
        vf.pts = self.frames_written
        with self._storage_errors():
            for pkt in self._v.encode(vf):
                self._container.mux(pkt)
            self.frames_written += 1
            self._write_audio_until(self.frames_written / self.fps)

    def _converted(self, frame: np.ndarray):
        """The whole frame converted to the output's picture format."""
        import av

        pad_x, pad_y = self.coded_width - self.width, self.coded_height - self.height
        if pad_x or pad_y:  # 4:2:0 needs even sides: repeat the last column / row
            import cv2

            frame = cv2.copyMakeBorder(frame, 0, pad_y, 0, pad_x, cv2.BORDER_REPLICATE)
        # a view of the array, not a copy (2 ms per 720p frame); the conversion below makes the frame encoded
        vf = av.VideoFrame.from_numpy_buffer(np.ascontiguousarray(frame), format="bgr24")
        return self._reformatter.reformat(vf, format=self._pix_fmt, **self._colour)

    def _from_source(self, frame: np.ndarray, source: Any, changed: tuple | None):
        """The decoded ``source`` with the ``changed`` region (and a margin) converted from ``frame``; None where the
        source cannot be used as it is (another picture format, colour coding or size)."""
        import av

        w, h = self.width, self.height
        if (self._pix_fmt != "yuv420p" or (source.width, source.height) != (w, h)
                or (self.coded_width, self.coded_height) != (w, h) or not writer_coded(source)):
            return None
        packed = source.to_ndarray()  # a copy: the decoder's picture stays as it was
        if changed is not None:
            x1, y1, x2, y2 = _changed_span(changed, w, h)
            if x2 > x1 and y2 > y1:
                part = av.VideoFrame.from_numpy_buffer(np.ascontiguousarray(frame[y1:y2, x1:x2]), format="bgr24")
                part = self._reformatter.reformat(part, format="yuv420p", **self._colour).to_ndarray()
                for dst, src, k in zip(_yuv420_planes(packed, w, h), _yuv420_planes(part, x2 - x1, y2 - y1), (1, 2, 2)):
                    dst[y1 // k : y2 // k, x1 // k : x2 // k] = src
        return av.VideoFrame.from_ndarray(packed, format="yuv420p")

    def close(self) -> Path:
        """Flush the encoders, finish the file and move it to ``path``. Returns ``path``."""
        if self._closed:
            return self.path
        try:
            with self._storage_errors():
                for pkt in self._v.encode(None):
                    self._container.mux(pkt)
                if self._a is not None:
                    self._write_audio_until(None)
                    for pkt in self._a.encode(None):
                        self._container.mux(pkt)
                self._container.close()
                self._closed = True
                os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        return self.path

    def abort(self) -> None:
        """Stop writing and delete the temporary file; nothing is left at ``path``."""
        self._closed = True
        c = getattr(self, "_container", None)
        if c is not None:
            try:
                c.close()
            except Exception:
                pass
            self._container = None
        self._remove_tmp()

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # -- internals
    @contextlib.contextmanager
    def _storage_errors(self):
        """A full disk, a file size limit or a folder that became read-only: the output's name and what to do."""
        try:
            yield
        except OSError as e:
            if e.errno not in _STORAGE_ERRNOS:
                raise
            self.abort()
            raise MediaError(f"cannot write {self.path}: {os.strerror(e.errno)}; free some space or choose another "
                             "folder (nothing was written there)") from None

    def _remove_tmp(self) -> None:
        try:
            os.unlink(self._tmp)
        except FileNotFoundError:
            pass

    def _write_audio_until(self, seconds: float | None) -> None:
        """Encode audio up to ``seconds`` (None: all of it), in frames of the encoder's size."""
        import av

        if self._a is None:
            return
        total = len(self._audio)
        end = total if seconds is None else min(total, int(math.ceil(seconds * self.sample_rate)))
        size = self._a.codec_context.frame_size or 1024
        while self._audio_pos < end:
            n = min(size, total - self._audio_pos)
            chunk = self._audio[self._audio_pos : self._audio_pos + n]
            af = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
            af.sample_rate = self.sample_rate
            af.pts = self._audio_pos
            for pkt in self._a.encode(af):
                self._container.mux(pkt)
            self._audio_pos += n
