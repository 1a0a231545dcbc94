"""COCO instances JSON with RLE masks: ``<output>/coco/instances.json``.

Loadable with ``pycocotools.coco.COCO``; ``annToMask`` gives back each mask exactly.

* ``images``: one entry per decoded image (images that failed to decode are left out):
  ``id`` = the source's COCO image id (``record.meta["coco_id"]``) when there is one, else the
  image's 1-based position in plan order (so an id does not change when another image fails);
  ``file_name`` = ``ImageRecord.image_path``; ``width``/``height`` = the decoded size.
* ``annotations``: one per mask. ``id`` = ``int(box_id)`` for COCO sources (the reader keeps the
  COCO annotation id as the box id), else a 1-based running number; ``category_id`` =
  ``int(label)`` for COCO sources, else the label-map index + 1; ``segmentation`` = compressed RLE
  (``counts`` as a string); ``area`` = mask pixel count; ``bbox`` = the **input box**
  ``[x, y, w, h]`` on pixel edges, not the mask's tight box: it records what the mask was made
  from (``rle_box`` of the segmentation gives the tight box); ``iscrowd`` = 0; plus ``score`` and
  ``box_id``.
* ``categories`` (written last, once every label has been seen): every label of the label map
  plus any label met in the results but missing from it, each ``{"id", "name", "source_id"}``
  with ``source_id`` the source class id (WordNet id, ``/m/`` MID, COCO category id).

A source is taken to be COCO when its records carry ``meta["coco_id"]``; one run reads one source.
The file is streamed (two passes over the results: images, then annotations) into a temporary
file that replaces ``instances.json`` atomically at the end; no list of results is kept.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import IO, Any

from .. import __version__
from .. import masks as masklib
from ..atomic import atomic_open
from ..boxes import to_xywh
from ..labels import LabelMap
from ..records import ImageResult, MaskResult
from .base import ResultsFactory, Writer

log = logging.getLogger(__name__)

FILE_NAME = "instances.json"


def _is_coco(result: ImageResult) -> bool:
    return "coco_id" in result.record.meta


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
        coco_source = False
        unknown: set[str] = set()
        with atomic_open(self.output_dir / rel, "w") as f:
            info = {"description": self.description, "version": __version__}
            f.write(f'{{"info":{_dump(info)},"licenses":[]')
            images = _ListWriter(f, "images")
            for position, result in enumerate(results(), start=1):
                coco_source = coco_source or _is_coco(result)
                unknown.update(m.label for m in result.masks if m.label not in label_map)
                if result.width is not None:
                    images.add(self._image(result, position))
            images.close()
            if unknown:
                log.warning("%d labels missing from the label map, appended after it: %s",
                            len(unknown), ", ".join(sorted(unknown)[:10]))
            for label in sorted(unknown):
                label_map.add(label)
            annotations = _ListWriter(f, "annotations")
            running = 0
            for position, result in enumerate(results(), start=1):
                if result.width is None:
                    continue
                image_id = self._image_id(result, position)
                for mask in result.masks:
                    running += 1
                    ann_id, category_id = (
                        (int(mask.box_id), int(mask.label)) if _is_coco(result)
                        else (running, label_map.index(mask.label) + 1))
                    annotations.add(self._annotation(mask, ann_id, image_id, category_id))
            annotations.close()
            categories = _ListWriter(f, "categories")
            for label in label_map.ids:
                category_id = int(label) if coco_source else label_map.index(label) + 1
                categories.add({"id": category_id, "name": label_map.name(label),
                                "source_id": label})
            categories.close()
            f.write("}\n")
        return [rel]

    @staticmethod
    def _image_id(result: ImageResult, position: int) -> int:
        return int(result.record.meta["coco_id"]) if _is_coco(result) else position

    def _image(self, result: ImageResult, position: int) -> dict[str, Any]:
        return {"id": self._image_id(result, position), "file_name": result.record.image_path,
                "width": int(result.width), "height": int(result.height)}

    @staticmethod
    def _annotation(mask: MaskResult, ann_id: int, image_id: int,
                    category_id: int) -> dict[str, Any]:
        return {
            "id": ann_id,
            "image_id": image_id,
            "category_id": category_id,
            "segmentation": {"size": list(mask.rle["size"]), "counts": mask.rle["counts"]},
            "area": masklib.rle_area(mask.rle),
            "bbox": to_xywh(tuple(mask.box_xyxy)),
            "iscrowd": 0,
            "score": round(float(mask.score), 6),
            "box_id": mask.box_id,
        }
