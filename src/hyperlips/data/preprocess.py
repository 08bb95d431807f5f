"""``hyperlips preprocess SRC DST``: talking-face videos -> a training dataset (layout in :mod:`.datasets`).

The folder's clips (:mod:`.sources`) are processed one by one or by worker processes (:mod:`.clip_writer`: two
streaming passes per clip, written to a temporary folder renamed when complete), so an interrupted run leaves no half
clip and a re-run skips finished clips (and clips skipped before: no face, too short, unreadable, no audio;
``--retry-skipped`` tries them again); then the manifest (:mod:`.manifests`).

Train/val split: by speaker identity, taken from the folder layout (``speaker_of``); a dataset of one speaker is
split by clip. The split is a pure function of the names, so it does not depend on processing order.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterable

from ..errors import UserError, near_name_hint, refuse_unexpanded_home, require_file, warn
from .clip_writer import (
    HR_SIZES,
    ClipResult,
    PreprocessOptions,
    _add_phones,
    _source_key,
    drop_unfinished,
    process_clip,
)
from .datasets import CLIPS_DIR, FORMAT_VERSION, MANIFEST, META
from .manifests import (
    SKIPPED,
    _write_json_atomic,
    check_dataset,
    write_footage_tail_manifest,
    write_manifest,
    write_time_split_manifest,
)
from .sources import VIDEO_SUFFIXES, assign_splits, clip_id_of, clip_ids, find_videos, speaker_of


LOCK = ".lock"  # held (a file lock) while a run writes the folder
DEFAULT_MIN_FRAMES = PreprocessOptions().min_frames  # (skips recorded before the setting was kept with them)


_orphaned = False  # in a worker: the process that started it has ended (_end_with)
_in_job = False  # in a worker: making a clip


def _stop(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _parent_gone(signum, frame) -> None:
    """The parent-death signal (:func:`_end_with`): a worker waiting for a task ends at once (nothing to clean; the
    pool's pipes, held open by the other workers, would keep it waiting for ever), one making a clip stops it (its
    folder removed on the way) and then ends (:func:`_run_one`)."""
    global _orphaned
    _orphaned = True
    if not _in_job:
        os._exit(1)
    drop_unfinished()  # first: what follows may not unwind cleanly (a crash in a native library on the way out), or
    # the stop may be lost (raised inside a library's callback, where Python only prints it): the clip then fails at
    # its next write, its folder gone, or is skipped, and either way the worker ends (_run_one) instead of waiting
    raise KeyboardInterrupt(f"signal {signum}: the command is gone")


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


def _worker_init(parent: int | None = None) -> None:
    os.environ.setdefault("GLOG_minloglevel", "2")  # mediapipe's C++ log lines, one set per worker
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for s in (signal.SIGTERM, signal.SIGHUP):  # stopped: remove the unfinished clip folder on the way out
        if signal.getsignal(s) is not signal.SIG_IGN:  # ignored as the command started (nohup): it stays so
            signal.signal(s, _stop)
    if parent is not None:
        _end_with(parent)
    import cv2

    cv2.setNumThreads(1)


def _end_with(parent: int) -> None:
    """Have this worker stopped (its unfinished clip folder removed) when the process that started it ends
    by any means, ``kill -9`` or out of memory included (Linux): a worker went on making its clip, a core busy and a
    half-written folder left, after its command had gone. Elsewhere the pool's closed pipe ends it after its clip."""
    import sys

    if not sys.platform.startswith("linux"):
        return
    # its own signal, not SIGTERM: it comes when the thread that started the worker ends, which, as a killed process's
    # threads end one by one, may be a moment before the process is gone (its pid still the parent's); a SIGTERM
    # from the command itself (a stop asked for) is told apart so
    signal.signal(signal.SIGUSR1, _parent_gone)
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGUSR1), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it ended before the line above took effect
        os._exit(1)


def _run_one(job: tuple[str, str, str, PreprocessOptions, str]) -> ClipResult:
    global _in_job
    path, out_dir, rel, opts, clip_id = job
    _in_job = True
    try:
        result = process_clip(Path(path), Path(out_dir), PurePosixPath(rel), opts, clip_id)
        if _orphaned:  # the stop was lost, and the clip ended without a write to fail (skipped: too short, no face):
            os._exit(1)  # back in the pool it would wait for a task for ever
        return result
    except BaseException:
        if _orphaned:  # stopped because its command is gone: its clip folder removed on the way here, it ends (back
            os._exit(1)  # in the pool it would wait for a task for ever)
        raise
    finally:
        _in_job = False


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
    src, dst = Path(src), Path(dst)
    if not src.exists():
        raise UserError(f"video folder not found: {src}{near_name_hint(str(src))}")
    if not src.is_dir():  # one file: a readable one (a named pipe or a device is said to be one)
        require_file(src, "footage")
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
    refuse_unexpanded_home(dst, "the dataset folder")  # (it would make a folder named "~" here)
    videos = find_videos(src)
    if not videos:
        raise UserError(f"no video files under {src} (looked for {', '.join(sorted(VIDEO_SUFFIXES))})")
    base = src if src.is_dir() else src.parent
    clips_dir = dst / CLIPS_DIR
    clips_dir.mkdir(parents=True, exist_ok=True)
    with dataset_lock(dst):  # two runs into one folder removed each other's half-made clips
        return _preprocess_into(src, dst, videos, base, clips_dir, opts, workers, progress, retry_skipped, only)


def dataset_lock(dst: Path):
    """Held while a run writes the dataset folder ``dst``: a second run into it (another process) is refused at once
    with :class:`UserError` instead of removing the first one's half-made clips. Where the system has no file locks
    (Windows), nothing is held."""
    import contextlib

    try:
        import fcntl
    except ImportError:
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def held():
        with open(dst / LOCK, "a+", encoding="utf-8") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                locked = True
            except OSError as e:
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    f.seek(0)
                    who = f.read().strip()
                    raise UserError(f"{dst} is being written by another run{f' (process {who})' if who else ''}: "
                                    "wait for it to finish, or write into another folder") from None
                locked = False  # a file system without locks (Lustre without -o flock, NFS without its lock
            if not locked:  # daemon): on without one, as on Windows (every run was refused there)
                yield
                return
            f.seek(0)
            f.truncate()
            f.write(str(os.getpid()))
            f.flush()
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    return held()


def _preprocess_into(src: Path, dst: Path, videos: list[Path], base: Path, clips_dir: Path, opts: PreprocessOptions,
                     workers: int, progress: bool, retry_skipped: bool, only) -> PreprocessReport:
    from ..bars import bar as new_bar

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
    rels = [PurePosixPath(v.relative_to(base).as_posix()) for v in videos]
    for v, rel, cid in zip(videos, rels, clip_ids(rels)):
        if wanted is not None and str(rel) not in wanted:
            continue
        out_dir = clips_dir / cid
        key = _source_key(v, opts)
        if (out_dir / META).is_file() and _meta_matches(out_dir / META, key, opts):
            _add_phones(v, out_dir, opts)  # clips made before phones were read get them (seconds per minute)
            results.append(ClipResult(str(rel), cid, "exists"))
            continue
        prev = old_skipped.get(str(rel))
        shorter = (str(prev.get("reason", "")).startswith("too short") and  # a clip too short for another
                   prev.get("min_frames", DEFAULT_MIN_FRAMES) != opts.min_frames) if prev else False  # --min-frames
        if prev is not None and prev.get("source_key") == key and not shorter:  # (finetune's own) is tried again
            results.append(ClipResult(str(rel), cid, "skipped", reason=prev.get("reason", "")))
            continue
        jobs.append((str(v), str(out_dir), str(rel), opts, cid))
    _check_clip_folders(dst, [Path(job[1]) for job in jobs])
    before = _source_root(dst)  # the footage folder the dataset was made from, as its manifest says
    _check_same_source(src, dst, [job[4] for job in jobs if (Path(job[1]) / META).is_file()], before)

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
                                       initializer=_worker_init, initargs=(os.getpid(),))
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
                _clean_partials(clips_dir)  # what a worker ended midway (or still cleaning up) left
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
        {"source": r.source, "reason": r.reason, "min_frames": opts.min_frames,
         "source_key": _source_key(src_by_rel[r.source], opts) if r.source in src_by_rel else None}
        for r in skipped
    ])
    _remove_empty_folders(dst / "clips", [Path(job[1]) for job in jobs])  # a speaker's folder whose clips were all
    # skipped
    manifest = write_manifest(dst, opts, source_root=os.path.abspath(src))  # (absolute: compared from anywhere)
    if only is None and src.is_dir() and (before is None or _same_folder(before, src)):  # (another footage folder's
        _say_gone_sources(manifest["clips"], {str(r) for r in rels}, src, clips_dir)  # clips are not gone from this)
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


def _say_gone_sources(clips: list[dict], sources: set[str], src: Path, clips_dir: Path) -> None:
    """Warn of the dataset's clips (its manifest's entries) whose video is no longer in the footage folder (deleted,
    moved out: a wrong take, another person): they stay in the dataset, trained or validated on, until their folders
    are deleted."""
    gone = list(dict.fromkeys(str(c["id"]) for c in clips  # (a clip split in time is listed twice)
                              if c.get("source") is not None and str(c["source"]) not in sources))
    if gone:
        shown = ", ".join(gone[:5]) + (f" and {len(gone) - 5} more" if len(gone) > 5 else "")
        warn(f"{len(gone)} clip(s) of this dataset have no video in {src} any more ({shown}): they stay in it and "
             f"are trained or validated on; delete their folders ({clips_dir / gone[0]} ...) to drop them")


def _remove_empty_folders(root: Path, clip_dirs: list[Path]) -> None:
    """Remove the folders below ``root`` that hold ``clip_dirs`` (a speaker's) where they are left empty (deepest
    first); ``root`` itself stays, and so do folders of anyone else's (an empty one kept for later)."""
    folders = {parent for d in clip_dirs for parent in d.parents if root in parent.parents}
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        try:
            folder.rmdir()  # only succeeds when empty
        except OSError:
            pass


def _source_root(dst: Path) -> str | None:
    """The footage folder the dataset's manifest says its clips were made from (None: no manifest, or no record)."""
    try:
        return json.loads((dst / MANIFEST).read_text(encoding="utf-8")).get("source_root") or None
    except (OSError, ValueError, AttributeError):
        return None


def _same_folder(before: str, src: Path) -> bool:
    """Whether footage folder ``src`` is the recorded ``before``: the same folder where that still exists (a relative
    one, written before they were made absolute, from where it was run), else the same folder moved, by its name
    (deleted once preprocessed, moved, its drive not mounted)."""
    if os.path.exists(before):
        return os.path.realpath(before) == os.path.realpath(src)
    return os.path.basename(os.path.normpath(before)) == os.path.basename(os.path.abspath(src))


def _check_same_source(src: Path, dst: Path, remade: list[str], before: str | None) -> None:
    """Refuse to make clips again over those of a dataset made from another footage folder (``day2`` into the
    dataset of ``day1``, both with a ``take1``: day1's clip was replaced without a word). A dataset has one source
    folder; the same folder moved keeps its clips (they are not made again). A source folder that is gone is
    compared by its name (deleted once preprocessed, day1's clips were replaced by day2's). ``before``: the folder
    the dataset's manifest records (:func:`_source_root`)."""
    if not remade:
        return
    if before is not None and not _same_folder(before, src):
        shown = ", ".join(remade[:3]) + (f" and {len(remade) - 3} more" if len(remade) > 3 else "")
        raise UserError(f"{dst} holds clips made from {before}; preprocessing {src} into it would replace "
                        f"{len(remade)} of them made from other files ({shown}): write it into another folder, or "
                        "preprocess a folder holding both")


def _check_clip_folders(dst: Path, clip_dirs: list[Path]) -> None:
    """Refuse, before any work, to replace a folder under ``DST/clips`` that is not a clip preprocess made (no
    meta.json) and is not empty: a folder of the user's (an editor's ``clips/interview`` of takes, or the footage
    itself when DST is its folder) was deleted to make room for the clip of that name."""
    for d in clip_dirs:
        try:
            foreign = d.is_dir() and not (d / META).is_file() and any(d.iterdir())
        except OSError:
            foreign = False
        if foreign:
            raise UserError(f"{d} holds files preprocess did not make (no {META}); preprocess writes its clips into "
                            f"{dst / 'clips'} and would replace that folder: write the dataset into another folder "
                            "(an empty one, or one preprocess made)")


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
    "write_footage_tail_manifest",
    "VIDEO_SUFFIXES",
]
