"""Open Images V5 style segmentation output: one binary PNG per mask plus the index CSV.

Layout under ``<output>/openimages/``::

    masks/<C>/<ImageID>_<LabelName without slashes>_<BoxID>.png
    annotations-object-segmentation.csv

``<C>`` is the first character of the ImageID, upper-cased: the official masks come in 16 zips
bucketed by that character, and FiftyOne's Open Images importer looks for them under
``masks/<ImageID[0].upper()>/``. The CSV's ``MaskPath`` is the bare file name, as in the official
CSV.

Mask PNGs: single-channel, binary, written as 1-bit greyscale. The official V5 masks are binary
single-channel PNGs that readers threshold after a greyscale decode (FiftyOne ``> 122``, others
``> 0``); with OpenCV ours decode to 0 / 255 and with PIL to ``False``/``True``, so both
thresholds work. Unlike the official masks, which often do not have the image's resolution
(readers resize them with nearest-neighbour; openimages/dataset#92), ours are always at the
decoded image's resolution.

CSV columns (exactly the official header)::

    MaskPath,ImageID,LabelName,BoxID,BoxXMin,BoxXMax,BoxYMin,BoxYMax,PredictedIoU,Clicks

Box coordinates are the *input* box normalised to [0, 1] edges (note the order XMin, XMax, YMin,
YMax), 6 decimals; ``PredictedIoU`` is the engine's mask score, 5 decimals; ``Clicks`` lists the
clicks the engine used as ``x y label`` separated by ``;``, normalised pixel centres
(``(x + 0.5) / W``, ``(y + 0.5) / H``) with 5 decimals, label 1 = positive, 0 = negative.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from .. import masks as masklib
from ..atomic import atomic_open, atomic_write_bytes
from ..boxes import to_normalized
from ..labels import LabelMap
from ..records import Click, ImageResult, MaskResult
from ..safepath import UnsafePathError, check_component, sanitize_component
from .base import ResultsFactory, Writer

log = logging.getLogger(__name__)

CSV_NAME = "annotations-object-segmentation.csv"
HEADER = ("MaskPath", "ImageID", "LabelName", "BoxID", "BoxXMin", "BoxXMax", "BoxYMin",
          "BoxYMax", "PredictedIoU", "Clicks")


def _num(value: float, decimals: int) -> str:
    """``0.887500`` -> ``0.8875``, ``1.000000`` -> ``1``: fixed decimals, trailing zeros dropped."""
    text = f"{value:.{decimals}f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def format_clicks(clicks: list[Click], width: int, height: int) -> str:
    """Clicks in image pixels -> ``"x y label;..."`` with normalised pixel centres."""
    return ";".join(f"{(c.x + 0.5) / width:.5f} {(c.y + 0.5) / height:.5f} {int(c.positive)}"
                    for c in clicks)


class OpenImagesWriter(Writer):
    name = "openimages"

    def __init__(self, output_dir: str | Path, labels: LabelMap | None = None,
                 fsync: bool = True) -> None:
        super().__init__(output_dir, labels)
        self.fsync = fsync

    def mask_name(self, image_id: str, mask: MaskResult) -> str:
        """``<ImageID>_<LabelName without slashes>_<BoxID>.png``; ``UnsafePathError`` if unsafe."""
        image_id = check_component(image_id, "image id")
        label = sanitize_component(mask.label)
        box_id = check_component(mask.box_id, "box id")
        return f"{image_id}_{label}_{box_id}.png"

    def mask_file(self, result: ImageResult, mask: MaskResult) -> str | None:
        """Path of ``mask``'s PNG relative to the output directory."""
        if result.width is None:
            return None
        image_id = result.record.image_id
        return f"{self.name}/masks/{image_id[:1].upper()}/{self.mask_name(image_id, mask)}"

    def write_image(self, result: ImageResult) -> list[str]:
        if result.width is None:
            return []
        # Every name is checked before anything is written: an image is written whole or not at all.
        files = [self.mask_file(result, mask) for mask in result.masks]
        for rel, mask in zip(files, result.masks, strict=True):
            data = masklib.encode_binary_png(masklib.decode_rle(mask.rle))
            atomic_write_bytes(self.output_dir / rel, data, fsync=self.fsync)
        return files

    def merge(self, results: ResultsFactory) -> list[str]:
        rel = f"{self.name}/{CSV_NAME}"
        with atomic_open(self.output_dir / rel, "w") as f:
            out = csv.writer(f, lineterminator="\n")
            out.writerow(HEADER)
            for result in results():
                if result.width is None:
                    continue
                w, h = result.width, result.height
                try:
                    names = [self.mask_name(result.record.image_id, m) for m in result.masks]
                except UnsafePathError as e:  # write_image wrote none of them; it was recorded
                    log.warning("no CSV rows for %r: %s", result.record.image_id, e)
                    continue
                for name, mask in zip(names, result.masks, strict=True):
                    x0, y0, x1, y1 = to_normalized(tuple(mask.box_xyxy), w, h)
                    out.writerow([
                        name, result.record.image_id, mask.label, mask.box_id,
                        _num(x0, 6), _num(x1, 6), _num(y0, 6), _num(y1, 6),
                        _num(mask.score, 5), format_clicks(mask.clicks, w, h)])
        return [rel]
