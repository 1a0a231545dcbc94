"""The selectable output formats by name: ``FORMATS`` and ``create_writer``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..labels import LabelMap
from ..registry import Registry
from .base import Writer

WRITERS: Registry[Writer] = Registry("output format", "boxmask.writers", {
    "pixel-imagenet": ".pixel_imagenet:PixelImageNetWriter",
    "coco": ".coco:CocoWriter",
    "openimages": ".openimages:OpenImagesWriter",
})
"""Output format name -> writer class (``Writer.name`` is the same name)."""

FORMATS = WRITERS.names


def create_writer(name: str, output_dir: str | Path, labels: LabelMap | None = None,
                  **options: Any) -> Writer:
    """The writer of format ``name`` (one of ``FORMATS``) writing under ``output_dir/name``.

    ``options`` go to the writers that take them (``Writer.OPTIONS``) and are ignored by the
    others: ``images_root`` (the folder image paths are relative to) and ``copy_images`` (bool)
    for ``openimages``, whose ``data/`` links to (or copies) the images.
    """
    cls = WRITERS.get(name)
    return cls(output_dir, labels, **{k: v for k, v in options.items() if k in cls.OPTIONS})
