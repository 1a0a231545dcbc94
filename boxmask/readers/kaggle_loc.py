"""Kaggle ImageNet localisation CSVs (``LOC_train_solution.csv``, ``LOC_val_solution.csv``).

Format: header ``ImageId,PredictionString``; ``PredictionString`` repeats
``<wnid> <xmin> <ymin> <xmax> <ymax>``, the same inclusive pixel values as the ILSVRC XML
``<bndbox>``, counted from 0 like them (``origin``; see ``boxmask.readers.ilsvrc``). The CSV
declares no image size, so boxes are in the frame of the original JPEG.

Image paths, relative to the images root (default ``<csv dir>/ILSVRC/Data/CLS-LOC``, else
``<csv dir>/Data/CLS-LOC``, else the csv dir):

* train ids ``n01440764_10026`` -> ``train/n01440764/n01440764_10026.JPEG``
* val/test ids ``ILSVRC2012_val_00000001`` -> ``val/ILSVRC2012_val_00000001.JPEG`` (Kaggle's flat
  layout), or ``val/<wnid>/<id>.JPEG`` when only that file exists (wnid = the first box's label).

The file is streamed row by row with the ``csv`` module.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..boxes import from_voc
from ..records import Box, ImageRecord
from ..safepath import UnsafePathError, check_component
from ._common import add_labels, parse_number, read_error
from .base import Item, Reader, stable_box_id

TRAIN_ID = re.compile(r"(n\d{8})_\d+")
EVAL_ID = re.compile(r"ILSVRC\d{4}_(val|test)_\d+")


class KaggleLOCReader(Reader):
    """Stream ``ImageRecord``s from a Kaggle ``LOC_*_solution.csv`` (source ``kaggle-loc``)."""

    input_format = "kaggle-loc"

    def __init__(self, input_path: str | Path, images_root: str | Path | None = None,
                 labels_file: str | Path | None = None, *, origin: int = 0) -> None:
        if origin not in (0, 1):
            raise ValueError(f"origin must be 0 or 1, not {origin!r}")
        self.origin = origin
        if labels_file is None:
            default = Path(input_path).parent / "LOC_synset_mapping.txt"
            labels_file = default if default.is_file() else None
        super().__init__(input_path, images_root, labels_file)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "origin": self.origin}

    def default_images_root(self) -> Path:
        folder = self.input_path.parent
        for candidate in (folder / "ILSVRC" / "Data" / "CLS-LOC", folder / "Data" / "CLS-LOC"):
            if candidate.is_dir():
                return candidate
        return folder

    def __iter__(self) -> Iterator[Item]:
        with open(self.input_path, newline="", encoding="utf-8-sig") as f:
            rows = csv.reader(f)
            header = next(rows, None)
            if header is None or "ImageId" not in header or "PredictionString" not in header:
                raise ValueError(f"{self.input_path} is not a Kaggle LOC CSV: the header must name "
                                 f"ImageId and PredictionString, got {header!r}")
            id_col, pred_col = header.index("ImageId"), header.index("PredictionString")
            for row in rows:
                if not row:
                    continue
                location = f"{self.input_path}:{rows.line_num}"
                if len(row) != len(header):
                    yield read_error(f"row has {len(row)} fields, the header {len(header)}",
                                     location=location)
                    continue
                yield from self._row(row[id_col].strip(), row[pred_col], location)

    def _row(self, image_id: str, prediction: str, location: str) -> list[Item]:
        try:
            check_component(image_id, "ImageId")
        except UnsafePathError as exc:
            return [read_error(str(exc), location=location)]
        tokens = prediction.split()
        if len(tokens) % 5:
            return [read_error(f"PredictionString has {len(tokens)} values, not groups of 5 "
                               "(wnid xmin ymin xmax ymax)", image_id, location=location)]
        items: list[Item] = []
        boxes: list[Box] = []
        for index in range(len(tokens) // 5):
            label, *coords = tokens[5 * index:5 * index + 5]
            box_id = stable_box_id(image_id, index)
            try:
                xmin, ymin, xmax, ymax = (parse_number(v, name) for v, name in
                                          zip(coords, ("xmin", "ymin", "xmax", "ymax"),
                                              strict=True))
                xyxy = from_voc(xmin, ymin, xmax, ymax, origin=self.origin)
            except ValueError as exc:
                items.append(read_error(f"box {index}: {exc}", image_id, box_id, location))
                continue
            boxes.append(Box(box_id=box_id, label=label, index=index, xyxy=xyxy))
        if items and not boxes:
            return items
        try:
            group, image_path = self._place(image_id, boxes)
        except (ValueError, UnsafePathError) as exc:
            return [*items, read_error(str(exc), image_id, location=location)]
        add_labels(self.label_map, boxes)
        items.append(ImageRecord(image_id=image_id, image_path=image_path, boxes=boxes,
                                 group=group, location=location))
        return items

    def _place(self, image_id: str, boxes: list[Box]) -> tuple[str | None, str]:
        """(group, image path) of an image id; one ``stat`` for val/test ids."""
        train = TRAIN_ID.fullmatch(image_id)
        if train:
            wnid = train.group(1)
            return wnid, f"train/{wnid}/{image_id}.JPEG"
        split = EVAL_ID.fullmatch(image_id)
        if not split:
            raise ValueError(f"ImageId {image_id!r} is neither a train id (n01440764_10026) nor "
                             "a val/test id (ILSVRC2012_val_00000001); cannot place its image")
        flat = f"{split.group(1)}/{image_id}.JPEG"
        if not boxes:
            return None, flat
        wnid = check_component(boxes[0].label, "group (first box label)")
        nested = f"{split.group(1)}/{wnid}/{image_id}.JPEG"
        if not (self.images_root / flat).exists() and (self.images_root / nested).exists():
            return wnid, nested
        return wnid, flat


__all__ = ["KaggleLOCReader"]
