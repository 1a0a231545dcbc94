"""Normalised box edges as written: ``int(v * W)`` gives back every pixel edge exactly.

The property is checked on the float64 value a reader parses from the text: ``numerator /
10**decimals`` (both exact in float64; IEEE division rounds correctly, as a correct decimal
parser does; ``test_text_parses_to_the_value_checked`` confirms it on the written text).
"""

from __future__ import annotations

import io
import os

import numpy as np
import pytest

from boxmask.boxes import (
    EDGE_MAX_SIZE,
    from_normalized,
    normalized_edge_text,
    normalized_edges,
)

FULL_SWEEP_ENV = "BOXMASK_FULL_SWEEP"


def all_pairs(sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (edge, size) with ``0 <= edge <= size`` for the given sizes."""
    sizes = np.asarray(sizes, dtype=np.int64)
    counts = sizes + 1
    size = np.repeat(sizes, counts)
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    return np.arange(size.size, dtype=np.int64) - starts, size


def check_exact(edges: np.ndarray, sizes: np.ndarray) -> None:
    numerator, decimals = normalized_edges(edges, sizes)
    v = numerator / 10.0 ** decimals
    scaled = v * sizes
    assert np.array_equal(scaled.astype(np.int64), edges)  # int(v * W): FiftyOne's crop
    assert np.array_equal(np.floor(scaled).astype(np.int64), edges)
    assert np.array_equal(np.rint(scaled).astype(np.int64), edges)  # round(v * W)
    offset = numerator * sizes - edges * 10 ** decimals  # exact, in units of 10**-decimals px
    inner = (edges > 0) & (edges < sizes)
    assert (offset[~inner] == 0).all() and (offset[inner] > 0).all()
    assert (offset * 10 ** (7 - decimals) <= 5 * sizes).all()  # <= 5e-7 * W px
    assert ((0 <= v) & (v <= 1)).all() and (decimals <= 7).all()


def sweep(sizes: np.ndarray, chunk: int = 4_000_000) -> int:
    """``check_exact`` on every pair of ``sizes``, a few million pairs at a time."""
    n = 0
    start = 0
    while start < len(sizes):
        stop = start + 1
        total = sizes[start] + 1
        while stop < len(sizes) and total + sizes[stop] + 1 <= chunk:
            total += sizes[stop] + 1
            stop += 1
        edges, size = all_pairs(sizes[start:stop])
        check_exact(edges, size)
        n += edges.size
        start = stop
    return n


def test_every_edge_of_every_size_up_to_2048_and_of_large_sizes_is_exact():
    """The CI sweep: all 2.1 M pairs with W <= 2048, and every edge of 40 sizes up to 65,535
    (the largest, powers of two and ten, primes, and random ones)."""
    rng = np.random.default_rng(13)
    large = np.unique(np.concatenate([
        [65535, 65534, 65521, 65536 // 2, 50000, 40000, 30000, 10007, 10000, 8192, 4099, 2049],
        rng.integers(2049, 65536, size=28)]))
    assert sweep(np.arange(1, 2049)) == 2048 * 2049 // 2 + 2048
    assert sweep(large) == int((large + 1).sum())


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get(FULL_SWEEP_ENV) != "1",
                    reason=f"the full sweep (2.1 billion pairs, minutes) runs with "
                           f"{FULL_SWEEP_ENV}=1")
def test_every_edge_of_every_size_up_to_65535_is_exact():
    assert sweep(np.arange(1, 65536)) == 65535 * 65536 // 2 + 65535


def test_six_decimals_would_fail_the_same_check():
    """The check is not vacuous: ``edge / W`` printed with 6 decimals (the earlier output)
    misses ``int(v * W) == edge`` for a large share of pairs."""
    edges, sizes = all_pairs(np.arange(1, 1025))
    v = np.array([float(f"{e / w:.6f}") for e, w in zip(edges[::7], sizes[::7], strict=True)])
    wrong = (v * sizes[::7]).astype(np.int64) != edges[::7]
    assert wrong.mean() > 0.3


def test_text_parses_to_the_value_checked():
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 65536, size=3000)
    edges = (rng.random(3000) * (sizes + 1)).astype(np.int64)
    numerator, decimals = normalized_edges(edges, sizes)
    texts = [normalized_edge_text(int(e), int(w)) for e, w in zip(edges, sizes, strict=True)]
    assert [float(t) for t in texts] == list(numerator / 10.0 ** decimals)
    assert all(len(t) <= 9 and (t in ("0", "1") or t.startswith("0.")) for t in texts)
    assert all(not t.endswith("0") or t == "0" for t in texts)  # the shortest decimals


def test_pandas_parses_the_text_to_the_same_floats():
    pd = pytest.importorskip("pandas", reason="pandas is not installed (FiftyOne reads with it)")
    rng = np.random.default_rng(1)
    sizes = rng.integers(1, 65536, size=20000)
    edges = (rng.random(20000) * (sizes + 1)).astype(np.int64)
    text = "v\n" + "".join(f"{normalized_edge_text(int(e), int(w))}\n"
                           for e, w in zip(edges, sizes, strict=True))
    parsed = pd.read_csv(io.StringIO(text))["v"].to_numpy()
    numerator, decimals = normalized_edges(edges, sizes)
    assert np.array_equal(parsed, numerator / 10.0 ** decimals)
    assert np.array_equal((parsed * sizes).astype(np.int64), edges)


def test_boxmask_reads_written_boxes_back_exactly():
    rng = np.random.default_rng(2)
    for _ in range(2000):
        w, h = (int(v) for v in rng.integers(1, 65536, size=2))
        x0, x1 = sorted(int(v) for v in rng.integers(0, w, size=2))
        y0, y1 = sorted(int(v) for v in rng.integers(0, h, size=2))
        text = [normalized_edge_text(x0, w), normalized_edge_text(y0, h),
                normalized_edge_text(x1 + 1, w), normalized_edge_text(y1 + 1, h)]
        assert from_normalized(*(float(t) for t in text), w, h) == (x0, y0, x1, y1)


def test_border_edges_are_zero_and_one():
    assert normalized_edge_text(0, 640) == "0" and normalized_edge_text(640, 640) == "1"
    assert normalized_edge_text(125, 640) == "0.195313"
    assert normalized_edge_text(29, 100) == "0.2900001"  # 0.29 * 100 = 28.999999999999996


@pytest.mark.parametrize("edge,size", [(-1, 10), (11, 10), (0, 0), (1, EDGE_MAX_SIZE + 1)])
def test_edges_outside_the_image_and_bad_sizes_are_refused(edge, size):
    with pytest.raises(ValueError):
        normalized_edges(edge, size)
