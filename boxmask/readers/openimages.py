"""Open Images box CSVs (``oidv6-train-annotations-bbox.csv``, ``validation-annotations-bbox.csv``).

Columns are found by header name, so the 13-column files (``ImageID, Source, LabelName,
Confidence, XMin, XMax, YMin, YMax, IsOccluded, IsTruncated, IsGroupOf, IsDepiction, IsInside``)
and the 21-column ones (the same plus ``XClick1X .. XClick4Y``) both work. Note the column order
``XMin, XMax, YMin, YMax``: boxes keep normalised **edge** coordinates in ``Box.xyxy_norm =
(XMin, YMin, XMax, YMax)`` (in [0, 1], right/bottom exclusive); they become pixel boxes once the
image size is known (``boxmask.boxes.resolve_box``).

The file is streamed: rows of one image are consecutive in the official files and are gathered
into one record while reading, in file order. A quick first pass over the ImageID column checks
that; a file whose ImageIDs are not grouped (an ImageID comes back after other ones) is instead
read through an external sort by ImageID (``_extsort``: sorted chunks spilled to ``TMPDIR``, then
merged; about the CSV's size on disk, bounded memory), so its records come in ImageID order, each
with its rows in file order. Row numbers in ``location`` and error messages are the file's lines.
"""

from __future__ import annotations

import csv
import logging
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..records import Box, ImageRecord
from ..safepath import UnsafePathError, check_component
from ._common import add_labels, attr_value, read_error
from ._extsort import DEFAULT_CHUNK_ROWS, SortRow, sort_rows
from ._seen import SeenIds
from .base import Item, Reader, stable_box_id

log = logging.getLogger(__name__)

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

    def box_parser(self) -> Callable[[list[str], str, int], Box]:
        """A function ``(row, box_id, index) -> Box`` raising ``ValueError`` for an empty label
        or a coordinate outside [0, 1] (the per-row hot path of planning: fields by index,
        attribute dicts shared between rows with the same attribute text)."""
        label_col = self.label
        (_, ix0), (_, iy0), (_, ix1), (_, iy1) = self.coords
        attr_cols = tuple(i for _, i in self.attrs)
        attr_names = tuple(name for name, _ in self.attrs)
        attrs_cache: dict[tuple[str, ...], dict[str, int | float | str]] = {}
        checked = self._checked_box

        def parse(row: list[str], box_id: str, index: int) -> Box:
            label = row[label_col].strip()
            try:
                xyxy = (float(row[ix0]), float(row[iy0]), float(row[ix1]), float(row[iy1]))
            except ValueError:
                xyxy = None
            if (not label or xyxy is None
                    or not (0.0 <= xyxy[0] <= 1.0 and 0.0 <= xyxy[1] <= 1.0
                            and 0.0 <= xyxy[2] <= 1.0 and 0.0 <= xyxy[3] <= 1.0)):
                return checked(row, box_id, index)  # raises with the reason
            key = tuple([row[i] for i in attr_cols])
            attrs = attrs_cache.get(key)
            if attrs is None:
                if len(attrs_cache) >= 4096:
                    attrs_cache.clear()
                attrs = attrs_cache[key] = {name: _attr(text) for name, text
                                            in zip(attr_names, key, strict=True) if text}
            return Box(box_id=box_id, label=label, index=index, xyxy_norm=xyxy,
                       attrs=dict(attrs))

        return parse

    def _checked_box(self, row: list[str], box_id: str, index: int) -> Box:
        """The row's box, checked field by field; ``ValueError`` naming the first bad field."""
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
        x0, y0, x1, y1 = xyxy_norm
        return Box(box_id=box_id, label=label, index=index, xyxy_norm=(x0, y0, x1, y1),
                   attrs=attrs)


def _attr(text: str) -> int | float | str:
    return attr_value(text.strip())


def _numbered(rows: Any) -> Iterator[tuple[int, list[str]]]:
    """(line number, row) of a ``csv.reader``."""
    for row in rows:
        yield rows.line_num, row


def is_grouped(path: Path, image_id_column: int) -> bool:
    """Whether the rows of each ImageID of the CSV at ``path`` are consecutive.

    A fast pass over the raw lines when ImageID is the first column and no line holds a quote
    (the official files), else over ``csv.reader`` rows. Ids that never decrease are grouped;
    otherwise a second pass remembers finished ids as 64-bit hashes (``SeenIds``, 8 bytes each)
    and looks up each new id smaller than the largest one started so far.
    """
    def ids() -> Iterator[str]:
        return _raw_first_fields(path) if image_id_column == 0 else \
            _csv_fields(path, image_id_column)

    try:
        return _ids_sorted(ids()) or _ids_grouped(ids())
    except _QuotedLine:
        return _ids_grouped(_csv_fields(path, image_id_column))


def _ids_sorted(image_ids: Iterable[str]) -> bool:
    """Whether the ids never decrease (sorted, hence grouped: the official files)."""
    last = ""
    for image_id in image_ids:
        if image_id < last:
            return False
        last = image_id
    return True


def _ids_grouped(image_ids: Iterable[str]) -> bool:
    finished = SeenIds()
    last_started = ""
    current: str | None = None
    for image_id in image_ids:
        if image_id == current:
            continue
        if current is not None:
            finished.add(current)
        if image_id <= last_started and image_id in finished:
            return False
        last_started = max(last_started, image_id)
        current = image_id
    return True


class _QuotedLine(Exception):
    """A line with a quote: raw lines are not rows there."""


def _raw_first_fields(path: Path) -> Iterator[str]:
    """The first field of every data line, read as raw bytes (``_QuotedLine`` on a quote)."""
    with open(path, "rb") as f:
        if f.read(3) != b"\xef\xbb\xbf":
            f.seek(0)
        f.readline()  # header
        for line in f:
            if b'"' in line:
                raise _QuotedLine
            comma = line.find(b",")
            if comma > 0:
                yield line[:comma].decode("utf-8", "replace")


def _csv_fields(path: Path, column: int) -> Iterator[str]:
    """Field ``column`` of every data row that has it."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = csv.reader(f)
        next(rows, None)
        for row in rows:
            if len(row) > column and row[column]:
                yield row[column]


class OpenImagesReader(Reader):
    """Stream ``ImageRecord``s from an Open Images box CSV (source ``openimages``).

    ``labels_file``: the class-description CSV (``/m/0cmf2,Airplane``, with or without header).
    """

    input_format = "openimages"

    sort_chunk_rows: int = DEFAULT_CHUNK_ROWS
    """Rows sorted in memory at a time when the file is not grouped by ImageID."""

    def __init__(self, input_path: str | Path, images_root: str | Path | None = None,
                 labels_file: str | Path | None = None) -> None:
        if labels_file is None:
            folder = Path(input_path).parent
            labels_file = next((folder / n for n in CLASS_FILES if (folder / n).is_file()), None)
        super().__init__(input_path, images_root, labels_file)
        self.grouped: bool | None = None
        """Whether the last iteration found the file grouped by ImageID (None before one)."""

    def default_images_root(self) -> Path:
        """``<csv dir>/images`` if it exists, else the csv dir; images are ``<ImageID>.jpg``."""
        images = self.input_path.parent / "images"
        return images if images.is_dir() else self.input_path.parent

    def __iter__(self) -> Iterator[Item]:
        with open(self.input_path, newline="", encoding="utf-8-sig") as f:
            rows = csv.reader(f)
            layout = _Layout.from_header(next(rows, None), self.input_path)
        self.grouped = is_grouped(self.input_path, layout.image_id)
        if not self.grouped:
            log.info("%s is not grouped by ImageID: sorting it (temporary files in %s)",
                     self.input_path, tempfile.gettempdir())
        with open(self.input_path, newline="", encoding="utf-8-sig") as f:
            rows = csv.reader(f)
            next(rows, None)
            numbered = _numbered(rows)
            if self.grouped:
                yield from self._groups(numbered, layout)
            else:
                errors: list[Item] = []
                keyed = self._keyed(numbered, layout, errors)
                yield from self._groups(
                    ((line, row) for _, line, row in sort_rows(keyed, self.sort_chunk_rows)),
                    layout, errors)

    def _keyed(self, numbered: Iterator[tuple[int, list[str]]], layout: _Layout,
               errors: list[Item]) -> Iterator[SortRow]:
        """Rows with their sort key; rows of the wrong length go to ``errors``."""
        n_fields, column = layout.n_fields, layout.image_id
        for line, row in numbered:
            if len(row) != n_fields:
                if row:
                    errors.append(self._length_error(row, layout, line))
                continue
            yield row[column], line, row

    def _length_error(self, row: list[str], layout: _Layout, line: int) -> Item:
        return read_error(f"row has {len(row)} fields, the header {layout.n_fields}",
                          location=self._where(line))

    def _groups(self, numbered: Iterable[tuple[int, list[str]]], layout: _Layout,
                pending: list[Item] | None = None) -> Iterator[Item]:
        """Records of consecutive rows with the same ImageID (and read errors, in order).

        ``pending``: errors found by the producer of ``numbered`` (the sort), yielded as soon as
        they are known.
        """
        n_fields, column = layout.n_fields, layout.image_id
        parse = layout.box_parser()
        group: _Group | None = None
        for line, row in numbered:
            if pending:
                yield from pending
                pending.clear()
            if len(row) != n_fields:
                if row:
                    yield self._length_error(row, layout, line)
                continue
            image_id = row[column]
            if group is None or image_id != group.image_id:
                if group is not None:
                    yield from self._finish(group)
                group = _Group(image_id, line)
                try:
                    check_component(image_id, "ImageID")
                except UnsafePathError as exc:
                    group.unsafe = True
                    yield read_error(f"{exc}; all rows of this image are skipped",
                                     location=self._where(line))
            if not group.unsafe:
                index = group.rows
                box_id = stable_box_id(image_id, index)
                try:
                    group.boxes.append(parse(row, box_id, index))
                except ValueError as exc:
                    yield read_error(f"box {index}: {exc}", image_id, box_id, self._where(line))
            group.rows += 1
        if pending:
            yield from pending
        if group is not None:
            yield from self._finish(group)

    def describe(self) -> dict[str, Any]:
        """The base description, plus ``grouped_by_image_id`` once the file has been read
        (``False``: the records came in ImageID order, through the external sort)."""
        d = super().describe()
        if self.grouped is not None:
            d["grouped_by_image_id"] = self.grouped
        return d

    def _where(self, line: int) -> str:
        return f"{self.input_path}:{line}"

    def _finish(self, group: _Group) -> list[Item]:
        if group.unsafe or not group.boxes:
            return []
        add_labels(self.label_map, group.boxes)
        return [ImageRecord(image_id=group.image_id, image_path=f"{group.image_id}.jpg",
                            boxes=group.boxes, location=self._where(group.line))]


__all__ = ["OpenImagesReader"]
