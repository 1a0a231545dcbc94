"""Output formats, one module each; ``create_writer`` builds one by name.

* ``pixel-imagenet``: one instance PNG per image + ``label-v1.json`` (``pixel_imagenet.py``)
* ``coco``: ``instances.json`` with RLE masks (``coco.py``)
* ``openimages``: one binary PNG per mask + ``annotations-object-segmentation.csv``
  (``openimages.py``)

The sidecar (``masks.jsonl`` / ``errors.jsonl``, ``sidecar.py``) is always written and is not
one of the selectable formats.
"""

from __future__ import annotations

from pathlib import Path

from ..labels import LabelMap
from .base import ResultsFactory, Writer
from .coco import CocoWriter
from .openimages import OpenImagesWriter
from .pixel_imagenet import PixelImageNetWriter
from .sidecar import SidecarWriter

FORMATS = ("pixel-imagenet", "coco", "openimages")

_WRITERS: dict[str, type[Writer]] = {
    PixelImageNetWriter.name: PixelImageNetWriter,
    CocoWriter.name: CocoWriter,
    OpenImagesWriter.name: OpenImagesWriter,
}


def create_writer(name: str, output_dir: str | Path, labels: LabelMap | None = None) -> Writer:
    """The writer of format ``name`` (one of ``FORMATS``) writing under ``output_dir/name``."""
    try:
        cls = _WRITERS[name]
    except KeyError:
        raise ValueError(f"unknown output format {name!r}; choose from {', '.join(FORMATS)}") \
            from None
    return cls(output_dir, labels)


__all__ = ["FORMATS", "CocoWriter", "OpenImagesWriter", "PixelImageNetWriter", "ResultsFactory",
           "SidecarWriter", "Writer", "create_writer"]
