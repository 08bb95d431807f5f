"""``hyperlips preprocess SRC DST``: talking-face videos -> a training dataset (layout in :mod:`.datasets`).

Per clip, in two streaming passes (memory does not grow with the clip's length):

1. decode every frame and detect faces; choose, bridge and smooth one face track with ``face.track.track_faces``
   (the same tracking, padding and geometry as inference);
2. decode again and, for each tracked frame, crop with ``pipeline.face_crop`` (exactly the inference crop) at 128 px
   (and the HR size when asked), run FaceMesh on a 256 px crop, draw the landmark sketch and the lip mask.

The clip's own audio becomes one cached mel spectrogram. Every clip is written to a temporary folder that is
renamed when complete, so an interrupted run leaves no half clip and a re-run skips finished clips (and clips
skipped before: no face, too short, unreadable, no audio; ``--retry-skipped`` tries them again).

Train/val split: by speaker identity, taken from the folder layout (``speaker_of``); a dataset of one speaker is
split by clip. The split is a pure function of the names, so it does not depend on processing order.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import signal
import sys
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable

import numpy as np

from ..config import AudioConfig
from ..errors import InputWarning, MediaError, NoFaceError, UserError, warn
from .datasets import (
    BASE_SIZE,
    CLIPS_DIR,
    FORMAT_VERSION,
    MANIFEST,
    META,
    ImageStack,
    encode_jpeg,
    encode_png,
)

VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".m4v", ".mkv", ".avi", ".webm", ".mpg", ".mpeg", ".flv", ".wmv", ".ts"})
SKIPPED = "skipped.json"
MESH_SIZE = 256  # FaceMesh runs on a 256 px crop (the pipeline runs it on base outputs upscaled to 256)
HR_SIZES = (256, 512)
SPEAKER_MODES = ("auto", "parent", "stem", "one")

_MEAD = re.compile(r"^[MW]\d{3}$")
_VOX = re.compile(r"^id\d{5}$")
_TRAILING_NUMBER = re.compile(r"[_\-]?\d+$")


@dataclass
class PreprocessOptions:
    hr_size: int | None = None  # also store crops at 256 or 512 px for the HR decoder
    min_frames: int = 16  # clips with fewer frames with a face are skipped ("too short")
    speaker: str = "auto"  # how to read the speaker identity from the path (see speaker_of)
    split: str = "speaker"  # "speaker": hold out whole speakers; "time": hold out the tail of every clip
    val_fraction: float = 0.1  # share of speakers (or clips, for one speaker) held out for validation
    jpeg_quality: int = 95
    audio: AudioConfig = field(default_factory=AudioConfig)


@dataclass
class ClipResult:
    source: str  # path relative to SRC (posix)
    clip_id: str
    status: str  # "done", "skipped", "exists"
    reason: str = ""
    frames: int = 0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- finding clips
def find_videos(src: str | os.PathLike) -> list[Path]:
    """Video files under ``src`` at any depth (hidden folders skipped; links to nothing left out with a warning),
    sorted; ``src`` may be one video file."""
    src = Path(src)
    if src.is_file():
        return [src]
    out = []
    for root, dirs, files in os.walk(src, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            if not f.startswith(".") and Path(f).suffix.lower() in VIDEO_SUFFIXES:
                path = Path(root) / f
                if path.exists():
                    out.append(path)
                else:  # a link whose file is gone: left out, as an unreadable clip is
                    warn(f"{path} is left out: it links to {os.readlink(path)}, which does not exist")
    return out


def clip_id_of(rel: PurePosixPath) -> str:
    """The clip's folder name in the dataset: its path under SRC without the suffix (``main/5535/00001``)."""
    parts = [re.sub(r"[^A-Za-z0-9._\-]", "_", p) for p in rel.with_suffix("").parts]
    return "/".join(p if p not in ("", ".", "..") else "_" for p in parts)


def speaker_of(rel: PurePosixPath, mode: str = "auto") -> str:
    """Speaker identity of a clip from its path under SRC.

    ``auto``: a MEAD actor folder (``M003``, ``W015``) or a VoxCeleb id (``id00012``) anywhere in the path; else the
    parent folder for nested layouts (LRS2 ``main/<id>/<clip>.mp4`` -> ``<id>``); else, for files directly in SRC,
    the file name without a trailing number (HDTF ``WDA_BarackObama_000`` -> ``WDA_BarackObama``).
    ``parent``: the parent folder; ``stem``: the file name; ``one``: every clip is the same person.
    """
    if mode not in SPEAKER_MODES:
        raise UserError(f"--speaker must be one of {', '.join(SPEAKER_MODES)} (got {mode!r})")
    if mode == "one":
        return "speaker"
    if mode == "stem":
        return rel.stem
    folders = rel.parts[:-1]
    if mode == "parent":
        return folders[-1] if folders else "."
    for pattern in (_MEAD, _VOX):
        for p in folders:
            if pattern.match(p):
                return p
    if folders:
        return folders[-1]
    stripped = _TRAILING_NUMBER.sub("", rel.stem)
    return stripped or rel.stem


def _hash01(text: str) -> float:
    return int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:8], "big") / 2.0**64


def assign_splits(entries: list[dict[str, Any]], val_fraction: float) -> str:
    """Set ``entry["split"]`` to train/val by speaker (or by clip when there is one speaker); returns the rule used.

    The held-out group is the ``ceil(val_fraction * n)`` speakers (clips) that come first in a fixed hash order,
    at least one when there are two or more, none when ``val_fraction`` is 0.
    """
    speakers = sorted({e["speaker"] for e in entries})
    by = "speaker" if len(speakers) > 1 else "clip"
    keys = speakers if by == "speaker" else sorted(e["id"] for e in entries)
    n_val = 0
    if val_fraction > 0 and len(keys) > 1:
        n_val = min(len(keys) - 1, max(1, math.ceil(val_fraction * len(keys))))
    held = set(sorted(keys, key=_hash01)[:n_val])
    for e in entries:
        e["split"] = "val" if (e["speaker"] if by == "speaker" else e["id"]) in held else "train"
    return by


# ---------------------------------------------------------------------------------------------- one clip
def _source_key(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"size": st.st_size, "mtime": int(st.st_mtime)}


def process_clip(path: Path, out_dir: Path, rel: PurePosixPath, opts: PreprocessOptions) -> ClipResult:
    """Preprocess one video into ``out_dir`` (written via a temporary folder). Never raises for bad input: a clip
    that cannot be used comes back as ``status="skipped"`` with the reason. The clip's input warnings (a variable
    frame rate, damaged frames, non-finite audio) come back in ``warnings``: a worker process cannot show them."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", InputWarning)
        result = _process_clip(path, out_dir, rel, opts)
    result.warnings = list(dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, InputWarning)))
    return result


def _process_clip(path: Path, out_dir: Path, rel: PurePosixPath, opts: PreprocessOptions) -> ClipResult:
    clip_id = clip_id_of(rel)
    tmp = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
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
    except NoFaceError:
        return ClipResult(str(rel), clip_id, "skipped", reason="no face")
    except MediaError as e:
        msg = " ".join(str(e).split())
        reason = "no audio" if "audio" in msg and ("no audio" in msg or "holds no audio" in msg) else "unreadable"
        return ClipResult(str(rel), clip_id, "skipped", reason=f"{reason}: {msg}")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


class _Skip(Exception):
    pass


def _write_clip(path: Path, tmp: Path, clip_id: str, rel: PurePosixPath, opts: PreprocessOptions) -> tuple[int, float]:
    from ..face.detect import FaceDetector
    from ..face.landmarks import FaceMesh, draw_sketch, lip_mask
    from ..face.track import track_faces
    from ..media.audio import load_audio, melspectrogram
    from ..media.timing import open_timeline, report_damage
    from ..pipeline import face_crop

    timeline = open_timeline(path)  # frames at a constant rate, each the source frame of its time (as in sync)
    info = timeline.info
    if info.is_image:
        raise _Skip("too short: a still image, not a video")
    if not info.has_audio:
        raise _Skip("no audio: the video has no audio track")
    wav = load_audio(path, opts.audio.sample_rate)
    mel = melspectrogram(wav, opts.audio)
    phones = _phones_of(wav, opts)

    # pass 1: faces
    detections, times = [], []
    last = (None, None)  # a source frame shown twice on the timeline is detected once
    with FaceDetector() as detector, timeline:
        for fr in timeline:
            if fr.image is not last[0]:
                last = (fr.image, detector.detect(fr.image))
            detections.append(last[1])
            times.append(fr.time)
    n = len(detections)
    report_damage(timeline, n)
    if n < opts.min_frames:
        raise _Skip(f"too short: {n} frames (at least {opts.min_frames} are needed)")
    track = track_faces(detections, fps=timeline.fps, source=str(path), frame_size=(info.width, info.height))
    n_valid = track.n_found
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
            box = track.boxes[i]
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
        "source_key": _source_key(path),
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
        "best_index": int(track.best_index),
    }
    (tmp / META).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return n, seconds


def _append_blank(crops, sketches, masks, blank, blank_gray) -> None:
    for s, lst in crops.items():
        lst.append(blank[s])
    sketches.append(blank_gray)
    masks.append(blank_gray)


# ---------------------------------------------------------------------------------------------- the whole folder
def _stop(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _end_workers(procs, grace: float = 3.0) -> None:
    """Stop pool workers: SIGTERM (each drops its unfinished clip folder), then SIGKILL for any still running after
    ``grace`` seconds. An idle worker waits for its next task holding the task queue's lock; stopped there, it leaves
    the lock taken, and a worker that caught its own stop inside a task (the pool's worker loop catches everything
    a task raises) then waits on that lock for ever, and so would the program's exit, waiting for it. So nothing
    interrupts this: a second Ctrl-C (or a signal sent to the whole process group, as ``timeout`` sends it) used to
    stop it half-way and leave the program hanging at its exit."""
    held = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            held[sig] = signal.signal(sig, signal.SIG_IGN)
    try:
        for proc in procs:
            proc.terminate()
        deadline = time.monotonic() + grace
        for proc in procs:
            proc.join(max(0.0, deadline - time.monotonic()))
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join(1.0)
    finally:
        for sig, old in held.items():
            signal.signal(sig, old)


def _worker_init() -> None:
    os.environ.setdefault("GLOG_minloglevel", "2")  # mediapipe's C++ log lines, one set per worker
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for s in (signal.SIGTERM, signal.SIGHUP):  # stopped: remove the unfinished clip folder on the way out
        signal.signal(s, _stop)
    import cv2

    cv2.setNumThreads(1)


def _run_one(job: tuple[str, str, str, PreprocessOptions]) -> ClipResult:
    path, out_dir, rel, opts = job
    return process_clip(Path(path), Path(out_dir), PurePosixPath(rel), opts)


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


@dataclass
class PreprocessReport:
    done: int
    existing: int
    skipped: list[ClipResult]
    manifest: Path
    n_train: int
    n_val: int
    split_by: str
    seconds: float
    speakers: int = 0  # told apart by --speaker

    def summary(self) -> str:
        split = self.split_by
        if split == "speaker":  # a folder of one person's clips named apart reads as several people
            split += (f" ({self.speakers} speakers as read from the paths; for clips of one person: --speaker one "
                      "--split time)")
        lines = [f"{self.done} clip(s) preprocessed, {self.existing} already done, {len(self.skipped)} skipped "
                 f"({self.seconds:.1f} s); {self.n_train} train / {self.n_val} val clips split by {split}; "
                 f"manifest: {self.manifest}"]
        for r in self.skipped:
            lines.append(f"  skipped {r.source}: {r.reason}")
        return "\n".join(lines)


def preprocess(src: str | os.PathLike, dst: str | os.PathLike, opts: PreprocessOptions = PreprocessOptions(), *,
               workers: int = 1, progress: bool = True, retry_skipped: bool = False,
               only: Iterable[str] | None = None) -> PreprocessReport:
    """Preprocess every video under ``src`` into the dataset folder ``dst`` and write its manifest.

    Finished clips (and clips skipped before, unless ``retry_skipped``) are not processed again.
    """
    from ..bars import bar as new_bar

    src, dst = Path(src), Path(dst)
    if not src.exists():
        raise UserError(f"video folder not found: {src}")
    if opts.hr_size is not None and opts.hr_size not in HR_SIZES:
        raise UserError(f"--hr-size must be one of {', '.join(map(str, HR_SIZES))} (got {opts.hr_size})")
    if not 0 <= opts.val_fraction < 1:
        raise UserError(f"--val-fraction must be in [0, 1) (got {opts.val_fraction})")
    if opts.split not in ("speaker", "time"):
        raise UserError(f"--split must be speaker or time (got {opts.split!r})")
    if opts.min_frames < 5:
        raise UserError(f"--min-frames must be at least 5, one training window (got {opts.min_frames})")
    if dst.exists() and not dst.is_dir():
        raise UserError(f"output is not a folder: {dst}")
    videos = find_videos(src)
    if not videos:
        raise UserError(f"no video files under {src} (looked for {', '.join(sorted(VIDEO_SUFFIXES))})")
    base = src if src.is_dir() else src.parent
    clips_dir = dst / CLIPS_DIR
    clips_dir.mkdir(parents=True, exist_ok=True)
    _clean_partials(clips_dir)
    skipped_path = dst / SKIPPED
    old_skipped: dict[str, dict[str, Any]] = {}
    if skipped_path.is_file() and not retry_skipped:
        try:
            old_skipped = {d["source"]: d for d in json.loads(skipped_path.read_text(encoding="utf-8"))}
        except (OSError, json.JSONDecodeError, KeyError, TypeError):
            old_skipped = {}
    wanted = set(only) if only is not None else None

    jobs, results = [], []
    ids: dict[str, str] = {}
    for v in videos:
        rel = PurePosixPath(v.relative_to(base).as_posix())
        cid = clip_id_of(rel)
        if cid in ids:
            results.append(ClipResult(str(rel), cid, "skipped", reason=f"same clip name as {ids[cid]} (rename one)"))
            continue
        ids[cid] = str(rel)
        if wanted is not None and str(rel) not in wanted:
            continue
        out_dir = clips_dir / cid
        key = _source_key(v)
        if (out_dir / META).is_file() and _meta_matches(out_dir / META, key, opts):
            _add_phones(v, out_dir, opts)  # clips made before phones were read get them (seconds per minute)
            results.append(ClipResult(str(rel), cid, "exists"))
            continue
        prev = old_skipped.get(str(rel))
        if prev is not None and prev.get("source_key") == key:
            results.append(ClipResult(str(rel), cid, "skipped", reason=prev.get("reason", "")))
            continue
        jobs.append((str(v), str(out_dir), str(rel), opts))

    t0 = time.perf_counter()
    bar = new_bar(total=len(jobs), desc="preprocess", unit="clip", disable=not progress or not jobs)
    try:
        if workers > 1 and len(jobs) > 1:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor, as_completed
            from concurrent.futures.process import BrokenProcessPool

            # A pool that fails instead of hanging: multiprocessing.Pool replaces a worker killed by the OS (out
            # of memory) or one that cannot start and waits forever for its result.
            pool = ProcessPoolExecutor(min(workers, len(jobs)), mp_context=mp.get_context("spawn"),
                                       initializer=_worker_init)
            try:
                futures = [pool.submit(_run_one, job) for job in jobs]
                try:
                    for fut in as_completed(futures):
                        results.append(fut.result())
                        bar.update(1)
                except BrokenProcessPool as e:
                    for fut in futures:
                        fut.cancel()
                    finished = sum(r.status == "done" for r in results)
                    raise UserError(
                        f"a preprocessing worker process died ({e}); the {finished} clip(s) finished in this run are "
                        "kept and a re-run continues with the rest. If the machine ran out of memory, use fewer "
                        "--workers; if the workers could not start, run preprocessing from a script file or the "
                        "hyperlips command rather than from standard input") from None
                pool.shutdown(wait=True)
            except BaseException:  # Ctrl-C, SIGTERM (during the queue or the pool's own shutdown): stop now
                # no fut.cancel() here: the pool's manager thread then fails the futures of the workers ended
                # below, and failing a cancelled future raises in that thread (a traceback on the terminal)
                _end_workers(mp.active_children())
                pool.shutdown(wait=False)
                _end_workers(mp.active_children(), grace=0.0)  # one the pool started meanwhile
                raise
        else:
            for job in jobs:
                results.append(_run_one(job))
                bar.update(1)
    finally:
        bar.close()
    elapsed = time.perf_counter() - t0
    for r in results:
        for message in r.warnings:
            warn(message)

    skipped = sorted((r for r in results if r.status == "skipped"), key=lambda r: r.source)
    src_by_rel = {str(PurePosixPath(v.relative_to(base).as_posix())): v for v in videos}
    _write_json_atomic(skipped_path, [
        {"source": r.source, "reason": r.reason,
         "source_key": _source_key(src_by_rel[r.source]) if r.source in src_by_rel else None}
        for r in skipped
    ])
    manifest = write_manifest(dst, opts, source_root=src)
    clips = manifest["clips"]
    return PreprocessReport(
        done=sum(r.status == "done" for r in results),
        existing=sum(r.status == "exists" for r in results),
        skipped=skipped,
        manifest=dst / MANIFEST,
        n_train=sum(c["split"] == "train" for c in clips),
        n_val=sum(c["split"] == "val" for c in clips),
        split_by=manifest["split_by"],
        seconds=elapsed,
        speakers=len({c["speaker"] for c in clips}),
    )


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


def _meta_matches(meta_path: Path, key: dict[str, Any], opts: PreprocessOptions) -> bool:
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    if meta.get("format_version") != FORMAT_VERSION or meta.get("source_key") != key:
        return False
    return opts.hr_size is None or opts.hr_size in meta.get("sizes", [])


def _clean_partials(clips_dir: Path) -> None:
    for p in clips_dir.rglob(".*.partial-*"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


def write_manifest(dst: str | os.PathLike, opts: PreprocessOptions = PreprocessOptions(),
                   source_root: str | os.PathLike | None = None) -> dict[str, Any]:
    """Rebuild ``DST/manifest.json`` from the finished clips' ``meta.json`` files and return it."""
    dst = Path(dst)
    entries = []
    sizes: set[int] = set()
    for meta_path in sorted((dst / CLIPS_DIR).rglob(META)):
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        sizes.update(int(s) for s in meta.get("sizes", [BASE_SIZE]))
        entries.append({k: meta[k] for k in ("id", "source", "speaker", "n_frames", "n_valid", "fps", "seconds")})
    if opts.split == "time" and entries:
        return write_time_split_manifest(dst, val_fraction=opts.val_fraction or 0.15)
    split_by = assign_splits(entries, opts.val_fraction)
    manifest = {
        "format_version": FORMAT_VERSION,
        "source_root": str(source_root) if source_root is not None else None,
        "audio": asdict(opts.audio),
        "sizes": sorted(sizes) or [BASE_SIZE],
        "split_by": split_by,
        "val_fraction": opts.val_fraction,
        "clips": entries,
        "skipped": _read_skipped(dst),
    }
    _write_json_atomic(dst / MANIFEST, manifest)
    return manifest


def _read_skipped(dst: Path) -> list[dict[str, str]]:
    if not (dst / SKIPPED).is_file():
        return []
    try:
        return [{"source": d["source"], "reason": d["reason"]}
                for d in json.loads((dst / SKIPPED).read_text(encoding="utf-8"))]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return []


def write_time_split_manifest(dst: str | os.PathLike, val_frames: int | None = None, val_fraction: float = 0.15,
                              min_val_frames: int = 16, clip_ids: Iterable[str] | None = None) -> dict[str, Any]:
    """Rewrite the manifest so that every clip (or those in ``clip_ids``) is split in time: its last ``val_frames``
    frames (default ``ceil(val_fraction * n)``, at least ``min_val_frames``) validate, the frames before them train.

    For one person's footage (fine-tuning) or a single-speaker corpus, where no second speaker can be held out.
    Training windows never reach into the held-out tail, and neither do their reference frames."""
    dst = Path(dst)
    wanted = set(clip_ids) if clip_ids is not None else None
    entries = []
    sizes: set[int] = set()
    for meta_path in sorted((dst / CLIPS_DIR).rglob(META)):
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if wanted is not None and meta["id"] not in wanted:
            continue
        sizes.update(int(s) for s in meta.get("sizes", [BASE_SIZE]))
        n = int(meta["n_frames"])
        v = int(val_frames) if val_frames is not None else max(int(min_val_frames), math.ceil(val_fraction * n))
        cut = max(0, n - v)
        common = {k: meta[k] for k in ("id", "source", "speaker", "n_frames", "n_valid", "fps", "seconds")}
        entries.append({**common, "split": "train", "frames": [0, cut]})
        entries.append({**common, "split": "val", "frames": [cut, n]})
    if not entries:
        raise UserError(f"{dst}: no preprocessed clips to split")
    manifest = {
        "format_version": FORMAT_VERSION,
        "source_root": None,
        "audio": asdict(AudioConfig()),
        "sizes": sorted(sizes) or [BASE_SIZE],
        "split_by": "time",
        "val_fraction": val_fraction if val_frames is None else None,
        "clips": entries,
        "skipped": _read_skipped(dst),
    }
    _write_json_atomic(dst / MANIFEST, manifest)
    return manifest


def write_footage_tail_manifest(dst: str | os.PathLike, clip_ids: list[str], val_fraction: float = 0.15,
                                val_seconds: float | None = None, min_val_frames: int = 16) -> dict[str, Any]:
    """Rewrite the manifest so that the last part of one person's footage validates: the clips in ``clip_ids``
    order are taken as one recording, and its last ``val_seconds`` (default ``val_fraction`` of it, at least
    ``min_val_frames`` frames) are held out: whole clips at the end, and the tail of the clip where the cut falls.
    Returns the manifest; ``manifest["held_out"]`` says how many frames and seconds were held out."""
    dst = Path(dst)
    metas = {}
    for meta_path in (dst / CLIPS_DIR).rglob(META):
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        metas[meta["id"]] = meta
    order = [c for c in clip_ids if c in metas]
    if not order:
        raise UserError(f"{dst}: no preprocessed clips to split")
    total_s = sum(float(metas[c]["n_frames"]) / float(metas[c]["fps"]) for c in order)
    want_s = float(val_seconds) if val_seconds is not None else val_fraction * total_s
    entries, sizes, held_s, held_n = [], set(), 0.0, 0
    left = want_s
    for cid in reversed(order):
        meta = metas[cid]
        sizes.update(int(s) for s in meta.get("sizes", [BASE_SIZE]))
        n, fps = int(meta["n_frames"]), float(meta["fps"])
        common = {k: meta[k] for k in ("id", "source", "speaker", "n_frames", "n_valid", "fps", "seconds")}
        v = 0
        if left > 1e-9 or held_n < min_val_frames:
            v = min(n, max(int(math.ceil(left * fps - 1e-6)), min_val_frames - held_n, 0))
        cut = n - v
        if v:
            entries.append({**common, "split": "val", "frames": [cut, n]})
            held_s += v / fps
            held_n += v
            left -= v / fps
        if cut:
            entries.append({**common, "split": "train", "frames": [0, cut]})
    entries.reverse()
    manifest = {
        "format_version": FORMAT_VERSION,
        "source_root": None,
        "audio": asdict(AudioConfig()),
        "sizes": sorted(sizes) or [BASE_SIZE],
        "split_by": "footage tail",
        "val_fraction": val_fraction if val_seconds is None else None,
        "held_out": {"frames": held_n, "seconds": round(held_s, 3), "of_seconds": round(total_s, 3)},
        "clips": entries,
        "skipped": _read_skipped(dst),
    }
    _write_json_atomic(dst / MANIFEST, manifest)
    return manifest


def check_dataset(dst: str | os.PathLike) -> list[str]:
    """Problems found in a dataset folder (empty list = consistent): per clip, every per-frame array and image
    stack must have one entry per frame, and the cached mel must be that of the clip's whole audio track."""
    from .datasets import Clip, Manifest

    problems = []
    m = Manifest.load(dst)
    cfg = AudioConfig()
    for e in m.clips:
        clip = Clip(m.root / CLIPS_DIR / e["id"])
        n = clip.n_frames
        for name, arr in (("times", clip.times), ("valid", clip.valid), ("landmarks", clip.landmarks)):
            if len(arr) != n:
                problems.append(f"{clip.id}: {name} has {len(arr)} entries for {n} frames")
        for name in [f"face{s}" for s in clip.meta.get("sizes", [BASE_SIZE])] + ["sketch128", "mask128"]:
            k = len(clip.stack(name))
            if k != n:
                problems.append(f"{clip.id}: {name} has {k} images for {n} frames")
        samples = int(round(float(clip.meta["seconds"]) * cfg.sample_rate))
        want = 1 + samples // cfg.hop_length  # the mel of the whole audio track (it may end before the video)
        if clip.mel.shape != (cfg.n_mels, want):
            problems.append(f"{clip.id}: the mel is {clip.mel.shape}, the clip's audio gives ({cfg.n_mels}, {want})")
    return problems


__all__ = [
    "PreprocessOptions",
    "PreprocessReport",
    "find_videos",
    "speaker_of",
    "clip_id_of",
    "assign_splits",
    "process_clip",
    "preprocess",
    "write_manifest",
    "write_time_split_manifest",
    "check_dataset",
    "VIDEO_SUFFIXES",
]
