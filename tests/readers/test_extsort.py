"""External sort of rows by key: order, stability across spilled chunks, fields kept exactly."""

from __future__ import annotations

import os
import random
import tempfile

import pytest

from boxmask.readers._extsort import sort_rows


def _rows(n: int, seed: int = 0) -> list[tuple[str, int, list[str]]]:
    rng = random.Random(seed)
    odd = ["plain", "with,comma", 'with "quote"', "two\nlines", "", "ünïcode"]
    return [(f"k{rng.randrange(50):02d}", line, [rng.choice(odd), str(line)])
            for line in range(n)]


@pytest.mark.parametrize("chunk_rows", [1, 7, 1000])
def test_rows_come_sorted_by_key_then_line_with_fields_unchanged(chunk_rows):
    rows = _rows(300)
    assert list(sort_rows(iter(rows), chunk_rows)) == sorted(rows, key=lambda r: (r[0], r[1]))


def test_spilled_chunks_are_removed_when_the_stream_ends_or_is_closed(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert len(list(sort_rows(iter(_rows(50)), 10))) == 50
    stream = sort_rows(iter(_rows(50)), 10)
    next(stream)
    assert [n for n in os.listdir(tmp_path) if n.startswith("boxmask-sort-")]
    stream.close()
    assert os.listdir(tmp_path) == []
