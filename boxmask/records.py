"""The data model every stage shares: image records, boxes, clicks, mask results, error records.

Box convention (the only one inside the library)
------------------------------------------------
``(x0, y0, x1, y1)``: 0-based, **inclusive** integer pixel indices. The box covers columns
``x0..x1`` and rows ``y0..y1``, so its width is ``x1 - x0 + 1``. This is what
``torchvision.ops.masks_to_boxes`` returns for a mask and what the official IOG crop uses.
Readers convert source coordinates into it (ILSVRC-LOC XML counts inclusive pixels from 0, as the
real files show, PASCAL-VOC-style XML from 1; COCO is ``[x, y, w, h]`` floats on pixel edges, Open
Images is normalised edges); writers convert out of it.

Point convention: ``(x, y)`` = (column, row) in image pixels, 0-based; integer values are pixel
centres.

Every record serialises to a JSON-able dict (``to_json``) and back (``from_json``); shard files and
per-shard result files are JSON lines of these.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

BoxXYXY = tuple[int, int, int, int]
"""A box in the library convention: 0-based inclusive pixel indices (x0, y0, x1, y1)."""


@dataclass
class Box:
    """One input box of an image record.

    Exactly one of ``xyxy`` / ``xyxy_norm`` is set by a reader:

    * ``xyxy``: library convention (0-based inclusive pixels) in the frame of the record's
      *declared* size (``ImageRecord.width/height``) when the source states one, else of the image.
    * ``xyxy_norm``: normalised **edge** coordinates ``(x0, y0, x1, y1)`` in [0, 1] with exclusive
      right/bottom edges (Open Images ``XMin, YMin, XMax, YMax``); resolved to pixels once the image
      size is known (``boxmask.boxes.resolve_box``).
    """

    box_id: str
    """Stable, filename-safe id (``[A-Za-z0-9_-]``, at most 64 chars), unique within the image."""
    label: str
    """Source class id: WordNet id (ILSVRC), ``/m/...`` MID (Open Images), COCO category id."""
    index: int
    """0-based position of the box in the source record; instance value in PNGs is ``index + 1``."""
    xyxy: BoxXYXY | None = None
    xyxy_norm: tuple[float, float, float, float] | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    """Source attributes carried along (truncated, occluded, group-of, COCO annotation id, ...)."""

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"box_id": self.box_id, "label": self.label, "index": self.index}
        if self.xyxy is not None:
            d["xyxy"] = tuple(self.xyxy)
        if self.xyxy_norm is not None:
            d["xyxy_norm"] = tuple(self.xyxy_norm)
        if self.attrs:
            d["attrs"] = dict(self.attrs)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Box:
        return cls(
            box_id=d["box_id"],
            label=d["label"],
            index=int(d["index"]),
            xyxy=tuple(d["xyxy"]) if d.get("xyxy") is not None else None,
            xyxy_norm=tuple(d["xyxy_norm"]) if d.get("xyxy_norm") is not None else None,
            attrs=dict(d.get("attrs", {})),
        )


@dataclass
class ImageRecord:
    """One image of a source dataset with its boxes, as a reader yields it."""

    image_id: str
    """Stable id, unique within the dataset (ILSVRC: file stem; Open Images: ImageID; COCO: id)."""
    image_path: str
    """Path of the image relative to the images root, POSIX separators."""
    boxes: list[Box] = field(default_factory=list)
    width: int | None = None
    """Declared width in pixels, when the annotation states one (may disagree with the file)."""
    height: int | None = None
    group: str | None = None
    """Grouping folder of the source tree (ILSVRC: the WordNet id directory), if any."""
    location: str | None = None
    """Where the record was read from (annotation file, ``file:line`` of a CSV row), for error
    messages."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Source fields a writer may need (COCO: original integer id, file_name)."""

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"image_id": self.image_id, "image_path": self.image_path}
        for key in ("width", "height", "group", "location"):
            value = getattr(self, key)
            if value is not None:
                d[key] = value
        if self.meta:
            d["meta"] = self.meta
        d["boxes"] = [b.to_json() for b in self.boxes]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ImageRecord:
        return cls(
            image_id=d["image_id"],
            image_path=d["image_path"],
            boxes=[Box.from_json(b) for b in d.get("boxes", [])],
            width=d.get("width"),
            height=d.get("height"),
            group=d.get("group"),
            location=d.get("location"),
            meta=dict(d.get("meta", {})),
        )


@dataclass
class Click:
    """A click given to an engine, in image pixels (x = column, y = row)."""

    x: float
    y: float
    positive: bool
    """True for foreground (inside) clicks, False for background (outside / corner) clicks."""
    kind: str = "user"
    """``inside`` (IOG inside point), ``corner`` (a box corner), ``user`` (a refinement click)."""

    def to_json(self) -> list[Any]:
        return [round(float(self.x), 2), round(float(self.y), 2), int(self.positive), self.kind]

    @classmethod
    def from_json(cls, v: list[Any]) -> Click:
        return cls(float(v[0]), float(v[1]), bool(v[2]), str(v[3]) if len(v) > 3 else "user")


@dataclass
class MaskResult:
    """The mask produced for one box, in image coordinates."""

    box_id: str
    label: str
    index: int
    box_xyxy: BoxXYXY
    """The resolved input box in the library convention, in the decoded image's pixels."""
    rle: dict[str, Any]
    """COCO RLE of the full-image mask: ``{"size": [h, w], "counts": str}`` (column-major)."""
    score: float
    """The engine's confidence in [0, 1] (stability score for IOG; see the engine's docs)."""
    clicks: list[Click] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    """Box-consistency and shape metrics (``boxmask.maskmetrics``) and flags."""
    origin: dict[str, Any] | None = None
    """Set on a mask that replaced the run's own (``boxmask.jobs.redo``): ``{"redo": name,
    "engine": ..., "inside_policy": ...}``; None for a mask of the run itself."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """The earlier versions of a replaced mask, oldest first (``boxmask.jobs.redo``)."""

    def to_json(self) -> dict[str, Any]:
        d = {
            "box_id": self.box_id,
            "label": self.label,
            "index": self.index,
            "box_xyxy": list(self.box_xyxy),
            "rle": self.rle,
            "score": round(float(self.score), 6),
            "clicks": [c.to_json() for c in self.clicks],
            "metrics": self.metrics,
        }
        if self.origin is not None:
            d["origin"] = self.origin
        if self.history:
            d["history"] = self.history
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> MaskResult:
        return cls(
            box_id=d["box_id"],
            label=d["label"],
            index=int(d["index"]),
            box_xyxy=tuple(d["box_xyxy"]),
            rle=d["rle"],
            score=float(d["score"]),
            clicks=[Click.from_json(c) for c in d.get("clicks", [])],
            metrics=dict(d.get("metrics", {})),
            origin=d.get("origin"),
            history=list(d.get("history", [])),
        )


STAGES = ("read", "decode", "box", "engine", "write")
"""Where an error can happen: annotation parsing, image decoding, box check, engine, output."""


@dataclass
class ErrorRecord:
    """A failure at the boundary, recorded instead of raised: one line of ``errors.jsonl``."""

    stage: str
    reason: str
    image_id: str | None = None
    box_id: str | None = None
    location: str | None = None
    """Where the failing input was read from (annotation file, ``file:line``), when known."""

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ErrorRecord:
        return cls(
            stage=d["stage"],
            reason=d["reason"],
            image_id=d.get("image_id"),
            box_id=d.get("box_id"),
            location=d.get("location"),
        )


@dataclass
class ImageResult:
    """Everything a worker produced for one image: one line of a shard's result file."""

    record: ImageRecord
    width: int | None = None
    """Decoded image size (None when decoding failed)."""
    height: int | None = None
    masks: list[MaskResult] = field(default_factory=list)
    errors: list[ErrorRecord] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    """Per-image output files written for this image, relative to the output directory."""

    @property
    def decoded_size(self) -> tuple[int, int]:
        """``(width, height)`` of the decoded image in pixels; ``ValueError`` when decoding
        failed (a result holding masks always has it)."""
        if self.width is None or self.height is None:
            raise ValueError(f"image {self.record.image_id!r} was not decoded")
        return int(self.width), int(self.height)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"record": self.record.to_json()}
        if self.width is not None:
            d["width"], d["height"] = self.width, self.height
        d["masks"] = [m.to_json() for m in self.masks]
        if self.errors:
            d["errors"] = [e.to_json() for e in self.errors]
        if self.warnings:
            d["warnings"] = self.warnings
        if self.files:
            d["files"] = self.files
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ImageResult:
        return cls(
            record=ImageRecord.from_json(d["record"]),
            width=d.get("width"),
            height=d.get("height"),
            masks=[MaskResult.from_json(m) for m in d.get("masks", [])],
            errors=[ErrorRecord.from_json(e) for e in d.get("errors", [])],
            warnings=list(d.get("warnings", [])),
            files=list(d.get("files", [])),
        )
