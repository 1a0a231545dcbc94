"""What the writer tests share: many tiny results for the streaming check, the memory check
itself, and the checks that writing an image again changes nothing and that an unsafe id writes
nothing.

Imported as ``from writers_support import ...``: pytest puts ``tests/`` on ``sys.path`` (rootdir
``prepend`` import mode, ``tests/`` has no ``__init__.py``).
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import pytest

from boxmask import masks
from boxmask.records import Box, Click, ErrorRecord, ImageRecord, ImageResult, MaskResult
from boxmask.safepath import UnsafePathError


def tiny_results(n: int, label: Callable[[int], str] = lambda i: f"n{i % 50:08d}",
                 image_id: Callable[[int], str] = lambda i: f"img{i:05d}",
                 with_error: bool = False) -> Iterator[ImageResult]:
    """``n`` 4 x 4 images, each with one box ``(0, 0, 3, 3)`` (library convention) whose mask
    is the diagonal; image ``i`` has id ``image_id(i)``, file ``<id>.jpg`` and box label
    ``label(i)``. ``with_error`` adds one error record per image (a clipped box ``b1``)."""
    rle = masks.encode_rle(np.eye(4, dtype=bool))
    for i in range(n):
        box = Box("b0", label(i), 0, (0, 0, 3, 3))
        record = ImageRecord(image_id(i), f"{image_id(i)}.jpg", [box])
        errors = [ErrorRecord("box", "clipped", record.image_id, "b1")] if with_error else []
        yield ImageResult(record, 4, 4, masks=[
            MaskResult("b0", box.label, 0, box.xyxy, dict(rle), 0.5, [Click(1, 1, True)])],
            errors=errors)


def traced_peak(run: Callable[[], object]) -> int:
    """Peak bytes that Python allocated while ``run()`` ran (``tracemalloc``)."""
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def assert_merge_streams(merge: Callable[[], object],
                         results: Callable[[], Iterable[ImageResult]]) -> None:
    """``merge()`` peaks below a tenth of the memory that holding all of ``results()`` takes:
    it streams the results instead of collecting them."""
    materialised = traced_peak(lambda: list(results()))
    peak = traced_peak(merge)
    assert peak < materialised / 10, (peak, materialised)


def assert_rewrite_changes_nothing(write_image: Callable[[ImageResult], list[str]],
                                   result: Callable[[], ImageResult], root: Path) -> list[str]:
    """Write ``result()`` twice with ``write_image``: the second write names the same files
    (relative to ``root``) and leaves their bytes as they were. Returns the files."""
    files = write_image(result())
    before = {f: (root / f).read_bytes() for f in files}
    assert write_image(result()) == files
    assert {f: (root / f).read_bytes() for f in files} == before
    return files


def assert_refused_writing_nothing(write: Callable[[], object], root: Path) -> None:
    """``write()`` raises ``UnsafePathError`` and no file exists under ``root`` afterwards."""
    with pytest.raises(UnsafePathError):
        write()
    assert [p for p in root.rglob("*") if p.is_file()] == []
