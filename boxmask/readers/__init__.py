"""Input formats -> streams of ``ImageRecord`` (``open_reader`` picks one by input format name)."""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import Any

from .base import Item, Reader, stable_box_id

_CLASSES: dict[str, tuple[str, str]] = {
    "ilsvrc-loc": (".ilsvrc", "ILSVRCReader"),
    "kaggle-loc": (".kaggle_loc", "KaggleLOCReader"),
    "openimages": (".openimages", "OpenImagesReader"),
    "coco": (".coco", "COCOReader"),
    "records": (".records", "RecordsReader"),
}
"""Input format name -> (module, class), imported on first use."""

SOURCES = ("ilsvrc-loc", "kaggle-loc", "openimages", "coco")
"""The dataset formats a user converts. ``open_reader`` also reads ``records`` (image records
boxmask wrote itself, ``records.py``: the input of ``boxmask redo``'s sub-jobs)."""


def reader_class(input_format: str) -> type[Reader]:
    """The reader class of ``input_format`` (one of ``SOURCES``, or ``records``)."""
    if input_format not in _CLASSES:
        raise ValueError(f"unknown source {input_format!r}; choose from {', '.join(SOURCES)}")
    module, cls = _CLASSES[input_format]
    return getattr(import_module(module, __name__), cls)


def open_reader(input_format: str, input_path: str | Path, images_root: str | Path | None = None,
                **options: Any) -> Reader:
    """Build the reader for ``input_format`` (one of ``SOURCES``, or ``records``)."""
    return reader_class(input_format)(input_path, images_root, **options)


__all__ = ["SOURCES", "Item", "Reader", "open_reader", "reader_class", "stable_box_id"]
