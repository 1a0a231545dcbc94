"""Training data with instance masks: one sample = one object instance of one image.

Every dataset lists its instances (``refs``) and loads one (``load``) as an ``Instance``: the RGB
image, the object's binary mask and the void (ignore) pixels, all in the stored pixel grid of the
image (EXIF orientation is not applied: the masks were drawn on the stored grid).

Datasets (``open_dataset`` builds one from a ``DataSpec``)
--------------------------------------------------------
``voc``
    PASCAL VOC 2012: ``JPEGImages/<id>.jpg``, ``SegmentationObject/<id>.png`` (palette indices:
    0 background, k = the k-th object, 255 = void), ``SegmentationClass/<id>.png`` (class of each
    pixel) and the image list ``ImageSets/Segmentation/<split>.txt``.
``sbd``
    Semantic Boundaries Dataset (``benchmark_RELEASE/dataset``, or that folder itself):
    ``img/<id>.jpg``, ``inst/<id>.mat`` (MATLAB struct ``GTinst`` with ``Segmentation``: H x W
    instance indices, ``Boundaries``, ``Categories``: class of each instance), ``cls/<id>.mat``
    (``GTcls``, used for the class when ``Categories`` is missing) and ``<split>.txt``. SBD has no
    void pixels.
``coco``
    A COCO instances JSON (polygons, RLE or uncompressed RLE, read with pycocotools) and the
    images folder. Crowd annotations are not samples; their pixels are void for the other
    instances of the image (``crowd_as_void``), as COCO's evaluation ignores crowd regions.
``folder``
    ``images/<id>.<ext>`` + ``masks/<id>.png``: an instance-index PNG (0 background, k > 0 =
    instance k, 255 = void), or a binary PNG whose only non-zero value is 255 (one object).
    Optional image list ``<split>.txt`` in the root.

Instances whose mask has fewer than ``min_area`` pixels (default 1) are skipped. Listing VOC,
SBD and folder datasets reads every mask once (the instance values of each image).
"""

from __future__ import annotations

import contextlib
import io
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..imageio import decode_image

log = logging.getLogger(__name__)

FORMATS = ("voc", "sbd", "coco", "folder")
VOID = 255
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".JPEG", ".JPG")


@dataclass(frozen=True)
class InstanceRef:
    """Where one training sample comes from."""

    dataset: str
    """Name of the dataset the instance is in (``voc``, ``sbd``, ...)."""
    image_id: str
    instance: int
    """Instance value in the mask (VOC/SBD/folder) or COCO annotation id."""
    label: str | None = None
    """Class of the instance when the dataset says (VOC/SBD class index, COCO category id)."""


@dataclass
class Instance:
    """One object of one image, ready for the crop pipeline."""

    ref: InstanceRef
    image: np.ndarray
    """H x W x 3 uint8 RGB."""
    mask: np.ndarray
    """H x W bool: the object."""
    void: np.ndarray
    """H x W bool: pixels to ignore in the loss and in IoU (never part of ``mask``)."""


class InstanceDataset(ABC):
    """A list of instances of one dataset."""

    name: str = "dataset"

    @abstractmethod
    def refs(self) -> list[InstanceRef]:
        """All instances, in a stable order (image list order, then instance value)."""

    @abstractmethod
    def load(self, ref: InstanceRef) -> Instance:
        """Decode one instance (raises on unreadable files)."""


@dataclass(frozen=True)
class DataSpec:
    """A training dataset named on the command line: ``FORMAT:PATH[,key=value...]``.

    Keys: ``split`` (VOC/SBD/folder image list), ``images`` (COCO images folder; default: the
    JSON's folder), ``images_dir`` / ``masks_dir`` (folder layout), ``min_area``.
    """

    format: str
    path: str
    options: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> DataSpec:
        fmt, sep, rest = text.partition(":")
        if not sep or fmt not in FORMATS or not rest:
            raise ValueError(f"data spec {text!r}: expected FORMAT:PATH[,key=value...] with "
                             f"FORMAT one of {', '.join(FORMATS)}")
        path, *pairs = rest.split(",")
        options = {}
        for pair in pairs:
            key, eq, value = pair.partition("=")
            if not eq or not key:
                raise ValueError(f"data spec {text!r}: option {pair!r} is not key=value")
            options[key.strip()] = value.strip()
        return cls(fmt, path, options)

    def with_split(self, split: str) -> DataSpec:
        return DataSpec(self.format, self.path, {**self.options, "split": split})


def open_dataset(spec: DataSpec | str, default_split: str = "train") -> InstanceDataset:
    """The ``InstanceDataset`` a spec names (``split`` defaults to ``default_split``)."""
    if isinstance(spec, str):
        spec = DataSpec.parse(spec)
    opts = dict(spec.options)
    split = opts.pop("split", default_split)
    min_area = int(opts.pop("min_area", 1))
    if spec.format == "voc":
        dataset: InstanceDataset = VOCInstances(spec.path, split, min_area=min_area)
    elif spec.format == "sbd":
        dataset = SBDInstances(spec.path, split, min_area=min_area)
    elif spec.format == "coco":
        dataset = COCOInstances(spec.path, opts.pop("images", None), min_area=min_area)
    else:
        dataset = FolderInstances(spec.path, split=split, min_area=min_area,
                                 images_dir=opts.pop("images_dir", "images"),
                                 masks_dir=opts.pop("masks_dir", "masks"))
    if opts:
        raise ValueError(f"data spec {spec.format}:{spec.path}: unknown options {sorted(opts)}")
    return dataset


# --------------------------------------------------------------------------- helpers


def read_index_png(path: str | Path) -> np.ndarray:
    """The raw values of a single-channel (palette or grey) PNG as an H x W array, no palette
    lookup; raises ``ValueError`` for a colour PNG."""
    with Image.open(path) as im:
        if im.mode not in ("P", "L", "I", "I;16", "1"):
            raise ValueError(f"{path}: mask PNG has mode {im.mode}, expected palette or grey "
                             "instance indices")
        return np.array(im)


def read_image(path: str | Path) -> np.ndarray:
    """H x W x 3 uint8 RGB of the stored pixel grid (EXIF orientation ignored)."""
    return decode_image(path, exif="ignore").rgb


def read_list(path: str | Path) -> list[str]:
    """Image ids of a split file: one per line, blank lines and surrounding spaces ignored."""
    return [line.strip().split()[0] for line in Path(path).read_text().splitlines()
            if line.strip()]


def _instance_values(values: np.ndarray, min_area: int) -> list[int]:
    ids, counts = np.unique(values, return_counts=True)
    return [int(v) for v, c in zip(ids, counts, strict=True)
            if v not in (0, VOID) and c >= min_area]


def _find_image(folder: Path, stem: str) -> Path:
    for ext in IMAGE_EXTENSIONS:
        p = folder / f"{stem}{ext}"
        if p.is_file():
            return p
    raise FileNotFoundError(f"no image {stem}.* in {folder}")


def _check_shape(ref: InstanceRef, image: np.ndarray, mask_hw: tuple[int, ...]) -> None:
    if image.shape[:2] != tuple(mask_hw):
        raise ValueError(f"{ref.dataset} {ref.image_id}: image is {image.shape[1]}x"
                         f"{image.shape[0]} but its mask {mask_hw[1]}x{mask_hw[0]}")


# --------------------------------------------------------------------------- VOC


class VOCInstances(InstanceDataset):
    """PASCAL VOC ``SegmentationObject`` instances of one split (see the module doc)."""

    name = "voc"

    def __init__(self, root: str | Path, split: str = "train", min_area: int = 1,
                 list_file: str | Path | None = None) -> None:
        self.root = Path(root)
        self.split = split
        list_file = list_file or self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        self.ids = read_list(list_file)
        self.min_area = min_area
        self._refs: list[InstanceRef] | None = None

    def _object_png(self, image_id: str) -> Path:
        return self.root / "SegmentationObject" / f"{image_id}.png"

    def refs(self) -> list[InstanceRef]:
        if self._refs is None:
            refs = []
            for image_id in self.ids:
                objects = read_index_png(self._object_png(image_id))
                classes = self._classes(image_id, objects)
                for value in _instance_values(objects, self.min_area):
                    refs.append(InstanceRef(self.name, image_id, value, classes.get(value)))
            self._refs = refs
        return self._refs

    def _classes(self, image_id: str, objects: np.ndarray) -> dict[int, str]:
        path = self.root / "SegmentationClass" / f"{image_id}.png"
        if not path.is_file():
            return {}
        cls = read_index_png(path)
        out = {}
        for value in _instance_values(objects, 1):
            vals, counts = np.unique(cls[objects == value], return_counts=True)
            out[value] = str(int(vals[np.argmax(counts)]))
        return out

    def load(self, ref: InstanceRef) -> Instance:
        objects = read_index_png(self._object_png(ref.image_id))
        image = read_image(self.root / "JPEGImages" / f"{ref.image_id}.jpg")
        _check_shape(ref, image, objects.shape)
        return Instance(ref, image, objects == ref.instance, objects == VOID)


# --------------------------------------------------------------------------- SBD


def _mat_field(struct: Any, name: str) -> Any:
    """Field of a 1x1 MATLAB struct as loaded by ``scipy.io.loadmat`` (default options)."""
    return struct[name][0, 0] if struct.dtype.names and name in struct.dtype.names else None


@lru_cache(maxsize=4)
def _load_sbd_inst(path: str) -> tuple[np.ndarray, np.ndarray | None]:
    from scipy.io import loadmat

    mat = loadmat(path)
    if "GTinst" not in mat:
        raise ValueError(f"{path}: no GTinst struct (is it an SBD inst/*.mat file?)")
    gt = mat["GTinst"]
    seg = _mat_field(gt, "Segmentation")
    if seg is None:
        raise ValueError(f"{path}: GTinst has no Segmentation field")
    cats = _mat_field(gt, "Categories")
    return np.asarray(seg), (None if cats is None else np.asarray(cats).reshape(-1))


class SBDInstances(InstanceDataset):
    """SBD instance masks of one split (see the module doc)."""

    name = "sbd"

    def __init__(self, root: str | Path, split: str = "train", min_area: int = 1) -> None:
        root = Path(root)
        if (root / "benchmark_RELEASE" / "dataset").is_dir():
            root = root / "benchmark_RELEASE" / "dataset"
        elif (root / "dataset" / "inst").is_dir():
            root = root / "dataset"
        self.root = root
        self.split = split
        self.ids = read_list(root / f"{split}.txt")
        self.min_area = min_area
        self._refs: list[InstanceRef] | None = None

    def _inst(self, image_id: str) -> tuple[np.ndarray, np.ndarray | None]:
        return _load_sbd_inst(str(self.root / "inst" / f"{image_id}.mat"))

    def _class_of(self, image_id: str, seg: np.ndarray, value: int,
                  categories: np.ndarray | None) -> str | None:
        if categories is not None and value - 1 < len(categories):
            return str(int(categories[value - 1]))
        cls_path = self.root / "cls" / f"{image_id}.mat"
        if not cls_path.is_file():
            return None
        from scipy.io import loadmat

        cls = _mat_field(loadmat(cls_path)["GTcls"], "Segmentation")
        vals, counts = np.unique(np.asarray(cls)[seg == value], return_counts=True)
        return str(int(vals[np.argmax(counts)])) if len(vals) else None

    def refs(self) -> list[InstanceRef]:
        if self._refs is None:
            refs = []
            for image_id in self.ids:
                seg, cats = self._inst(image_id)
                for value in _instance_values(seg, self.min_area):
                    label = self._class_of(image_id, seg, value, cats)
                    refs.append(InstanceRef(self.name, image_id, value, label))
            self._refs = refs
        return self._refs

    def load(self, ref: InstanceRef) -> Instance:
        seg, _ = self._inst(ref.image_id)
        image = read_image(self.root / "img" / f"{ref.image_id}.jpg")
        _check_shape(ref, image, seg.shape)
        return Instance(ref, image, seg == ref.instance, np.zeros(seg.shape, dtype=bool))


# --------------------------------------------------------------------------- COCO


class COCOInstances(InstanceDataset):
    """COCO instance annotations (see the module doc). ``images`` defaults to the JSON's folder."""

    name = "coco"

    def __init__(self, annotations: str | Path, images: str | Path | None = None,
                 min_area: int = 1, crowd_as_void: bool = True) -> None:
        from pycocotools.coco import COCO

        self.annotations = Path(annotations)
        self.images = Path(images) if images is not None else self.annotations.parent
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            self.coco = COCO(str(self.annotations))
        self.min_area = min_area
        self.crowd_as_void = crowd_as_void
        self._refs: list[InstanceRef] | None = None

    def refs(self) -> list[InstanceRef]:
        if self._refs is None:
            refs = []
            for image_id in sorted(self.coco.imgs):
                for ann in self.coco.imgToAnns.get(image_id, []):
                    if ann.get("iscrowd", 0) or not ann.get("segmentation"):
                        continue
                    if ann.get("area", self.min_area) < self.min_area:
                        continue
                    refs.append(InstanceRef(self.name, str(image_id), int(ann["id"]),
                                            str(ann.get("category_id"))))
            self._refs = refs
        return self._refs

    def load(self, ref: InstanceRef) -> Instance:
        info = self.coco.imgs[int(ref.image_id)]
        image = read_image(self.images / info["file_name"])
        hw = (int(info["height"]), int(info["width"]))
        _check_shape(ref, image, hw)
        mask = self.coco.annToMask(self.coco.anns[ref.instance]).astype(bool)
        void = np.zeros(hw, dtype=bool)
        if self.crowd_as_void:
            for ann in self.coco.imgToAnns.get(int(ref.image_id), []):
                if ann.get("iscrowd", 0) and ann.get("segmentation"):
                    void |= self.coco.annToMask(ann).astype(bool)
        return Instance(ref, image, mask, void & ~mask)


# --------------------------------------------------------------------------- mask folder


def _folder_values(values: np.ndarray, min_area: int) -> tuple[list[int], bool]:
    """``(instance values, binary)``: a PNG whose only non-zero value is 255 is one object."""
    nonzero = np.unique(values[values != 0])
    if len(nonzero) == 1 and nonzero[0] == VOID:
        return ([VOID] if np.count_nonzero(values) >= min_area else []), True
    return _instance_values(values, min_area), False


class FolderInstances(InstanceDataset):
    """``images/<id>.<ext>`` + ``masks/<id>.png`` instance-index PNGs (see the module doc)."""

    name = "folder"

    def __init__(self, root: str | Path, split: str | None = None, min_area: int = 1,
                 images_dir: str = "images", masks_dir: str = "masks") -> None:
        self.root = Path(root)
        self.image_dir = self.root / images_dir
        self.mask_dir = self.root / masks_dir
        list_file = self.root / f"{split}.txt" if split else None
        if list_file is not None and list_file.is_file():
            self.ids = read_list(list_file)
        else:
            self.ids = sorted(p.stem for p in self.mask_dir.glob("*.png"))
        self.min_area = min_area
        self._refs: list[InstanceRef] | None = None

    def refs(self) -> list[InstanceRef]:
        if self._refs is None:
            refs = []
            for image_id in self.ids:
                values, _ = _folder_values(read_index_png(self.mask_dir / f"{image_id}.png"),
                                           self.min_area)
                refs += [InstanceRef(self.name, image_id, v) for v in values]
            self._refs = refs
        return self._refs

    def load(self, ref: InstanceRef) -> Instance:
        values = read_index_png(self.mask_dir / f"{ref.image_id}.png")
        image = read_image(_find_image(self.image_dir, ref.image_id))
        _check_shape(ref, image, values.shape)
        _, binary = _folder_values(values, 1)
        mask = values == ref.instance
        void = np.zeros_like(mask) if binary else values == VOID
        return Instance(ref, image, mask, void)


# --------------------------------------------------------------------------- combining


class CombinedDatasets(InstanceDataset):
    """Several datasets as one list; images whose id is in ``exclude_ids`` are left out (e.g. the
    SBD images that are also in the VOC val split, as the official training does)."""

    name = "combined"

    def __init__(self, datasets: Sequence[InstanceDataset],
                 exclude_ids: Iterable[str] = ()) -> None:
        self.datasets = {s.name: s for s in datasets}
        if len(self.datasets) != len(datasets):
            raise ValueError("combine datasets of different formats only (one per format)")
        self.exclude = set(exclude_ids)

    def refs(self) -> list[InstanceRef]:
        return [r for s in self.datasets.values() for r in s.refs()
                if r.image_id not in self.exclude]

    def load(self, ref: InstanceRef) -> Instance:
        return self.datasets[ref.dataset].load(ref)


def holdout_split(refs: Sequence[InstanceRef], fraction: float,
                  seed: int = 0) -> tuple[list[InstanceRef], list[InstanceRef]]:
    """Split instances into ``(train, val)`` by image: an image goes to val when a hash of
    ``(seed, dataset, image_id)`` falls below ``fraction``. Stable when the list grows."""
    import hashlib

    def key(r: InstanceRef) -> float:
        h = hashlib.sha256(f"{seed}/{r.dataset}/{r.image_id}".encode()).digest()
        return int.from_bytes(h[:8], "big") / 2.0**64

    train = [r for r in refs if key(r) >= fraction]
    val = [r for r in refs if key(r) < fraction]
    return train, val
