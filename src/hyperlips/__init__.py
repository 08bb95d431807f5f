"""hyperlips: HyperLips lip-sync (HyperLips-Base + HR decoder), checkpoint-compatible with the original."""

__version__ = "0.1.0"

from .errors import UserError  # noqa: E402

__all__ = ["LipSync", "UserError", "__version__"]


def __getattr__(name):  # lazy: importing the package must stay cheap (no torch at import time)
    if name == "LipSync":
        from .pipeline import LipSync

        return LipSync
    raise AttributeError(name)
