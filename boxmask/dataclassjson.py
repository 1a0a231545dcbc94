"""Flat settings dataclasses to and from JSON dicts.

Tuple fields are written as lists (JSON has no tuples) and read back as tuples, each element
converted (``int``, ``float``, ...); keys of the dict that are not fields are ignored, so a record
may carry more than the dataclass holds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, fields
from typing import Any, TypeVar

T = TypeVar("T")


def to_json(config: Any) -> dict[str, Any]:
    """``asdict(config)`` with every tuple value as a list."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}


def from_json(cls: type[T], d: Mapping[str, Any],
              tuples: Mapping[str, Callable[[Any], Any]]) -> T:
    """``cls`` from the fields of ``d``; ``tuples`` maps each tuple field to its element type."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    kwargs = {k: v for k, v in d.items() if k in names}
    for key, convert in tuples.items():
        if key in kwargs:
            kwargs[key] = tuple(convert(v) for v in kwargs[key])
    return cls(**kwargs)
