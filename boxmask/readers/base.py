"""The reader interface: an input format -> a stream of image records (and error records).

Readers stream: they never hold a whole annotation file in memory (what must be regrouped, an
unsorted CSV or COCO annotations, goes through an external sort, ``_extsort``), and they yield
records in a deterministic order (the source's own order, or ImageID order for an Open Images CSV
that is not grouped by ImageID), so that planning the same input twice gives the same shards.
Anything wrong with one image's annotation (malformed XML, a row that cannot be parsed, an unsafe
file name) becomes an ``ErrorRecord`` with stage ``"read"``; the stream goes on.
Coordinates are converted to the library box convention here (see ``boxmask.records``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..labels import LabelMap
from ..records import ErrorRecord, ImageRecord

Item = ImageRecord | ErrorRecord


class Reader(ABC):
    """Iterate to get records; ``ImageRecord.image_path`` is relative to ``images_root``."""

    input_format: str = "reader"
    """The input format this reader reads (``--source``)."""

    def __init__(self, input_path: str | Path, images_root: str | Path | None = None,
                 labels_file: str | Path | None = None) -> None:
        self.input_path = Path(input_path)
        self.images_root = (Path(images_root) if images_root is not None
                            else self.default_images_root())
        self.label_map = LabelMap()
        if labels_file is not None:
            from ..labels import read_label_file

            self.label_map = read_label_file(labels_file)

    def default_images_root(self) -> Path:
        """Where the images are when ``--images-root`` is not given (format-specific)."""
        return self.input_path.parent

    @abstractmethod
    def __iter__(self) -> Iterator[Item]:
        """Yield records in the source's order; errors as ``ErrorRecord(stage="read")``."""

    def labels(self) -> LabelMap:
        """Class ids and names known so far (complete after iteration)."""
        return self.label_map

    def describe(self) -> dict[str, Any]:
        """What was read, for the plan and the manifest."""
        return {"input_format": self.input_format, "input": str(self.input_path),
                "images_root": str(self.images_root)}


def stable_box_id(image_id: str, index: int) -> str:
    """An 8-hex-digit box id derived from the image id and the box's position in the record.

    Stable across runs and machines, filename-safe, and shaped like Open Images ``BoxID`` values.
    Used where the source has no box id of its own (ILSVRC XML, Kaggle CSV, Open Images boxes).
    """
    import hashlib

    return hashlib.sha1(f"{image_id}/{index}".encode()).hexdigest()[:8]
