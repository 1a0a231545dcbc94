"""The writer interface: per-image files during the run, streaming merge at the end.

A conversion produces, per image, an ``ImageResult`` (masks as RLE, clicks, scores, metrics,
errors). Writers turn those into an output format in two steps:

* ``write_image``: per-image files (PNG masks), called by the worker right after the engine, each
  written atomically; calling it twice for the same image writes identical bytes (idempotent).
* ``merge``: the format's index files (COCO JSON, Open Images CSV, class index), built by streaming
  over all results in plan order. ``results()`` may be called several times (one pass each);
  nothing may hold all results in memory.

Each format lives in its own folder under the output directory (``<output>/<format name>/``).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from ..labels import LabelMap
from ..records import ImageResult, MaskResult

ResultsFactory = Callable[[], Iterator[ImageResult]]
"""Returns a fresh iterator over every image result of the run, in plan order."""


class Writer(ABC):
    name: str = "writer"
    OPTIONS: frozenset[str] = frozenset()
    """Constructor options beyond ``output_dir`` and ``labels`` that ``create_writer`` passes on."""

    def __init__(self, output_dir: str | Path, labels: LabelMap | None = None) -> None:
        self.output_dir = Path(output_dir)
        self.root = self.output_dir / self.name
        self.labels = labels if labels is not None else LabelMap()
        self.summary: dict = {}
        """What the manifest records about this output, filled by ``merge`` (``outputs``)."""

    def write_image(self, result: ImageResult) -> list[str]:
        """Write this image's per-image files; return their paths relative to ``output_dir``."""
        return []

    def mask_file(self, result: ImageResult, mask: MaskResult) -> str | None:
        """The file holding ``mask``, relative to ``output_dir``; None when the format keeps
        masks in its index files only (or the image was not decoded)."""
        return None

    def written_ids(self, result: ImageResult, mask: MaskResult) -> dict[str, str] | None:
        """The IDs this format writes for ``mask`` (column name -> written ID) when they can
        differ from the source IDs; None when it writes the source IDs as they are."""
        return None

    def label_map_with(self, seen: Iterable[str]) -> LabelMap:
        """A copy of the run's label map plus the ``seen`` labels missing from it, appended after
        it in sorted order (logged as a warning by the format's module)."""
        label_map = LabelMap(list(self.labels.ids), dict(self.labels.names))
        unknown = sorted(label for label in set(seen) if label not in label_map)
        if unknown:
            logging.getLogger(type(self).__module__).warning(
                "%d labels missing from the label map, appended after it: %s",
                len(unknown), ", ".join(unknown[:10]))
        for label in unknown:
            label_map.add(label)
        return label_map

    @abstractmethod
    def merge(self, results: ResultsFactory) -> list[str]:
        """Write the format's index files from all results; return paths relative to output_dir."""
