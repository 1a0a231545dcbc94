"""Tight boxes: the source annotations written back with each box replaced by its mask's box.

Masks are a way to clean loose boxes: the tight box of a mask (``mask_xyxy``: the smallest
library box, 0-based inclusive pixels, holding every mask pixel) replaces the input box, in the
run's own source format, so that any tool reading that format gets the cleaned boxes.

Layout, under ``<output>/tight-boxes/<source>/`` (``<source>`` = the run's ``--source``)::

    ilsvrc-loc/<image path with .xml>    one XML per image, e.g. train/n01440764/n01440764_10026.xml
                                         (the image's path below the images root, so the tree
                                         mirrors Annotations/CLS-LOC)
    kaggle-loc/<input CSV name>          ImageId,PredictionString,TightBoxStatus
    openimages/<input CSV name>          the 13 official box columns, then TightBoxStatus,
                                         InputXMin,InputXMax,InputYMin,InputYMax
    coco/<input JSON name>               the source file, bbox tightened, input_bbox and
                                         tight_box_status added to each annotation

Every box gets a status: ``tight`` (the mask's box is written), ``empty`` (the mask has no pixel:
the input box is kept) or ``no_mask`` (the box got no mask: engine, box or decode error; the input
box is kept). The input box stays next to the tight one wherever the format has room: XML
``<object>`` gets ``<tight_box_status>`` and ``<input_bndbox>`` (same children as ``<bndbox>``);
Open Images rows get the ``Input*`` columns; COCO annotations get ``input_bbox``. Kaggle's CSV has
room for the status only (space-separated, one per box); the sidecar ``masks.jsonl`` holds both
boxes of every mask in any case.

Coordinates are written in each format's own convention, the inverse of its reader
(``boxmask.readers``): XML and Kaggle inclusive pixels counted from the reader's ``origin`` (0
for ILSVRC-LOC, 1 for PASCAL-VOC-style trees), in the frame of the XML's declared ``<size>``;
Open Images normalised edges written with ``boxmask.boxes.normalized_edges`` (exact: the reader
gets the same pixel box back); COCO ``[x, y, w, h]`` on pixel edges in the frame of the image
entry's ``width`` x ``height``. A mask box goes into a declared frame that differs from the decoded
image by ``boxmask.boxes.rescale`` (covering pixels), so only there can reading back give a box
one pixel larger than the mask's.

The files cover the images of the run (like every output). The XML keeps every other element of
the source file (read again from ``ImageRecord.location``; when it cannot be read, an XML is built
from the record), objects the reader refused included (status ``no_mask``). The CSVs are written
from the run's records, so boxes the reader refused are not in them (see ``errors.jsonl``).
COCO keeps ``info``, ``licenses``, ``categories``, the run's image entries and
all their annotations (crowd ones untouched). Ids become file names only through
``boxmask.safepath.join_inside``: an image whose path would leave the folder is skipped and
counted in the summary (``refused``). Every file is written atomically.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Any

from lxml import etree

from .. import masks as masklib
from ..atomic import atomic_open, atomic_write_bytes
from ..boxes import decimal_text, normalized_edges, rescale, to_xywh
from ..labels import LabelMap
from ..readers import SOURCES
from ..records import Box, BoxXYXY, ImageResult
from ..safepath import UnsafePathError, join_inside
from .base import ResultsFactory, Writer

log = logging.getLogger(__name__)

FOLDER = "tight-boxes"
TIGHT, EMPTY, NO_MASK = "tight", "empty", "no_mask"
OPENIMAGES_COLUMNS = ("ImageID", "Source", "LabelName", "Confidence", "XMin", "XMax", "YMin",
                      "YMax", "IsOccluded", "IsTruncated", "IsGroupOf", "IsDepiction", "IsInside")
OPENIMAGES_EXTRA = ("TightBoxStatus", "InputXMin", "InputXMax", "InputYMin", "InputYMax")
_COORDS = ("xmin", "ymin", "xmax", "ymax")


def tight_boxes(result: ImageResult) -> list[tuple[Box, str, BoxXYXY | None]]:
    """``(box, status, tight box)`` for every input box of ``result``, in source order.

    The tight box is the mask's, in the frame of the record's boxes (its declared size when the
    record states one, else the decoded image), or None when the status is not ``tight``.
    """
    masks = {m.index: m for m in result.masks}
    declared = ((result.record.width, result.record.height)
                if result.record.width and result.record.height else None)
    out: list[tuple[Box, str, BoxXYXY | None]] = []
    for box in result.record.boxes:
        mask = masks.get(box.index)
        if mask is None:
            out.append((box, NO_MASK, None))
            continue
        tight = masklib.rle_box(mask.rle)
        if tight is None:
            out.append((box, EMPTY, None))
            continue
        decoded = result.decoded_size
        if declared is not None and declared != decoded:
            tight = rescale(tight, decoded, declared)
        out.append((box, TIGHT, tight))
    return out


class TightBoxWriter(Writer):
    """Writes ``<output>/tight-boxes/<source>/`` for the run's source (see the module doc).

    ``reader``: the plan's reader description (``Reader.describe()``: ``input_format``, ``input``,
    ``origin``). ``summary`` counts boxes by status, files written and images refused.
    """

    name = FOLDER

    def __init__(self, output_dir: str | Path, labels: LabelMap | None = None, *,
                 reader: dict[str, Any]) -> None:
        super().__init__(output_dir, labels)
        input_format = reader.get("input_format")
        if input_format not in SOURCES:
            raise ValueError(f"tight boxes cannot be written for source {input_format!r}")
        self.input_format: str = input_format
        self.input = Path(reader.get("input", ""))
        self.origin = int(reader.get("origin", 0))
        self.root = self.output_dir / FOLDER / self.input_format
        self._counts: Counter = Counter()

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.output_dir).as_posix()

    def merge(self, results: ResultsFactory) -> list[str]:
        """Write the folder; return the index files written (none for the per-image XMLs,
        which the summary counts, like the other per-image files)."""
        self._counts = Counter()
        write = {"ilsvrc-loc": self._xml, "kaggle-loc": self._kaggle,
                 "openimages": self._openimages, "coco": self._coco}[self.input_format]
        files = write(results)
        self.summary = {"source": self.input_format, "folder": self._rel(self.root),
                        "boxes": {s: self._counts[s] for s in (TIGHT, EMPTY, NO_MASK)},
                        "files": len(files), "refused": self._counts["refused"]}
        return [] if self.input_format == "ilsvrc-loc" else files

    def _count(self, rows: list[tuple[Box, str, BoxXYXY | None]]) -> None:
        self._counts.update(status for _, status, _ in rows)

    # ------------------------------------------------------------------ ILSVRC-LOC XML

    def _xml(self, results: ResultsFactory) -> list[str]:
        parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                                 huge_tree=False, remove_comments=True, remove_pis=True)
        files = []
        for result in results():
            record = result.record
            try:
                rel = PurePosixPath(record.image_path).with_suffix(".xml")
                path = join_inside(self.root, rel, "image path")
            except (UnsafePathError, ValueError) as exc:
                log.error("tight boxes: image %r skipped: %s", record.image_id, exc)
                self._counts["refused"] += 1
                continue
            rows = tight_boxes(result)
            self._count(rows)
            root = self._source_xml(result, parser)
            objects = root.findall("object")
            for box, status, tight in rows:
                if box.index < len(objects) and objects[box.index].find("bndbox") is not None:
                    obj = objects[box.index]
                else:  # the source changed since planning: append the box
                    obj = _object(root, box)
                self._tighten(obj, box, status, tight)
            done = {box.index for box, _, _ in rows}
            for index, obj in enumerate(objects):  # boxes the reader refused: kept, marked
                if index not in done and obj.find("bndbox") is not None:
                    _mark_refused(obj)
            etree.indent(root, space="\t")
            atomic_write_bytes(path, etree.tostring(root, encoding="utf-8") + b"\n")
            files.append(self._rel(path))
        return files

    def _source_xml(self, result: ImageResult, parser: etree.XMLParser) -> etree._Element:
        """The record's source XML, or one built from the record when it cannot be read."""
        from ..readers._xml import XMLRefused, read_xml

        record = result.record
        if record.location:
            try:
                root = read_xml(Path(record.location), parser)
                if root.tag == "annotation":
                    return root
            except (XMLRefused, OSError) as exc:
                log.warning("tight boxes: %s cannot be read again (%s); writing an XML built "
                            "from the record", record.location, exc)
        root = etree.Element("annotation")
        etree.SubElement(root, "folder").text = record.group or ""
        etree.SubElement(root, "filename").text = record.image_id
        width = record.width or result.width
        height = record.height or result.height
        if width and height:
            size = etree.SubElement(root, "size")
            etree.SubElement(size, "width").text = str(width)
            etree.SubElement(size, "height").text = str(height)
            etree.SubElement(size, "depth").text = "3"
        for box in record.boxes:
            _object(root, box)
        return root

    def _tighten(self, obj: etree._Element, box: Box, status: str,
                 tight: BoxXYXY | None) -> None:
        for old in obj.findall("input_bndbox") + obj.findall("tight_box_status"):
            obj.remove(old)
        bndbox = obj.find("bndbox")
        if bndbox is None:
            bndbox = etree.SubElement(obj, "bndbox")
        given = [bndbox.findtext(tag) for tag in _COORDS]
        if status == TIGHT and tight is not None:
            _set_coords(bndbox, _shifted(tight, self.origin))
        elif any(v is None for v in given) and box.xyxy is not None:
            _set_coords(bndbox, _shifted(box.xyxy, self.origin))
        etree.SubElement(obj, "tight_box_status").text = status
        keep = etree.SubElement(obj, "input_bndbox")
        for i, (tag, text) in enumerate(zip(_COORDS, given, strict=True)):
            if text is None:
                text = str(box.xyxy[i] + self.origin) if box.xyxy is not None else ""
            etree.SubElement(keep, tag).text = text.strip()

    # ------------------------------------------------------------------ Kaggle LOC CSV

    def _kaggle(self, results: ResultsFactory) -> list[str]:
        path = self.root / (self.input.name or "LOC_solution.csv")
        with atomic_open(path, "w") as f:
            out = csv.writer(f, lineterminator="\n")
            out.writerow(["ImageId", "PredictionString", "TightBoxStatus"])
            for result in results():
                rows = tight_boxes(result)
                self._count(rows)
                values, statuses = [], []
                for box, status, tight in rows:
                    xyxy = tight if tight is not None else box.xyxy
                    if xyxy is None:  # readers give Kaggle boxes pixel coordinates
                        raise ValueError(f"box {box.box_id!r} has no pixel coordinates")
                    values += [box.label, *(str(int(v) + self.origin) for v in xyxy)]
                    statuses.append(status)
                out.writerow([result.record.image_id, " ".join(values), " ".join(statuses)])
        return [self._rel(path)]

    # ------------------------------------------------------------------ Open Images CSV

    def _openimages(self, results: ResultsFactory) -> list[str]:
        path = self.root / (self.input.name or "annotations-bbox.csv")
        with atomic_open(path, "w") as f:
            out = csv.writer(f, lineterminator="\n")
            out.writerow(OPENIMAGES_COLUMNS + OPENIMAGES_EXTRA)
            for result in results():
                rows = tight_boxes(result)
                self._count(rows)
                for box, status, tight in rows:
                    out.writerow(_openimages_row(result, box, status, tight))
        return [self._rel(path)]

    # ------------------------------------------------------------------ COCO JSON

    def _coco(self, results: ResultsFactory) -> list[str]:
        with open(self.input, encoding="utf-8") as f:
            data = json.load(f)
        run: dict[str, ImageResult] = {}
        for done in results():
            coco_id = done.record.meta.get("coco_id")
            if coco_id is not None:
                run[_key(coco_id)] = done
        by_image: dict[str, list[dict[str, Any]]] = {}
        for ann in data.get("annotations") or []:
            if isinstance(ann, dict) and isinstance(ann.get("image_id"), int | str):
                by_image.setdefault(_key(ann["image_id"]), []).append(ann)
        out = {k: v for k, v in data.items() if k not in ("images", "annotations")}
        out["images"], out["annotations"] = [], []
        for image in data.get("images") or []:
            if not isinstance(image, dict):
                continue
            key = _key(image.get("id"))
            result = run.get(key)
            if result is None:
                continue
            out["images"].append(image)
            anns = [copy.deepcopy(a) for a in by_image.get(key, [])]
            rows = tight_boxes(result)
            self._count(rows)
            for box, status, tight in rows:
                if box.index >= len(anns):
                    continue
                ann = anns[box.index]
                ann["input_bbox"] = ann.get("bbox")
                ann["tight_box_status"] = status
                if tight is not None:
                    ann["bbox"] = to_xywh(tight)
            out["annotations"] += anns
        path = self.root / (self.input.name or "instances.json")
        with atomic_open(path, "w") as f:
            json.dump(out, f, ensure_ascii=False, separators=(",", ":"))
            f.write("\n")
        return [self._rel(path)]


def _key(value: Any) -> str:
    return json.dumps(value)


def _object(root: etree._Element, box: Box) -> etree._Element:
    obj = etree.SubElement(root, "object")
    etree.SubElement(obj, "name").text = box.label
    for key, value in box.attrs.items():
        etree.SubElement(obj, key).text = str(value)
    etree.SubElement(obj, "bndbox")
    return obj


def _mark_refused(obj: etree._Element) -> None:
    """An object the reader refused (unusable coordinates): kept as it is, status ``no_mask``."""
    for old in obj.findall("input_bndbox") + obj.findall("tight_box_status"):
        obj.remove(old)
    etree.SubElement(obj, "tight_box_status").text = NO_MASK
    keep = etree.SubElement(obj, "input_bndbox")
    for tag in _COORDS:
        etree.SubElement(keep, tag).text = (obj.findtext(f"bndbox/{tag}") or "").strip()


def _shifted(box: BoxXYXY, origin: int) -> BoxXYXY:
    """A library box in a format's pixel indices counted from ``origin`` (0 or 1)."""
    x0, y0, x1, y1 = box
    return (x0 + origin, y0 + origin, x1 + origin, y1 + origin)


def _set_coords(bndbox: etree._Element, values: tuple[int, int, int, int]) -> None:
    for tag, value in zip(_COORDS, values, strict=True):
        node = bndbox.find(tag)
        if node is None:
            node = etree.SubElement(bndbox, tag)
        node.text = str(int(value))


def _openimages_row(result: ImageResult, box: Box, status: str,
                    tight: BoxXYXY | None) -> list[str]:
    """One row: official columns (edges ``XMin, XMax, YMin, YMax``), then the extra ones."""
    given = box.xyxy_norm
    if given is None and box.xyxy is not None and result.width and result.height:
        x0, y0, x1, y1 = box.xyxy
        w, h = result.width, result.height
        given = (x0 / w, y0 / h, (x1 + 1) / w, (y1 + 1) / h)
    given_text = [repr(float(v)) for v in given] if given is not None else [""] * 4
    if tight is not None:
        x0, y0, x1, y1 = tight
        w, h = result.decoded_size
        numerator, decimals = normalized_edges([x0, y0, x1 + 1, y1 + 1], [w, h, w, h])
        edges = [decimal_text(int(n), int(d)) for n, d in zip(numerator, decimals, strict=True)]
    else:
        edges = given_text
    xmin, ymin, xmax, ymax = edges
    attrs = {k: "" if v is None else str(v) for k, v in box.attrs.items()}
    row = [result.record.image_id, attrs.get("Source", ""), box.label,
           attrs.get("Confidence", ""), xmin, xmax, ymin, ymax]
    row += [attrs.get(c, "") for c in OPENIMAGES_COLUMNS[8:]]
    gx0, gy0, gx1, gy1 = given_text
    return row + [status, gx0, gx1, gy0, gy1]


__all__ = ["EMPTY", "FOLDER", "NO_MASK", "SOURCES", "TIGHT", "TightBoxWriter", "tight_boxes"]
