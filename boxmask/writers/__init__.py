"""Output formats, one module each; ``create_writer`` (``registry.py``) builds one by name.

* ``pixel-imagenet``: one instance PNG per image + ``label-v1.json`` (``pixel_imagenet.py``)
* ``coco``: ``instances.json`` with RLE masks (``coco.py``)
* ``openimages``: the FiftyOne / Open Images V7 folder: ``data/`` (the images),
  ``labels/segmentations.csv``, one binary PNG per mask, ``metadata/`` (``openimages.py``)

The sidecar (``masks.jsonl`` / ``errors.jsonl``, ``sidecar.py``) is always written and is not
one of the selectable formats.
"""

from __future__ import annotations

from .base import ResultsFactory, Writer
from .coco import CocoWriter
from .openimages import OpenImagesWriter
from .pixel_imagenet import PixelImageNetWriter
from .registry import FORMATS, create_writer
from .sidecar import SidecarWriter

__all__ = ["FORMATS", "CocoWriter", "OpenImagesWriter", "PixelImageNetWriter", "ResultsFactory",
           "SidecarWriter", "Writer", "create_writer"]
