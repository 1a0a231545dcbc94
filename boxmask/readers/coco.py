"""COCO instances JSON (``instances_val2017.json``) -> image records.

The file is loaded whole with ``json.load`` (COCO keeps annotations in one JSON array, and the
largest official file, ``instances_train2017.json``, is about 450 MB, so several GB of Python
objects); records are then yielded in the order of the ``images`` array, each with its
annotations in file order.

Boxes: ``bbox`` ``[x, y, w, h]`` floats on pixel edges -> library convention (``from_xywh``:
0-based inclusive pixels covering every pixel the box touches). ``label`` = ``str(category_id)``;
the label list comes from ``categories`` in their order. ``box_id`` = ``str(annotation id)``;
an annotation without an integer or string ``id``, or whose id repeats one of the same image, gets
``stable_box_id(image_id, position)`` instead (listed in ``ImageRecord.meta["assigned_box_ids"]``),
so no two boxes of an image share an id (and an output file name).
``iscrowd: 1`` annotations are not boxes to segment: they are skipped and listed in
``ImageRecord.meta["skipped"]`` (not errors).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..boxes import from_xywh
from ..records import Box, ErrorRecord, ImageRecord
from ..safepath import UnsafePathError, check_component, safe_relative
from ._common import add_labels, parse_size, read_error
from .base import Item, Reader, stable_box_id

CROWD_SKIPPED = "iscrowd annotation skipped"


class COCOReader(Reader):
    """Stream ``ImageRecord``s from a COCO instances JSON (source ``coco``).

    ``ImageRecord.meta`` = ``{"coco_id": <int id>, "file_name": ..., "skipped": [...]}``.
    The ``categories`` enter ``labels()`` when iteration starts (the file is read only then).
    """

    source = "coco"

    def default_images_root(self) -> Path:
        """``<root>/<split>`` for ``<root>/annotations/instances_<split>.json``, else its folder."""
        folder = self.input_path.parent
        stem = self.input_path.stem
        if folder.name == "annotations" and stem.startswith("instances_"):
            candidate = folder.parent / stem[len("instances_"):]
            if candidate.is_dir():
                return candidate
        return folder

    def __iter__(self) -> Iterator[Item]:
        with open(self.input_path, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise ValueError(f"{self.input_path} is not a COCO instances file (no 'images' list)")
        for cat in data.get("categories") or []:
            if isinstance(cat, dict) and "id" in cat:
                self.label_map.add(str(cat["id"]), str(cat.get("name") or "") or None)
        by_image: dict[Any, list[tuple[int, dict]]] = {}
        for position, ann in enumerate(data.get("annotations") or []):
            key = ann.get("image_id") if isinstance(ann, dict) else None
            key = key if isinstance(key, int | str) else None
            by_image.setdefault(key, []).append((position, ann))
        src = str(self.input_path)
        for position, image in enumerate(data["images"]):
            key = image.get("id") if isinstance(image, dict) else None
            yield from self._image(image, position, by_image.pop(key, []), src)
        for key, anns in by_image.items():
            yield read_error(f"{len(anns)} annotation(s) refer to image_id {key!r}, which is not "
                             "in 'images'", source=f"{src}: annotations[{anns[0][0]}]")

    def _image(self, image: Any, position: int, anns: list[tuple[int, dict]],
               src: str) -> list[Item]:
        source = f"{src}: images[{position}]"
        if not isinstance(image, dict) or not isinstance(image.get("id"), int | str):
            return [read_error("image entry has no usable 'id'", source=source)]
        coco_id = image["id"]
        try:
            image_id = check_component(str(coco_id), "image id")
            file_name = str(safe_relative(image.get("file_name"), "file_name"))
            width = parse_size(image.get("width"), "width")
            height = parse_size(image.get("height"), "height")
        except (UnsafePathError, ValueError) as exc:
            return [read_error(str(exc), image_id=str(coco_id), source=source)]
        items: list[Item] = []
        boxes: list[Box] = []
        skipped: list[dict[str, str]] = []
        assigned: list[dict[str, Any]] = []
        seen_ids: set[str] = set()
        for index, (ann_position, ann) in enumerate(anns):
            source_id = ann.get("id")
            box_id = str(source_id) if isinstance(source_id, int | str) else None
            if box_id is None or box_id in seen_ids:
                box_id = stable_box_id(image_id, index)
                assigned.append({"box_id": box_id, "annotation": ann_position,
                                 "source_id": source_id})
            seen_ids.add(box_id)
            if ann.get("iscrowd"):
                skipped.append({"box_id": box_id, "reason": CROWD_SKIPPED})
                continue
            box = _box(ann, box_id, index, image_id, f"{src}: annotations[{ann_position}]")
            if isinstance(box, ErrorRecord):
                items.append(box)
            else:
                boxes.append(box)
        add_labels(self.label_map, boxes)
        meta: dict[str, Any] = {"coco_id": coco_id, "file_name": file_name}
        if skipped:
            meta["skipped"] = skipped
        if assigned:
            meta["assigned_box_ids"] = assigned
        if boxes or skipped or not items:  # every box broken: only the errors
            items.append(ImageRecord(image_id=image_id, image_path=file_name, boxes=boxes,
                                     width=width, height=height, source=source, meta=meta))
        return items


def _box(ann: Any, box_id: str, index: int, image_id: str, source: str) -> Box | ErrorRecord:
    """One (non-crowd) annotation -> ``Box``, or the error record saying why not."""
    try:
        box_id = check_component(box_id, "annotation id")
    except UnsafePathError as exc:
        return read_error(str(exc), image_id, source=source)
    bbox = ann.get("bbox")
    if (not isinstance(bbox, list) or len(bbox) != 4
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox)
            or not all(abs(v) < float("inf") for v in bbox)):
        return read_error(f"bbox {bbox!r} is not four finite numbers [x, y, w, h]", image_id,
                          box_id, source)
    if "category_id" not in ann:
        return read_error("annotation has no category_id", image_id, box_id, source)
    return Box(box_id=box_id, label=str(ann["category_id"]), index=index, xyxy=from_xywh(*bbox))


__all__ = ["COCOReader"]
