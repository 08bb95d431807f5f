"""One clip of a dataset (layout in :mod:`.datasets`), in two streaming passes (memory does not grow with the
clip's length):

1. decode every frame and detect faces; choose, bridge and smooth one face track with
   ``face.track_online.OnlineTrack`` (the same tracking, padding and geometry as inference, shot by shot where the
   clip cuts);
2. decode again and, for each tracked frame, crop with ``pipeline.face_crop`` (exactly the inference crop) at 128 px
   (and the HR size when asked), run FaceMesh on a 256 px crop, draw the landmark sketch and the lip mask.

The clip's own audio becomes one cached mel spectrogram (and its phones, where the recogniser is installed). The
clip is written to a temporary folder renamed when complete; one that cannot be used comes back skipped, with the
reason, never as an exception."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from ..config import AudioConfig
from ..errors import InputWarning, MediaError, NoFaceError, hidden_name
from .datasets import BASE_SIZE, FORMAT_VERSION, META, ImageStack, encode_jpeg, encode_png
from .sources import clip_id_of, frames_with_sound, speaker_of

MESH_SIZE = 256  # FaceMesh runs on a 256 px crop (the pipeline runs it on base outputs upscaled to 256)
HR_SIZES = (256, 512)


@dataclass
class PreprocessOptions:
    hr_size: int | None = None  # also store crops at 256 or 512 px for the HR decoder
    min_frames: int = 16  # clips with fewer frames with a face are skipped ("too short")
    speaker: str = "auto"  # how to read the speaker identity from the path (see speaker_of)
    split: str = "speaker"  # "speaker": hold out whole speakers; "time": hold out the tail of every clip
    val_fraction: float = 0.1  # share of speakers (or clips, for one speaker) held out for validation
    jpeg_quality: int = 95
    audio: AudioConfig = field(default_factory=AudioConfig)
    face: int | None = None  # which face, counted from the left, where a clip shows several (None: the largest)
    face_box: tuple[float, float, float, float] | None = None  # or the face overlapping this box (pixels)


@dataclass
class ClipResult:
    source: str  # path relative to SRC (posix)
    clip_id: str
    status: str  # "done", "skipped", "exists"
    reason: str = ""
    frames: int = 0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)


def _source_key(path: Path, opts: PreprocessOptions | None = None) -> dict[str, Any]:
    """What a finished (or skipped) clip was made from: the file's size and time, and the face chosen where one was
    (``--face``/``--face-box``): another choice makes the clip again."""
    st = path.stat()
    key: dict[str, Any] = {"size": st.st_size, "mtime": int(st.st_mtime)}
    if opts is not None and opts.face is not None:
        key["face"] = opts.face
    if opts is not None and opts.face_box is not None:
        key["face_box"] = [float(v) for v in opts.face_box]
    return key


def process_clip(path: Path, out_dir: Path, rel: PurePosixPath, opts: PreprocessOptions,
                 clip_id: str | None = None) -> ClipResult:
    """Preprocess one video into ``out_dir`` (written via a temporary folder) as clip ``clip_id`` (default:
    ``clip_id_of(rel)``; ``sources.clip_ids`` makes a folder's distinct). Never raises for bad input: a clip
    that cannot be used comes back as ``status="skipped"`` with the reason. The clip's input warnings (a variable
    frame rate, damaged frames, non-finite audio) come back in ``warnings``: a worker process cannot show them."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", InputWarning)
        result = _process_clip(path, out_dir, rel, opts, clip_id or clip_id_of(rel))
    result.warnings = list(dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, InputWarning)))
    return result


_writing: list[Path] = []  # the unfinished clip folder this process is writing (drop_unfinished)


def drop_unfinished() -> None:
    """Remove the unfinished folder of the clip this process is making, now. For a stop that may not unwind
    normally: a preprocess worker whose command is gone removes it before it stops the clip, so a crash on the way
    out (a native library torn down mid-frame) leaves nothing behind. The clip's own clean-up still runs after."""
    for tmp in list(_writing):
        shutil.rmtree(tmp, ignore_errors=True)


def _process_clip(path: Path, out_dir: Path, rel: PurePosixPath, opts: PreprocessOptions, clip_id: str) -> ClipResult:
    tmp = out_dir.parent / hidden_name(out_dir.name, f".partial-{os.getpid()}")  # (cut to fit a name of 255 bytes)
    _writing.append(tmp)
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        frames, seconds = _write_clip(path, tmp, clip_id, rel, opts)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
        return ClipResult(str(rel), clip_id, "done", frames=frames, seconds=seconds)
    except _Skip as e:
        return ClipResult(str(rel), clip_id, "skipped", reason=str(e))
    except NoFaceError as e:
        chosen = opts.face is not None or opts.face_box is not None  # the face asked for: said which is missing
        return ClipResult(str(rel), clip_id, "skipped", reason=f"no face: {e}" if chosen else "no face")
    except MediaError as e:
        msg = " ".join(str(e).split())
        reason = "no audio" if "audio" in msg and ("no audio" in msg or "holds no audio" in msg) else "unreadable"
        return ClipResult(str(rel), clip_id, "skipped", reason=f"{reason}: {msg}")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        _writing.remove(tmp)




class _Skip(Exception):
    pass


def _write_clip(path: Path, tmp: Path, clip_id: str, rel: PurePosixPath, opts: PreprocessOptions) -> tuple[int, float]:
    from ..face.detect import FaceDetector
    from ..face.landmarks import FaceMesh, draw_sketch, lip_mask
    from ..face.track_online import OnlineTrack
    from ..media.audio import is_silent, load_audio, melspectrogram
    from ..media.timing import open_timeline, report_damage
    from ..pipeline import face_crop

    timeline = open_timeline(path)  # frames at a constant rate, each the source frame of its time (as in sync)
    info = timeline.info
    if info.is_image:
        raise _Skip("too short: a still image, not a video")
    if not info.has_audio:
        raise _Skip("no audio: the video has no audio track")
    face_box = opts.face_box
    if face_box is not None:  # clipped to the frame as sync clips it; one outside it said now, not after detecting
        from ..errors import UserError  # every frame
        from ..streaming import check_face_box

        try:
            face_box = check_face_box(face_box, info.width, info.height)
        except UserError as e:
            raise _Skip(str(e)) from None
    if info.sample_aspect != 1:
        from ..errors import warn

        warn(f"{path}: its pixels are not square (stored {info.width}x{info.height}, shown "
             f"{round(info.width * float(info.sample_aspect))}x{info.height}): faces are learnt as stored, "
             f"{'wider' if info.sample_aspect < 1 else 'narrower'} than they look (sync reads such a video the same "
             "way, so a model of this footage fits it; mixed with square-pixel clips, scale it to square pixels first)")
    wav = load_audio(path, opts.audio.sample_rate)
    if is_silent(wav):
        raise _Skip("no speech: its audio track is silent (only the first audio track of a video is read)")
    mel = melspectrogram(wav, opts.audio)
    phones = _phones_of(wav, opts)
    audio_seconds = len(wav) / opts.audio.sample_rate
    usable = frames_with_sound(timeline.n_frames, timeline.fps, audio_seconds)
    if usable < timeline.n_frames:
        from ..errors import warn

        warn(f"{path}: its sound ends at {audio_seconds:.1f} s, its picture at {timeline.n_frames / timeline.fps:.1f} s: "
             f"the {timeline.n_frames - usable} frames after the sound are left out")

    # pass 1: faces, tracked as sync tracks them (shot by shot where the clip is an edit)
    detections, times, track_boxes = [], [], []
    track = OnlineTrack(timeline.fps, source=str(path), frame_size=(info.width, info.height), face_index=opts.face,
                        box=face_box)
    last = (None, None)  # a source frame shown twice on the timeline is detected once
    with FaceDetector() as detector, timeline:
        for fr in timeline:
            if fr.index >= usable:
                break
            if fr.image is not last[0]:
                last = (fr.image, detector.detect(fr.image))
            detections.append(last[1])
            times.append(fr.time)
            track_boxes += [b for _, b in track.push(last[1], fr.image)]
    n = len(detections)
    report_damage(timeline, n)
    if n < opts.min_frames:
        raise _Skip(f"too short: {n} frames (at least {opts.min_frames} are needed)")
    if track.several_faces():  # (the track was told of --face or --face-box: then nothing to say)
        from ..errors import warn

        warn(f"{path}: {track.frames_with_several} of its {n} frames show more than one face; the largest one at the start is taken as "
             f"the one speaking, and the speech may be another's (--face N or --face-box picks the speaker; or cut "
             f"the clip to the speaker, or leave it out)")
    track_boxes += [b for _, b in track.finish()]  # (n is at least min_frames here)
    if track.shots > 1:
        from ..errors import warn

        rule = "the largest" if opts.face is None and opts.face_box is None else "as --face or --face-box picks it"
        warn(f"{path}: the clip cuts to another shot {track.shots - 1} time{'s' if track.shots > 2 else ''}: the face is "
             f"taken anew in each shot ({rule}); where a shot shows someone else than the speaker, cut the clip "
             f"to the speaker's shots")
    n_valid = sum(b is not None for b in track_boxes)
    if n_valid < opts.min_frames:
        raise _Skip(f"too short: a face in only {n_valid} of {n} frames (at least {opts.min_frames} are needed)")

    # pass 2: crops, landmarks, sketches, masks
    sizes = [BASE_SIZE] + ([opts.hr_size] if opts.hr_size else [])
    crops: dict[int, list[bytes]] = {s: [] for s in sizes}
    sketches: list[bytes] = []
    masks: list[bytes] = []
    landmarks = np.full((n, 478, 3), np.nan, dtype=np.float16)
    boxes = np.full((n, 4), np.nan, dtype=np.float32)
    valid = np.zeros(n, dtype=bool)
    blank = {s: encode_jpeg(np.zeros((s, s, 3), np.uint8), opts.jpeg_quality) for s in sizes}
    blank_gray = encode_png(np.zeros((BASE_SIZE, BASE_SIZE), np.uint8))
    seen = 0
    with FaceMesh(static=False) as mesh, timeline:
        for fr in timeline:
            i = fr.index
            if i >= n:
                break
            while seen < i:  # a frame the second decode skipped: keep indices aligned
                _append_blank(crops, sketches, masks, blank, blank_gray)
                seen += 1
            seen = i + 1
            box = track_boxes[i]
            if box is None:
                _append_blank(crops, sketches, masks, blank, blank_gray)
                continue
            valid[i] = True
            boxes[i] = box.as_array()
            for s in sizes:
                crops[s].append(encode_jpeg(face_crop(fr.image, box, s), opts.jpeg_quality))
            lm = mesh.landmarks(face_crop(fr.image, box, MESH_SIZE))
            if lm is None:
                sketches.append(blank_gray)
                masks.append(blank_gray)
                continue
            norm = lm / np.float32(MESH_SIZE)
            landmarks[i] = norm.astype(np.float16)
            xy = norm[:, :2] * BASE_SIZE
            sketches.append(encode_png(draw_sketch(xy, BASE_SIZE)))
            masks.append(encode_png(lip_mask(xy, BASE_SIZE)))
    while seen < n:
        _append_blank(crops, sketches, masks, blank, blank_gray)
        seen += 1

    for s in sizes:
        ImageStack.write(tmp / f"face{s}", crops[s])
    ImageStack.write(tmp / f"sketch{BASE_SIZE}", sketches)
    ImageStack.write(tmp / f"mask{BASE_SIZE}", masks)
    np.save(tmp / "mel.npy", mel)
    if phones is not None:
        np.save(tmp / "phones.npy", phones)
    np.save(tmp / "times.npy", np.asarray(times, dtype=np.float64))
    np.save(tmp / "valid.npy", valid)
    np.save(tmp / "boxes.npy", boxes)
    np.save(tmp / "landmarks.npy", landmarks)
    seconds = len(wav) / opts.audio.sample_rate
    meta = {
        "format_version": FORMAT_VERSION,
        "id": clip_id,
        "source": str(rel),
        "source_key": _source_key(path, opts),
        "speaker": speaker_of(rel, opts.speaker),
        "fps": timeline.fps,  # the timeline's rate: frame k of this clip is at k / fps (times.npy)
        "width": info.width,
        "height": info.height,
        "n_frames": n,
        "n_valid": int(valid.sum()),
        "n_landmarks": int(np.isfinite(landmarks[:, 0, 0]).sum()),
        "mel_frames": int(mel.shape[1]),
        "seconds": seconds,
        "sizes": sizes,
        "best_index": int(track.best()),  # the first shot's, where the clip cuts
    }
    (tmp / META).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return n, seconds


def _append_blank(crops, sketches, masks, blank, blank_gray) -> None:
    for s, lst in crops.items():
        lst.append(blank[s])
    sketches.append(blank_gray)
    masks.append(blank_gray)


def _phones_of(wav: np.ndarray, opts: PreprocessOptions) -> np.ndarray | None:
    """The phones of a clip's speech (``media.phones.read_phones``; for a HyperLips-Lite that reads them), or None
    where the phone recogniser is not installed (such a network then cannot train on the clip, and says so)."""
    from ..media import phones

    if not phones.available() or opts.audio.sample_rate != phones.SAMPLE_RATE:
        return None
    return phones.read_phones(wav, opts.audio.sample_rate)


def _add_phones(source: Path, out_dir: Path, opts: PreprocessOptions) -> None:
    """Write ``phones.npy`` into a finished clip that has none, read from its ``source``."""
    from ..media.audio import load_audio

    target = out_dir / "phones.npy"
    if target.is_file():
        return
    try:
        ids = _phones_of(load_audio(source, opts.audio.sample_rate), opts)
    except MediaError:
        return  # the clip stays as it is; a network that reads phones says which clip lacks them
    if ids is not None:
        tmp = out_dir / f".phones.partial-{os.getpid()}.npy"
        np.save(tmp, ids)
        os.replace(tmp, target)
