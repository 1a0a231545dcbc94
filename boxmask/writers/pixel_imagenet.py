"""Pixel-ImageNet style output: one instance PNG per image and a class table.

Layout under ``<output>/pixel-imagenet/``::

    <group>/<image_id>.png   one PNG per decoded image
    label-v1.json            {"<class index>": [wnid, name, number of images], ...}

PNG contents: pixel value ``k + 1`` = the mask of the box at 0-based position ``k`` of the source
record (``MaskResult.index``), 0 = background. A box without a mask (it failed) keeps its value
unused, so values always map back to the source box order (ILSVRC: the k-th ``<object>`` of the
XML). Where masks overlap, ``boxmask.masks.instance_map``'s rule applies (smaller mask wins, then
lower index). The PNG is 8-bit, or 16-bit when the record has more than 255 boxes; its size is the
decoded image's. Images that failed to decode get no PNG; an image without any mask gets an
all-zero PNG. ``<group>`` is ``ImageRecord.group`` (ILSVRC: the WordNet id folder), else the first
box label, made filename-safe; ``unlabeled`` for a record with neither.

``label-v1.json`` follows the Pixel-ImageNet class table: key = class index from the label map
(for ILSVRC, ``LOC_synset_mapping.txt`` line order, the standard 0..999 class index), value =
``[wnid, name, number of images with at least one non-empty mask of the class]`` (counting only
images that got a PNG); classes with no such image are left out. Labels missing from the label map
get indices after it, in sorted order.

The official ``label-v1.json`` is *double-encoded* JSON (its top-level value is a string holding
JSON); ours is plain JSON: ``json.load`` gives the dict directly.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

from .. import masks as masklib
from ..atomic import atomic_write_bytes, atomic_write_text
from ..labels import LabelMap
from ..records import ImageRecord, ImageResult, MaskResult
from ..safepath import UnsafePathError, check_component, sanitize_component
from .base import ResultsFactory, Writer

log = logging.getLogger(__name__)

LABEL_FILE = "label-v1.json"
NO_GROUP = "unlabeled"


class PixelImageNetWriter(Writer):
    name = "pixel-imagenet"

    def __init__(self, output_dir: str | Path, labels: LabelMap | None = None,
                 fsync: bool = True) -> None:
        super().__init__(output_dir, labels)
        self.fsync = fsync

    def relative_path(self, record: ImageRecord) -> str:
        """``pixel-imagenet/<group>/<image_id>.png``; raises ``UnsafePathError`` for unsafe ids."""
        if record.group:
            group = sanitize_component(record.group)
        elif record.boxes:
            group = sanitize_component(record.boxes[0].label)
        else:
            group = NO_GROUP
        image_id = check_component(record.image_id, "image id")
        return f"{self.name}/{group}/{image_id}.png"

    def _is_safe(self, record: ImageRecord) -> bool:
        try:
            self.relative_path(record)
        except UnsafePathError:
            return False
        return True

    def mask_file(self, result: ImageResult, mask: MaskResult) -> str | None:
        """The file that holds ``mask`` (the image's PNG, value ``mask.index + 1``), or None."""
        return None if result.width is None else self.relative_path(result.record)

    def write_image(self, result: ImageResult) -> list[str]:
        if result.width is None or result.height is None:
            return []
        rel = self.relative_path(result.record)
        top = max([len(result.record.boxes)] + [m.index + 1 for m in result.masks])
        label_image, contested = masklib.instance_map(
            [m.rle for m in result.masks], [m.index for m in result.masks],
            result.height, result.width, dtype=masklib.instance_dtype(top))
        if contested:
            log.debug("%s: %d pixels claimed by several masks", result.record.image_id, contested)
        atomic_write_bytes(self.output_dir / rel, masklib.encode_png(label_image), fsync=self.fsync)
        return [rel]

    def merge(self, results: ResultsFactory) -> list[str]:
        counts: Counter[str] = Counter()
        for result in results():
            if result.width is None or not self._is_safe(result.record):
                continue  # no PNG for this image
            counts.update({m.label for m in result.masks if masklib.rle_area(m.rle) > 0})
        label_map = self.label_map_with(counts)
        table = {
            str(label_map.index(label)): [label, label_map.name(label), counts[label]]
            for label in sorted(counts, key=label_map.index)
        }
        rel = f"{self.name}/{LABEL_FILE}"
        atomic_write_text(self.output_dir / rel, json.dumps(table, ensure_ascii=False) + "\n")
        return [rel]
