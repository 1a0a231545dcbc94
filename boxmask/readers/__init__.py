"""Input formats -> streams of ``ImageRecord`` (``open_reader`` picks one by input format name)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..registry import Registry
from .base import Item, Reader, stable_box_id

READERS: Registry[Reader] = Registry("source", "boxmask.readers", {
    "ilsvrc-loc": ".ilsvrc:ILSVRCReader",
    "kaggle-loc": ".kaggle_loc:KaggleLOCReader",
    "openimages": ".openimages:OpenImagesReader",
    "coco": ".coco:COCOReader",
    "records": ".records:RecordsReader",
}, hidden=frozenset({"records"}))
"""Input format name -> reader class, imported on first use. ``records`` (image records boxmask
wrote itself, ``records.py``: the input of ``boxmask redo``'s sub-jobs) is read but not offered."""

SOURCES = READERS.names
"""The dataset formats a user converts."""


def reader_class(input_format: str) -> type[Reader]:
    """The reader class of ``input_format`` (one of ``SOURCES``, or ``records``)."""
    return READERS.get(input_format)


def open_reader(input_format: str, input_path: str | Path, images_root: str | Path | None = None,
                **options: Any) -> Reader:
    """Build the reader for ``input_format`` (one of ``SOURCES``, or ``records``)."""
    return reader_class(input_format)(input_path, images_root, **options)


__all__ = ["READERS", "SOURCES", "Item", "Reader", "open_reader", "reader_class", "stable_box_id"]
