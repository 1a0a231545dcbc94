"""Name -> class, imported on first use: the one registry pattern of the readers, writers, engines
and inside-point policies.

Each registry maps a name to ``"module:Class"`` (``module`` relative to the registry's package;
``":Class"`` for a class of the package module itself).
Nothing is imported until a class is asked for, so listing the names (what the command line offers
as choices) never pulls in torch or a format's dependencies. ``names`` are the names a user picks
from; ``hidden`` ones resolve too but are not offered (e.g. the ``records`` reader of boxmask's
own sub-jobs).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Registry(Generic[T]):
    """Named classes of one kind (``kind`` names it in error messages, e.g. ``"engine"``)."""

    kind: str
    package: str
    entries: Mapping[str, str]
    hidden: frozenset[str] = field(default_factory=frozenset)

    @property
    def names(self) -> tuple[str, ...]:
        """The names offered to users, in registration order."""
        return tuple(n for n in self.entries if n not in self.hidden)

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def get(self, name: str) -> type[T]:
        """The class registered as ``name``; ``ValueError`` naming the choices when unknown."""
        if name not in self.entries:
            raise ValueError(f"unknown {self.kind} {name!r}; choose from {', '.join(self.names)}")
        module, _, cls = self.entries[name].partition(":")
        return getattr(import_module(module or self.package, self.package), cls)

    def create(self, name: str, *args: Any, **options: Any) -> T:
        """An instance of the class registered as ``name``."""
        return self.get(name)(*args, **options)

    def classes(self, names: Iterable[str] | None = None) -> list[type[T]]:
        """The classes of ``names`` (default: every offered name), imported now."""
        return [self.get(n) for n in (self.names if names is None else names)]
