"""Build any network by name: one way to make every variant."""

from __future__ import annotations

from typing import Callable

from torch import nn

from ..config import ModelConfig
from ..errors import UserError
from .base import HyperLipsBase
from .discriminators import BaseQualityDiscriminator, HRQualityDiscriminator
from .hr import HRDecoder
from .syncnet import SyncNet

_BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "hyperlips-base": HyperLipsBase,
    "hyperlips-hr-128": lambda: HRDecoder(1),
    "hyperlips-hr-256": lambda: HRDecoder(2),
    "hyperlips-hr-512": lambda: HRDecoder(4),
    "syncnet": SyncNet,
    "base-disc": BaseQualityDiscriminator,
    "hr-disc": HRQualityDiscriminator,
}

MODEL_NAMES: tuple[str, ...] = tuple(_BUILDERS)

DESCRIPTIONS: dict[str, str] = {
    "hyperlips-base": "stage-1 HyperLips-Base generator",
    "hyperlips-hr-128": "stage-2 HR decoder, 128 px output",
    "hyperlips-hr-256": "stage-2 HR decoder, 256 px output",
    "hyperlips-hr-512": "stage-2 HR decoder, 512 px output",
    "syncnet": "SyncNet lip-sync expert",
    "base-disc": "stage-1 quality discriminator",
    "hr-disc": "stage-2 quality discriminator",
}


def canonical_name(name: str) -> str:
    """The registry name for ``name`` (case and ``_``/``-`` are ignored); :class:`UserError` if unknown."""
    key = str(name).strip().lower().replace("_", "-")
    if key not in _BUILDERS:
        raise UserError(f"unknown model name {name!r}; choose one of: {', '.join(MODEL_NAMES)}")
    return key


def create_model(name: str) -> nn.Module:
    """A freshly initialised network, in train mode, on the current default device."""
    return _BUILDERS[canonical_name(name)]()


def default_config(name: str) -> ModelConfig:
    """The :class:`ModelConfig` of a network: ``img_size`` is its output side (HR: 128, 256 or 512)."""
    name = canonical_name(name)
    size = int(name.rsplit("-", 1)[1]) if name.startswith("hyperlips-hr-") else 128
    return ModelConfig(name=name, img_size=size)
