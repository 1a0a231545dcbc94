"""The review report: thumbnails, the static page, and the page as a browser runs it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from browser import dump_dom
from cdp import Browser
from PIL import Image
from review_run import DATA, MISSING_IMAGE, build_results, write_run

from boxmask.boxes import mask_to_box
from boxmask.imageio import decode_image
from boxmask.quality.evaluate import evaluate_run, write_eval
from boxmask.quality.gallery import sample_run
from boxmask.quality.render import (
    BOX_RGB,
    FILL_RGB,
    NEGATIVE_RGB,
    POSITIVE_RGB,
    crop_window,
    overlay,
)

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

COCO_GT = DATA / "eval" / "coco_mval_instances.json"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    run = write_run(tmp_path_factory.mktemp("gallery") / "run", build_results())
    write_eval(evaluate_run(run, COCO_GT, "coco"), run)
    return run


@pytest.fixture(scope="module")
def report(run, tmp_path_factory) -> Path:
    return sample_run(run, tmp_path_factory.mktemp("report"), n=40, seed=0, thumb_size=200)


def _items(index: Path) -> list[dict]:
    return [json.loads(x) for x in (index.parent / "sample.jsonl").read_text().splitlines()]


def _cards(page: str) -> list[str]:
    return re.findall(r"<figure class=\"item[^\"]*\"[^>]*>", page)


# ------------------------------------------------------------------------------ thumbnails

def test_the_crop_keeps_a_leak_far_outside_the_box_in_view():
    box, leak = (100, 100, 149, 139), (300, 120, 320, 130)
    x0, y0, x1, y1 = crop_window(box, (100, 100, 320, 139), 640, 480)
    assert x0 < box[0] and y0 < box[1] and x1 > leak[2] and y1 > box[3]
    assert crop_window((0, 0, 639, 479), None, 640, 480) == (0, 0, 639, 479)


def _close(pixel, rgb, tol=40) -> bool:
    return bool(np.all(np.abs(pixel.astype(int) - np.array(rgb)) <= tol))


def test_a_thumbnail_draws_the_mask_the_box_and_the_clicks_where_they_are():
    rgb = decode_image(DATA / "davis" / "img" / "000.jpg").rgb
    mask = np.asarray(Image.open(DATA / "davis" / "gt" / "000.png")) > 0
    box = mask_to_box(mask)  # 94, 214, 450, 433
    clicks = [[272, 323, 1, "inside"], [94, 214, 0, "corner"], [450, 433, 0, "corner"]]
    size = 400
    thumb = overlay(rgb, mask, box, clicks, size)
    cx0, cy0, cx1, cy1 = crop_window(box, box, rgb.shape[1], rgb.shape[0])
    s = size / max(cx1 - cx0 + 1, cy1 - cy0 + 1)
    assert max(thumb.shape[:2]) == size

    def at(x: float, y: float) -> np.ndarray:  # thumbnail pixel showing image pixel (x, y)
        return thumb[int((y + 0.5 - cy0) * s), int((x + 0.5 - cx0) * s)]

    assert _close(at(272, 323), POSITIVE_RGB)
    assert _close(at(94, 214), NEGATIVE_RGB) and _close(at(450, 433), NEGATIVE_RGB)
    top_edge = thumb[round((box[1] - cy0) * s), round((box[0] + 120 - cx0) * s)]
    assert _close(top_edge, BOX_RGB, tol=60)
    # inside the mask the picture is tinted toward the fill colour, outside it is not
    ys, xs = np.nonzero(mask[cy0:cy1 + 1, cx0:cx1 + 1])
    inside = thumb[(ys[::50] * s).astype(int), (xs[::50] * s).astype(int)].astype(float)
    plain = rgb[cy0 + ys[::50], cx0 + xs[::50]].astype(float)
    toward = np.linalg.norm(plain - FILL_RGB, axis=1) - np.linalg.norm(inside - FILL_RGB, axis=1)
    assert np.median(toward) > 30
    corner = thumb[2, 2].astype(float)  # crop margin: background, untouched
    assert np.abs(corner - rgb[cy0, cx0]).max() < 40


# ---------------------------------------------------------------------------- the report

def test_the_report_has_one_card_and_one_thumbnail_per_sampled_mask(report):
    page = report.read_text()
    items = _items(report)
    assert 0 < len(items) <= 40
    cards = _cards(page)
    assert len(cards) == len(items)
    for item in items:
        thumb = report.parent / item["thumb"]
        with Image.open(thumb) as im:
            assert im.format == "JPEG" and max(im.size) <= 200
        assert f'id="s{item["sample_index"]:05d}"' in page
    design = json.loads((report.parent / "sample_design.json").read_text())["design"]
    assert design["n_sampled"] == len(items)


def test_the_page_loads_nothing_from_a_server(report):
    page = report.read_text()
    assert "<link" not in page and "@import" not in page and "url(" not in page
    assert not re.search(r"<script[^>]+src=", page)
    for ref in re.findall(r"(?:src|href)=\"([^\"]*)\"", page):
        assert not re.match(r"[a-z]+:", ref), ref
        assert (report.parent / ref).is_file(), ref


def test_the_summary_shows_run_counts_flags_histograms_classes_and_the_evaluation(report):
    page = report.read_text()
    summary = json.loads((report.parent / "sample_design.json").read_text())["summary"]
    assert summary["masks"] == 123 and summary["errors_by_stage"] == {"box": 1, "read": 1}
    assert "<b>123</b><span>masks</span>" in page
    assert page.count('<svg class="hist"') == 4
    assert "leaks" in page and "untouched_sides" in page
    classes = re.search(r"<table class=\"classes sortable\">.*?</table>", page).group(0)
    assert classes.count("<tr>") == 1 + 41  # heading + 40 COCO classes + DAVIS
    assert "evaluation against ground truth" in page and "mean boundary IoU" in page


def test_without_eval_json_there_is_no_evaluation_section(tmp_path):
    run = write_run(tmp_path / "run", build_results()[:6])
    page = sample_run(run, tmp_path / "out", n=4).read_text()
    assert "evaluation against ground truth" not in page
    assert len(_cards(page)) == 4


def test_a_mask_whose_image_is_gone_gets_a_placeholder_with_the_reason(run, tmp_path):
    index = sample_run(run, tmp_path / "all", n=500, thumb_size=120)
    items = _items(index)
    assert len(items) == 123
    moved = [i for i in items if i["image_path"] == MISSING_IMAGE]
    assert len(moved) == 1 and "not found" in moved[0]["thumb_error"]
    assert (index.parent / moved[0]["thumb"]).is_file()
    assert all("thumb_error" not in i for i in items if i["image_path"] != MISSING_IMAGE)
    assert index.read_text().count(">no image</span>") == 1


def test_the_same_seed_writes_the_same_report(run, report, tmp_path):
    again = sample_run(run, tmp_path / "again", n=40, seed=0, thumb_size=200)
    assert again.read_bytes() == report.read_bytes()
    assert (again.parent / "sample.jsonl").read_bytes() == \
        (report.parent / "sample.jsonl").read_bytes()
    first = _items(report)[0]["thumb"]
    assert (again.parent / first).read_bytes() == (report.parent / first).read_bytes()


def test_a_smaller_report_over_an_earlier_one_leaves_no_stale_thumbnails(run, tmp_path):
    out = tmp_path / "out"
    sample_run(run, out, n=30, thumb_size=64)
    sample_run(run, out, n=10, thumb_size=64)
    assert len(list((out / "thumbs").glob("*.jpg"))) == len(_items(out / "index.html")) <= 10


# ------------------------------------------------------------------------- in a browser

def _visible(dom: str) -> list[str]:
    return [c for c in _cards(dom) if " hidden" not in c]


def test_in_a_browser_the_grid_shows_every_card_and_the_hash_filters_it(report):
    items = _items(report)
    url = report.resolve().as_uri()
    run = dump_dom(url)
    assert run.console_errors() == []
    assert len(_cards(run.stdout)) == len(items) == len(_visible(run.stdout))
    assert f'data-shown="{len(items)}"' in run.stdout

    leaks = [i for i in items if "leaks" in i["flags"]]
    assert leaks, "the sample should hold a leaking mask"
    dom = dump_dom(url + "#flag=leaks").stdout
    shown = _visible(dom)
    assert len(shown) == len(leaks) and all("leaks" in c for c in shown)

    dom = dump_dom(url + "#why=uniform&sort=score").stdout
    shown = _visible(dom)
    assert len(shown) == sum("uniform" in i["why"] for i in items)
    scores = [float(re.search(r'data-score="([^"]*)"', c).group(1)) for c in shown]
    assert scores == sorted(scores)


def test_in_a_browser_the_page_renders_thumbnails(report, tmp_path):
    png = tmp_path / "gallery.png"
    with Browser(window=(1400, 1800)) as browser:
        browser.open(report.resolve().as_uri())
        # the grid starts below the run summary: bring its first row to the top of the window
        browser.eval('document.querySelector("figure img").scrollIntoView({block: "start"})')
        # thumbnails load lazily: wait until every one in the window has been decoded
        shown = browser.wait_until("""(function () {
            var imgs = Array.from(document.querySelectorAll("img")).filter(function (im) {
                var r = im.closest("figure").getBoundingClientRect();
                return r.bottom > 0 && r.top < window.innerHeight;
            });
            var ready = imgs.every(function (im) { return im.complete && im.naturalWidth > 0; });
            return ready ? imgs.length : 0;
        })()""")
        assert shown >= 4
        browser.screenshot(png)
    with Image.open(png) as im:
        shot = np.asarray(im.convert("RGB"))
    assert shot.shape[1] == 1400 and shot.shape[0] > 1000
    # the thumbnails are loaded and shown: their magenta mask tint (FILL_RGB over the picture)
    # covers a visible part of the window; nothing else on the page has that colour
    r, g, b = (shot[..., i].astype(int) for i in range(3))
    tinted = (r - g > 60) & (b - g > 60)
    assert FILL_RGB[0] - FILL_RGB[1] > 60 and FILL_RGB[2] - FILL_RGB[1] > 60
    assert tinted.mean() > 0.01
