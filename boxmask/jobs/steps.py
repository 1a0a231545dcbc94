"""The per-image steps of a worker: load, resolve boxes, segment, measure, write.

Each step turns failures into error records on the image's ``ImageResult`` so that one bad image
or box never stops the rest of the dataset:

* ``load``: decode the image (stage ``decode``; when the whole images root is gone it raises
  ``ImagesRootMissing`` instead, so that a lost mount stops the job), map every box into the
  decoded image's pixels and validate it (stage ``box``). When the annotation's declared size
  differs from the decoded image (e.g. ImageNet JPEGs resized after annotation), boxes are
  rescaled and a warning is kept.
* ``segment``: run the inside-point policy and the engine on a batch of loaded images (stage
  ``engine``; a failing batch is retried image by image so one bad image does not sink the batch).
* ``finish``: encode masks as RLE, compute quality metrics, write per-image files (stage ``write``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import boxes as B
from ..engines.base import Engine, Prediction, SegmentRequest
from ..imageio import ImageDecodeError, decode_image
from ..maskmetrics import mask_metrics
from ..masks import encode_rle
from ..points import InsidePointPolicy
from ..records import Box, BoxXYXY, ErrorRecord, ImageRecord, ImageResult, MaskResult
from ..safepath import UnsafePathError, join_inside
from ..writers.base import Writer
from .plan import Settings

log = logging.getLogger(__name__)


class ImagesRootMissing(OSError):
    """The images root disappeared while the job ran: a fatal error, never an image's error."""


@dataclass
class LoadedImage:
    """A decoded image with its usable boxes, and the result being built for it."""

    result: ImageResult
    rgb: np.ndarray | None = None
    boxes: list[tuple[Box, BoxXYXY]] = field(default_factory=list)
    predictions: list[Prediction] | None = None


def error_result(error: ErrorRecord) -> ImageResult:
    """The result line for an input item that was already an error (a read error)."""
    record = ImageRecord(image_id=error.image_id or "", image_path="", location=error.location)
    return ImageResult(record=record, errors=[error])


def resolve_boxes(record: ImageRecord, width: int, height: int, min_side: int,
                  result: ImageResult) -> list[tuple[Box, BoxXYXY]]:
    """Map the record's boxes into a decoded ``width`` x ``height`` image and validate them.

    Errors and warnings are added to ``result``; returns the usable (box, pixel box) pairs.
    """
    rescale: tuple[tuple[int, int], tuple[int, int]] | None = None
    if record.width and record.height and (record.width, record.height) != (width, height):
        rescale = ((record.width, record.height), (width, height))
        result.warnings.append(
            f"declared size {record.width}x{record.height} differs from the decoded image "
            f"{width}x{height}; boxes rescaled by ({width / record.width:.4f}, "
            f"{height / record.height:.4f})")
    usable: list[tuple[Box, BoxXYXY]] = []
    for box in record.boxes:
        if box.xyxy is not None:
            xyxy = B.int_box(box.xyxy)
            if rescale is not None:
                xyxy = B.rescale(xyxy, rescale[0], rescale[1])
        elif box.xyxy_norm is not None:
            xyxy = B.from_normalized(*box.xyxy_norm, width, height)
        else:
            result.errors.append(ErrorRecord("box", "box has no coordinates", record.image_id,
                                             box.box_id, record.location))
            continue
        checked = B.validate(xyxy, width, height, min_side=min_side)
        if checked.error or checked.box is None:
            result.errors.append(ErrorRecord("box", checked.error or "unusable box",
                                             record.image_id, box.box_id, record.location))
            continue
        if checked.warning:
            result.warnings.append(f"{box.box_id}: {checked.warning}")
        usable.append((box, checked.box))
    return usable


def load(record: ImageRecord, images_root: Path, settings: Settings) -> LoadedImage:
    """Decode the record's image and resolve its boxes; never raises for bad input."""
    result = ImageResult(record=record)
    for skipped in record.meta.get("skipped", []):
        result.warnings.append(f"{skipped.get('box_id')}: {skipped.get('reason')}")
    loaded = LoadedImage(result=result)
    try:
        path = join_inside(images_root, record.image_path, "image path")
    except UnsafePathError as e:
        result.errors.append(ErrorRecord("read", str(e), record.image_id, None, record.location))
        return loaded
    declared = (record.width, record.height) if record.width and record.height else None
    try:
        decoded = decode_image(path, max_pixels=settings.max_pixels, exif=settings.exif,
                               declared_size=declared)
    except ImageDecodeError as e:
        if not images_root.is_dir():  # not this image: the whole images root is gone
            raise ImagesRootMissing(f"the images root {images_root} is gone (unmounted, moved "
                                    "or deleted?); stopping: mount it again and resume") from e
        result.errors.append(ErrorRecord("decode", str(e), record.image_id, None,
                                         record.image_path))
        return loaded
    result.warnings.extend(decoded.warnings)
    loaded.rgb = decoded.rgb
    result.width, result.height = decoded.size
    loaded.boxes = resolve_boxes(record, result.width, result.height, settings.min_box_side,
                                 result)
    return loaded


def segment(policy: InsidePointPolicy, engine: Engine, batch: Sequence[LoadedImage]) -> None:
    """Fill ``predictions`` of every loaded image that has boxes; engine failures become errors."""
    todo = [li for li in batch if li.rgb is not None and li.boxes]
    if not todo:
        return
    try:
        _segment_all(policy, engine, todo)
        return
    except Exception as e:  # retry one by one to isolate the image that fails
        if len(todo) == 1:
            _engine_error(todo[0], e)
            return
        log.warning("engine failed on a batch of %d images (%s); retrying one by one",
                    len(todo), e)
    for li in todo:
        try:
            _segment_all(policy, engine, [li])
        except Exception as e:
            _engine_error(li, e)


def _decoded(li: LoadedImage) -> np.ndarray:
    """The image's pixels; only decoded images reach the engine."""
    if li.rgb is None:
        raise ValueError(f"image {li.result.record.image_id!r} was not decoded")
    return li.rgb


def _segment_all(policy: InsidePointPolicy, engine: Engine, todo: Sequence[LoadedImage]) -> None:
    requests = [SegmentRequest(image=_decoded(li), boxes=np.array([b for _, b in li.boxes]))
                for li in todo]
    predictions = policy.segment(engine, requests)
    if len(predictions) != len(todo):
        raise RuntimeError(f"engine returned {len(predictions)} results for {len(todo)} images")
    for li, preds in zip(todo, predictions, strict=True):
        if len(preds) != len(li.boxes):
            raise RuntimeError(f"engine returned {len(preds)} masks for {len(li.boxes)} boxes")
        li.predictions = preds


def _engine_error(li: LoadedImage, e: Exception) -> None:
    log.exception("engine failed on %s", li.result.record.image_id)
    li.result.errors.append(ErrorRecord("engine", f"{type(e).__name__}: {e}",
                                        li.result.record.image_id, None, li.result.record.location))
    li.predictions = None


def finish(li: LoadedImage, writers: Sequence[Writer]) -> ImageResult:
    """Turn predictions into mask results and write the per-image files of every format."""
    result = li.result
    if li.predictions is not None:
        for (box, xyxy), pred in zip(li.boxes, li.predictions, strict=True):
            mask = np.asarray(pred.mask, dtype=bool)
            metrics = mask_metrics(mask, xyxy, score=float(pred.score))
            metrics.update({k: v for k, v in pred.extras.items() if k not in metrics})
            result.masks.append(MaskResult(
                box_id=box.box_id, label=box.label, index=box.index, box_xyxy=xyxy,
                rle=encode_rle(mask), score=float(pred.score), clicks=list(pred.clicks),
                metrics=metrics))
    li.rgb = None
    if result.width is None:
        return result
    for writer in writers:
        try:
            result.files.extend(writer.write_image(result))
        except UnsafePathError as e:
            result.errors.append(ErrorRecord("write", str(e), result.record.image_id, None,
                                             result.record.location))
    return result
