"""A dataset's manifest (``manifest.json``, layout in :mod:`.datasets`): rebuilt from its finished clips, split by
speaker, or in time (the tail of every clip, or of one person's footage taken as one recording, validates); and a
consistency check of the clips it lists."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterable

from ..config import AudioConfig
from ..errors import UserError
from .clip_writer import PreprocessOptions
from .datasets import BASE_SIZE, CLIPS_DIR, FORMAT_VERSION, MANIFEST, META
from .sources import assign_splits

SKIPPED = "skipped.json"  # the clips a run skipped, with the reasons (a re-run does not try them again)


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


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
        return write_time_split_manifest(dst, val_fraction=opts.val_fraction or 0.15, speaker_rule=opts.speaker)
    split_by = assign_splits(entries, opts.val_fraction, _previous_split(dst, opts.val_fraction))
    manifest = {
        "format_version": FORMAT_VERSION,
        "source_root": str(source_root) if source_root is not None else None,
        "speaker_rule": opts.speaker,  # how the clips' speakers were read (--speaker): a later run reads them alike
        "audio": asdict(opts.audio),
        "sizes": sorted(sizes) or [BASE_SIZE],
        "split_by": split_by,
        "val_fraction": opts.val_fraction,
        "clips": entries,
        "skipped": _read_skipped(dst),
    }
    _write_json_atomic(dst / MANIFEST, manifest)
    return manifest


def dataset_choices(dst: str | os.PathLike) -> dict[str, Any]:
    """How an existing dataset was split (``split``: ``speaker`` or ``time``; ``val_fraction``; ``speaker``: the
    ``--speaker`` rule, where its manifest says), for a later ``preprocess`` that names none of them; empty without
    a manifest (or one of one person's footage, which ``finetune`` writes)."""
    try:
        old = json.loads((Path(dst) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    if not isinstance(old, dict) or old.get("split_by") not in ("speaker", "clip", "time"):
        return {}
    out: dict[str, Any] = {"split": "time" if old["split_by"] == "time" else "speaker"}
    if isinstance(old.get("val_fraction"), (int, float)) and not isinstance(old.get("val_fraction"), bool):
        out["val_fraction"] = float(old["val_fraction"])
    if old.get("speaker_rule") in ("auto", "parent", "stem", "one"):
        out["speaker"] = old["speaker_rule"]
    return out


def _previous_split(dst: Path, val_fraction: float) -> dict[str, str] | None:
    """The side each speaker (or clip) took in the dataset's manifest so far, when it was split the same way (by
    speaker or clip, with the same share held out): kept, so footage added later never moves a speaker a run trained
    on into validation. None for a first manifest, or one split otherwise (that split is then drawn again)."""
    try:
        old = json.loads((dst / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if old.get("split_by") not in ("speaker", "clip") or old.get("val_fraction") != val_fraction:
        return None
    key = "speaker" if old["split_by"] == "speaker" else "id"
    sides = {}
    for c in old.get("clips", []):
        if isinstance(c, dict) and c.get("split") in ("train", "val") and key in c:
            sides[c[key]] = c["split"]
    return sides


def _read_skipped(dst: Path) -> list[dict[str, str]]:
    if not (dst / SKIPPED).is_file():
        return []
    try:
        return [{"source": d["source"], "reason": d["reason"]}
                for d in json.loads((dst / SKIPPED).read_text(encoding="utf-8"))]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return []


def _write_time_manifest(dst: Path, entries: list, sizes: set[int], split_by: str, val_fraction: float | None,
                         **extra: Any) -> dict[str, Any]:
    """A manifest whose clips are split in time (no speaker held out), written to ``dst`` and returned; ``extra``
    goes before the clips (``held_out``)."""
    manifest = {"format_version": FORMAT_VERSION, "source_root": None, "audio": asdict(AudioConfig()),
                "sizes": sorted(sizes) or [BASE_SIZE], "split_by": split_by, "val_fraction": val_fraction,
                **extra, "clips": entries, "skipped": _read_skipped(dst)}
    _write_json_atomic(dst / MANIFEST, manifest)
    return manifest


def write_time_split_manifest(dst: str | os.PathLike, val_frames: int | None = None, val_fraction: float = 0.15,
                              min_val_frames: int = 16, clip_ids: Iterable[str] | None = None,
                              **extra: Any) -> dict[str, Any]:
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
    return _write_time_manifest(dst, entries, sizes, "time", val_fraction if val_frames is None else None, **extra)


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
    held = {"frames": held_n, "seconds": round(held_s, 3), "of_seconds": round(total_s, 3)}
    return _write_time_manifest(dst, entries, sizes, "footage tail", val_fraction if val_seconds is None else None,
                                held_out=held)


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
