"""Finding a folder's clips and naming them: the video files under a folder, each clip's name in a dataset, its
speaker as the folder layout tells it, and the train/validation split by speaker (or by clip, for one speaker), a
pure function of the names."""

from __future__ import annotations

import hashlib
import math
import os
import re
import unicodedata
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import UserError, warn

VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".m4v", ".mkv", ".avi", ".webm", ".mpg", ".mpeg", ".flv", ".wmv", ".ts",
                            ".mts", ".m2ts", ".3gp", ".3g2", ".mxf", ".vob", ".ogv", ".dv"})  # camcorders, old phones
SPEAKER_MODES = ("auto", "parent", "stem", "one")

SOUNDLESS_TAIL = 0.2  # seconds a clip's picture may run on past its sound and still be used to its end

FINETUNE_STATE = "finetune.json"  # in finetune's work folder: its footage, its held-out part, its preprocessing time


def default_work(model: Path) -> Path:
    """finetune's work folder for a run writing ``model`` without ``--work``: ``MODEL.work`` beside it."""
    return model.with_name(model.stem + ".work")


_MEAD = re.compile(r"^[MW]\d{3}$")
_VOX = re.compile(r"^id\d{5}$")
_TRAILING_NUMBER = re.compile(r"[_\-]?\d+$")
_ID_IN_NAME = re.compile(r"^([MW]\d{3}|id\d{5})[_\-]")


REPORT_FOLDER = "hyperlips_eval"  # eval's default report folder: never walked as footage
REPORT_MARK = ".hyperlips-report"  # a file eval leaves in each report folder: its videos are no footage either


def mark_report(folder: Path) -> None:
    """Make ``folder`` (an eval report's) and mark it as one (:data:`REPORT_MARK`): written in a footage folder, its
    videos were taken for footage, and the next finetune was refused as "other footage"."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        (folder / REPORT_MARK).touch()
    except OSError:
        pass


def find_videos(src: str | os.PathLike) -> list[Path]:
    """Video files under ``src`` at any depth (hidden folders and eval's report folders, :data:`REPORT_FOLDER` or any
    holding :data:`REPORT_MARK`, skipped; links to nothing left out with a warning), sorted; ``src`` may be one video
    file."""
    src = Path(src)
    if src.is_file():
        return [src]
    out: list[Path] = []
    seen_dirs: set[str] = set()  # folders reached through links: each walked once (a link to a folder above it
    seen_files: dict[str, Path] = {}  # made every clip a clip 40 times over), and each file taken once
    for root, dirs, files in os.walk(src, followlinks=True):
        real = os.path.realpath(root)
        if real in seen_dirs:
            dirs[:] = []
            continue
        seen_dirs.add(real)
        if REPORT_MARK in files and Path(root) != src:  # an eval report's folder: its videos and those below it
            dirs[:] = []
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != REPORT_FOLDER  # (eval's reports: its
                         and os.path.realpath(Path(root) / d) not in seen_dirs)  # videos are no footage)
        for f in sorted(files):
            if not f.startswith(".") and Path(f).suffix.lower() in VIDEO_SUFFIXES:
                path = Path(root) / f
                if not path.exists():  # a link whose file is gone: left out, as an unreadable clip is
                    warn(f"{path} is left out: it links to {os.readlink(path)}, which does not exist")
                    continue
                same = seen_files.setdefault(os.path.realpath(path), path)
                if same != path:  # a link to a clip already found: its frames would be trained on twice, and held
                    warn(f"{path} is left out: it is {same} again (a link to it)")  # out as well
                    continue
                out.append(path)
    return out


def frames_with_sound(n_frames: int, fps: float, audio_seconds: float) -> int:
    """How many of a clip's ``n_frames`` training and the held-out tail use: all of them, unless the sound ends more
    than ``SOUNDLESS_TAIL`` s before the picture (a clip whose recording stopped early); then those shown before the
    sound ends (a mouth against silence would teach it nothing true)."""
    if audio_seconds + SOUNDLESS_TAIL >= n_frames / fps:
        return n_frames
    return max(0, min(n_frames, math.ceil(audio_seconds * fps - 1e-9)))


def clip_id_of(rel: PurePosixPath) -> str:
    """The clip's folder name in the dataset: its path under SRC without the suffix (``main/5535/00001``); letters
    and digits of any script are kept (``会議``, ``лекция01``), anything else but ``.`` and ``-`` becomes ``_``."""
    parts = ["".join(c if c in "._-" or unicodedata.category(c)[0] in "LMN" else "_"  # letters, their marks, digits
                     for c in unicodedata.normalize("NFC", p)) for p in rel.with_suffix("").parts]
    return "/".join(p if p not in ("", ".", "..") else "_" for p in parts)


def clip_ids(rels: list[PurePosixPath]) -> list[str]:
    """The names of clips ``rels`` (in order; :func:`clip_id_of`), made distinct: a clip whose name an earlier one
    already has (``talk.mp4`` and ``talk.mov``, ``a b.mp4`` and ``a_b.mp4``; letter case aside, as some file systems
    ignore it) gets its file type added (``talk_mov``), then a number."""
    out, taken = [], set()
    for rel in rels:
        cid = clip_id_of(rel)
        if cid.casefold() in taken:
            base = f"{cid}_{rel.suffix.lstrip('.').lower()}" if rel.suffix else cid
            cid, n = base, 2
            while cid.casefold() in taken:
                cid, n = f"{base}_{n}", n + 1
        taken.add(cid.casefold())
        out.append(cid)
    return out


def speaker_of(rel: PurePosixPath, mode: str = "auto") -> str:
    """Speaker identity of a clip from its path under SRC.

    ``auto``: a MEAD actor folder (``M003``, ``W015``) or a VoxCeleb id (``id00012``) anywhere in the path, or leading
    the file's name (``M003_level_1_angry_001.mp4``); else the parent folder for nested layouts (LRS2 ``main/<id>/<clip>.mp4`` -> ``<id>``); else, for files directly in SRC,
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
    named = _ID_IN_NAME.match(rel.stem)  # MEAD and VoxCeleb clips gathered in one folder, the id leading their names
    if named:  # (spectre's MEAD/W023_level_2_surprised_010.mp4): one person per id, not the folder's one
        return named.group(1)
    if folders:
        return folders[-1]
    stripped = _TRAILING_NUMBER.sub("", rel.stem)
    return stripped or rel.stem


def _hash01(text: str) -> float:
    return int.from_bytes(hashlib.sha1(text.encode("utf-8", "surrogateescape")).digest()[:8], "big") / 2.0**64


def assign_splits(entries: list[dict[str, Any]], val_fraction: float,
                  previous: dict[str, str] | None = None) -> str:
    """Set ``entry["split"]`` to train/val by speaker (or by clip when there is one speaker); returns the rule used.

    The held-out group is the ``ceil(val_fraction * n)`` speakers (clips) that come first in a fixed hash order,
    at least one when there are two or more, none when ``val_fraction`` is 0. ``previous``: the split of an earlier
    manifest of the same dataset ({speaker or clip: "train"/"val"}, by the same rule): those keep their side (a
    speaker a run trained on is never held out because footage was added), and only new ones are drawn to make up
    the held-out share.
    """
    speakers = sorted({e["speaker"] for e in entries})
    by = "speaker" if len(speakers) > 1 else "clip"
    keys = speakers if by == "speaker" else sorted(e["id"] for e in entries)
    n_val = 0
    if val_fraction > 0 and len(keys) > 1:
        n_val = min(len(keys) - 1, max(1, math.ceil(val_fraction * len(keys))))
    kept = {k: previous[k] for k in keys if previous and previous.get(k) in ("train", "val")}
    held = {k for k, side in kept.items() if side == "val"}
    fresh = [k for k in sorted(keys, key=_hash01) if k not in kept]
    held |= set(fresh[: max(0, n_val - len(held))])
    if len(held) == len(keys) and len(keys) > 1:  # (every kept one held out: one goes back to training)
        held.discard(sorted(held, key=_hash01)[-1])
    for e in entries:
        e["split"] = "val" if (e["speaker"] if by == "speaker" else e["id"]) in held else "train"
    return by
