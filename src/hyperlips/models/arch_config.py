"""The architecture settings of a configurable network: a frozen dataclass that travels in its checkpoint.

Subclasses (``LiteConfig``, ``SyncLiteConfig``, ``MouthReaderConfig``) are frozen dataclasses; their tuple fields
(layer widths) are stored as JSON lists and read back as tuples of ints, and names they do not know are ignored.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, TypeVar

C = TypeVar("C", bound="ArchConfig")


class ArchConfig:
    """Mixin: ``to_dict`` (plain JSON values) and ``from_dict`` (the inverse; unknown names ignored)."""

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)  # type: ignore[call-overload]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls: type[C], d: Mapping[str, Any] | None) -> C:
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        kw = {k: v for k, v in (d or {}).items() if k in fields}
        for k, v in kw.items():
            if isinstance(fields[k].default, tuple):
                kw[k] = tuple(int(x) for x in v)
        return cls(**kw)
