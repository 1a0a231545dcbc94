"""Open Images V7 segmentation output in the folder layout FiftyOne loads with one call.

Layout under ``<output>/openimages/`` (FiftyOne's ``OpenImagesV7Dataset`` layout)::

    data/<ImageID>.<ext>                  the images: symbolic links, or copies (--copy-images)
    labels/segmentations.csv              one row per mask (the official columns)
    labels/annotations-object-segmentation.csv
                                          the same file under the official name (a link to
                                          segmentations.csv, or a copy with --copy-images)
    labels/masks/<C>/<ImageID>_<LabelName without slashes>_<BoxID>.png
    metadata/classes.csv                  LabelName,DisplayName per class, no header
    metadata/segmentation_classes.csv     the LabelNames that have masks, one a line
    metadata/hierarchy.json               flat: {"LabelName": "Entity", "Subcategory":
                                          [{"LabelName": <display name>}, ...]}

so that ``fo.Dataset.from_dir(dataset_dir=<output>/openimages,
dataset_type=fo.types.OpenImagesV7Dataset, label_types=["segmentations"])`` loads every decoded
image with its masks (FiftyOne crops each mask to ``int(v * W)`` of the box edges, which
``boxmask.boxes.normalized_edges`` makes exact).

IDs: ``ImageID``, ``LabelName`` and ``BoxID`` are the source's, except that an ID a
type-inferring CSV reader could turn into a number, boolean or missing value gets a prefix
(``139`` -> ``img-139``, ``18`` -> ``class-18``, ``1768`` -> ``box-1768``; see
``boxmask.writers.textids``). The written IDs are used everywhere in this folder: CSV columns,
mask and image file names, the mask folder ``<C>`` (the written ImageID's first character,
upper-cased, as in the official 16 mask zips). The sidecar records each mask's written IDs
beside the source ones; the manifest records the prefixes and the renamed labels.

``data/``: one entry per decoded image, named by its written ImageID and the extension of its
real format (sniffed from its bytes: ``.jpg``, ``.png``, ...; an ILSVRC ``.JPEG`` becomes
``.jpg``, a PNG named ``.JPEG`` becomes ``.png``). Links point at the absolute path of the
source image (under the run's images root); a copy is independent of it. Images that failed to
decode have no entry and no rows.

Mask PNGs: single-channel, binary, written as 1-bit greyscale, at the decoded image's
resolution. The official masks are binary single-channel PNGs that readers threshold after a
greyscale decode (FiftyOne ``> 122``, others ``> 0``); ours decode to 0 / 255 with OpenCV and
to ``False``/``True`` with PIL, so both thresholds work. (The official masks often do not have
the image's resolution, and readers resize them nearest-neighbour; openimages/dataset#92.)

CSV columns (exactly the official header)::

    MaskPath,ImageID,LabelName,BoxID,BoxXMin,BoxXMax,BoxYMin,BoxYMax,PredictedIoU,Clicks

``MaskPath`` is the bare file name, as in the official CSV. Box coordinates are the *input* box
as normalised edges (note the order XMin, XMax, YMin, YMax): ``x0`` and ``x1 + 1`` over the
width, written by ``boxmask.boxes.normalized_edge_text`` so that ``int(v * W)`` gives back
``x0`` and ``x1 + 1`` exactly (up to 7 decimals; 0 and 1 on the image border).
``PredictedIoU`` is the engine's mask score, 5 decimals; ``Clicks`` lists the clicks the engine
used as ``x y label`` separated by ``;``, normalised pixel centres (``(x + 0.5) / W``,
``(y + 0.5) / H``) with 5 decimals, label 1 = positive, 0 = negative.
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

from .. import masks as masklib
from ..atomic import (
    atomic_copy,
    atomic_open,
    atomic_symlink,
    atomic_write_bytes,
    atomic_write_text,
)
from ..boxes import decimal_text, normalized_edges
from ..imageio import sniff_format
from ..labels import LabelMap
from ..records import Click, ImageResult, MaskResult
from ..safepath import UnsafePathError, check_component, join_inside, sanitize_component
from .base import ResultsFactory, Writer
from .textids import PREFIXES, written_id

log = logging.getLogger(__name__)

CSV_NAME = "labels/segmentations.csv"
OFFICIAL_CSV_NAME = "labels/annotations-object-segmentation.csv"
CLASSES_NAME = "metadata/classes.csv"
SEGMENTATION_CLASSES_NAME = "metadata/segmentation_classes.csv"
HIERARCHY_NAME = "metadata/hierarchy.json"
DATA_DIR = "data"
MASKS_DIR = "labels/masks"
IMAGE_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif",
                    "WEBP": ".webp"}
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


def image_extension(path: Path) -> str:
    """The extension of ``path``'s real format (sniffed from its first bytes), else its own
    extension lower-cased."""
    with open(path, "rb") as f:
        fmt = sniff_format(f.read(16))
    return IMAGE_EXTENSIONS.get(fmt or "", path.suffix.lower())


def display_names(label_map: LabelMap) -> dict[str, str]:
    """Each label's display name for ``metadata/``, unique: a name that several labels share
    (ILSVRC has two "crane" synsets, a bird and a machine) becomes ``"<name> (<label id>)"`` for
    each of them, since FiftyOne labels its objects by display name and would merge them."""
    counts = Counter(label_map.name(label) for label in label_map.ids)
    return {label: (name if counts[name] == 1 else f"{name} ({label})")
            for label in label_map.ids for name in [label_map.name(label)]}


def place_file(source: Path, dest: Path, copy: bool, fsync: bool = True) -> bool:
    """Make ``dest`` a link to (or, with ``copy``, a copy of) ``source``; nothing is done when
    it already is one (a copy: a regular file of the same size). A relative ``source`` is
    relative to ``dest``'s folder. Where the filesystem has no symbolic links, ``dest`` is a
    copy. Returns whether it wrote."""
    if not copy:
        if dest.is_symlink() and os.readlink(dest) == str(source):
            return False
        try:
            atomic_symlink(source, dest, fsync=fsync)
            return True
        except OSError as e:  # e.g. no symlinks on this filesystem: a copy serves as well
            log.warning("cannot link %s (%s); copying it", dest, e)
    if not dest.is_symlink() and dest.is_file() and \
            dest.stat().st_size == (dest.parent / source).stat().st_size:
        return False
    atomic_copy(dest.parent / source, dest, fsync=fsync)
    return True


class _RowWriter:
    """Writes CSV rows in small batches, so that the box edges of a batch are converted by one
    vectorised ``normalized_edges`` call (a call per row would cost more than the row)."""

    BATCH = 256

    def __init__(self, out: Any) -> None:
        self.out = out
        self.rows: list[list[str]] = []
        self.edges: list[tuple[int, int, int, int]] = []
        self.sizes: list[tuple[int, int, int, int]] = []

    def add(self, name: str, ids: dict[str, str], mask: MaskResult, width: int,
            height: int) -> None:
        x0, y0, x1, y1 = (int(v) for v in mask.box_xyxy)
        self.rows.append([name, ids["ImageID"], ids["LabelName"], ids["BoxID"],
                          _num(mask.score, 5), format_clicks(mask.clicks, width, height)])
        self.edges.append((x0, x1 + 1, y0, y1 + 1))  # the CSV's XMin, XMax, YMin, YMax
        self.sizes.append((width, width, height, height))
        if len(self.rows) >= self.BATCH:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        numerators, decimals = (a.tolist() for a in normalized_edges(self.edges, self.sizes))
        for row, nums, decs in zip(self.rows, numerators, decimals, strict=True):
            coords = [decimal_text(n, d) for n, d in zip(nums, decs, strict=True)]
            self.out.writerow(row[:4] + coords + row[4:])
        self.rows, self.edges, self.sizes = [], [], []


class OpenImagesWriter(Writer):
    name = "openimages"
    OPTIONS = frozenset({"images_root", "copy_images"})

    def __init__(self, output_dir: str | Path, labels: LabelMap | None = None,
                 fsync: bool = True, images_root: str | Path | None = None,
                 copy_images: bool = False) -> None:
        """``images_root``: the folder the records' ``image_path`` is relative to (the run's
        images root); without it ``merge`` writes no ``data/``. ``copy_images``: ``data/``
        holds copies instead of links (and the official-name CSV is a copy too)."""
        super().__init__(output_dir, labels)
        self.fsync = fsync
        self.images_root = None if images_root is None else Path(images_root).absolute()
        self.copy_images = copy_images

    def written_ids(self, result: ImageResult, mask: MaskResult) -> dict[str, str]:
        """The ``ImageID``, ``LabelName`` and ``BoxID`` written for ``mask`` (see ``textids``)."""
        return {"ImageID": written_id(result.record.image_id, "ImageID"),
                "LabelName": written_id(mask.label, "LabelName"),
                "BoxID": written_id(mask.box_id, "BoxID")}

    def mask_name(self, ids: dict[str, str]) -> str:
        """``<ImageID>_<LabelName without slashes>_<BoxID>.png`` of the written ``ids``;
        ``UnsafePathError`` if unsafe."""
        image_id = check_component(ids["ImageID"], "image id")
        label = sanitize_component(ids["LabelName"])
        box_id = check_component(ids["BoxID"], "box id")
        return f"{image_id}_{label}_{box_id}.png"

    def mask_file(self, result: ImageResult, mask: MaskResult) -> str | None:
        """Path of ``mask``'s PNG relative to the output directory."""
        if result.width is None:
            return None
        return self._png_path(result, mask)

    def _png_path(self, result: ImageResult, mask: MaskResult) -> str:
        ids = self.written_ids(result, mask)
        folder = ids["ImageID"][:1].upper()
        return f"{self.name}/{MASKS_DIR}/{folder}/{self.mask_name(ids)}"

    def write_image(self, result: ImageResult) -> list[str]:
        if result.width is None:
            return []
        # Every name is checked before anything is written: an image is written whole or not at all.
        files = [self._png_path(result, mask) for mask in result.masks]
        for rel, mask in zip(files, result.masks, strict=True):
            data = masklib.encode_binary_png(masklib.decode_rle(mask.rle))
            atomic_write_bytes(self.output_dir / rel, data, fsync=self.fsync)
        return files

    def merge(self, results: ResultsFactory) -> list[str]:
        """Write the CSVs, ``metadata/`` and ``data/`` (one pass over the results); the
        manifest's view of it is left in ``self.summary``."""
        rows_per_label: Counter[str] = Counter()
        renamed: Counter[str] = Counter()
        images: Counter[str] = Counter()
        self._entry_kinds: Counter[str] = Counter()
        labels = functools.lru_cache(maxsize=65536)(lambda label: written_id(label, "LabelName"))
        with atomic_open(self.root / CSV_NAME, "w", fsync=self.fsync) as f:
            rows = _RowWriter(csv.writer(f, lineterminator="\n"))
            rows.out.writerow(HEADER)
            for result in results():
                if result.width is None:
                    continue
                image_id = written_id(result.record.image_id, "ImageID")
                try:
                    ids = [{"ImageID": image_id, "LabelName": labels(m.label),
                            "BoxID": written_id(m.box_id, "BoxID")} for m in result.masks]
                    names = [self.mask_name(i) for i in ids]
                    check_component(image_id, "image id")
                except UnsafePathError as e:  # write_image wrote none of them; it was recorded
                    log.warning("no CSV rows for %r: %s", result.record.image_id, e)
                    continue
                renamed["ImageID"] += image_id != result.record.image_id
                renamed["BoxID"] += sum(i["BoxID"] != m.box_id
                                        for i, m in zip(ids, result.masks, strict=True))
                images[self._place_image(result, image_id)] += 1
                for name, i, mask in zip(names, ids, result.masks, strict=True):
                    rows_per_label[mask.label] += 1
                    rows.add(name, i, mask, *result.decoded_size)
            rows.flush()
        official = self.root / OFFICIAL_CSV_NAME
        if self.copy_images:  # a copy, even if one of the same size is there
            atomic_copy(self.root / CSV_NAME, official, fsync=self.fsync)
        else:
            place_file(Path(Path(CSV_NAME).name), official, copy=False, fsync=self.fsync)
        label_map = self.label_map_with(rows_per_label)
        self._write_metadata(label_map, rows_per_label)
        label_ids = {written_id(label, "LabelName"): label for label in label_map.ids}
        self.summary = {
            "layout": "FiftyOne OpenImagesV7Dataset: data/, labels/, metadata/",
            "images": self._images_kind(),
            "images_placed": images["placed"] + images["kept"],
            "images_missing": images["missing"],
            "id_prefixes": dict(PREFIXES),
            "renamed_ids": {"ImageID": renamed["ImageID"], "BoxID": renamed["BoxID"],
                            "LabelName": sum(w != s for w, s in label_ids.items())},
            "renamed_labels": {w: s for w, s in label_ids.items() if w != s},
        }
        return [f"{self.name}/{rel}" for rel in (CSV_NAME, OFFICIAL_CSV_NAME, CLASSES_NAME,
                                                 SEGMENTATION_CLASSES_NAME, HIERARCHY_NAME)]

    def _images_kind(self) -> str:
        """What ``data/`` holds: ``"none"`` (no images root), ``"symlinks"``, ``"copies"`` (asked
        for, or links failed for all), or ``"symlinks and copies"`` (links failed for some)."""
        if self.images_root is None:
            return "none"
        kinds = [k for k in ("symlinks", "copies") if self._entry_kinds[k]]
        if not kinds:
            return "copies" if self.copy_images else "symlinks"
        return " and ".join(kinds)

    def _place_image(self, result: ImageResult, image_id: str) -> str:
        """Put the image into ``data/``: ``"placed"``, ``"kept"`` (already there),
        ``"missing"`` (its file is gone or unsafe) or ``"skipped"`` (no images root)."""
        if self.images_root is None:
            return "skipped"
        try:
            source = join_inside(self.images_root, result.record.image_path, "image path")
            dest = self.root / DATA_DIR / f"{image_id}{image_extension(source)}"
            wrote = place_file(source, dest, self.copy_images, self.fsync)
            self._entry_kinds["symlinks" if dest.is_symlink() else "copies"] += 1
            return "placed" if wrote else "kept"
        except (OSError, UnsafePathError) as e:
            log.warning("no data/ entry for %r: %s", result.record.image_id, e)
            return "missing"

    def _write_metadata(self, label_map: LabelMap, rows_per_label: Counter[str]) -> None:
        names = display_names(label_map)
        with atomic_open(self.root / CLASSES_NAME, "w", fsync=self.fsync) as f:
            out = csv.writer(f, lineterminator="\n")
            for label in label_map.ids:
                out.writerow([written_id(label, "LabelName"), names[label]])
        segmented = [written_id(label, "LabelName") for label in label_map.ids
                     if rows_per_label[label]]
        atomic_write_text(self.root / SEGMENTATION_CLASSES_NAME,
                          "".join(f"{label}\n" for label in segmented), fsync=self.fsync)
        hierarchy = {"LabelName": "Entity",
                     "Subcategory": [{"LabelName": names[label]} for label in label_map.ids]}
        atomic_write_text(self.root / HIERARCHY_NAME,
                          json.dumps(hierarchy, ensure_ascii=False, indent=1) + "\n",
                          fsync=self.fsync)
