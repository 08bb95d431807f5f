"""Training checkpoint files (``RUN/checkpoints/step_<n>.pt``): atomic writes, listing, reading, clean-up.

A checkpoint is written to a temporary file that is fsynced and renamed, so a run killed while writing keeps its
previous checkpoint; a temporary file left by a kill is removed on the next start.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import UserError
from ..models.checkpoint import TRAIN_CKPT_FORMAT, zip_damage

CKPT_DIR = "checkpoints"
CKPT_FORMAT = TRAIN_CKPT_FORMAT
CKPT_VERSION = 1
_STEP_RE = re.compile(r"^step_(\d+)\.pt$")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_save(obj: Any, path: Path, save: Callable[[Any, Any], None] = torch.save) -> None:
    """Write ``obj`` to a temporary file in ``path``'s folder, fsync it, rename it to ``path``, fsync the folder.

    If anything fails (or the process is killed) before the rename, ``path`` keeps its old content (or stays
    absent) and the temporary file is removed (or, after a kill, ignored and cleaned on the next start)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        cause = _os_error_inside(e)
        if cause is not None and cause.filename is None and cause.errno is not None:  # a write that failed (a full
            raise type(cause)(cause.errno, cause.strerror, os.fspath(path)) from None  # disk) names the file it wrote
        if cause is not None and cause is not e:  # torch.save reports a full disk as a RuntimeError of its zip writer
            raise cause from None
        raise
    _fsync_dir(path.parent)


def _os_error_inside(e: BaseException) -> OSError | None:
    """The OSError that ``e`` is, or that it was raised while handling (a write that failed), if any."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def link_or_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` the same file as ``src`` (a hard link; a copy where links are not possible), atomically."""
    import shutil

    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    _fsync_dir(dst.parent)


def list_checkpoints(run: Path) -> list[tuple[int, Path]]:
    """(step, path) of the run's ``step_*.pt`` files, oldest first."""
    d = run / CKPT_DIR
    if not d.is_dir():
        return []
    out = []
    for p in d.iterdir():
        m = _STEP_RE.match(p.name)
        if m:
            out.append((int(m.group(1)), p))
    return sorted(out)


def _unreadable(path: Path, e: Exception) -> str:
    """Why torch could not read ``path``, in a few words (its own messages run to paragraphs about pickling)."""
    try:
        if path.stat().st_size == 0:
            return "the file is empty"
    except OSError as err:
        return err.strerror or str(err)
    text = " ".join(str(e).split())
    if "zip archive" in text or "central directory" in text or "file not found" in text:
        return "cut short or damaged: its archive cannot be read"
    if "Weights only load failed" in text or "pickle" in text.lower():
        return "damaged, or not a checkpoint: its contents cannot be read"
    return text.split(". ")[0][:160]


def read_checkpoint(path: Path) -> dict[str, Any]:
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure means "not a usable checkpoint"
        raise UserError(f"{path}: unreadable training checkpoint ({_unreadable(Path(path), e)})") from None
    if not isinstance(ck, dict) or ck.get("format") != CKPT_FORMAT:
        raise UserError(f"{path}: not a hyperlips training checkpoint")
    bad = zip_damage(path)
    if bad is not None:  # a flipped bit in a weight or the optimiser's state would otherwise resume silently
        raise UserError(f"{path}: unreadable training checkpoint (damaged: its record {bad!r} does not match its "
                        "checksum)")
    return ck


_SKIPPED: set[str] = set()  # unreadable checkpoints already reported by this process (the run is looked at twice)


def latest_checkpoint(run: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest readable checkpoint of a run (an unreadable newest one is reported once and passed over); where
    no step checkpoint can be read, the best one (``best.pt``), said so."""
    for step, path in reversed(list_checkpoints(run)):
        try:
            return path, read_checkpoint(path)
        except UserError as e:
            if str(path) not in _SKIPPED:
                _SKIPPED.add(str(path))
                print(f"hyperlips train: skipping {e}", file=sys.stderr)
    best = Path(run) / CKPT_DIR / "best.pt"
    if best.is_file():
        try:
            ck = read_checkpoint(best)
        except UserError:
            return None
        if str(best) not in _SKIPPED:
            _SKIPPED.add(str(best))
            print(f"hyperlips train: no step checkpoint of {run} can be read: resuming from the best one "
                  f"({best.name}, step {ck.get('step')})", file=sys.stderr)
        return best, ck
    return None


def clean_temporaries(run: Path) -> None:
    d = run / CKPT_DIR
    if d.is_dir():
        for p in d.glob(".*.tmp-*"):
            with contextlib.suppress(OSError):
                p.unlink()


