"""Build any network by name: one way to make every variant."""

from __future__ import annotations

import json
from typing import Any, Callable, Mapping

from torch import nn

from ..config import ModelConfig
from ..errors import UserError
from .base import HyperLipsBase
from .discriminators import BaseQualityDiscriminator, HRQualityDiscriminator
from .hr import HRDecoder
from .lite import HyperLipsLite, LiteConfig
from .mouth_reader import MouthReader, MouthReaderConfig
from .syncnet import SyncNet
from .sync_judge import JudgeConfig, SyncJudge
from .syncnet_lite import SyncLiteConfig, SyncNetLite

# every builder takes the network's ``extra`` settings (ModelConfig.extra; only configurable networks use them)
_BUILDERS: dict[str, Callable[[Mapping[str, Any]], nn.Module]] = {
    "hyperlips-base": lambda extra: HyperLipsBase(),
    "hyperlips-lite": lambda extra: HyperLipsLite(LiteConfig.from_dict(extra)),
    "hyperlips-hr-128": lambda extra: HRDecoder(1),
    "hyperlips-hr-256": lambda extra: HRDecoder(2),
    "hyperlips-hr-512": lambda extra: HRDecoder(4),
    "syncnet": lambda extra: SyncNet(),
    "syncnet-lite": lambda extra: SyncNetLite(SyncLiteConfig.from_dict(extra)),
    "base-disc": lambda extra: BaseQualityDiscriminator(),
    "hr-disc": lambda extra: HRQualityDiscriminator(),
    "mouth-reader": lambda extra: MouthReader(MouthReaderConfig.from_dict(extra)),
    "sync-judge": lambda extra: SyncJudge(JudgeConfig.from_dict(extra)),
}
# networks whose architecture is set by ``extra`` (stored in their checkpoints), with its default
CONFIGURABLE: dict[str, Callable[[], dict[str, Any]]] = {"hyperlips-lite": lambda: LiteConfig().to_dict(),
                                                          "syncnet-lite": lambda: SyncLiteConfig().to_dict(),
                                                          "mouth-reader": lambda: MouthReaderConfig().to_dict(),
                                                          "sync-judge": lambda: JudgeConfig().to_dict()}
# networks that take a mel window and [masked, reference] faces and render a face: what `sync` accepts
GENERATORS: tuple[str, ...] = ("hyperlips-base", "hyperlips-lite")
# lip-sync experts: five lower-half faces and a 16-step mel window in, embeddings whose cosine scores sync
EXPERTS: tuple[str, ...] = ("syncnet", "syncnet-lite")
# what `eval` accepts as its sync judge: the experts, or the judge that compares mouth shapes over longer windows
JUDGES: tuple[str, ...] = EXPERTS + ("sync-judge",)

MODEL_NAMES: tuple[str, ...] = tuple(_BUILDERS)
# the networks of the original implementation (their official checkpoints load unchanged)
OFFICIAL_NAMES: tuple[str, ...] = tuple(n for n in MODEL_NAMES if n not in CONFIGURABLE)

DESCRIPTIONS: dict[str, str] = {
    "hyperlips-base": "stage-1 HyperLips-Base generator",
    "hyperlips-lite": "compact HyperLips-Lite generator",
    "hyperlips-hr-128": "stage-2 HR decoder, 128 px output",
    "hyperlips-hr-256": "stage-2 HR decoder, 256 px output",
    "hyperlips-hr-512": "stage-2 HR decoder, 512 px output",
    "syncnet": "SyncNet lip-sync expert",
    "syncnet-lite": "compact lip-sync expert",
    "base-disc": "stage-1 quality discriminator",
    "hr-disc": "stage-2 quality discriminator",
    "mouth-reader": "mouth reader (lip and jaw points of a face crop)",
    "sync-judge": "lip-sync judge (audio mouth shapes against FaceMesh's)",
}


def canonical_name(name: str) -> str:
    """The registry name for ``name`` (case and ``_``/``-`` are ignored); :class:`UserError` if unknown."""
    key = str(name).strip().lower().replace("_", "-")
    if key not in _BUILDERS:
        raise UserError(f"unknown model name {name!r}; choose one of: {', '.join(MODEL_NAMES)}")
    return key


def create_model(name: str, extra: Mapping[str, Any] | None = None) -> nn.Module:
    """A freshly initialised network, in train mode, on the current default device.

    ``extra``: the architecture settings of a configurable network (e.g. :class:`~.lite.LiteConfig` fields for
    ``hyperlips-lite``); missing ones take their defaults, other networks ignore it."""
    return _BUILDERS[canonical_name(name)](architecture(name, extra))


def architecture(name: str, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The complete architecture settings of a configurable network (defaults filled in); {} for the others."""
    name = canonical_name(name)
    if name not in CONFIGURABLE:
        return {}
    base = CONFIGURABLE[name]()
    given = {k: v for k, v in dict(extra or {}).items() if k in base}
    merged = {**base, **given}
    return json.loads(json.dumps(merged))  # plain lists/numbers, comparable and hashable as JSON


def default_config(name: str, extra: Mapping[str, Any] | None = None) -> ModelConfig:
    """The :class:`ModelConfig` of a network: ``img_size`` is its output side (HR: 128, 256 or 512), ``extra``
    its architecture settings when it is configurable."""
    name = canonical_name(name)
    size = int(name.rsplit("-", 1)[1]) if name.startswith("hyperlips-hr-") else 128
    return ModelConfig(name=name, img_size=size, extra=architecture(name, extra))
