"""The weights that ship inside the package: a generic HyperLips-Lite (the starter) and the compact lip-sync expert.

They are fp16 safetensors files in ``hyperlips/models/weights/``, found without any path: ``sync`` and ``demo``
use the starter when no ``--checkpoint`` is given, ``finetune`` starts from it, and ``eval`` and training use the
expert unless told otherwise. Each file carries a short card in its metadata (``card``: version, data, steps,
held-out figures); ``docs/starter.md`` has the full model card.

``HYPERLIPS_NO_SHIPPED=1`` hides them (to try what a build without weights does); a message that finds none says
which of the two it is (:func:`absent`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..errors import env_flag
from .metadata import read_metadata

WEIGHTS_DIR = Path(__file__).with_name("weights")
STARTER_FILE = "starter-lite.safetensors"
EXPERT_FILE = "expert-lite.safetensors"
READER_FILE = "mouth-reader.safetensors"
JUDGE_FILE = "sync-judge.safetensors"


@dataclass(frozen=True)
class Shipped:
    """One shipped weights file."""

    path: Path
    name: str  # registry name of the network
    card: dict[str, Any]

    @property
    def label(self) -> str:
        """E.g. ``shipped starter v1 (HyperLips-Lite, generic)``."""
        what = {"hyperlips-lite": "HyperLips-Lite, generic", "syncnet-lite": "compact lip-sync expert",
                "mouth-reader": "lip and jaw points", "sync-judge": "mouth shapes over one-second windows"
                }.get(self.name, self.name)
        kind = {"hyperlips-lite": "starter", "mouth-reader": "mouth reader", "sync-judge": "sync judge"}.get(self.name, "expert")
        return f"shipped {kind} v{self.card.get('version', '?')} ({what})"


HIDE_ENV = "HYPERLIPS_NO_SHIPPED"


def hidden() -> bool:
    """Whether HYPERLIPS_NO_SHIPPED hides the shipped weights (on as HYPERLIPS_DEBUG is: not empty, 0, false, no or
    off; "false" hid them)."""
    return env_flag(HIDE_ENV)


def absent(what: str) -> str:
    """Why no shipped ``what`` (e.g. "starter") was found, for a message: the variable hiding them, named with its
    value (a user who left it set was told the install had none), or this build having none."""
    if hidden():
        return f"the shipped {what} is hidden by {HIDE_ENV}={os.environ.get(HIDE_ENV, '').strip()} in the environment"
    return f"this build ships no {what}"


def _find(file: str, folder: Path | None = None) -> Shipped | None:
    if hidden():
        return None
    path = (folder or WEIGHTS_DIR) / file
    if not path.is_file():
        return None
    meta = read_metadata(path)
    card = meta.get("card")
    return Shipped(path, str(meta.get("name", "")), dict(card) if isinstance(card, Mapping) else {})


def starter(folder: Path | None = None) -> Shipped | None:
    """The shipped generic HyperLips-Lite, or None when this build has none."""
    return _find(STARTER_FILE, folder)


def expert(folder: Path | None = None) -> Shipped | None:
    """The shipped compact lip-sync expert, or None when this build has none."""
    return _find(EXPERT_FILE, folder)


def judge(folder: Path | None = None) -> Shipped | None:
    """The shipped sync judge (``eval``'s sync score by default), or None when this build has none."""
    return _find(JUDGE_FILE, folder)


def reader(folder: Path | None = None) -> Shipped | None:
    """The shipped mouth reader (a training aid: ``reader_weight``), or None when this build has none."""
    return _find(READER_FILE, folder)


def write_shipped(src: str | os.PathLike, dst: str | os.PathLike, card: Mapping[str, Any]) -> Path:
    """Write the network in checkpoint ``src`` to ``dst`` as fp16 safetensors with ``card`` in its metadata."""
    import torch

    from .checkpoint import load_checkpoint, save_checkpoint

    model, info = load_checkpoint(src)
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    config = {**info.config, "card": json.loads(json.dumps(dict(card)))}
    for key in ("global_step", "global_epoch", "training_stage", "training"):  # the run's own folders stay home
        config.pop(key, None)
    with torch.no_grad():
        return save_checkpoint(state, dst, info.name, config=config, step=info.step)
