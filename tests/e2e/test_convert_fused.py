"""`boxmask convert --engine fused` end to end through the job system, in every output format,
killed mid-run and resumed: the result equals an uninterrupted run byte for byte."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from boxmask.atomic import is_temp
from boxmask.jobs.layout import JobLayout

DATA = Path(__file__).parents[1] / "data"
LIMIT = 16


@pytest.fixture(scope="module")
def convert_args(ilsvrc_sample, job_formats):
    """``convert_args(out, weights)``: the fused ``convert`` of the sample's first images into
    ``out``, in every format."""
    def make(out: Path, weights: Path) -> list[str]:
        args = ["-q", "convert", "--source", "ilsvrc-loc", "--input", str(ilsvrc_sample),
                "--engine", "fused", "--weights", str(weights), "--limit", str(LIMIT),
                "--shard-size", "2", "--output", str(out), "--no-progress"]
        for fmt in job_formats:
            args += ["--format", fmt]
        return args
    return make


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, u2netp_weights, convert_args, run_boxmask) -> Path:
    out = tmp_path_factory.mktemp("fused") / "out"
    proc = run_boxmask(*convert_args(out, u2netp_weights), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_fused_convert_writes_every_format_with_the_engine_in_the_plan(uninterrupted,
                                                                     u2netp_weights):
    from boxmask.models.checkpoint import sha256_file

    manifest = json.loads((uninterrupted / "manifest.json").read_text())
    assert manifest["complete"] and manifest["counts"]["errors"] == 0
    boxes = manifest["counts"]["boxes"]
    assert manifest["counts"]["masks"] == boxes > LIMIT - 1
    plan = json.loads((uninterrupted / "plan.json").read_text())
    engine = plan["contract"]["engine"]
    assert engine["name"] == "fused"
    assert engine["u2net"]["weights_sha256"] == sha256_file(u2netp_weights)
    assert engine["u2net"]["architecture"] == "u2netp"
    sidecar = [json.loads(x) for x in (uninterrupted / "masks.jsonl").read_text().splitlines()]
    assert len(sidecar) == boxes and all(m["engine"] == "fused" for m in sidecar)
    assert {m["metrics"]["chosen"] for m in sidecar} <= {"u2net", "grabcut"}
    coco = json.loads((uninterrupted / "coco" / "instances.json").read_text())
    assert len(coco["annotations"]) == boxes
    assert len(list((uninterrupted / "pixel-imagenet").rglob("*.png"))) == manifest["counts"][
        "images"]
    csv_rows = (uninterrupted / "openimages").rglob("*.csv")
    assert sum(len(p.read_text().splitlines()) - 1 for p in csv_rows) >= boxes


def test_killed_fused_convert_resumes_to_identical_outputs(uninterrupted, u2netp_weights, tmp_path,
                                                           convert_args, output_files, run_boxmask,
                                                           start_boxmask):
    out = tmp_path / "out"
    proc = start_boxmask(*convert_args(out, u2netp_weights), start_new_session=True)
    done_dir = JobLayout(out).done_dir
    deadline = time.monotonic() + 300
    while not (done_dir.is_dir() and len(list(done_dir.glob("*.json"))) >= 2):
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "no shard finished in time"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole run, mid-job
    proc.wait()
    total = len(json.loads((out / "plan.json").read_text())["shards"])
    assert len(list(done_dir.glob("*.json"))) < total, "the run finished before the kill"
    again = run_boxmask(*convert_args(out, u2netp_weights), timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert output_files(out) == output_files(uninterrupted)
    sidecar = [json.loads(x) for x in (out / "masks.jsonl").read_text().splitlines()]
    keys = [(m["image_id"], m["box_id"]) for m in sidecar]
    assert len(keys) == len(set(keys))
    assert not [p for p in out.rglob("*") if is_temp(p)]


@pytest.mark.parametrize("engine", ["fused", "u2net"])
def test_segment_with_a_learned_engine(engine, u2netp_weights, tmp_path, run_boxmask):
    import csv

    import cv2

    coco = DATA / "coco_mval"
    with open(coco / "boxes_from_masks.csv", newline="") as f:
        r = next(row for row in csv.DictReader(f) if row["image"].startswith("dog"))
    out = tmp_path / "m.png"
    box = ",".join(r[k] for k in ("x_min", "y_min", "x_max", "y_max"))
    proc = run_boxmask("segment", str(coco / "img" / r["image"]), "--box", box, "--engine",
                       engine, "--weights", str(u2netp_weights), "--device", "cpu", "--output",
                       str(out), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    pred = cv2.imread(str(out), cv2.IMREAD_GRAYSCALE) > 0
    gt = cv2.imread(str(coco / r["mask"]), cv2.IMREAD_GRAYSCALE) > 127
    assert (gt & pred).sum() / (gt | pred).sum() > 0.8


def test_network_options_are_refused_for_grabcut(tmp_path, ilsvrc_sample, run_boxmask):
    proc = run_boxmask("convert", "--source", "ilsvrc-loc", "--input", str(ilsvrc_sample),
                       "--engine", "grabcut", "--precision", "bf16",
                       "--output", str(tmp_path / "o"))
    assert proc.returncode == 2 and "network engines" in proc.stderr
