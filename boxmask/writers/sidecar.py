"""The sidecar: everything known about every mask and every error, as JSON lines.

Always written, whatever the output formats:

* ``<output>/masks.jsonl``: one line per mask, in plan order then source box order, with keys
  ``image_id, image_path, width, height`` (decoded size), ``box_id, index, label, label_name,
  box_xyxy`` (the resolved input box, library convention: 0-based inclusive pixels),
  ``mask_xyxy`` (the mask's own tight box, same convention; null for an empty mask),
  ``engine, inside_policy`` (run settings), ``clicks`` (``[x, y, positive 0/1, kind]`` in image
  pixels), ``score``, ``metrics`` (``MaskResult.metrics`` as is, flags included), ``rle`` (COCO
  RLE of the full-image mask), ``files`` (``{format: path}`` of the per-image / per-mask file
  holding this mask in each format, relative to the output directory; only files the worker
  recorded as written in ``ImageResult.files``) and ``written_ids`` (``{format: {column:
  id}}``: the IDs written for this mask by each format whose IDs can differ from the source
  IDs above; the Open Images output prefixes IDs that a CSV reader would turn into numbers
  (``{"openimages": {"ImageID": "img-139", "LabelName": "class-18", "BoxID": "box-1768"}}``)).
  A mask that ``boxmask redo`` replaced has the redo's ``engine`` and ``inside_policy`` and two
  more keys at the end: ``redo`` (the name of the redo that made it) and ``history`` (its earlier
  versions, oldest first: ``{"version", "redo", "engine", "inside_policy", "score", "flags",
  "mask_xyxy", "rle_sha256", "replaced_by", "replaced_at"}``; see ``boxmask.jobs.redo``).
* ``<output>/errors.jsonl``: one line per error record, keys ``image_id, box_id, stage, reason,
  source`` (null where unknown; ``source`` holds ``ErrorRecord.location``, where the failing input
  was read from).

Same results in, same bytes out: keys in a fixed order, no timestamps.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .. import masks as masklib
from ..atomic import atomic_open
from ..labels import LabelMap
from ..records import ErrorRecord, ImageResult, MaskResult
from ..safepath import UnsafePathError
from .base import ResultsFactory, Writer
from .registry import create_writer

log = logging.getLogger(__name__)

MASKS_FILE = "masks.jsonl"
ERRORS_FILE = "errors.jsonl"


def _line(value: dict[str, Any]) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")) + "\n"


def _list(box: tuple[int, int, int, int] | None) -> list[int] | None:
    return None if box is None else [int(v) for v in box]


def error_line(error: ErrorRecord) -> dict[str, Any]:
    return {"image_id": error.image_id, "box_id": error.box_id, "stage": error.stage,
            "reason": error.reason, "source": error.location}


class SidecarWriter(Writer):
    name = "sidecar"

    def __init__(self, output_dir: str | Path, labels: LabelMap | None = None,
                 engine: str | None = None, inside_policy: str | None = None,
                 formats: Sequence[str | Writer] = ()) -> None:
        """``formats``: the run's output formats, as names (``"coco"``, ...) or writer objects,
        used to fill each line's ``files`` and ``written_ids``."""
        super().__init__(output_dir, labels)
        self.root = self.output_dir
        self.engine = engine
        self.inside_policy = inside_policy
        self.formats = [create_writer(f, self.output_dir, self.labels) if isinstance(f, str)
                        else f for f in formats]

    def mask_line(self, result: ImageResult, mask: MaskResult) -> dict[str, Any]:
        record = result.record
        origin = mask.origin or {}
        line = {
            "image_id": record.image_id,
            "image_path": record.image_path,
            "width": result.width,
            "height": result.height,
            "box_id": mask.box_id,
            "index": mask.index,
            "label": mask.label,
            "label_name": self.labels.name(mask.label),
            "box_xyxy": [int(v) for v in mask.box_xyxy],
            "mask_xyxy": _list(masklib.rle_box(mask.rle)),
            "engine": origin.get("engine", self.engine),
            "inside_policy": origin.get("inside_policy", self.inside_policy),
            "clicks": [c.to_json() for c in mask.clicks],
            "score": round(float(mask.score), 6),
            "metrics": mask.metrics,
            "rle": {"size": list(mask.rle["size"]), "counts": mask.rle["counts"]},
            "files": self._files(result, mask),
            "written_ids": self._written_ids(result, mask),
        }
        if mask.origin is not None:
            line["redo"] = origin.get("redo")
            line["history"] = mask.history
        return line

    def _files(self, result: ImageResult, mask: MaskResult) -> dict[str, str]:
        written = set(result.files)
        files = {}
        for fmt in self.formats:
            try:
                path = fmt.mask_file(result, mask)
            except UnsafePathError:
                continue
            if path is not None and path in written:
                files[fmt.name] = path
        return files

    def _written_ids(self, result: ImageResult, mask: MaskResult) -> dict[str, dict[str, str]]:
        out = {}
        for fmt in self.formats:
            ids = fmt.written_ids(result, mask)
            if ids is not None:
                out[fmt.name] = ids
        return out

    def merge(self, results: ResultsFactory,
              errors: Iterable[ErrorRecord] = ()) -> list[str]:
        """Write both files in one pass; ``errors`` (e.g. read-stage errors that never became an
        image result) go first in ``errors.jsonl``, then each result's errors in plan order."""
        with atomic_open(self.output_dir / MASKS_FILE, "w") as masks_f, \
                atomic_open(self.output_dir / ERRORS_FILE, "w") as errors_f:
            for error in errors:
                errors_f.write(_line(error_line(error)))
            for result in results():
                for mask in result.masks:
                    masks_f.write(_line(self.mask_line(result, mask)))
                for error in result.errors:
                    errors_f.write(_line(error_line(error)))
        return [MASKS_FILE, ERRORS_FILE]
