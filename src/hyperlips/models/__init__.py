"""The networks of HyperLips, a registry to build them by name, and checkpoint loading/saving.

Names are imported on first use (PEP 562), so ``hyperlips.models.shipped`` can say which weights ship without
importing torch (the web server lists the starter model without loading a network).
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "HyperLipsBase": "base",
    "HyperLipsLite": "lite",
    "LiteConfig": "lite",
    "CheckpointInfo": "checkpoint",
    "identify_network": "checkpoint",
    "load_checkpoint": "checkpoint",
    "read_state_dict": "checkpoint",
    "save_checkpoint": "checkpoint",
    "BaseQualityDiscriminator": "discriminators",
    "HRQualityDiscriminator": "discriminators",
    "HRDecoder": "hr",
    "MouthReader": "mouth_reader",
    "MouthReaderConfig": "mouth_reader",
    "EXPERTS": "registry",
    "JUDGES": "registry",
    "JudgeConfig": "sync_judge",
    "SyncJudge": "sync_judge",
    "GENERATORS": "registry",
    "MODEL_NAMES": "registry",
    "OFFICIAL_NAMES": "registry",
    "create_model": "registry",
    "SyncNet": "syncnet",
    "SyncLiteConfig": "syncnet_lite",
    "SyncNetLite": "syncnet_lite",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
