"""Video output with PyAV: H.264 + AAC files, written atomically.

Output is H.264 (libx264) tagged BT.709 limited range, plus AAC audio, written to a hidden temporary file beside
the target and renamed only when :meth:`VideoWriter.close` succeeds. The default picture format is ``yuv420p``
(4:2:0), the one every browser, phone and editor plays. 4:2:0 H.264 can only code even widths and heights, so an
odd-sized frame is stored one pixel larger: its last column and/or row is repeated (nothing of the picture is
lost or moved; :func:`coded_size` gives the stored size). ``pix_fmt="yuv444p"`` keeps the exact size and full
colour resolution instead, but 4:4:4 H.264 has no hardware decoders: Safari, phones and TVs do not play it. Video
and audio both start at time 0 (the first frame and the first audible sample are presented together); MP4 and MOV
files carry their index at the front, so players start before the whole file has arrived.

A frame given with the decoded picture it came from (``Frame.source``, :func:`.video.writer_coded`) and the region
that changed is coded from that picture, only the region converted from BGR: the rest stays as it was decoded.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import math
import os
import re
import secrets
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MediaError, UserError, check_stop, storage_advice
from ..precision import cpu_flags, usable_cpus
from .video import as_rate, plane_views, writer_coded

__all__ = ["PIX_FMTS", "PRESETS", "VideoWriter", "check_encoding", "coded_size", "encoder_threads", "too_large_to_play",
           "x264_params"]

_STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EIO})
AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000)
PIX_FMTS = ("yuv420p", "yuv444p")  # 4:2:0 plays everywhere (the default); 4:4:4: exact size, full colour, few players
PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
           "placebo")  # libx264
DEFAULT_CRF, DEFAULT_PRESET, DEFAULT_PIX_FMT = 18, "veryfast", "yuv420p"
MAX_CRF = 51  # libx264's worst quality (8-bit); 0 is lossless


def check_encoding(crf: int = DEFAULT_CRF, preset: str = DEFAULT_PRESET, pix_fmt: str = DEFAULT_PIX_FMT,
                   names: tuple[str, str, str] = ("--crf (crf)", "--preset (preset)", "--pix-fmt (pix_fmt)")) -> None:
    """Raise :class:`UserError` for an encoder setting libx264 would refuse, naming the option (as ``names``
    spells the three: the command line's flags with the Python keywords by default) and its range."""
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


SOURCE_MARGIN = 8  # pixels around a changed region converted with it: 4:2:0's chroma there mixes both sides


def _changed_span(changed, width: int, height: int) -> tuple[int, int, int, int]:
    """``changed`` grown by :data:`SOURCE_MARGIN`, to even edges (whole chroma samples), clipped to the frame."""
    x1, y1, x2, y2 = (int(v) for v in changed)
    m = SOURCE_MARGIN
    return (max(0, (x1 - m) // 2 * 2), max(0, (y1 - m) // 2 * 2),
            min(width, -(-(x2 + m) // 2) * 2), min(height, -(-(y2 + m) // 2) * 2))


ONE_THREAD_MAX_PIXELS = 1280 * 720  # frames up to this size are encoded on one thread on a machine of 2 cores or less


STALE_PARTIAL_S = 600.0  # a partial file of the same output untouched this long was left by a killed run


NAME_MAX = 255  # bytes in a file's name on the usual file systems (ext4, XFS, APFS, NTFS's 255 UTF-16 units)


def _partial_stem(stem: str, suffix: str) -> str:
    """The output's name as its partial file (``.STEM.XXXXXXXX.partialSUFFIX``) carries it: cut (at a character) so
    the partial's name is no longer than the longest name the output itself may have (a 240-byte name was refused
    as "too long": the partial's was)."""
    room = NAME_MAX - len(os.fsencode(f"..12345678.partial{suffix}"))  # the dots around the stem and the token
    data = os.fsencode(stem)  # a name's bytes as the file system holds them (not UTF-8 everywhere)
    if len(data) <= room:
        return stem
    data = data[:room]
    while data:  # not cut inside a character where the name is UTF-8
        try:
            data.decode("utf-8")
            break
        except UnicodeDecodeError as e:
            if e.start < len(data) - 3:  # a byte that is no UTF-8 earlier on: the name is not UTF-8; cut as it is
                break
            data = data[:e.start]
    return os.fsdecode(data)


def _keep_mode(old: Path, new: Path) -> None:
    """The permissions and group of a file being replaced (``old``) given to the one replacing it (a group-writable
    output on a team's share stays so, for the same group; the new file had this user's defaults). The group is kept
    where this user may give it (one of their groups), before the mode: a change of group clears set-group-ID."""
    import stat

    try:
        st = os.stat(old)
    except OSError:  # (none to keep: a new output)
        return
    try:
        if st.st_gid != os.stat(new).st_gid:
            os.chown(new, -1, st.st_gid)
    except (OSError, AttributeError):  # not one of this user's groups (or no chown: Windows): the mode still
        pass
    try:
        os.chmod(new, stat.S_IMODE(st.st_mode))
    except OSError:
        pass


def _remove_stale_partials(folder: Path, stem: str, suffix: str) -> None:
    """Delete the partial files of this output that runs killed outright (SIGKILL, out of memory) left behind: a run
    that is still writing one touches it every frame, so only those untouched for :data:`STALE_PARTIAL_S` go."""
    now = time.time()
    token = re.compile(re.escape(f".{stem}.") + "[0-9a-f]{8}" + re.escape(f".partial{suffix}"))
    for p in folder.glob(f".{glob.escape(stem)}.*.partial{glob.escape(suffix)}"):
        if not token.fullmatch(p.name):  # another output's (``a.b.mp4``'s beside ``a.mp4``): not this one's
            continue
        try:
            if now - p.stat().st_mtime > STALE_PARTIAL_S:
                p.unlink()
        except OSError:
            pass


PLAYS_EVERYWHERE_MACROBLOCKS = 36864  # H.264 level 5.2's largest frame (4096x2304): what phones and TVs decode
PLAYS_EVERYWHERE_RATE = 2_073_600  # level 5.2's macroblocks a second (4096x2304 at 56 fps, 3840x2160 at 64)


def too_large_to_play(width: int, height: int, fps: float | None = None) -> str | None:
    """Words for an output whose H.264 frame, or frames a second (``fps``), are more than phones, TVs and most browsers
    decode (above level 5.2: 4096x2304, or 2,073,600 macroblocks a second; a 12-megapixel photo's 4000x3000 is coded at
    level 6, and so is 4K at 120 fps); None where it plays everywhere."""
    mbs = math.ceil(width / 16) * math.ceil(height / 16)
    if mbs > PLAYS_EVERYWHERE_MACROBLOCKS:
        return (f"the output is {width}x{height}: H.264 frames this large (above 4096x2304) do not play on most "
                "phones, TVs and hardware decoders; scale the input down (a photo to 2000 px, say) for a file that "
                "plays anywhere")
    if fps is not None and mbs * float(fps) > PLAYS_EVERYWHERE_RATE * 1.0001:
        most = int(PLAYS_EVERYWHERE_RATE // mbs)
        return (f"the output is {width}x{height} at {float(fps):.4g} fps: H.264 this large at this rate (above "
                f"level 5.2) does not play on most phones, TVs and hardware decoders; --fps {min(most, 60)} (or less) "
                "gives a file that plays anywhere")
    return None


def x264_params(flags: frozenset[str] | None = None) -> dict[str, str]:
    """libx264 options that keep its output the same from run to run on this CPU (``flags``: CPU flags to judge
    instead of this machine's; tests inject them).

    On a CPU with AVX-512, libx264's AVX-512 code (as PyAV's wheels build it) coded the same frames differently from
    run to run: with other FFmpeg work done in the same process between frames (a decoder, a picture conversion),
    5 to 7 of 8 encodes of the same 50 frames gave different files, up to a dozen grey levels apart in a few rows.
    Limited to its AVX2 code (each of its SIMD paths computes the same result; only their speed differs), 8 of 8
    were identical, at the same speed (720p, veryfast: 10.3-12.6 against 10.8-11.0 ms per frame, a loaded machine)."""
    flags = cpu_flags() if flags is None else flags
    return {"x264-params": "asm=AVX2,Cache64"} if "avx512f" in flags and "avx2" in flags else {}


def encoder_threads(width: int, height: int) -> int:
    """libx264's threads for a ``width`` x ``height`` video: 1 up to 720p where this process has 2 CPUs or fewer,
    else 0 (libx264's own choice, about 1.5 per core).

    On 2 cores every stage of ``sync`` wants a core, and libx264's threads spend more CPU than they save (PyAV opens
    it with slice threads, each frame split among them; frame threads, two on 2 cores, were measured no faster than
    one thread either: docs/inference.md §8): the
    shipped starter end to end on real 720p clips (three runs each, alternated) went from 38.7-40.2 to 43.1-44.6 fps
    on ``video3.mp4`` and from 33.4-40.3 to 37.8-38.4 on another, and a 512 px clip from 43.8-45.0 to 47.5-48.2; the
    files were 1% smaller. At 1080p one thread cannot keep up (22.0-22.4 -> 19.3-19.9 fps), so larger frames keep
    libx264's choice, as do machines with more cores, where its threads have idle cores to use."""
    return 1 if width * height <= ONE_THREAD_MAX_PIXELS and usable_cpus() <= 2 else 0


class VideoWriter:
    """H.264 + AAC writer with an atomic result.

    ``write(frame)`` takes (height, width, 3) uint8 BGR frames; the file stores them at ``coded_width`` x
    ``coded_height`` (see :func:`coded_size`: with ``pix_fmt="yuv420p"``, the default, an odd side gains one
    repeated column or row). ``crf`` (0-51, lower is better and larger) and ``preset`` (libx264's speed/size
    trade-off) set the quality; ``threads``: encoder threads (0: libx264's choice, about 1.5 per core; None:
    :func:`encoder_threads`); ``sample_aspect``: the pixels' shape as shown (the input's
    :attr:`~.video.VideoInfo.sample_aspect`), tagged where it is not 1.
    ``audio``: float32 samples at ``sample_rate``, mono (samples,) or (channels, samples) with 1 or 2 channels
    (written in full, interleaved with the video as frames arrive).
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
        threads: int | None = None,
        pix_fmt: str = DEFAULT_PIX_FMT,
        sample_aspect: Fraction | None = None,
    ):
        import av
        from av.video.reformatter import ColorRange, Colorspace

        # an output that is a symbolic link is written where it points (the file renamed into place replaced the link
        # itself: a delivery copy it pointed to stayed the old one), as writing a file through a link does
        self.path = Path(os.path.realpath(path)) if os.path.islink(path) else Path(path)
        self.width, self.height = int(width), int(height)
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"bad frame size {width}x{height}")
        check_encoding(crf, preset, pix_fmt)
        self.coded_width, self.coded_height = coded_size(self.width, self.height, pix_fmt)
        if threads is None:
            threads = encoder_threads(self.coded_width, self.coded_height)
        self.threads = int(threads)
        self.rate = as_rate(fps)
        self.fps = float(self.rate)
        self.frames_written = 0
        # audio: (channels, samples) float32 in [-1, 1], mono or stereo, at a rate AAC supports (prepared before any
        # file exists)
        self._audio = None
        self._audio_pos = 0
        if audio is not None:
            a = np.asarray(audio, dtype=np.float32)
            if a.ndim == 1:
                a = a[None]
            if a.ndim != 2 or a.shape[0] not in (1, 2):
                raise ValueError(f"audio must be mono samples (samples,) or (channels, samples) with 1 or 2 channels, "
                                 f"got shape {a.shape}")
            sr = int(sample_rate)
            if sr not in AAC_RATES:
                from .resample import resample_poly

                g = math.gcd(48000, sr)
                a = np.stack([resample_poly(row, 48000 // g, sr // g) for row in a])
                sr = 48000
            self._audio = np.ascontiguousarray(np.clip(a, -1.0, 1.0))
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
        stem = _partial_stem(self.path.stem, suffix)
        _remove_stale_partials(folder, stem, suffix)
        self._tmp = folder / f".{stem}.{secrets.token_hex(4)}.partial{suffix}"
        self._closed = False
        try:  # FFmpeg opens the file only at the first frame, and its errors then name no file: try it now
            with open(self._tmp, "xb"):
                pass
        except OSError as e:
            advice = ("the path of its working file beside it (a hidden name about 20 bytes longer) passes the "
                      "4096 bytes this system takes: choose a shorter path" if e.errno == errno.ENAMETOOLONG
                      else "choose a folder you can write to")
            raise MediaError(f"cannot write {self.path}: {os.strerror(e.errno) if e.errno else e}; {advice}") from None
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
            if sample_aspect is not None and Fraction(sample_aspect) != 1:  # non-square pixels: shown as the input
                cc.sample_aspect_ratio = Fraction(sample_aspect)
            v.options = {"crf": str(crf), "preset": preset, **({"threads": str(self.threads)} if self.threads else {}),
                         **x264_params()}
            self._v = v
            self._a = None
            if self._audio is not None:
                layout = "stereo" if self._audio.shape[0] == 2 else "mono"
                a_stream = self._container.add_stream("aac", rate=self.sample_rate, layout=layout)
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
        check_stop()  # a signal whose exception the encoders swallowed stops the run here

    def _converted(self, frame: np.ndarray):
        """The whole frame converted to the output's picture format."""
        import av

        pad_x, pad_y = self.coded_width - self.width, self.coded_height - self.height
        if pad_x or pad_y:  # 4:2:0 needs even sides: repeat the last column / row
            import cv2

            frame = cv2.copyMakeBorder(frame, 0, pad_y, 0, pad_x, cv2.BORDER_REPLICATE)
        # a view of the array, not a copy (2 ms per 720p frame); the conversion below makes the frame encoded
        vf = av.VideoFrame.from_numpy_buffer(np.ascontiguousarray(frame), format="bgr24")
        # one thread: swscale's slice threads took more CPU than they saved (2.9 against 2.1 ms per 720p frame)
        return self._reformatter.reformat(vf, format=self._pix_fmt, threads=1, **self._colour)

    def _from_source(self, frame: np.ndarray, source: Any, changed: tuple | None):
        """The decoded ``source`` with the ``changed`` region (and a margin) converted from ``frame``; None where the
        source cannot be used as it is (another picture format, colour coding or size)."""
        import av

        w, h = self.width, self.height
        if self._pix_fmt != "yuv420p" or (source.width, source.height) != (w, h) or not writer_coded(source):
            return None  # (a picture writer_coded takes has even sides, so the frame is coded at its own size)
        out = av.VideoFrame(w, h, "yuv420p")  # a copy: the decoder's picture stays as it was
        planes = plane_views(out)
        for dst, src in zip(planes, plane_views(source)):
            np.copyto(dst, src)
        if changed is not None:
            x1, y1, x2, y2 = _changed_span(changed, w, h)
            if x2 > x1 and y2 > y1:
                part = av.VideoFrame.from_numpy_buffer(np.ascontiguousarray(frame[y1:y2, x1:x2]), format="bgr24")
                part = self._reformatter.reformat(part, format="yuv420p", threads=1, **self._colour)
                for dst, src, k in zip(planes, plane_views(part), (1, 2, 2)):
                    dst[y1 // k : y2 // k, x1 // k : x2 // k] = src
        return out

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
                check_stop()  # nothing is left under the output's name once a stop was asked for
                self._closed = True
                _keep_mode(self.path, self._tmp)
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
            if e.errno in (errno.ENOENT, errno.ENOTDIR) and not self.path.parent.is_dir():
                self.abort()
                raise MediaError(f"cannot write {self.path}: its folder was removed or moved while it was being written "
                                 "(nothing was written)") from None
            if e.errno not in _STORAGE_ERRNOS:
                raise
            self.abort()
            raise MediaError(f"cannot write {self.path}: {os.strerror(e.errno)}; {storage_advice(e.errno)} (nothing "
                             "was written there)") from None

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
        total = self._audio.shape[1]
        end = total if seconds is None else min(total, int(math.ceil(seconds * self.sample_rate)))
        size = self._a.codec_context.frame_size or 1024
        layout = "stereo" if self._audio.shape[0] == 2 else "mono"
        while self._audio_pos < end:
            n = min(size, total - self._audio_pos)
            chunk = np.ascontiguousarray(self._audio[:, self._audio_pos : self._audio_pos + n])
            af = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
            af.sample_rate = self.sample_rate
            af.pts = self._audio_pos
            for pkt in self._a.encode(af):
                self._container.mux(pkt)
            self._audio_pos += n
