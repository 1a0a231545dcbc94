"""COCO instances JSON (``instances_val2017.json``) -> image records.

The file is streamed with ``ijson`` (never loaded whole: the largest COCO-style box files,
LVIS or Objects365, hold tens of millions of annotations), in a few passes: ``categories``;
``images``, remembered as a sorted table of 64-bit hashes of their ids (16 bytes per image);
``annotations``, each reduced to the fields a box needs and grouped by image with an external
sort (``_extsort``: sorted chunks spilled to ``TMPDIR``, merged); then ``images`` again, each
joined with its annotations. Records come in the order of the ``images`` array, each with its
annotations in file order, as if the file were loaded whole; an image id that repeats gets its
annotations at its first entry. Annotations whose ``image_id`` is in no image entry become one
read error per id, after the records.

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

import hashlib
import json
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ijson
import numpy as np

from ..boxes import from_xywh
from ..records import Box, ErrorRecord, ImageRecord
from ..safepath import UnsafePathError, check_component, safe_relative
from ._common import add_labels, parse_size, read_error
from ._extsort import DEFAULT_CHUNK_ROWS, SortRow, sort_rows
from .base import Item, Reader, stable_box_id

CROWD_SKIPPED = "iscrowd annotation skipped"
_ANNOTATION_FIELDS = ("id", "image_id", "iscrowd", "bbox", "category_id")
"""What a box needs of an annotation (segmentation polygons are dropped while grouping)."""


def _id_hash(key: int | str) -> int:
    """A 64-bit hash of a COCO id; ``1`` and ``"1"`` differ, as they do as dict keys."""
    text = f"i{int(key)}" if isinstance(key, int) else f"s{key}"
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def _same_id(a: Any, b: Any) -> bool:
    return a == b and isinstance(a, str) == isinstance(b, str)


class _ImageIndex:
    """Image id -> position of its first entry in ``images``: 16 bytes per image.

    Ids are kept as 64-bit hashes (a wrong match needs a collision, about 1e-7 for two million
    images, and is caught when the annotation meets its image); ``add`` everything, ``freeze``,
    then ``find_many``.
    """

    def __init__(self) -> None:
        self._hashes = array("Q")
        self._positions = array("q")
        self.n_images = 0

    def add(self, key: Any, position: int) -> None:
        self.n_images += 1
        if isinstance(key, int | str):
            self._hashes.append(_id_hash(key))
            self._positions.append(position)

    def freeze(self) -> None:
        hashes = np.frombuffer(self._hashes, dtype=np.uint64) if self._hashes else \
            np.empty(0, np.uint64)
        positions = np.frombuffer(self._positions, dtype=np.int64) if self._positions else \
            np.empty(0, np.int64)
        order = np.lexsort((positions, hashes))  # by hash, then position: first entry first
        self._sorted_hashes = hashes[order]
        self._sorted_positions = positions[order]
        self._hashes, self._positions = array("Q"), array("q")

    def find_many(self, keys: list[Any]) -> list[int]:
        """The image position of each key (-1: no image has that id, or the key is no id)."""
        usable = [i for i, k in enumerate(keys) if isinstance(k, int | str)]
        out = [-1] * len(keys)
        if not usable or not self._sorted_hashes.size:
            return out
        h = np.fromiter((_id_hash(keys[i]) for i in usable), dtype=np.uint64, count=len(usable))
        at = np.minimum(np.searchsorted(self._sorted_hashes, h), self._sorted_hashes.size - 1)
        hit = self._sorted_hashes[at] == h
        positions = self._sorted_positions[at]
        for j, i in enumerate(usable):
            if hit[j]:
                out[i] = int(positions[j])
        return out


class COCOReader(Reader):
    """Stream ``ImageRecord``s from a COCO instances JSON (source ``coco``).

    ``ImageRecord.meta`` = ``{"coco_id": <int id>, "file_name": ..., "skipped": [...]}``.
    The ``categories`` enter ``labels()`` when iteration starts (the file is read only then).
    """

    input_format = "coco"

    def default_images_root(self) -> Path:
        """``<root>/<split>`` for ``<root>/annotations/instances_<split>.json``, else its folder."""
        folder = self.input_path.parent
        stem = self.input_path.stem
        if folder.name == "annotations" and stem.startswith("instances_"):
            candidate = folder.parent / stem[len("instances_"):]
            if candidate.is_dir():
                return candidate
        return folder

    sort_chunk_rows: int = DEFAULT_CHUNK_ROWS
    """Annotations grouped in memory at a time before they are spilled to disk."""

    def __iter__(self) -> Iterator[Item]:
        src = str(self.input_path)
        for cat in self._items("categories"):
            if isinstance(cat, dict) and "id" in cat:
                self.label_map.add(str(cat["id"]), str(cat.get("name") or "") or None)
        index = _ImageIndex()
        for position, image in enumerate(self._items("images")):
            if isinstance(image, dict):
                index.add(image.get("id"), position)
        if not index.n_images:
            self._check_structure()
        index.freeze()
        unknown: dict[Any, list[int]] = {}  # image_id -> [count, first annotation position]
        grouped = sort_rows(self._keyed_annotations(index, unknown), self.sort_chunk_rows)
        try:
            pending = next(grouped, None)
            for position, image in enumerate(self._items("images")):
                anns: list[tuple[int, dict]] = []
                while pending is not None and int(pending[0]) == position:
                    ann = json.loads(pending[2][0])
                    if _same_id(ann.get("image_id"), image.get("id")):
                        anns.append((pending[1], ann))
                    else:  # a 64-bit hash collision between two ids
                        unknown.setdefault(ann.get("image_id"), [0, pending[1]])[0] += 1
                    pending = next(grouped, None)
                yield from self._image(image, position, anns, src)
        finally:
            grouped.close()
        for key, (count, first) in unknown.items():
            yield read_error(f"{count} annotation(s) refer to image_id {key!r}, which is not "
                             "in 'images'", location=f"{src}: annotations[{first}]")

    def _items(self, array: str) -> Iterator[Any]:
        """The elements of the top-level array ``array`` (none when it is absent)."""
        with open(self.input_path, "rb") as f:
            try:
                yield from ijson.items(f, f"{array}.item", use_float=True)
            except ijson.JSONError as exc:
                raise ValueError(f"{self.input_path} is not valid JSON: {exc}") from None

    def _check_structure(self) -> None:
        """``ValueError`` unless the file is an object with an ``images`` array (which is empty:
        called when no image was found)."""
        with open(self.input_path, "rb") as f:
            try:
                for n, (prefix, event, _) in enumerate(ijson.parse(f)):
                    if n == 0 and event != "start_map":
                        break
                    if prefix == "images" and event == "start_array":
                        return
            except ijson.JSONError as exc:
                raise ValueError(f"{self.input_path} is not valid JSON: {exc}") from None
        raise ValueError(f"{self.input_path} is not a COCO instances file (no 'images' list)")

    def _keyed_annotations(self, index: _ImageIndex,
                           unknown: dict[Any, list[int]]) -> Iterator[SortRow]:
        """(image position as a sortable key, annotation position, [slim annotation JSON]) of
        every annotation of a known image; the others are counted in ``unknown``."""
        batch: list[tuple[int, Any, dict | None]] = []
        for position, ann in enumerate(self._items("annotations")):
            key = ann.get("image_id") if isinstance(ann, dict) else None
            slim = {k: ann[k] for k in _ANNOTATION_FIELDS if k in ann} if key is not None \
                else None  # without the polygons, which can be large
            batch.append((position, key if isinstance(key, int | str) else None, slim))
            if len(batch) >= 1024:
                yield from self._keyed_batch(batch, index, unknown)
                batch = []
        yield from self._keyed_batch(batch, index, unknown)

    @staticmethod
    def _keyed_batch(batch: list[tuple[int, Any, dict | None]], index: _ImageIndex,
                     unknown: dict[Any, list[int]]) -> Iterator[SortRow]:
        found = index.find_many([key for _, key, _ in batch])
        for (position, key, slim), image_position in zip(batch, found, strict=True):
            if image_position < 0:
                unknown.setdefault(key, [0, position])[0] += 1
                continue
            yield f"{image_position:012d}", position, [json.dumps(slim)]

    def _image(self, image: Any, position: int, anns: list[tuple[int, dict]],
               src: str) -> list[Item]:
        location = f"{src}: images[{position}]"
        if not isinstance(image, dict) or not isinstance(image.get("id"), int | str):
            return [read_error("image entry has no usable 'id'", location=location)]
        coco_id = image["id"]
        try:
            image_id = check_component(str(coco_id), "image id")
            file_name = str(safe_relative(image.get("file_name"), "file_name"))
            width = parse_size(image.get("width"), "width")
            height = parse_size(image.get("height"), "height")
        except (UnsafePathError, ValueError) as exc:
            return [read_error(str(exc), image_id=str(coco_id), location=location)]
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
                                     width=width, height=height, location=location, meta=meta))
        return items


def _box(ann: Any, box_id: str, index: int, image_id: str, location: str) -> Box | ErrorRecord:
    """One (non-crowd) annotation -> ``Box``, or the error record saying why not."""
    try:
        box_id = check_component(box_id, "annotation id")
    except UnsafePathError as exc:
        return read_error(str(exc), image_id, location=location)
    bbox = ann.get("bbox")
    if (not isinstance(bbox, list) or len(bbox) != 4
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox)
            or not all(abs(v) < float("inf") for v in bbox)):
        return read_error(f"bbox {bbox!r} is not four finite numbers [x, y, w, h]", image_id,
                          box_id, location)
    if "category_id" not in ann:
        return read_error("annotation has no category_id", image_id, box_id, location)
    return Box(box_id=box_id, label=str(ann["category_id"]), index=index, xyxy=from_xywh(*bbox))


__all__ = ["COCOReader"]
