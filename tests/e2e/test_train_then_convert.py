"""A checkpoint made by `boxmask train` loads straight into `boxmask convert --engine iog`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COCO_MVAL = REPO / "tests" / "data" / "coco_mval"
COCO_JSON = REPO / "tests" / "data" / "readers" / "coco" / "instances_mval.json"


def run(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "boxmask", *args], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_trained_checkpoint_converts_a_dataset_with_the_iog_engine(tmp_path: Path) -> None:
    train_dir = tmp_path / "train"
    run("train", "-o", str(train_dir), "--data",
        f"folder:{COCO_MVAL},images_dir=img,masks_dir=gt", "--recipe", "modern", "--model",
        "tiny", "--max-steps", "2", "--batch-size", "2", "--workers", "0", "--threads", "2",
        "--precision", "fp32")
    weights = train_dir / "model_final.pth"
    assert weights.is_file()
    out = tmp_path / "out"
    run("convert", "--source", "coco", "--input", str(COCO_JSON), "--images-root",
        str(COCO_MVAL / "img"), "--format", "coco", "--engine", "iog", "--weights", str(weights),
        "--limit", "3", "--output", str(out), "--no-progress")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["masks"] == 3 and manifest["counts"]["errors"] == 0
    engine = manifest["engine"]
    assert engine["name"] == "iog" and engine["weights"] == "model_final.pth"
    assert len(engine["weights_sha256"]) == 64
