"""Small helpers the readers share: error records, number parsing, the label list."""

from __future__ import annotations

import math
from collections.abc import Iterable

from ..labels import LabelMap
from ..records import Box, ErrorRecord


def read_error(reason: str, image_id: str | None = None, box_id: str | None = None,
               location: str | None = None) -> ErrorRecord:
    """An ``ErrorRecord`` of the ``read`` stage."""
    return ErrorRecord(stage="read", reason=reason, image_id=image_id, box_id=box_id,
                       location=location)


def parse_number(text: str | None, what: str) -> float:
    """A finite float from annotation text; ``ValueError`` naming ``what`` otherwise."""
    if text is None or not text.strip():
        raise ValueError(f"{what} is missing")
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{what} {text.strip()!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{what} {text.strip()!r} is not a finite number")
    return value


def parse_size(text: str | None, what: str) -> int | None:
    """A declared image side in pixels: ``None`` if absent, ``ValueError`` unless a positive int."""
    if text is None or not str(text).strip():
        return None
    try:
        number = float(str(text).strip())
    except ValueError:
        number = math.nan
    if not number.is_integer():
        raise ValueError(f"declared {what} {text!r} is not an integer")
    value = int(number)
    if value <= 0:
        raise ValueError(f"declared {what} {value} is not positive")
    return value


def attr_value(text: str) -> int | float | str:
    """An attribute as ``int`` when it is an integer, ``float`` when a number, else the string."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return text
    return value if math.isfinite(value) else text


def add_labels(label_map: LabelMap, boxes: Iterable[Box]) -> None:
    """Append the labels of ``boxes`` missing from ``label_map``, in the order met."""
    for box in boxes:
        label_map.add(box.label)
