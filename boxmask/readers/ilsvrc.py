"""ILSVRC-LOC (ImageNet localisation) XML annotations -> image records.

Layout (the ILSVRC / Kaggle ``CLS-LOC`` tree)::

    <root>/Annotations/CLS-LOC/train/<wnid>/<wnid>_<n>.xml
    <root>/Annotations/CLS-LOC/val/ILSVRC2012_val_<n>.xml      (or val/<wnid>/...)
    <root>/Data/CLS-LOC/<same relative path>.JPEG
    <root>/LOC_synset_mapping.txt                              (Kaggle: next to ``ILSVRC/``)

``input_path`` may be ``<root>``, ``<root>/Annotations/CLS-LOC`` or any folder inside it (a split,
a class folder); a folder of XMLs outside such a tree is read as the annotation root itself, with
the images looked up next to the XMLs. Files are walked in sorted order, one directory at a time.

Boxes: ``<bndbox>`` holds inclusive pixel indices of the image whose size ``<size>`` declares.
Unlike PASCAL VOC (1-based), the ILSVRC-LOC XMLs count from 0: real files have ``xmin = 0`` and
right/bottom edges at ``width - 1`` / ``height - 1`` but never at ``width`` / ``height`` (in the
bundled sample: 3 boxes with xmin 0, 2 with ymin 0, 5 edges at width-1/height-1, none at width or
height, none at 1). So the default ``origin`` is 0; pass ``origin=1`` for VOC-style trees. Records
carry the library convention (0-based inclusive) in the declared frame; the declared size may
disagree with the JPEG, and the worker rescales.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lxml import etree

from ..boxes import from_voc
from ..records import Box, ImageRecord
from ..safepath import UnsafePathError, check_component, safe_relative
from ._common import add_labels, parse_number, parse_size, read_error
from ._xml import XMLRefused, make_parser, read_xml
from .base import Item, Reader, stable_box_id

log = logging.getLogger(__name__)

SPLITS = ("all", "train", "val")
WNID = re.compile(r"n\d{8}")
_COORDS = ("xmin", "ymin", "xmax", "ymax")
_ATTRS = ("truncated", "difficult", "pose")


class ILSVRCReader(Reader):
    """Stream ``ImageRecord``s from an ILSVRC-LOC XML tree (source ``ilsvrc-loc``).

    Options: ``split`` = ``"all"`` (default), ``"train"`` or ``"val"``.
    """

    input_format = "ilsvrc-loc"

    def __init__(self, input_path: str | Path, images_root: str | Path | None = None,
                 labels_file: str | Path | None = None, *, split: str = "all",
                 origin: int = 0) -> None:
        if origin not in (0, 1):
            raise ValueError(f"origin must be 0 or 1, not {origin!r}")
        self.origin = origin
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
        self.split = split
        self._dataset_root, self._base, self._walk_root = _locate(Path(input_path), split)
        if labels_file is None:
            labels_file = self._default_labels_file()
        super().__init__(input_path, images_root, labels_file)

    def default_images_root(self) -> Path:
        """``<root>/Data/CLS-LOC`` in an ILSVRC tree, else the folder of the XMLs."""
        if self._dataset_root is not None:
            return self._dataset_root / "Data" / "CLS-LOC"
        return self._base

    def _default_labels_file(self) -> Path | None:
        root = self._dataset_root
        if root is None:
            return None
        candidates = [root / "LOC_synset_mapping.txt"]
        if root.name == "ILSVRC":  # Kaggle puts the mapping next to the ILSVRC folder
            candidates.append(root.parent / "LOC_synset_mapping.txt")
        return next((c for c in candidates if c.is_file()), None)

    def __iter__(self) -> Iterator[Item]:
        parser = make_parser()
        for xml_path in _walk_xml(self._walk_root):
            yield from self._read_one(xml_path, parser)

    def _read_one(self, xml_path: Path, parser: etree.XMLParser) -> list[Item]:
        location = str(xml_path)
        image_id = xml_path.stem
        try:
            check_component(image_id, "image id (XML file stem)")
            rel = xml_path.relative_to(self._base).with_suffix(".JPEG").as_posix()
            image_path = str(safe_relative(rel, "image path"))
        except UnsafePathError as exc:
            return [read_error(str(exc), location=location)]
        try:
            root = read_xml(xml_path, parser)
        except XMLRefused as exc:
            return [read_error(str(exc), image_id=image_id, location=location)]
        except OSError as exc:
            return [read_error(f"cannot read XML: {exc.strerror or exc}", image_id,
                               location=location)]
        return self._record(root, image_id, image_path, xml_path.parent.name, location)

    def _record(self, root: etree._Element, image_id: str, image_path: str, folder: str,
                location: str) -> list[Item]:
        if root.tag != "annotation":
            return [read_error(f"root element is <{root.tag}>, not <annotation>", image_id,
                               location=location)]
        try:
            width = parse_size(root.findtext("size/width"), "width")
            height = parse_size(root.findtext("size/height"), "height")
        except ValueError as exc:
            return [read_error(str(exc), image_id, location=location)]
        objects = root.findall("object")
        group = folder if WNID.fullmatch(folder) else _first_name(objects)
        if group is not None:
            try:
                check_component(group, "group (first object <name>)")
            except UnsafePathError as exc:
                return [read_error(str(exc), image_id, location=location)]
        items: list[Item] = []
        boxes: list[Box] = []
        for index, obj in enumerate(objects):
            if obj.find("bndbox") is None:
                continue
            box_id = stable_box_id(image_id, index)
            try:
                boxes.append(_box(obj, box_id, index, self.origin))
            except ValueError as exc:
                items.append(read_error(f"object {index}: {exc}", image_id, box_id, location))
        add_labels(self.label_map, boxes)
        if boxes or not items:
            items.append(ImageRecord(image_id=image_id, image_path=image_path, boxes=boxes,
                                     width=width, height=height, group=group, location=location))
        return items

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "split": self.split, "origin": self.origin}


def _box(obj: etree._Element, box_id: str, index: int, origin: int) -> Box:
    """One ``<object>`` -> ``Box`` (library convention); ``ValueError`` when unusable."""
    label = (obj.findtext("name") or "").strip()
    if not label:
        raise ValueError("<name> is missing or empty")
    bnd = obj.find("bndbox")
    xmin, ymin, xmax, ymax = (parse_number(bnd.findtext(tag), f"<{tag}>") for tag in _COORDS)
    attrs: dict[str, Any] = {}
    for tag in _ATTRS:
        text = obj.findtext(tag)
        if text is not None and text.strip():
            text = text.strip()
            attrs[tag] = int(text) if re.fullmatch(r"-?\d+", text) else text
    xyxy = from_voc(xmin, ymin, xmax, ymax, origin)
    return Box(box_id=box_id, label=label, index=index, xyxy=xyxy, attrs=attrs)


def _first_name(objects: list[etree._Element]) -> str | None:
    for obj in objects:
        name = (obj.findtext("name") or "").strip()
        if name:
            return name
    return None


def _locate(input_path: Path, split: str) -> tuple[Path | None, Path, Path]:
    """(dataset root or None, the ``CLS-LOC`` annotation base, the folder to walk)."""
    path = Path(os.path.abspath(input_path))
    if not path.is_dir():
        raise ValueError(f"ILSVRC input {input_path} is not a folder")
    if (path / "Annotations" / "CLS-LOC").is_dir():
        base = path / "Annotations" / "CLS-LOC"
        walk = base
    else:
        base = next((p for p in (path, *path.parents) if p.name == "CLS-LOC"), path)
        walk = path
    if base.name != "CLS-LOC":
        log.info("%s is not inside an Annotations/CLS-LOC tree; reading it as a folder of XMLs",
                 input_path)
        return None, base, walk
    root = base.parent.parent if base.parent.name == "Annotations" else None
    if split != "all":
        inside = walk.relative_to(base).parts
        if not inside:
            walk = base / split
            if not walk.is_dir():
                raise ValueError(f"no {split!r} split under {base}")
        elif inside[0] != split:
            raise ValueError(f"{input_path} is inside split {inside[0]!r}, not {split!r}")
    return root, base, walk


def _walk_xml(top: Path) -> Iterator[Path]:
    """``*.xml`` files under ``top`` in sorted order, one directory listing in memory at a time.

    Hidden entries (names starting with ``.``, such as macOS ``._x.xml`` files) are skipped;
    symlinked folders are followed once.
    """
    visited: set[tuple[int, int]] = set()

    def walk(folder: str) -> Iterator[Path]:
        st = os.stat(folder)
        if (st.st_dev, st.st_ino) in visited:
            return
        visited.add((st.st_dev, st.st_ino))
        with os.scandir(folder) as it:
            entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
        for entry in entries:
            if entry.is_dir():
                yield from walk(entry.path)
            elif entry.name.endswith(".xml") and entry.is_file():
                yield Path(entry.path)

    yield from walk(str(top))


__all__ = ["ILSVRCReader", "SPLITS"]
