"""External sort of CSV rows by a string key, with bounded memory (readers of unsorted files).

Rows are gathered ``chunk_rows`` at a time, each chunk is sorted in memory and spilled to a
temporary CSV file, and the chunks are then merged (``heapq.merge``), so memory holds one chunk
while spilling and one row per chunk while merging. The temporary files live in a private folder
under ``tempfile.gettempdir()`` (``TMPDIR``), need about the input's size, and are removed when
the merged stream ends or is closed.
"""

from __future__ import annotations

import csv
import heapq
import tempfile
from collections.abc import Generator, Iterable, Iterator
from pathlib import Path

SortRow = tuple[str, int, list[str]]
"""(key, line number in the source, the row's fields)."""

DEFAULT_CHUNK_ROWS = 100_000
"""Rows per in-memory chunk: about 140 MB of Python objects for 21-field rows."""


def _spill(chunk: list[SortRow], folder: Path, n: int) -> Path:
    chunk.sort(key=lambda r: (r[0], r[1]))
    path = folder / f"chunk{n:05d}.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerows([key, line, *fields] for key, line, fields in chunk)
    return path


def _read_chunk(path: Path) -> Iterator[SortRow]:
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.reader(f):
            yield row[0], int(row[1]), row[2:]


def sort_rows(rows: Iterable[SortRow],
              chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Generator[SortRow, None, None]:
    """``rows`` sorted by (key, line); a stable sort of any number of rows in bounded memory.

    Input that fits one chunk is sorted in memory without touching the disk.
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, not {chunk_rows}")
    with tempfile.TemporaryDirectory(prefix="boxmask-sort-") as tmp:
        folder = Path(tmp)
        chunk: list[SortRow] = []
        spilled: list[Path] = []
        for row in rows:
            chunk.append(row)
            if len(chunk) >= chunk_rows:
                spilled.append(_spill(chunk, folder, len(spilled)))
                chunk = []
        if not spilled:
            chunk.sort(key=lambda r: (r[0], r[1]))
            yield from chunk
            return
        if chunk:
            spilled.append(_spill(chunk, folder, len(spilled)))
            chunk = []
        yield from heapq.merge(*(_read_chunk(p) for p in spilled), key=lambda r: (r[0], r[1]))


__all__ = ["DEFAULT_CHUNK_ROWS", "SortRow", "sort_rows"]
