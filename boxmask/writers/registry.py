"""The selectable output formats by name: ``FORMATS`` and ``create_writer``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..labels import LabelMap
from .base import Writer
from .coco import CocoWriter
from .openimages import OpenImagesWriter
from .pixel_imagenet import PixelImageNetWriter

FORMATS = ("pixel-imagenet", "coco", "openimages")

_WRITERS: dict[str, type[Writer]] = {
    PixelImageNetWriter.name: PixelImageNetWriter,
    CocoWriter.name: CocoWriter,
    OpenImagesWriter.name: OpenImagesWriter,
}


def create_writer(name: str, output_dir: str | Path, labels: LabelMap | None = None,
                  **options: Any) -> Writer:
    """The writer of format ``name`` (one of ``FORMATS``) writing under ``output_dir/name``.

    ``options`` go to the writers that take them and are ignored by the others:
    ``images_root`` (the folder image paths are relative to) and ``copy_images`` (bool) for
    ``openimages``, whose ``data/`` links to (or copies) the images.
    """
    try:
        cls = _WRITERS[name]
    except KeyError:
        raise ValueError(f"unknown output format {name!r}; choose from {', '.join(FORMATS)}") \
            from None
    if cls is OpenImagesWriter:
        return cls(output_dir, labels, images_root=options.get("images_root"),
                   copy_images=bool(options.get("copy_images", False)))
    return cls(output_dir, labels)
