"""Open Images box CSVs (``oidv6-train-annotations-bbox.csv``, ``validation-annotations-bbox.csv``).

Columns are found by header name, so the 13-column files (``ImageID, Source, LabelName,
Confidence, XMin, XMax, YMin, YMax, IsOccluded, IsTruncated, IsGroupOf, IsDepiction, IsInside``)
and the 21-column ones (the same plus ``XClick1X .. XClick4Y``) both work. Note the column order
``XMin, XMax, YMin, YMax``: boxes keep normalised **edge** coordinates in ``Box.xyxy_norm =
(XMin, YMin, XMax, YMax)`` (in [0, 1], right/bottom exclusive); they become pixel boxes once the
image size is known (``boxmask.boxes.resolve_box``).

The file is streamed: rows of one image are consecutive in the official files and are gathered
into one record while reading. A row whose ImageID already had its rows earlier in the file is
reported as an error (the file is not grouped by ImageID) and the stream goes on; finished ids are
remembered as 64-bit hashes (``SeenIds``), 8 bytes each.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from ..records import Box, ImageRecord
from ..safepath import UnsafePathError, check_component
from ._common import add_labels, attr_value, read_error
from ._seen import SeenIds
from .base import Item, Reader, stable_box_id

REQUIRED = ("ImageID", "LabelName", "XMin", "XMax", "YMin", "YMax")
ATTRS = ("Source", "Confidence", "IsOccluded", "IsTruncated", "IsGroupOf", "IsDepiction",
         "IsInside")
CLASS_FILES = ("class-descriptions-boxable.csv", "oidv7-class-descriptions-boxable.csv",
               "oidv6-class-descriptions.csv", "oidv7-class-descriptions.csv")
"""Class lists picked up from the CSV's folder when no ``labels_file`` is given."""


@dataclass
class _Group:
    """The rows of one ImageID gathered so far."""

    image_id: str
    line: int
    unsafe: bool = False
    boxes: list[Box] = field(default_factory=list)
    rows: int = 0


@dataclass(frozen=True)
class _Layout:
    """Where the fields are in a row, from the header."""

    n_fields: int
    image_id: int
    label: int
    coords: tuple[tuple[str, int], ...]
    """(name, column) of XMin, YMin, XMax, YMax: the ``xyxy_norm`` order."""
    attrs: tuple[tuple[str, int], ...]

    @classmethod
    def from_header(cls, header: list[str] | None, path: Path) -> _Layout:
        if header is None:
            raise ValueError(f"{path} is empty; expected an Open Images box CSV")
        columns = {name.strip(): i for i, name in enumerate(header)}
        missing = [c for c in REQUIRED if c not in columns]
        if missing:
            raise ValueError(f"{path} is not an Open Images box CSV: the header lacks "
                             f"{', '.join(missing)} (got {', '.join(header)})")
        return cls(n_fields=len(header), image_id=columns["ImageID"], label=columns["LabelName"],
                   coords=tuple((c, columns[c]) for c in ("XMin", "YMin", "XMax", "YMax")),
                   attrs=tuple((c, columns[c]) for c in ATTRS if c in columns))

    def box(self, row: list[str], box_id: str, index: int) -> Box:
        """The row's box; ``ValueError`` for an empty label or a coordinate outside [0, 1]."""
        label = row[self.label].strip()
        if not label:
            raise ValueError("LabelName is empty")
        xyxy_norm = []
        for name, i in self.coords:
            try:
                value = float(row[i])
            except ValueError:
                raise ValueError(f"{name} {row[i]!r} is not a number") from None
            if not 0.0 <= value <= 1.0:  # also rejects nan
                raise ValueError(f"{name} {value} is outside [0, 1]")
            xyxy_norm.append(value)
        attrs = {name: _attr(row[i]) for name, i in self.attrs if row[i]}
        return Box(box_id=box_id, label=label, index=index, xyxy_norm=tuple(xyxy_norm),
                   attrs=attrs)


@lru_cache(maxsize=1024)
def _attr(text: str) -> int | float | str:
    return attr_value(text.strip())


class OpenImagesReader(Reader):
    """Stream ``ImageRecord``s from an Open Images box CSV (source ``openimages``).

    ``labels_file``: the class-description CSV (``/m/0cmf2,Airplane``, with or without header).
    """

    source = "openimages"

    def __init__(self, input_path: str | Path, images_root: str | Path | None = None,
                 labels_file: str | Path | None = None) -> None:
        if labels_file is None:
            folder = Path(input_path).parent
            labels_file = next((folder / n for n in CLASS_FILES if (folder / n).is_file()), None)
        super().__init__(input_path, images_root, labels_file)

    def default_images_root(self) -> Path:
        """``<csv dir>/images`` if it exists, else the csv dir; images are ``<ImageID>.jpg``."""
        images = self.input_path.parent / "images"
        return images if images.is_dir() else self.input_path.parent

    def __iter__(self) -> Iterator[Item]:
        with open(self.input_path, newline="", encoding="utf-8-sig") as f:
            rows = csv.reader(f)
            layout = _Layout.from_header(next(rows, None), self.input_path)
            finished = SeenIds()
            last_started = ""  # largest ImageID started: a larger one cannot be a repeat
            group: _Group | None = None
            for row in rows:
                if len(row) != layout.n_fields:
                    if row:
                        yield read_error(f"row has {len(row)} fields, the header "
                                         f"{layout.n_fields}", source=self._where(rows.line_num))
                    continue
                image_id = row[layout.image_id]
                if group is None or image_id != group.image_id:
                    if group is not None:
                        yield from self._finish(group)
                        finished.add(group.image_id)
                        group = None
                    line = rows.line_num
                    if image_id <= last_started and image_id in finished:
                        yield read_error(
                            f"line {line}: ImageID {image_id} appears again after its rows ended; "
                            "the CSV is not grouped by ImageID. Sort it by ImageID (keeping the "
                            "header first) and read it again; this row is skipped",
                            image_id=image_id, source=self._where(line))
                        continue
                    last_started = max(last_started, image_id)
                    group = _Group(image_id, line)
                    try:
                        check_component(image_id, "ImageID")
                    except UnsafePathError as exc:
                        group.unsafe = True
                        yield read_error(f"{exc}; all rows of this image are skipped",
                                         source=self._where(line))
                if not group.unsafe:
                    index = group.rows
                    box_id = stable_box_id(image_id, index)
                    try:
                        group.boxes.append(layout.box(row, box_id, index))
                    except ValueError as exc:
                        yield read_error(f"box {index}: {exc}", image_id, box_id,
                                         self._where(rows.line_num))
                group.rows += 1
            if group is not None:
                yield from self._finish(group)

    def _where(self, line: int) -> str:
        return f"{self.input_path}:{line}"

    def _finish(self, group: _Group) -> list[Item]:
        if group.unsafe or not group.boxes:
            return []
        add_labels(self.label_map, group.boxes)
        return [ImageRecord(image_id=group.image_id, image_path=f"{group.image_id}.jpg",
                            boxes=group.boxes, source=self._where(group.line))]


__all__ = ["OpenImagesReader"]
