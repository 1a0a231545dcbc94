"""COCO instances JSON with RLE masks: ``<output>/coco/instances.json``.

Loadable with ``pycocotools.coco.COCO``; ``annToMask`` gives back each mask exactly.

* ``images``: one entry per decoded image (images that failed to decode are left out):
  ``id`` = the source's COCO image id (``record.meta["coco_id"]``) when every image of the run has
  an integer one, else the image's 1-based position in plan order (so an id does not change when
  another image fails); ``file_name`` = ``ImageRecord.image_path``; ``width``/``height`` = the
  decoded size.
* ``annotations``: one per mask. ``id`` = ``int(box_id)`` for COCO sources whose annotation ids
  are all integers, unique and none assigned by the reader (the reader keeps the COCO annotation
  id as the box id), else a 1-based running number; ``category_id`` = ``int(label)`` for COCO
  sources whose category ids are all integers, else the label-map index + 1; the original ids stay
  in ``box_id`` and ``source_id``; ``segmentation`` = compressed RLE
  (``counts`` as a string); ``area`` = mask pixel count; ``bbox`` = the **input box**
  ``[x, y, w, h]`` on pixel edges, not the mask's tight box: it records what the mask was made
  from; ``mask_bbox`` = the mask's own tight box in the same ``[x, y, w, h]`` float convention
  (left/top pixel edge, width and height in pixels: ``[x0, y0, x1 - x0 + 1, y1 - y0 + 1]`` of the
  inclusive library box), ``null`` for an empty mask; ``iscrowd`` = 0; plus ``score`` and
  ``box_id``.
* ``categories`` (written last, once every label has been seen): every label of the label map
  plus any label met in the results but missing from it, each ``{"id", "name", "source_id"}``
  with ``source_id`` the source class id (WordNet id, ``/m/`` MID, COCO category id).

A source is taken to be COCO when its records carry ``meta["coco_id"]``; one run reads one source.
The file is streamed (three passes over the results: which ids can be kept and which labels are
missing, then images, then annotations) into a temporary file that replaces ``instances.json``
atomically at the end; no list of results is kept.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import IO, Any

from .. import __version__
from .. import masks as masklib
from ..atomic import atomic_open
from ..boxes import int_box, to_xywh
from ..labels import LabelMap
from ..records import ImageResult, MaskResult
from .base import ResultsFactory, Writer

log = logging.getLogger(__name__)

FILE_NAME = "instances.json"


def _is_coco(result: ImageResult) -> bool:
    return "coco_id" in result.record.meta


def _as_int(value: Any) -> int | None:
    """``value`` as an int when it is one or a decimal string of one, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


class _SourceIds:
    """Whether a COCO source's own image and annotation ids can be written as they are.

    They can when the run has results, every result is from a COCO source, every id is an
    integer, the ids of one kind are unique, and the reader assigned no box id of its own.
    (Holds one int per image and per box of the run, which a COCO file has in memory anyway.)
    """

    def __init__(self) -> None:
        self.seen = False
        self.all_coco = self.image_ids_ok = self.box_ids_ok = True
        self._image_ids: set[int] = set()
        self._box_ids: set[int] = set()

    @property
    def coco(self) -> bool:
        return self.seen and self.all_coco

    @property
    def images(self) -> bool:
        return self.coco and self.image_ids_ok

    @property
    def annotations(self) -> bool:
        return self.coco and self.box_ids_ok

    def see(self, result: ImageResult) -> None:
        self.seen = True
        if not _is_coco(result):
            self.all_coco = False
            return
        if self.image_ids_ok and result.width is not None:
            image_id = _as_int(result.record.meta["coco_id"])
            self.image_ids_ok = image_id is not None and image_id not in self._image_ids
            if image_id is not None:
                self._image_ids.add(image_id)
        if self.box_ids_ok:
            if result.record.meta.get("assigned_box_ids"):
                self.box_ids_ok = False
                return
            for mask in result.masks:
                box_id = _as_int(mask.box_id)
                if box_id is None or box_id in self._box_ids:
                    self.box_ids_ok = False
                    return
                self._box_ids.add(box_id)


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class _ListWriter:
    """Writes ``,"key":[item,item,...]`` one item at a time, one item a line."""

    def __init__(self, f: IO[str], key: str) -> None:
        self.f = f
        self.n = 0
        f.write(f",\n{_dump(key)}:[")

    def add(self, item: Any) -> None:
        self.f.write(("\n" if self.n == 0 else ",\n") + _dump(item))
        self.n += 1

    def close(self) -> None:
        self.f.write("\n]" if self.n else "]")


class CocoWriter(Writer):
    name = "coco"

    def __init__(self, output_dir: str | Path, labels: LabelMap | None = None,
                 description: str = "boxmask instance masks") -> None:
        super().__init__(output_dir, labels)
        self.description = description

    def mask_file(self, result: ImageResult, mask: MaskResult) -> str | None:
        """COCO keeps masks in the index file only: no per-mask file."""
        return None

    def merge(self, results: ResultsFactory) -> list[str]:
        rel = f"{self.name}/{FILE_NAME}"
        label_map = LabelMap(list(self.labels.ids), dict(self.labels.names))
        ids = _SourceIds()
        unknown: set[str] = set()
        with atomic_open(self.output_dir / rel, "w") as f:
            info = {"description": self.description, "version": __version__}
            f.write(f'{{"info":{_dump(info)},"licenses":[]')
            for result in results():  # which source ids can be kept, before any is written
                ids.see(result)
                unknown.update(m.label for m in result.masks if m.label not in label_map)
            if unknown:
                log.warning("%d labels missing from the label map, appended after it: %s",
                            len(unknown), ", ".join(sorted(unknown)[:10]))
            for label in sorted(unknown):
                label_map.add(label)
            keep_categories = ids.coco and all(_as_int(label) is not None
                                               for label in label_map.ids)
            if ids.coco and not (ids.images and ids.annotations and keep_categories):
                log.warning("COCO source ids that are not unique integers are renumbered "
                            "(images: %s, annotations: %s, categories: %s); the source ids "
                            "stay in box_id / source_id", *(
                                "kept" if keep else "renumbered" for keep in
                                (ids.images, ids.annotations, keep_categories)))
            images = _ListWriter(f, "images")
            for position, result in enumerate(results(), start=1):
                if result.width is not None:
                    images.add(self._image(result, self._image_id(result, position, ids)))
            images.close()
            annotations = _ListWriter(f, "annotations")
            running = 0
            for position, result in enumerate(results(), start=1):
                if result.width is None:
                    continue
                image_id = self._image_id(result, position, ids)
                for mask in result.masks:
                    running += 1
                    ann_id = int(mask.box_id) if ids.annotations else running
                    category_id = (int(mask.label) if keep_categories
                                   else label_map.index(mask.label) + 1)
                    annotations.add(self._annotation(mask, ann_id, image_id, category_id))
            annotations.close()
            categories = _ListWriter(f, "categories")
            for label in label_map.ids:
                category_id = int(label) if keep_categories else label_map.index(label) + 1
                categories.add({"id": category_id, "name": label_map.name(label),
                                "source_id": label})
            categories.close()
            f.write("}\n")
        return [rel]

    @staticmethod
    def _image_id(result: ImageResult, position: int, ids: _SourceIds) -> int:
        return int(result.record.meta["coco_id"]) if ids.images else position

    @staticmethod
    def _image(result: ImageResult, image_id: int) -> dict[str, Any]:
        width, height = result.decoded_size
        return {"id": image_id, "file_name": result.record.image_path,
                "width": width, "height": height}

    @staticmethod
    def _annotation(mask: MaskResult, ann_id: int, image_id: int,
                    category_id: int) -> dict[str, Any]:
        tight = masklib.rle_box(mask.rle)
        return {
            "id": ann_id,
            "image_id": image_id,
            "category_id": category_id,
            "segmentation": {"size": list(mask.rle["size"]), "counts": mask.rle["counts"]},
            "area": masklib.rle_area(mask.rle),
            "bbox": to_xywh(int_box(mask.box_xyxy)),
            "mask_bbox": None if tight is None else to_xywh(tight),
            "iscrowd": 0,
            "score": round(float(mask.score), 6),
            "box_id": mask.box_id,
        }
