"""FiftyOne loads both outputs of a real conversion, with its own importers and no glue.

A COCO-MVal subset (a COCO source: every image, category and annotation id is a number) is
converted with GrabCut into ``--format coco --format openimages``. FiftyOne's Open Images V7
and COCO importers read the folders; the test compares what they load (samples, labels, the
cropped masks FiftyOne keeps) with the sidecar, pixel for pixel.

The importers run without FiftyOne's database. ``Dataset.from_dir`` needs the database too
(``fiftyone-db`` ships a MongoDB binary that does not run everywhere); that test skips, with the
reason, where the database cannot start. Without FiftyOne installed (``pip install
'boxmask[fiftyone]'``) the whole module skips with the reason, or fails under
``BOXMASK_REQUIRE_FIFTYONE=1``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

REPO = Path(__file__).resolve().parents[2]
COCO_JSON = REPO / "tests" / "data" / "readers" / "coco" / "instances_mval.json"
IMAGES = REPO / "tests" / "data" / "coco_mval" / "img"
LIMIT = 8

os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")  # no usage reporting from the tests
try:
    import fiftyone.utils.coco as fouc
    import fiftyone.utils.openimages as fouo
except ImportError as exc:  # pragma: no cover - depends on the environment
    if os.environ.get("BOXMASK_REQUIRE_FIFTYONE") == "1":
        raise
    pytest.skip(f"FiftyOne is not installed (pip install 'boxmask[fiftyone]'): {exc}",
                allow_module_level=True)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fiftyone") / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "boxmask", "convert", "--source", "coco", "--input",
         str(COCO_JSON), "--images-root", str(IMAGES), "--engine", "grabcut", "--limit",
         str(LIMIT), "--format", "coco", "--format", "openimages", "--output", str(out),
         "--no-progress"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def sidecar(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "masks.jsonl").read_text().splitlines()]


def box_crop(line: dict) -> np.ndarray:
    """The sidecar mask inside its input box: what FiftyOne keeps as ``Detection.mask``."""
    x0, y0, x1, y1 = line["box_xyxy"]
    return mask_utils.decode(line["rle"]).astype(bool)[y0:y1 + 1, x0:x1 + 1]


def assert_detection_is_the_mask(det, line: dict) -> None:
    full = mask_utils.decode(line["rle"]).astype(bool)
    crop = box_crop(line)
    assert det.label == line["label_name"]
    assert det.mask.shape == crop.shape  # the crop is exactly the box: no pixel shifted
    np.testing.assert_array_equal(det.mask, crop)
    assert det.mask.sum() == full.sum() > 0  # GrabCut keeps the mask inside the box


def test_open_images_folder_loads_with_fiftyone_importer(run: Path) -> None:
    lines = sidecar(run)
    assert len(lines) == LIMIT
    by_image: dict[str, list[dict]] = {}
    for line in lines:
        by_image.setdefault(line["written_ids"]["openimages"]["ImageID"], []).append(line)
    importer = fouo.OpenImagesV7DatasetImporter(run / "openimages",
                                                label_types=["segmentations"])
    with importer:
        samples = list(importer)
        info = importer.get_dataset_info()
    assert len(samples) == LIMIT  # every decoded image: none dropped by an ID type mismatch
    loaded = 0
    for image_path, _, detections in samples:
        image_id = Path(image_path).stem
        assert image_id.startswith("img-")  # numeric COCO ids: prefixed
        expected = by_image[image_id]
        assert Path(os.path.realpath(image_path)) == IMAGES / expected[0]["image_path"]
        assert detections is not None and len(detections.detections) == len(expected)
        for det in detections.detections:  # FiftyOne keeps no BoxID: match on the box
            x, y, w, h = det.bounding_box
            (line,) = [m for m in expected if m["label_name"] == det.label and
                       np.allclose([x, y, x + w, y + h], norm_box(m), atol=1e-6)]
            assert_detection_is_the_mask(det, line)
            loaded += 1
    assert loaded == len(lines)
    names = {line["label_name"] for line in lines}
    assert names <= set(info["classes"]) and names <= set(info["segmentation_classes"])
    assert info["hierarchy"]["LabelName"] == "Entity"


def norm_box(line: dict) -> list[float]:
    x0, y0, x1, y1 = line["box_xyxy"]
    w, h = line["width"], line["height"]
    return [x0 / w, y0 / h, (x1 + 1) / w, (y1 + 1) / h]


def test_coco_file_loads_with_fiftyone_importer(run: Path) -> None:
    lines = {(m["image_path"], m["box_id"]): m for m in sidecar(run)}
    importer = fouc.COCODetectionDatasetImporter(
        data_path=str(IMAGES), labels_path=str(run / "coco" / "instances.json"),
        label_types=["segmentations"])
    with importer:
        samples = list(importer)
    assert len(samples) == LIMIT
    loaded = 0
    for image_path, _, detections in samples:
        rel = Path(image_path).relative_to(IMAGES).as_posix()
        for det in detections.detections:
            line = lines[(rel, det["box_id"])]
            assert_detection_is_the_mask(det, line)
            assert det.confidence == pytest.approx(line["score"])
            x0, y0, x1, y1 = line["mask_xyxy"]  # the tight box rides along as an attribute
            assert list(det["mask_bbox"]) == [x0, y0, x1 - x0 + 1, y1 - y0 + 1]
            loaded += 1
    assert loaded == len(lines)


def test_dataset_from_dir_one_liner(run: Path) -> None:
    """The README's one call, where FiftyOne's database can start."""
    import fiftyone as fo

    try:
        dataset = fo.Dataset.from_dir(dataset_dir=str(run / "openimages"),
                                      dataset_type=fo.types.OpenImagesV7Dataset,
                                      label_types=["segmentations"])
    except Exception as exc:  # the database, not the folder: the importer tests cover that
        if "database" in str(exc).lower() or "mongo" in f"{type(exc)} {exc}".lower():
            pytest.skip(f"FiftyOne's database cannot start here: {exc}")
        raise
    try:
        assert len(dataset) == LIMIT
        assert dataset.count("ground_truth.detections") == LIMIT
    finally:
        dataset.delete()
