"""Image records read back from JSON lines: the input of a sub-job over chosen boxes.

Each non-empty line of the input file is ``{"record": <ImageRecord.to_json()>, ...}`` (other
keys are ignored): records that boxmask itself wrote, e.g. ``boxmask redo``'s
``selection.jsonl``. Their boxes are already in the library convention (``boxmask.records``)
and keep their box ids and positions (``Box.index``), so masks made from them slot back into the
run they came from. A line that cannot be parsed becomes a ``read`` error record.

Options: ``labels``: a ``labels.json`` (``LabelMap.save``'s format, e.g. the run's) giving the
class ids and names; without it the label map is empty.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..labels import LabelMap
from ..records import ErrorRecord, ImageRecord
from .base import Item, Reader

INPUT_FORMAT = "records"


class RecordsReader(Reader):
    input_format = INPUT_FORMAT

    def __init__(self, input_path: str | Path, images_root: str | Path | None = None,
                 labels_file: str | Path | None = None, labels: str | None = None) -> None:
        super().__init__(input_path, images_root, labels_file)
        self.labels_json = labels
        if labels is not None:
            self.label_map = LabelMap.load(Path(labels))

    def __iter__(self) -> Iterator[Item]:
        with open(self.input_path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield ImageRecord.from_json(json.loads(line)["record"])
                except (ValueError, KeyError, TypeError) as e:
                    yield ErrorRecord("read", f"line {n} is not an image record: {e}",
                                      location=f"{self.input_path}:{n}")

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "labels": self.labels_json}
