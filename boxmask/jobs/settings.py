"""Conversion settings: everything a user chooses that changes the output of a conversion.

Stored in the plan (``plan.json``: ``contract.settings``) in their normalised form
(``Settings.normalized``): absolute paths, sorted unique formats.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..imageio import DEFAULT_MAX_PIXELS


@dataclass
class Settings:
    """Everything a user chooses that changes the output of a conversion.

    ``max_pixels``: decoded pixels (width x height) above which an image is refused;
    ``min_box_side``: boxes with a side shorter than this many pixels are skipped;
    ``shard_size``: input items (images or read errors) per shard; ``limit``: items planned at
    most (None: all).
    """

    input_format: str
    """The input format read (``--source``: ``ilsvrc-loc``, ``coco``, ..., or ``records``)."""
    input: str
    formats: list[str]
    images_root: str | None = None
    labels_file: str | None = None
    reader_options: dict[str, Any] = field(default_factory=dict)
    engine: str = "grabcut"
    engine_options: dict[str, Any] = field(default_factory=dict)
    inside_point: str = "center"
    inside_options: dict[str, Any] = field(default_factory=dict)
    exif: str = "auto"
    max_pixels: int = DEFAULT_MAX_PIXELS
    min_box_side: int = 2
    shard_size: int = 1000
    limit: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Settings:
        return cls(**d)

    def normalized(self) -> Settings:
        """Absolute paths, sorted-unique formats: the form stored in and compared with the plan."""
        s = Settings.from_json(json.loads(json.dumps(self.to_json())))
        s.input = str(Path(s.input).absolute())
        if s.images_root is not None:
            s.images_root = str(Path(s.images_root).absolute())
        if s.labels_file is not None:
            s.labels_file = str(Path(s.labels_file).absolute())
        if s.inside_options.get("weights"):
            s.inside_options["weights"] = str(Path(s.inside_options["weights"]).absolute())
        s.formats = sorted(set(s.formats))
        return s


_dataclass_init = Settings.__init__


def _init(self: Settings, *args: Any, source: str | None = None, **kwargs: Any) -> None:
    if source is not None:
        warnings.warn("Settings(source=...) is deprecated; use input_format=",
                      DeprecationWarning, stacklevel=2)
        kwargs.setdefault("input_format", source)
    _dataclass_init(self, *args, **kwargs)


Settings.__init__ = _init  # type: ignore[method-assign]
