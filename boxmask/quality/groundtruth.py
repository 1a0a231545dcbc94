"""Ground-truth instance masks for evaluation: COCO JSON, VOC folders and mask folders.

Each format is a :class:`GroundTruth`: it finds the GT image of a prediction (by its
``image_id`` / ``image_path``) and loads it as a :class:`GTImage` of :class:`GTInstance` objects
(id, class, box in the library convention, mask decoded on first use). :func:`open_gt` opens one.

Formats (``gt_format``)
-----------------------
``coco``
    A COCO instances JSON (segmentations as polygons, uncompressed or compressed RLE). Images are
    found by file name (basename of ``image_path`` vs ``file_name``), then by ``image_id`` ==
    COCO image id, then by file stem. An instance's box is the annotation's ``bbox`` (the input
    box of a run converted from that file), else the tight box of its mask; crowd annotations are
    flagged.
``voc``
    A VOC-style folder: ``SegmentationObject/<image>.png`` (value k = the k-th ``<object>`` of
    ``Annotations/<image>.xml``, 255 = void) and the XMLs (class names). Instance ids are the PNG
    values; void pixels are kept as the image's void mask.
``mask-folder``
    ``<gt>/<image_id>.png`` per image: a binary PNG (one object: every non-zero pixel when the only
    non-zero value is 1 or 255) or an instance-index PNG (value k = instance k, 255 = void).
    Images are found by ``image_id``, then by the stem of ``image_path``.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from ..boxes import from_xywh, mask_to_box
from ..records import BoxXYXY
from ..safepath import UnsafePathError, check_component

GT_FORMATS = ("coco", "voc", "mask-folder")
VOID = 255
"""PNG value of void pixels (VOC): excluded from intersection and union."""


@dataclass
class GTInstance:
    """One ground-truth object of an image."""

    gt_id: str
    """COCO annotation id, or the instance value in a PNG."""
    label: str
    """Class name ("" when the GT has no classes)."""
    box: BoxXYXY
    """Box used for matching (library convention)."""
    crowd: bool = False
    _mask: np.ndarray | None = None
    _decode: Callable[[], np.ndarray] | None = None

    @property
    def mask(self) -> np.ndarray:
        """H x W bool mask, decoded on first use."""
        if self._mask is None:
            if self._decode is None:
                raise ValueError(f"instance {self.gt_id!r} has neither a mask nor a decoder")
            self._mask = self._decode()
        return self._mask


@dataclass
class GTImage:
    key: str
    height: int
    width: int
    instances: dict[str, GTInstance] = field(default_factory=dict)
    void: np.ndarray | None = None


class GroundTruth(ABC):
    """A source of GT images, looked up by the prediction's ``image_id`` / ``image_path``."""

    format: str = ""
    match: str = "iou"
    """Matching used by ``match="auto"``."""

    @abstractmethod
    def find(self, image_id: str | None, image_path: str | None) -> str | None:
        """Key of the GT image for a prediction or error, or None when the GT lacks it."""

    @abstractmethod
    def load(self, key: str) -> GTImage:
        """The GT image (masks decoded lazily)."""

    @abstractmethod
    def num_images(self) -> int:
        """Images in the GT."""

    def by_id(self, key: str, box_id: str) -> str | None:
        """The GT id that ``box_id`` names in image ``key`` (COCO annotation ids), if any."""
        return None


def _stem(path: str | None) -> str | None:
    return PurePosixPath(path.replace("\\", "/")).stem if path else None


def _safe(name: str | None) -> str | None:
    if not name:
        return None
    try:
        return check_component(name)
    except UnsafePathError:
        return None


def _tight_box(mask: np.ndarray) -> BoxXYXY:
    box = mask_to_box(mask)
    return box if box is not None else (0, 0, -1, -1)


class CocoGT(GroundTruth):
    """``coco``: a COCO instances JSON, read whole."""

    format = "coco"
    match = "id"

    def __init__(self, path: str | Path) -> None:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        self.images = {str(im["id"]): im for im in data.get("images", [])}
        self.by_name = {PurePosixPath(im["file_name"]).name: k for k, im in self.images.items()}
        self.by_stem = {PurePosixPath(im["file_name"]).stem: k for k, im in self.images.items()}
        self.cats = {c["id"]: c.get("name", str(c["id"])) for c in data.get("categories", [])}
        self.anns: dict[str, list[dict]] = {}
        self.ann_image: dict[str, str] = {}
        for a in data.get("annotations", []):
            key = str(a["image_id"])
            self.anns.setdefault(key, []).append(a)
            self.ann_image[str(a["id"])] = key

    def find(self, image_id: str | None, image_path: str | None) -> str | None:
        if image_path:
            name = PurePosixPath(image_path.replace("\\", "/")).name
            if name in self.by_name:
                return self.by_name[name]
        if image_id is not None and str(image_id) in self.images:
            return str(image_id)
        stem = _stem(image_path) or image_id
        return self.by_stem.get(stem) if stem else None

    def num_images(self) -> int:
        return len(self.images)

    def by_id(self, key: str, box_id: str) -> str | None:
        return box_id if self.ann_image.get(str(box_id)) == key else None

    def load(self, key: str) -> GTImage:
        im = self.images[key]
        h, w = int(im["height"]), int(im["width"])
        out = GTImage(key, h, w)
        for a in self.anns.get(key, []):
            inst = GTInstance(str(a["id"]), self.cats.get(a.get("category_id"), ""),
                              (0, 0, -1, -1), bool(a.get("iscrowd", 0)),
                              _decode=_coco_decoder(a["segmentation"], h, w))
            # the annotation's bbox is what a run converted from this file used as input box
            inst.box = from_xywh(*a["bbox"]) if a.get("bbox") else _tight_box(inst.mask)
            out.instances[inst.gt_id] = inst
        return out


def _coco_decoder(seg: Any, h: int, w: int) -> Callable[[], np.ndarray]:
    def decode() -> np.ndarray:
        if isinstance(seg, list):  # polygons
            rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
        elif isinstance(seg.get("counts"), list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(seg, h, w)
        else:
            rle = seg
        return mask_utils.decode(rle).astype(bool)

    return decode


def _read_png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        if im.mode not in ("P", "L", "1", "I;16", "I"):
            raise ValueError(f"{path}: expected a single-channel or palette PNG, "
                             f"got mode {im.mode}")
        return np.array(im)


def _instances_from_png(key: str, values: np.ndarray, labels: list[str] | None, *,
                        binary: bool) -> GTImage:
    """PNG values -> GT image: value k = instance k (class ``labels[k - 1]``), 255 = void.

    With ``binary``, a PNG whose only non-zero value is 1 or 255 is one object (every non-zero
    pixel) instead of instance 1 / all void.
    """
    h, w = values.shape
    present = sorted(set(np.unique(values).tolist()) - {0})
    out = GTImage(key, h, w)
    if binary and present in ([1], [VOID]):
        m = values != 0
        out.instances["1"] = GTInstance("1", labels[0] if labels else "", _tight_box(m), _mask=m)
        return out
    void = values == VOID
    out.void = void if void.any() else None
    for v in present:
        if v == VOID:
            continue
        m = values == v
        label = labels[v - 1] if labels and v - 1 < len(labels) else ""
        out.instances[str(v)] = GTInstance(str(v), label, _tight_box(m), _mask=m)
    return out


class FolderGT(GroundTruth):
    """``mask-folder``: ``<root>/<image_id>.png``."""

    format = "mask-folder"
    match = "iou"

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.masks = self.root

    def find(self, image_id: str | None, image_path: str | None) -> str | None:
        for key in (_safe(image_id), _safe(_stem(image_path))):
            if key and (self.masks / f"{key}.png").is_file():
                return key
        return None

    def num_images(self) -> int:
        return sum(1 for _ in self.masks.glob("*.png"))

    def labels(self, key: str) -> list[str] | None:
        return None

    def load(self, key: str) -> GTImage:
        values = _read_png(self.masks / f"{key}.png")
        return _instances_from_png(key, values, self.labels(key), binary=True)


class VocGT(FolderGT):
    """``voc``: ``SegmentationObject/<image>.png`` + ``Annotations/<image>.xml``."""

    format = "voc"
    match = "index"

    def __init__(self, root: str | Path) -> None:
        super().__init__(root)
        self.masks = self.root / "SegmentationObject"
        if not self.masks.is_dir():
            raise FileNotFoundError(f"{self.masks} is not a folder")

    def labels(self, key: str) -> list[str] | None:
        xml = self.root / "Annotations" / f"{key}.xml"
        if not xml.is_file():
            return None
        return [(o.findtext("name") or "").strip() for o in ET.parse(xml).getroot().iter("object")]

    def load(self, key: str) -> GTImage:
        values = _read_png(self.masks / f"{key}.png")
        return _instances_from_png(key, values, self.labels(key), binary=False)


def open_gt(gt_path: str | Path, gt_format: str) -> GroundTruth:
    """The ground truth at ``gt_path`` in one of ``GT_FORMATS``."""
    if gt_format == "coco":
        return CocoGT(gt_path)
    if gt_format == "voc":
        return VocGT(gt_path)
    if gt_format == "mask-folder":
        if not Path(gt_path).is_dir():
            raise FileNotFoundError(f"{gt_path} is not a folder")
        return FolderGT(gt_path)
    raise ValueError(f"unknown GT format {gt_format!r}; choose from {', '.join(GT_FORMATS)}")
