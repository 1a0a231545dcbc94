"""The README's "Open the results in…" loaders, run as written on a real conversion.

The code blocks are read from README.md and executed with ``OUT`` set to the output of a
conversion of the bundled ILSVRC-LOC sample (box engine, every format); what each one loads is
compared with the sidecar. The FiftyOne block runs where FiftyOne is installed and its database
starts (``tests/writers/test_fiftyone.py`` runs FiftyOne's importers without the database).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "samples" / "ilsvrc_loc"
SECTION = "### Open the results in…"


def readme_blocks() -> dict[str, str]:
    """The section's python blocks by what they load: plan, fiftyone, pycocotools, torchvision,
    pil."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index(SECTION):]
    section = section[:section.index("\n### ", len(SECTION))]
    blocks = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    named = {}
    for block in blocks:
        name = next(n for n in ("fiftyone", "torchvision", "pycocotools", "PIL", "plan.json")
                    if n in block)
        named[{"PIL": "pil", "plan.json": "plan"}.get(name, name)] = block
    assert sorted(named) == ["fiftyone", "pil", "plan", "pycocotools", "torchvision"]
    return named


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("readme") / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "boxmask", "convert", "--source", "ilsvrc-loc", "--input",
         str(SAMPLE), "--engine", "box", "--limit", "6", "--format", "pixel-imagenet",
         "--format", "coco", "--format", "openimages", "--output", str(out), "--no-progress"],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def sidecar(out: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in (out / "masks.jsonl").read_text().splitlines()]


def run_block(name: str, out: Path) -> dict:
    blocks = readme_blocks()
    namespace: dict = {"OUT": str(out)}
    exec(blocks["plan"], namespace)  # the README's own code
    exec(blocks[name], namespace)
    return namespace


def test_plan_block_finds_the_images_root(out: Path) -> None:
    ns = run_block("plan", out)
    assert Path(ns["IMAGES"]) == SAMPLE / "Data" / "CLS-LOC"


def test_pycocotools_block_gives_the_first_mask(out: Path) -> None:
    ns = run_block("pycocotools", out)
    first = sidecar(out)[0]
    np.testing.assert_array_equal(ns["mask"], mask_utils.decode(first["rle"]))
    assert ns["mask"].shape == (first["height"], first["width"])


def test_torchvision_block_gives_the_first_image_and_its_masks(out: Path) -> None:
    pytest.importorskip("torchvision", reason="torchvision is not installed")
    ns = run_block("torchvision", out)
    lines = sidecar(out)
    first = [m for m in lines if m["image_id"] == lines[0]["image_id"]]
    assert ns["image"].size == (first[0]["width"], first[0]["height"])
    assert len(ns["masks"]) == len(first) > 0
    for mask, line in zip(ns["masks"], first, strict=True):
        np.testing.assert_array_equal(mask, mask_utils.decode(line["rle"]))


def test_pil_block_reads_instance_indices_in_box_order(out: Path) -> None:
    ns = run_block("pil", out)
    instances = ns["instances"]
    lines = [m for m in sidecar(out) if m["image_id"] == "n01440764_10040"]
    assert lines and instances.shape == (lines[0]["height"], lines[0]["width"])
    assert set(np.unique(instances)) <= {0} | {m["index"] + 1 for m in lines}
    for m in lines:
        mask = mask_utils.decode(m["rle"]).astype(bool)
        assert np.all(mask[instances == m["index"] + 1])  # overlaps go to one owner
        assert (instances == m["index"] + 1).any()


def test_fiftyone_block_loads_both_outputs(out: Path) -> None:
    pytest.importorskip("fiftyone", reason="FiftyOne is not installed "
                                           "(pip install 'boxmask[fiftyone]')")
    try:
        ns = run_block("fiftyone", out)
    except Exception as exc:
        if "database" in str(exc).lower() or "mongo" in f"{type(exc)} {exc}".lower():
            pytest.skip(f"FiftyOne's database cannot start here: {exc}")
        raise
    try:
        n = len(sidecar(out))
        assert ns["oi"].count("ground_truth.detections") == n
        assert ns["coco"].count("ground_truth.detections") == n
    finally:
        ns["oi"].delete()
        ns["coco"].delete()
