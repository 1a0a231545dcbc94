"""Fixtures of the writer tests: many tiny results for the streaming check, the memory check
itself, and the checks that writing an image again changes nothing and that an unsafe id writes
nothing. Each is a factory: the fixture is the function."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import pytest

from boxmask import masks
from boxmask.records import Box, Click, ErrorRecord, ImageRecord, ImageResult, MaskResult
from boxmask.safepath import UnsafePathError


def _tiny_results(n: int, label: Callable[[int], str] = lambda i: f"n{i % 50:08d}",
                  image_id: Callable[[int], str] = lambda i: f"img{i:05d}",
                  with_error: bool = False) -> Iterator[ImageResult]:
    rle = masks.encode_rle(np.eye(4, dtype=bool))
    for i in range(n):
        box = Box("b0", label(i), 0, (0, 0, 3, 3))
        record = ImageRecord(image_id(i), f"{image_id(i)}.jpg", [box])
        errors = [ErrorRecord("box", "clipped", record.image_id, "b1")] if with_error else []
        yield ImageResult(record, 4, 4, masks=[
            MaskResult("b0", box.label, 0, box.xyxy, dict(rle), 0.5, [Click(1, 1, True)])],
            errors=errors)


def _traced_peak(run: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.fixture(scope="session")
def tiny_results() -> Callable[..., Iterator[ImageResult]]:
    """``tiny_results(n, label=..., image_id=..., with_error=False)``: ``n`` 4 x 4 images, each
    with one box ``(0, 0, 3, 3)`` (library convention) whose mask is the diagonal; image ``i``
    has id ``image_id(i)``, file ``<id>.jpg`` and box label ``label(i)``. ``with_error`` adds
    one error record per image (a clipped box ``b1``)."""
    return _tiny_results


@pytest.fixture(scope="session")
def traced_peak() -> Callable[[Callable[[], object]], int]:
    """``traced_peak(run)``: peak bytes that Python allocated while ``run()`` ran
    (``tracemalloc``)."""
    return _traced_peak


@pytest.fixture(scope="session")
def assert_merge_streams() -> Callable[..., None]:
    """``assert_merge_streams(merge, results)``: ``merge()`` peaks below a tenth of the memory
    that holding all of ``results()`` takes: it streams the results instead of collecting
    them."""
    def check(merge: Callable[[], object],
              results: Callable[[], Iterable[ImageResult]]) -> None:
        materialised = _traced_peak(lambda: list(results()))
        peak = _traced_peak(merge)
        assert peak < materialised / 10, (peak, materialised)
    return check


@pytest.fixture(scope="session")
def assert_rewrite_changes_nothing() -> Callable[..., list[str]]:
    """``assert_rewrite_changes_nothing(write_image, result, root)``: write ``result()`` twice
    with ``write_image``: the second write names the same files (relative to ``root``) and
    leaves their bytes as they were. Returns the files."""
    def check(write_image: Callable[[ImageResult], list[str]],
              result: Callable[[], ImageResult], root: Path) -> list[str]:
        files = write_image(result())
        before = {f: (root / f).read_bytes() for f in files}
        assert write_image(result()) == files
        assert {f: (root / f).read_bytes() for f in files} == before
        return files
    return check


@pytest.fixture(scope="session")
def assert_refused_writing_nothing() -> Callable[..., None]:
    """``assert_refused_writing_nothing(write, root)``: ``write()`` raises ``UnsafePathError``
    and no file exists under ``root`` afterwards."""
    def check(write: Callable[[], object], root: Path) -> None:
        with pytest.raises(UnsafePathError):
            write()
        assert [p for p in root.rglob("*") if p.is_file()] == []
    return check
