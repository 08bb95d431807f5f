"""The hyperlips metadata of a safetensors checkpoint, read from its header alone: no tensors, no torch."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import CheckpointError

METADATA_KEY = "hyperlips"  # the JSON string of our config in a safetensors file's ``__metadata__``
MAX_HEADER = 100_000_000


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``hyperlips`` metadata of a safetensors file ({} when it has none)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n <= MAX_HEADER:
                raise CheckpointError(f"{path}: not a safetensors file (header length {n})")
            header = json.loads(f.read(n))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read its safetensors header ({' '.join(str(e).split())[:120]})") from None
    raw = header.get("__metadata__", {}) if isinstance(header, dict) else {}
    return parse_json(raw[METADATA_KEY], path, "its 'hyperlips' metadata") if METADATA_KEY in raw else {}


def parse_json(text: str, path: Path, what: str) -> dict[str, Any]:
    """A JSON object from ``text``; CheckpointError naming ``path`` and ``what`` otherwise."""
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: {what} is not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise CheckpointError(f"{path}: {what} is not a JSON object")
    return d
