"""Video input with PyAV (FFmpeg libraries; no ffmpeg binary, no OpenCV video I/O).

Frames are ``numpy.uint8`` H x W x 3 **BGR** with the container's rotation applied.

Frame identity: a frame's ``index`` is its position in presentation order among the stream's packets (found by
a demux-only scan, no decoding), and its ``time`` is its pts in seconds relative to the first frame. Both are
the same whether a frame is reached by decoding forward from the start or after a seek, also for
variable-frame-rate files (where ``index / fps`` is not the frame's time). AVI stores no presentation times:
there frames are counted in display order and ``time = index / fps``, except for codecs that never reorder frames
(MJPEG, DV, raw, ProRes), whose frame counters are their times (the gaps a capture's dropped frames left kept).

Colour: BT.709-tagged (and untagged, as BT.601) YUV is converted with exact rounding and full chroma
interpolation both ways, so pixels that pass through decode -> encode -> decode keep their levels. A reader with
``keep_source`` hands each frame's decoded picture along where it is coded as the writer codes (4:2:0, BT.709,
limited range, unrotated); given it and the region that changed, the writer copies the rest of the picture as it
was decoded (its chroma unmoved by the 4:2:0 round trip) and converts only that region.

Writing is :mod:`.writer`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import lru_cache
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import MediaError, check_stop, decoder_reason, require_file, warn

__all__ = ["IMAGE_SUFFIXES", "is_still_picture", "VideoInfo", "Frame", "probe", "FrameReader", "rotate_image", "as_rate", "writer_coded",
           "write_image",
           "plane_views"]

# decoded formats whose conversion to planar RGB (gbrp) gives exactly the pixels of the conversion to packed BGR, with
# the reader's flags, at even sides (checked on every one of these; 4:2:0 at odd sides and yuv410p differ by a level)
PLANAR_RGB_SAME = frozenset({"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "yuv420p10le",
                             "yuv422p10le", "yuv444p10le", "nv12", "nv21", "p010le"})
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})
STILL_FPS = 25.0  # a still image acts as a one-frame video at this rate
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
    # the shape of a pixel as shown (width / height; after rotation): 1 for square pixels, 4/3 for a 240-px-wide
    # anamorphic frame shown 320 px wide. Frames are decoded as stored; the writer keeps the tag.
    sample_aspect: Fraction = Fraction(1)
    # "PQ" or "HLG": the picture is coded for a high dynamic range display (its transfer function); "" for SDR
    hdr: str = ""
    # the picture is shown mirrored (left to right) before its rotation: a display matrix with a flip (an editor's
    # "flip", some front cameras); a vertical flip is a mirror turned by 180 degrees
    mirror: bool = False


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


_PNG_START = b"\x89PNG\r\n\x1a\n"
_TIFF_STARTS = (b"II*\x00", b"MM\x00*")  # little- and big-endian
_PICTURE_STARTS = (_PNG_START, b"\xff\xd8\xff", b"BM", *_TIFF_STARTS)  # PNG, JPEG, BMP, TIFF (WebP: _is_webp)


def is_still_picture(path: str | os.PathLike) -> bool:
    """Whether ``path`` is named and made as a still picture the image decoder reads: a picture suffix and the first
    bytes of PNG (not an animated one), JPEG, BMP, TIFF or WebP. A video saved under a picture's name, and an animated
    PNG, are not (FFmpeg reads them as the videos they are)."""
    if not _is_image(path):
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return False
    if head.startswith(_PNG_START):
        return _animation(os.fspath(path)) != "APNG"
    return head.startswith(_PICTURE_STARTS) or _is_webp(head)


def _is_webp(head: bytes) -> bool:
    return head[:4] == b"RIFF" and head[8:12] == b"WEBP"


def write_image(path, image: np.ndarray) -> bool:
    """Write ``image`` (BGR) to ``path`` in the format its suffix names (PNG, JPEG, ...); False where it cannot be
    encoded or written. The bytes are written by Python: OpenCV's own writer crashed the process (a segmentation
    fault) on a folder name that is not valid UTF-8."""
    import cv2

    ok, data = cv2.imencode(Path(path).suffix or ".png", image)
    if not ok:
        return False
    try:
        with open(os.fspath(path), "wb") as f:
            f.write(data.tobytes())
    except OSError:
        return False
    return True


def _animation(path: str) -> str | None:
    """``"APNG"`` or ``"animated WebP"`` where the picture file is one (read from its first chunks), else None."""
    try:
        with open(path, "rb") as f:
            head = f.read(21)
            if head[:8] == b"\x89PNG\r\n\x1a\n":  # an animation control chunk before the first picture data: APNG
                f.seek(8)
                while len(chunk := f.read(8)) == 8 and chunk[4:] not in (b"IDAT", b"IEND"):
                    if chunk[4:] == b"acTL":
                        return "APNG"
                    f.seek(int.from_bytes(chunk[:4], "big") + 4, os.SEEK_CUR)  # its data and CRC
            elif head[:4] == b"RIFF" and head[8:16] == b"WEBPVP8X" and len(head) == 21 and head[20] & 0x02:
                return "animated WebP"  # (the extended header's animation flag)
    except OSError:
        pass
    return None


INTERLACE_LOOK = 50  # the first frames looked at for an interlaced picture (a flag FFmpeg reads from the stream)
ALPHA_BACKGROUND = 255  # the grey level the transparent parts of a picture are shown over: white, as viewers show them


def _read_image(path: str) -> np.ndarray:
    import cv2

    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise MediaError(f"cannot read image {path}: {e.strerror or e}") from None
    img = cv2.imdecode(data, cv2.IMREAD_COLOR)  # BGR, EXIF orientation applied, alpha dropped, 16 bit -> 8 bit
    if img is None:
        raise MediaError(f"cannot decode image {path} (unreadable or corrupt file)")
    head = data[:12].tobytes()
    if head.startswith((_PNG_START, *_TIFF_STARTS)) or _is_webp(head):  # PNG, TIFF, WebP: the formats
        img = _over_background(path, data, img)  # with transparency, whatever the file's name says
    return img


def _over_background(path: str, data: np.ndarray, img: np.ndarray) -> np.ndarray:
    """A picture with transparent parts laid over :data:`ALPHA_BACKGROUND` (a video has no transparency, and the
    colours a file keeps under its transparent pixels are often black or arbitrary), with a warning; ``img`` itself
    where it has none."""
    import cv2

    whole = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if whole is None or whole.ndim != 3 or whole.shape[2] != 4 or whole.shape[:2] != img.shape[:2]:
        return img  # (no alpha, or a turned picture whose alpha the colour decode's turn does not match)
    alpha = whole[:, :, 3]
    top = np.iinfo(alpha.dtype).max
    if alpha.min() == top:
        return img
    return _laid_over(path, img, alpha)


def _laid_over(path, img: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``img`` (h, w, 3) laid over :data:`ALPHA_BACKGROUND` by ``alpha`` (h, w), with the warning that says so."""
    top = np.iinfo(alpha.dtype).max
    a = alpha.astype(np.float32)[:, :, None] / np.float32(top)
    out = np.rint(img * a + np.float32(ALPHA_BACKGROUND) * (1.0 - a)).astype(np.uint8)
    warn(f"{path}: its transparent parts are shown over white (a video has no transparency)")
    return out


def rotate_image(image: np.ndarray, rotation: int, mirror: bool = False) -> np.ndarray:
    """Rotate ``image`` counter-clockwise by ``rotation`` degrees (a multiple of 90), after mirroring it left to
    right where ``mirror``."""
    k = (int(rotation) // 90) % 4
    if mirror:
        image = image[:, ::-1]
    return image if k == 0 and not mirror else np.ascontiguousarray(np.rot90(image, k))


def _norm_rotation(deg: float) -> int:
    """Nearest multiple of 90 in [0, 360)."""
    return int(round(float(deg) / 90.0)) % 4 * 90


def _display_matrix(frame) -> np.ndarray | None:
    """The frame's display matrix (3x3 of 16.16 fixed point, as FFmpeg stores it), or None (none, or side data this
    PyAV cannot list: FFmpeg 8's EXIF, which it does not know, stops it listing any)."""
    try:
        from av.sidedata.sidedata import Type

        sd = frame.side_data.get(Type.DISPLAYMATRIX)
    except (ValueError, KeyError, TypeError, AttributeError, ImportError):
        return None
    if sd is None:
        return None
    m = np.frombuffer(bytes(sd), dtype="<i4")
    return m if m.size == 9 else None


def _frame_orientation(frame, stream) -> tuple[int, bool]:
    """(counter-clockwise rotation, mirrored first) of a frame as shown, as FFmpeg's own tools turn and flip it
    (ffmpeg's autorotate: a 180-degree matrix with one axis negated is a flip, not a turn)."""
    m = _display_matrix(frame)
    rot = getattr(frame, "rotation", None)  # DISPLAYMATRIX side data, counter-clockwise degrees (PyAV >= 14)
    if m is not None and float(m[0]) * float(m[4]) - float(m[1]) * float(m[3]) < 0:  # a mirror in it
        clockwise = (-_norm_rotation(rot or 0)) % 360
        if clockwise == 90:  # FFmpeg: transpose=cclock_flip
            return 90, True
        if clockwise == 270:  # transpose=clock_flip
            return 270, True
        if m[0] < 0 and m[4] >= 0:  # hflip
            return 0, True
        return 180, True  # vflip: a mirror turned by 180 degrees
    return _frame_rotation(frame, stream), False


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


def shown_video_stream(container):
    """The video track a player shows, or None: cover art (an audio file's picture) left out, the track flagged
    default first."""
    from av.stream import Disposition

    videos = [s for s in container.streams.video if not (s.disposition & Disposition.attached_pic)]
    return next((s for s in videos if s.disposition & Disposition.default), videos[0] if videos else None)


def _video_stream(container, path: str):
    stream = shown_video_stream(container)
    if stream is None:
        raise MediaError(f"{path} has no video stream" + (" (only its cover art, a still picture of an audio file)"
                                                          if container.streams.video else ""))
    if stream.codec_context is None:  # FFmpeg found a video track but could not tell what it holds (a damaged file)
        raise MediaError(f"cannot open {path} (unreadable or corrupt media file: its video track's codec cannot be "
                         "read)")
    return stream


def _open(path: str):
    import av

    try:
        return av.open(path)
    except av.error.FFmpegError as e:
        if isinstance(e, MemoryError):  # the machine, not the file: said as such (it was "unreadable or corrupt")
            raise
        reason = decoder_reason(e)
        raise MediaError(f"cannot open {path} (unreadable or corrupt media file: {reason})") from None


HDR_TRANSFERS = {16: "PQ", 18: "HLG"}  # transfer characteristics (H.273) of high dynamic range video
DUPLICATE_SHARE = 0.05  # more frames than this share with another frame's timestamp: the timestamps are not used


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
    repeated: int = 0  # frames whose timestamp another frame has too (a badly muxed file; beyond
    # DUPLICATE_SHARE of them the timestamps are not used: ``pts`` is None)
    cut_short: bool = False  # the picture ends well before the length the file declares (said when probed)


def _scan(container, stream) -> _Index:
    import av

    packets: list[tuple[int | None, int | None, bool, int]] = []
    try:
        for pkt in container.demux(stream):
            if pkt.size == 0 or getattr(pkt, "is_discard", False):
                continue
            packets.append((pkt.pts, pkt.dts, bool(pkt.is_keyframe), int(pkt.duration or 0)))
    except av.error.FFmpegError as e:
        if isinstance(e, MemoryError):
            raise
        pass  # a damaged tail: the table covers what could be read; decoding stops there too
    n = len(packets)
    trust_pts = "avi" not in container.format.name.split(",") or _counters_are_times(stream, packets)
    repeated = 0
    if n and trust_pts and all(p[0] is not None for p in packets):
        arr = np.unique(np.asarray([p[0] for p in packets], dtype=np.int64))
        repeated = n - len(arr)
        if repeated <= max(1, DUPLICATE_SHARE * n):
            keys = sorted(
                (int(np.searchsorted(arr, p[0])), p[1] if p[1] is not None else p[0]) for p in packets if p[2]
            )
            last = max(packets, key=lambda p: p[0])
            return _Index(arr, keys, len(arr), last[3], repeated=repeated)
    # no usable timestamps: frames in the order they come out, at the stream's rate; a keyframe is sought by its
    # dts only where the dts rise (a file whose packets all carry one dts is read from its start instead)
    dts = [p[1] for p in packets]
    rising = all(d is not None for d in dts) and all(b > a for a, b in zip(dts, dts[1:]))
    keys = [(i, p[1]) for i, p in enumerate(packets) if p[2]] if rising else []
    return _Index(None, keys, n, 0, repeated=repeated)


def _counters_are_times(stream, packets) -> bool:
    """Whether an AVI's frame counters are presentation times: for a codec that never reorders frames (MJPEG, DV,
    raw, ProRes, ...), stored in rising order, they are (a capture that dropped frames leaves gaps in them, which
    the picture must keep to stay with its sound); a codec with B-frames stores them in decode order."""
    try:
        reorders = bool(stream.codec_context.codec.reorder)
    except Exception:  # an unknown codec: as before, counted in output order
        return False
    pts = [p[0] for p in packets]
    return not reorders and all(t is not None for t in pts) and all(b > a for a, b in zip(pts, pts[1:]))


CUT_SHORT_S = 0.25  # a picture this much shorter than its file declares (and CUT_SHORT_SHARE of it) is said to be
CUT_SHORT_SHARE = 0.02  # cut short (media.audio says the same of the sound)


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
        n_streams = len(c.streams)
        try:
            first = next(iter(c.decode(stream)), None)
        except av.error.FFmpegError as e:
            if isinstance(e, MemoryError):
                raise
            reason = decoder_reason(e)
            raise MediaError(f"cannot decode video from {path} (corrupt file: {reason})") from None
        if first is None:
            raise MediaError(f"{path}: no video frame could be decoded")
        rotation, mirror = _frame_orientation(first, stream)
        w, h = first.width, first.height
        sar = _sample_aspect(stream)
        hdr = HDR_TRANSFERS.get(int(getattr(first, "color_trc", 0) or stream.codec_context.color_trc or 0), "")
    with _open(path) as c:  # a fresh demuxer for the packet scan
        stream = _video_stream(c, path)
        index = _scan(c, stream)
        index.time_base = Fraction(stream.time_base) if stream.time_base else None
    fps = float(rate)
    if index.pts is not None:
        n_frames = index.n_frames
        last = index.last_duration * tb if index.last_duration else 1 / rate
        duration = float((int(index.pts[-1]) - int(index.pts[0])) * tb + last)
    elif index.repeated:  # timestamps not used, nor the durations made of them: every frame at the stream's rate
        n_frames = index.n_frames
        duration = n_frames / fps
    else:
        duration = stream_duration or container_duration or 0.0
        n_frames = index.n_frames or declared or max(1, int(round(duration * fps)))
        duration = duration or n_frames / fps
    said = stream_duration or (container_duration if n_streams == 1 else None)  # (a container's length covers every
    # track: the sound, subtitles)
    if said and index.n_frames > 1 and duration < said - max(CUT_SHORT_S, CUT_SHORT_SHARE * said):
        from ..errors import warn

        index.cut_short = True
        warn(f"{path}: its picture ends at {duration:.2f} s ({index.n_frames} frames), though the file says it lasts "
             f"{said:.2f} s{f' ({declared} frames)' if declared > index.n_frames else ''} (cut short: an interrupted "
             "copy, download or recording?); the video is used as far as it goes")
    if rotation in (90, 270):
        w, h, sar = h, w, 1 / sar
    info = VideoInfo(os.fspath(path), int(w), int(h), fps, rate, int(n_frames), duration, rotation, has_audio,
                     False, codec, sar, hdr, mirror)
    return info, index


def _sample_aspect(stream) -> Fraction:
    """The stream's sample (pixel) aspect ratio, 1 where it is untagged (0/1, none) or not a sane shape."""
    for sar in (stream.sample_aspect_ratio, stream.codec_context.sample_aspect_ratio):
        if sar is not None and sar.numerator > 0 and sar.denominator > 0 and 0.1 <= sar <= 10:
            return Fraction(sar)
    return Fraction(1)


# codecs of pictures (a file of one of them holding one frame is a photo), and photo formats FFmpeg reads as video
STILL_CODECS = frozenset({"gif", "png", "apng", "mjpeg", "webp", "bmp", "tiff", "jpeg2000", "jpegls", "jpegxl"})
STILL_SUFFIXES = frozenset({".avif", ".heic", ".heif", ".jfif", ".gif"})


def _one_picture(info: VideoInfo, index: _Index) -> bool:
    """A file holding one picture (a one-frame GIF, an AVIF or HEIF photo): a still image, not a one-frame video (a
    one-frame H.264 clip stays a video, with its pixel shape and colour coding)."""
    return (index.n_frames == 1 and not info.has_audio
            and (info.codec in STILL_CODECS or Path(info.path).suffix.lower() in STILL_SUFFIXES))


MIN_SIDE = 2  # the narrowest picture read (the face detector's own limit); a 1-pixel one holds no face


def probe(path: str | os.PathLike) -> VideoInfo:
    """Size, frame rate, exact frame count, duration, rotation and audio presence of a video or still image.

    Raises :class:`MediaError` for a missing or unreadable file, or one without a video stream.
    """
    require_file(path, "video file")
    p = os.fspath(path)
    with FrameReader(p) as reader:  # (a photo too, with the same checks; a one-picture file's picture as a still)
        return reader.info


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
        image_error = None
        animation = _animation(self.path) if _is_image(self.path) else None
        if _is_image(self.path) and animation != "APNG":  # (FFmpeg reads an APNG's frames as a video, as a GIF's)
            try:
                self._image = _read_image(self.path)
            except MediaError as e:  # (a video saved under a photo's name: FFmpeg is asked before it is refused)
                image_error = e
            if self._image is not None and animation:
                warn(f"{self.path} is an {animation}: only its first picture is used (FFmpeg does not read its "
                     "frames; convert it to a video, such as an MP4, to use its motion)")
        if self._image is not None:
            self.info = _image_info(self.path, self._image)
            self._index = None
        else:
            try:
                self.info, self._index = _probe_video(self.path)
            except MediaError:
                if image_error is not None:
                    raise image_error from None
                raise
        self._tb = None
        self._t0 = None
        self._reformatter = None
        self.bad_packets = 0  # packets the decoder rejected so far (damaged data)
        if self._image is None and _one_picture(self.info, self._index):
            # one picture in a video's clothes (a one-frame GIF, an AVIF or HEIF photo): a still image, as a PNG
            # is, not a one-frame video at its container's rate (a GIF's 100 fps, an AVIF's 1 fps)
            first = next(self.iter_range(0, 1), None)
            self.close()
            if first is not None:
                self._image, self._index = first.image, None
                self.info = _image_info(self.path, self._image)
        if min(self.info.width, self.info.height) < MIN_SIDE:
            self.close()
            raise MediaError(f"{self.path} is {self.info.width}x{self.info.height} pixels: too small to show a face "
                             f"(a picture needs at least {MIN_SIDE} pixels each way)")

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
    def cut_short(self) -> bool:
        """Whether the picture ends well before the length the file declares (an interrupted copy: said when
        probed)."""
        return self._index is not None and self._index.cut_short

    @property
    def repeated_frames(self) -> int:
        """Frames of the file left out because another frame carries the same timestamp (a few, at most
        :data:`DUPLICATE_SHARE` of them; 0 for a still image)."""
        return self._index.repeated if self._index is not None and self._index.pts is not None else 0

    @property
    def ignored_timestamps(self) -> int:
        """Frames whose timestamp another frame carries too, where there are so many (over :data:`DUPLICATE_SHARE`)
        that the timestamps are not used: every frame is read in the order it is stored, at the stream's rate."""
        return self._index.repeated if self._index is not None and self._index.pts is None else 0

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
            except av.error.FFmpegError as e:
                if isinstance(e, MemoryError):
                    raise
                self.bad_packets += 1
                return
            try:
                frames = pkt.decode()
            except av.error.FFmpegError as e:
                if isinstance(e, MemoryError):  # the machine, not the file: said as such (it was "damaged")
                    raise
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
                keep = self.keep_source and not self.info.rotation and not self.info.mirror and writer_coded(fr)
                if idx < INTERLACE_LOOK and fr.interlaced_frame:
                    self._interlaced()
                check_stop()  # a signal whose exception the decoder swallowed stops the reading here
                yield Frame(idx, t, self._at_size(self._to_bgr(fr)), bool(fr.is_corrupt), fr if keep else None)
            if not overshoot:
                return

    def _interlaced(self) -> None:
        """Said once: the video is interlaced (two fields a frame, a field's time apart), read as whole frames."""
        if not getattr(self, "_interlace_said", False):
            self._interlace_said = True
            warn(f"{self.path} is interlaced (each frame holds two fields taken a field's time apart, as TV cameras "
                 "record): it is read as whole frames, so the new mouth mixes the two fields and moving edges comb; "
                 "for a clean result deinterlace it first (e.g. ffmpeg -i IN -vf bwdif OUT.mp4)")

    def _to_bgr(self, frame) -> np.ndarray:
        if self._reformatter is None:
            from av.video.reformatter import Interpolation, VideoReformatter

            self._reformatter = VideoReformatter()
            # exact rounding and full-resolution chroma: swscale's fast YUV->RGB path is ~1 level too dark
            self._flags = Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT
        # one thread: the conversion shares the CPU with the other stages, and its slice threads cost more than they save
        if _may_hold_alpha(frame.format.name):  # an animated PNG, a video with transparency, a picture without a suffix: laid
            bgra = self._reformatter.reformat(frame, format="bgra", interpolation=self._flags, threads=1).to_ndarray()
            img = np.ascontiguousarray(bgra[:, :, :3])  # over white where transparent (as a still picture is)
            if int(bgra[:, :, 3].min()) < 255:
                img = _laid_over(self.path, img, bgra[:, :, 3])
        elif frame.format.name in PLANAR_RGB_SAME and frame.width % 2 == 0 and frame.height % 2 == 0:
            import cv2

            # to planar RGB and interleaved here: the same pixels at half the CPU of swscale's packed BGR output
            g, b, r = plane_views(self._reformatter.reformat(frame, format="gbrp", interpolation=self._flags, threads=1))
            img = cv2.merge([b, g, r])
        else:
            img = self._reformatter.reformat(frame, format="bgr24", interpolation=self._flags, threads=1).to_ndarray()
        return rotate_image(img, self.info.rotation, self.info.mirror)

    def _at_size(self, img: np.ndarray) -> np.ndarray:
        """A frame at the video's size: a picture that changes size midway (joined streams) is scaled to its first
        size, with a warning."""
        if img.shape[:2] == (self.info.height, self.info.width):
            return img
        import cv2

        if not getattr(self, "_resized_said", False):
            self._resized_said = True
            warn(f"{self.path}: its picture changes size midway ({self.info.width}x{self.info.height}, then "
                 f"{img.shape[1]}x{img.shape[0]}): frames of another size are scaled to the first's")
        return cv2.resize(img, (self.info.width, self.info.height), interpolation=cv2.INTER_AREA)


@lru_cache(maxsize=None)
def _may_hold_alpha(pixel_format: str) -> bool:
    """Whether frames of FFmpeg's ``pixel_format`` may hold transparency (an alpha plane, or a palette, whose colours
    may have it)."""
    import av

    fmt = av.VideoFormat(pixel_format)
    return bool(fmt.has_palette or any(c.is_alpha for c in fmt.components))


def plane_views(picture) -> list[np.ndarray]:
    """Each plane of an 8-bit planar picture (``av.VideoFrame``) as a (rows, columns) uint8 array viewing its memory
    (its line padding left out): Y, U, V of 4:2:0 (U and V at half size), G, B, R of planar RGB. Writing into a view
    writes into the picture."""
    return [np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, : p.width] for p in picture.planes]


def writer_coded(picture) -> bool:
    """True for a decoded picture coded as :class:`VideoWriter` codes by default: 8-bit 4:2:0, BT.709, limited range,
    even sides. Its pixels can go to the encoder as they are (``VideoWriter.write``'s ``source``)."""
    return (picture.format.name == "yuv420p" and int(picture.colorspace) == 1 and int(picture.color_range) == 1
            and picture.width % 2 == 0 and picture.height % 2 == 0)
