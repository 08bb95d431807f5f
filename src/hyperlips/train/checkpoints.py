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
from ..models.checkpoint import TRAIN_CKPT_FORMAT

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
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


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


def read_checkpoint(path: Path) -> dict[str, Any]:
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure means "not a usable checkpoint"
        raise UserError(f"{path}: unreadable training checkpoint ({' '.join(str(e).split())[:160]})") from None
    if not isinstance(ck, dict) or ck.get("format") != CKPT_FORMAT:
        raise UserError(f"{path}: not a hyperlips training checkpoint")
    return ck


def latest_checkpoint(run: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest readable checkpoint of a run (an unreadable newest one is reported and passed over)."""
    for step, path in reversed(list_checkpoints(run)):
        try:
            return path, read_checkpoint(path)
        except UserError as e:
            print(f"hyperlips train: skipping {e}", file=sys.stderr)
    return None


def clean_temporaries(run: Path) -> None:
    d = run / CKPT_DIR
    if d.is_dir():
        for p in d.glob(".*.tmp-*"):
            with contextlib.suppress(OSError):
                p.unlink()


