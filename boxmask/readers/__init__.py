"""Input formats -> streams of ``ImageRecord`` (``open_reader`` picks one by source name)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import Item, Reader, stable_box_id

SOURCES = ("ilsvrc-loc", "kaggle-loc", "openimages", "coco")
"""The dataset formats a user converts. ``open_reader`` also reads ``records`` (image records
boxmask wrote itself, ``records.py``: the input of ``boxmask redo``'s sub-jobs)."""


def open_reader(source: str, input_path: str | Path, images_root: str | Path | None = None,
                **options: Any) -> Reader:
    """Build the reader for ``source`` (one of ``SOURCES``)."""
    if source == "ilsvrc-loc":
        from .ilsvrc import ILSVRCReader as cls
    elif source == "kaggle-loc":
        from .kaggle_loc import KaggleLOCReader as cls
    elif source == "openimages":
        from .openimages import OpenImagesReader as cls
    elif source == "coco":
        from .coco import COCOReader as cls
    elif source == "records":
        from .records import RecordsReader as cls
    else:
        raise ValueError(f"unknown source {source!r}; choose from {', '.join(SOURCES)}")
    return cls(input_path, images_root, **options)


__all__ = ["SOURCES", "Item", "Reader", "open_reader", "stable_box_id"]
