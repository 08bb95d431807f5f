"""Receiving a file: stored under a random name, limited in size and duration, checked by the CLI's own readers.

The uploader's file name is kept for display only: after :func:`display_name` it never reaches the file system.
What is stored is ``<data>/files/<16 hex digits><suffix>``, the suffix taken from a fixed list (the media
readers choose image or video decoding by it).

A file is inspected once, on arrival, with the same functions ``hyperlips sync`` uses (``probe`` for the picture,
``load_audio`` for the sound), so a bad file gets the command line's one-line reason, with the stored path
replaced by the uploader's name. Whether it is usable as the face or as the speech is recorded with it; a job
that uses it for something it cannot be is refused with that reason.
"""

from __future__ import annotations

import os
import re
import shutil
import unicodedata
import warnings
from pathlib import Path
from typing import BinaryIO

from ..errors import UserError, one_line
from ..media.video import IMAGE_SUFFIXES, is_still_picture
from .settings import ServeSettings
from .store import Store, new_id

VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".flv", ".wmv",
                            ".gif", ".mts", ".m2ts", ".3gp", ".3g2", ".mxf", ".vob", ".ogv", ".dv",
                            ".avif", ".heic", ".heif"})  # (photos FFmpeg reads: a still, as a PNG is)
AUDIO_SUFFIXES = frozenset({".wav", ".mp3", ".m4a", ".aac", ".flac", ".ogg", ".oga", ".opus", ".wma", ".aif", ".aiff",
                            ".amr", ".caf", ".ac3", ".mka", ".wv"})
UNNAMED_SUFFIX = ".media"  # a file sent without a suffix (some phones' share sheets): stored so, read by its content
ACCEPTED_SUFFIXES = VIDEO_SUFFIXES | AUDIO_SUFFIXES | IMAGE_SUFFIXES
ACCEPTED_KINDS = "videos (mp4, mov, mkv, webm, ...), photos (png, jpg, ...) or speech (wav, mp3, m4a, flac, ogg, ...)"
CHUNK = 1 << 20
MIN_FREE_BYTES = 2 << 30  # an upload that would leave less free space on the data folder's disk is refused
MAX_PIXELS = 100_000_000  # one picture: a 10000 x 10000 photo (a 48 KB PNG can declare 20000 x 20000: 1.2 GB decoded)


class UploadError(UserError):
    """A file that cannot be taken: its one-line reason goes back to the uploader (HTTP 400 or 413)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def display_name(raw: str | None) -> str:
    """The last part of whatever name the client sent, printable, at most 120 characters; 'upload' if nothing is left."""
    text = unicodedata.normalize("NFC", raw or "")
    text = re.split(r"[/\\]", text)[-1]
    text = "".join(c for c in text if unicodedata.category(c)[0] != "C").strip().rstrip(". ")
    text = re.sub(r"\s", " ", text)  # (a run of spaces kept: it is part of the name the user knows)
    if not text.strip("."):
        text = ""
    if len(text) > 120:
        stem, suffix = os.path.splitext(text)
        text = stem[: 120 - len(suffix[:12])] + suffix[:12]
    return text or "upload"


def storage_suffix(name: str) -> str:
    # a name that is all suffix (".mp4", as some phones and scripts save files) is that type, not a file without one
    suffix = os.path.splitext("_" + name)[1].lower()
    if not suffix:
        return UNNAMED_SUFFIX
    if suffix not in ACCEPTED_SUFFIXES:
        raise UploadError(f"{name}: not a file type this server takes; send {ACCEPTED_KINDS}")
    return suffix


def size_text(n: float) -> str:
    if n >= 1 << 30:
        return f"{n / (1 << 30):.1f} GB"
    return f"{n / 1024 / 1024:.1f} MB" if n >= 1024 * 1024 else f"{n / 1024:.0f} KB"


def check_length(length: int | None, settings: ServeSettings, name: str) -> int:
    """Refuse before reading: no length (chunked uploads), or more than the server's limit."""
    if length is None:
        raise UploadError("no Content-Length: send the file as the request body with its length (chunked uploads "
                          "are not taken)", status=411)
    if length <= 0:
        raise UploadError(f"{name} is empty (0 bytes)")
    if length > settings.max_upload_bytes:
        raise UploadError(f"{name} is {size_text(length)}; this server takes files of at most "
                          f"{size_text(settings.max_upload_bytes)}", status=413)
    try:
        free = shutil.disk_usage(settings.data).free
    except OSError:
        free = None
    if free is not None and free - length < MIN_FREE_BYTES:  # uploads (kept a day) must not fill the disk
        raise UploadError(f"{name} ({size_text(length)}) would leave less than {size_text(MIN_FREE_BYTES)} free on the "
                          f"server's disk ({size_text(free)} free; that much is kept for the jobs): send a smaller "
                          f"file, or try again later", status=507)
    return length


def receive(body: BinaryIO, length: int | None, raw_name: str | None, settings: ServeSettings, store: Store) -> dict:
    """Stream ``length`` bytes of ``body`` to a new stored file, inspect it and record it; returns the record."""
    name = display_name(raw_name)
    suffix = storage_suffix(name)
    length = check_length(length, settings, name)
    folder = settings.data / "files"
    folder.mkdir(parents=True, exist_ok=True)
    file_id = new_id()
    final = folder / f"{file_id}{suffix}"
    part = folder / f".{file_id}.part"
    try:
        left = length
        with open(part, "wb") as f:
            while left > 0:
                chunk = body.read(min(CHUNK, left))
                if not chunk:
                    raise UploadError(f"{name}: the upload ended after {length - left} of {length} bytes; send it again")
                f.write(chunk)
                left -= len(chunk)
        os.replace(part, final)
        facts = inspect(final, name, settings.max_seconds)
    except BaseException as e:
        part.unlink(missing_ok=True)
        final.unlink(missing_ok=True)
        if isinstance(e, OSError) and not isinstance(e, (ConnectionError, TimeoutError)):  # the server's disk
            raise UploadError(f"the server could not store {name}: {e.strerror or e}", status=507) from None
        raise  # a refusal, or the client went away
    return store.add_file(file_id, name, f"files/{final.name}", length, facts)


def register_example(path: Path, settings: ServeSettings, store: Store) -> dict | None:
    """Record a file of the examples folder (once); None when it is not a usable media file."""
    rel = path.relative_to(settings.data).as_posix()
    known = store.example_by_path(rel)
    if known is not None:
        return known
    try:
        storage_suffix(path.name)
        facts = inspect(path, path.name, max_seconds=float("inf"))
    except UserError:
        return None
    return store.add_file(new_id(), path.name, rel, path.stat().st_size, facts, example=True)


def inspect(path: Path, name: str, max_seconds: float) -> dict:
    """Facts about a stored file and why it cannot serve as the face or the speech (the CLI's reasons)."""
    from ..media.audio import load_audio
    from ..media.video import probe

    def reason(e: Exception) -> str:
        return one_line(str(e).replace(str(path), name))

    declared = _declared_seconds(path)
    if declared is not None and declared > max_seconds + 1.0:  # refused before anything is decoded
        raise UploadError(f"{name} is {declared:.1f} s long; this server takes at most {max_seconds:g} s: "
                          f"send a shorter part of it")
    size = _declared_size(path)  # a small file may hold a huge picture: refused before it is decoded
    if size is not None and (size == (0, 0) or size[0] * size[1] > MAX_PIXELS):
        how = f"is {size[0]}x{size[1]} pixels" if size != (0, 0) else "holds a picture of far too many pixels"
        raise UploadError(f"{name} {how}; this server takes pictures of at most {MAX_PIXELS / 1e6:g} million "
                          f"pixels: send a smaller one")
    # a file that does not say its length is measured, up to a little past the limit (the exact length, and the
    # message giving it, come from the full read below)
    heard = _sound_seconds(path, max_seconds + 10.0)
    if heard is not None and heard > max_seconds + 10.0:
        raise UploadError(f"{name} is more than {max_seconds:g} s long; this server takes at most {max_seconds:g} s: "
                          f"send a shorter part of it")
    facts: dict = {"has_video": False, "has_audio": False, "is_image": is_still_picture(path),
                   "problems": {}}
    try:
        info = probe(path)
        facts.update(has_video=True, width=info.width, height=info.height, fps=info.fps, frames=info.n_frames,
                     video_seconds=None if info.is_image else round(info.duration, 3),
                     is_image=info.is_image)  # as sync reads it: one picture in a video's clothes (an AVIF or
        # HEIF photo, a one-frame GIF) is a still, as a PNG is; an animated PNG (APNG) is a video, as a GIF is
    except UserError as e:
        facts["problems"]["video"] = reason(e)
    if facts["is_image"]:
        facts["problems"]["audio"] = f"{name} is a photo: it has no sound; send speech (wav, mp3, ...) or a video with sound"
    else:
        try:
            wav = load_audio(path, 16000)
            facts.update(has_audio=True, audio_seconds=round(len(wav) / 16000, 3))
            del wav
        except UserError as e:
            facts["problems"]["audio"] = reason(e)
    if not facts["has_video"] and not facts["has_audio"]:
        raise UploadError(facts["problems"].get("video") or facts["problems"]["audio"])
    for key in ("video_seconds", "audio_seconds"):
        seconds = facts.get(key)
        if seconds is not None and seconds > max_seconds:
            raise UploadError(f"{name} is {seconds:.1f} s long; this server takes at most {max_seconds:g} s: "
                              f"send a shorter part of it")
    return facts


def longest_seconds(record: dict) -> float:
    """The longer of a stored file's picture and sound, in seconds (0 for a photo)."""
    facts = record["facts"]
    return max(float(facts.get("video_seconds") or 0.0), float(facts.get("audio_seconds") or 0.0))


def _declared_seconds(path: Path) -> float | None:
    """The length the container declares (None for photos, or when it does not say or cannot be opened)."""
    if is_still_picture(path):  # (a video under a picture's name is measured as a video)
        return None
    import av

    try:
        with av.open(str(path)) as c:
            return c.duration / 1e6 if c.duration else None
    except (av.error.FFmpegError, OSError, ValueError):
        return None


def _declared_size(path: Path) -> tuple[int, int] | None:
    """(width, height) of a photo or a video's pictures as its header gives them, nothing decoded (None when it
    cannot be read that way: the checks that decode it say why). (0, 0) for a photo that Pillow itself will not
    open as a decompression bomb (over about 179 million pixels)."""
    if is_still_picture(path):  # (a video under a picture's name is measured as a video)
        try:
            from PIL import Image
        except ImportError:
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's own warning of a large picture: the size is judged here
            try:
                with Image.open(path) as im:
                    return int(im.size[0]), int(im.size[1])
            except Image.DecompressionBombError:
                return 0, 0
            except Exception:  # noqa: BLE001 - a file Pillow cannot read: the decoder decides
                return None
    import av

    try:
        with av.open(str(path)) as c:
            v = next((s for s in c.streams.video), None)
            if v is None or v.codec_context is None or not v.codec_context.width:
                return None
            return int(v.codec_context.width), int(v.codec_context.height)
    except (av.error.FFmpegError, OSError, ValueError):
        return None


def _sound_seconds(path: Path, limit: float) -> float | None:
    """How long a file's sound is, decoded frame by frame and kept nowhere, stopping once it passes ``limit``
    seconds (a file whose header leaves out its length, or lies about it, cannot fill the memory); None for a photo
    or a file without sound that can be read."""
    if is_still_picture(path):  # (a video under a picture's name is measured as a video)
        return None
    import av

    seconds = 0.0
    try:
        with av.open(str(path)) as c:
            if not c.streams.audio:
                return None
            for frame in c.decode(c.streams.audio[0]):
                seconds += frame.samples / float(frame.sample_rate or 1)
                if seconds > limit:
                    break
    except (av.error.FFmpegError, OSError, ValueError):
        return None  # load_audio gives the reason
    return seconds


def check_role(record: dict, role: str) -> None:
    """Raise the recorded reason when ``record`` cannot be the job's ``role`` ("video" for the face, "audio")."""
    problem = record["facts"]["problems"].get(role)
    if problem:
        raise UploadError(problem)


def link_into(record: dict, settings: ServeSettings, folder: Path, stem: str) -> Path:
    """Put the stored file into a job's folder (a hard link when possible, else a copy); returns its path there."""
    src = settings.data / record["path"]
    dst = folder / f"{stem}{Path(record['path']).suffix}"
    if not src.is_file():
        raise UploadError(f"{record['name']} is no longer on the server (uploads are kept {settings.keep_hours:g} h); "
                          f"upload it again")
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
    return dst
