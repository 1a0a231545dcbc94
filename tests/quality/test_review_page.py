"""Verdicts in the review page, in real headless Chromium: keys and clicks to the exported file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cdp import Browser
from review_run import build_results, write_run

from boxmask.quality.gallery import REASONS, sample_run

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

N = 12


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return write_run(tmp_path_factory.mktemp("verdicts") / "run", build_results())


@pytest.fixture(scope="module")
def report(run, tmp_path_factory) -> Path:
    return sample_run(run, tmp_path_factory.mktemp("report"), n=N, seed=0, thumb_size=64)


def _items(index: Path) -> list[dict]:
    return [json.loads(x) for x in (index.parent / "sample.jsonl").read_text().splitlines()]


def _progress(b: Browser) -> str:
    return b.eval("document.getElementById('progress').textContent")


def _verdicts(b: Browser) -> dict[int, str | None]:
    return {int(k): v for k, v in b.eval(
        "Object.fromEntries(Array.from(document.querySelectorAll('figure.item'))"
        ".map(el => [el.dataset.i, el.getAttribute('data-verdict')]))").items()}


def test_keys_and_clicks_give_verdicts_that_survive_a_reload_and_export(report, run, tmp_path):
    items = _items(report)
    design = json.loads((report.parent / "sample_design.json").read_text())["design"]
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with Browser(downloads=downloads) as b:
        b.open(report.resolve().as_uri())
        assert _progress(b) == f"0 / {N} reviewed"
        b.press("g")                       # card 0: good, moves to card 1
        b.press("4")                       # card 1: reason 4 of the list ...
        b.press("b")                       # ... and bad; moves to card 2
        b.press("u")                       # card 2: unsure; moves to card 3
        b.press("j")                       # skip card 3
        b.press("0")                       # card 4: the last reason (other) ...
        b.press("b")
        b.click("#s00006 button[data-verdict='bad']")   # card 6 with the mouse
        b.press("k")                       # back to card 5 (the click made 6 current)
        b.press("g")
        assert _progress(b) == f"6 / {N} reviewed"
        expected = {0: "good", 1: "bad", 2: "unsure", 4: "bad", 5: "good", 6: "bad"}
        assert {k: v for k, v in _verdicts(b).items() if v} == expected

        b.reload()
        assert _progress(b) == f"6 / {N} reviewed"
        assert {k: v for k, v in _verdicts(b).items() if v} == expected
        b.press("j")                       # card 0 again: clear it
        b.press("x")
        assert _progress(b) == f"5 / {N} reviewed"

        b.click("#export")
        exported = b.wait_for_download("verdicts.jsonl")
        lines = [json.loads(x) for x in exported.read_text().splitlines()]
    del expected[0]
    assert [x["sample_index"] for x in lines] == sorted(expected)
    for x in lines:
        item = items[x["sample_index"]]
        assert x["verdict"] == expected[x["sample_index"]]
        assert (x["image_id"], x["box_id"], x["label"]) == \
            (item["image_id"], item["box_id"], item["label"])
        assert x["sample_id"] == design["sample_id"] and x["run"] == str(run)
        assert x["reviewed_at"].endswith("Z")
    reasons = {x["sample_index"]: x["reason"] for x in lines}
    assert reasons == {1: REASONS[3], 2: None, 4: "other", 5: None, 6: None}


def test_verdicts_are_kept_per_sample(run, report, tmp_path):
    other = sample_run(run, tmp_path / "other", n=N, seed=1, thumb_size=64)
    with Browser() as b:
        b.open(report.resolve().as_uri())
        b.press("g")
        assert _progress(b) == f"1 / {N} reviewed"
        b.open(other.resolve().as_uri())   # same origin (file://), another sample
        assert _progress(b) == f"0 / {N} reviewed"
        b.open(report.resolve().as_uri())
        assert _progress(b) == f"1 / {N} reviewed"
