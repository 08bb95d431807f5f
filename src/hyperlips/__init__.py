"""hyperlips: HyperLips lip-sync (HyperLips-Base + HR decoder), checkpoint-compatible with the original."""

__version__ = "0.1.0"

from typing import TYPE_CHECKING, Any  # noqa: E402

from .errors import UserError  # noqa: E402

if TYPE_CHECKING:  # type checkers see the class; at run time it is imported when first used
    from .pipeline import LipSync

__all__ = ["LipSync", "UserError", "__version__"]


def __getattr__(name: str) -> Any:  # lazy: importing the package must stay cheap (no torch at import time)
    if name == "LipSync":
        from .pipeline import LipSync

        return LipSync
    raise AttributeError(name)
