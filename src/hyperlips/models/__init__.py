"""The networks of HyperLips, a registry to build them by name, and checkpoint loading/saving."""

from .base import HyperLipsBase
from .lite import HyperLipsLite, LiteConfig
from .checkpoint import CheckpointInfo, identify_network, load_checkpoint, read_state_dict, save_checkpoint
from .discriminators import BaseQualityDiscriminator, HRQualityDiscriminator
from .hr import HRDecoder
from .registry import EXPERTS, GENERATORS, MODEL_NAMES, OFFICIAL_NAMES, create_model
from .syncnet import SyncNet
from .syncnet_lite import SyncLiteConfig, SyncNetLite

__all__ = [
    "BaseQualityDiscriminator",
    "CheckpointInfo",
    "HRDecoder",
    "HRQualityDiscriminator",
    "HyperLipsBase",
    "HyperLipsLite",
    "LiteConfig",
    "EXPERTS",
    "GENERATORS",
    "OFFICIAL_NAMES",
    "MODEL_NAMES",
    "SyncNet",
    "SyncNetLite",
    "SyncLiteConfig",
    "create_model",
    "identify_network",
    "load_checkpoint",
    "read_state_dict",
    "save_checkpoint",
]
