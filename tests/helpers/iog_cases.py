"""IOG test inputs: the official parity cases and the COCO-MVal sample as engine requests.

The parity cases (tests/fixtures/iog_parity/<case>/) were produced by the official code; the
tests read every number from their case.json, so a further case folder with the same layout is
tested the same way. case.json names images and masks relative to the data folder the fixtures
were made from; :func:`repo_copy` finds the repository's copy under tests/data by file name and
folder name.

Imported as ``from iog_cases import ...``: pytest puts ``tests/helpers`` on ``sys.path``
(``pythonpath`` in pyproject.toml); the benchmarks put it there themselves.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

from boxmask.engines import SegmentRequest

TESTS = Path(__file__).parents[1]
FIXTURES = TESTS / "fixtures"
PARITY = FIXTURES / "iog_parity"
DATA = TESTS / "data"
COCO_MVAL = DATA / "coco_mval"
CASES = sorted(p.name for p in PARITY.iterdir() if (p / "input.npz").is_file())
"""Parity cases with the official network input (and outputs)."""
REFINE_CASES = sorted(p.name for p in PARITY.iterdir() if (p / "dmaps.npz").is_file())
"""Parity cases with the official guidance maps after an extra (refinement) click."""

CLICK_ORDER = ("inside", "outside_left_top", "outside_left_bottom", "outside_right_top",
               "outside_right_bottom")


def load_case(name: str) -> dict:
    """The case.json of parity case ``name``."""
    return json.loads((PARITY / name / "case.json").read_text())


DATA_COPIES = {"coco_mval_subset": "coco_mval", "davis_ritm_subset": "davis",
               "voc2012_sample": "voc2012"}
"""Folder of the fixtures' data folder -> the folder of its copy under tests/data."""


def repo_copy(case_relative: str) -> Path:
    """The repository's copy of a file that a case.json names relative to its data folder.

    First the same path under the copied folder (``coco_mval_subset/img/x.jpg`` ->
    ``tests/data/coco_mval/img/x.jpg``), then any file of tests/data with the same name and
    parent folder name. A case whose files have no copy is an error, not a skip: it would
    otherwise pass without being tested.
    """
    rel = Path(case_relative)
    if rel.parts and rel.parts[0] in DATA_COPIES:
        direct = DATA.joinpath(DATA_COPIES[rel.parts[0]], *rel.parts[1:])
        if direct.is_file():
            return direct
    for candidate in sorted(DATA.rglob(rel.name)):
        if candidate.parent.name == rel.parent.name:
            return candidate
    raise FileNotFoundError(f"{case_relative} (named by a parity case) has no copy under {DATA}; "
                            "copy it there")


def case_image_and_mask(case: dict) -> tuple[np.ndarray, np.ndarray]:
    """RGB uint8 image and the boolean mask of the case's instance.

    Mask PNGs hold instance values (VOC palette indices, or 255 for a COCO-MVal object); the VOC
    void value 255 counts as background unless it is the instance value itself.
    """
    image = np.asarray(Image.open(repo_copy(case["image"])).convert("RGB"))
    values = np.asarray(Image.open(repo_copy(case["mask"])))
    if values.ndim == 3:
        values = values[..., 0]
    instance = int(case["instance_id"])
    if instance != 255:
        values = np.where(values == 255, 0, values)
    return image, values == instance


def case_clicks_512(case: dict) -> np.ndarray:
    """The official clicks in the 512 x 512 crop, ``(x, y)`` int64, in ``CLICK_ORDER``."""
    return np.array([case["clicks_512_xy"][k] for k in CLICK_ORDER], dtype=np.int64)


def case_clicks_orig(case: dict) -> np.ndarray:
    """The official clicks in image pixels, ``(x, y)`` float64, in ``CLICK_ORDER``."""
    return np.array([case["clicks_orig_xy"][k] for k in CLICK_ORDER], dtype=np.float64)


def coco_mval_requests(n: int) -> list[SegmentRequest]:
    """The first ``n`` COCO-MVal images, decoded, each with its box (library convention, from
    ``boxes_from_masks.csv``) and no inside point (the engine's default: the box centre)."""
    with open(COCO_MVAL / "boxes_from_masks.csv", newline="") as f:
        rows = list(csv.DictReader(f))[:n]
    out = []
    for row in rows:
        image = np.asarray(Image.open(COCO_MVAL / "img" / row["image"]).convert("RGB"))
        box = [int(row[k]) for k in ("x_min", "y_min", "x_max", "y_max")]
        out.append(SegmentRequest(image, np.array([box])))
    return out
