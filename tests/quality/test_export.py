"""boxmask export: a release subset of a real run (GrabCut on 10 COCO-MVal images, all formats)."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from boxmask import api, masks
from boxmask.exitcodes import EXIT_FATAL, EXIT_OK
from boxmask.quality.export import ExportError, export
from boxmask.quality.review import read_sample

REPO = Path(__file__).resolve().parents[2]
COCO_JSON = REPO / "tests" / "data" / "readers" / "coco" / "instances_mval.json"
IMAGES = REPO / "tests" / "data" / "coco_mval" / "img"
FORMATS = ["coco", "openimages", "pixel-imagenet"]


def boxmask(*args: str, code: int = EXIT_OK) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "boxmask", *args], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == code, (proc.stdout, proc.stderr[-3000:])
    return proc


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A merged GrabCut run of 10 images with a 6-mask review sample in ``run/review``."""
    out = tmp_path_factory.mktemp("export") / "run"
    fmt = [a for f in FORMATS for a in ("--format", f)]
    boxmask("convert", "--source", "coco", "--input", str(COCO_JSON), "--images-root",
            str(IMAGES), "--engine", "grabcut", *fmt, "--limit", "10", "--output", str(out),
            "--no-progress")
    api.sample(out, out / "review", n=6)
    return out


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def by_key(path: Path) -> dict[tuple[str, str], dict]:
    return {(m["image_id"], m["box_id"]): m for m in lines(path)}


def write_verdicts(run: Path, path: Path, verdicts: dict[int, str],
                   extra: list[str] = ()) -> None:
    """Verdicts as the review page exports them, on the sample of ``run/review``."""
    sample, design, _ = read_sample(run / "review")
    out = [json.dumps({"sample_index": i["sample_index"], "image_id": i["image_id"],
                       "box_id": i["box_id"], "label": i["label"],
                       "verdict": verdicts[i["sample_index"]], "reason": None,
                       "reviewed_at": "2026-01-01T00:00:00Z", "run": str(run),
                       "sample_id": design["sample_id"]})
           for i in sample if i["sample_index"] in verdicts]
    path.write_text("".join(x + "\n" for x in [*out, *extra]))


def exported_keys(out: Path) -> dict[str, set[tuple[str, str]]]:
    """The (image_id, box_id) of every mask in each format of an export, read back."""
    sidecar = by_key(out / "masks.jsonl")
    coco = json.loads((out / "coco" / "instances.json").read_text())
    keys = {"sidecar": set(sidecar),
            "coco": {(str(a["image_id"]), a["box_id"]) for a in coco["annotations"]},
            "openimages": set(), "pixel-imagenet": set()}
    oi = {(m["written_ids"]["openimages"]["ImageID"], m["written_ids"]["openimages"]["BoxID"]): k
          for k, m in sidecar.items()}
    with open(out / "openimages" / "labels" / "segmentations.csv", newline="") as f:
        for row in csv.DictReader(f):
            keys["openimages"].add(oi.get((row["ImageID"], row["BoxID"]), row["BoxID"]))
    for png in (out / "openimages" / "labels" / "masks").rglob("*.png"):
        assert png.name in {Path(m["files"]["openimages"]).name for m in sidecar.values()}
    for png in (out / "pixel-imagenet").rglob("*.png"):
        image_id = png.stem
        for v in np.unique(np.asarray(Image.open(png))):
            if v:
                keys["pixel-imagenet"].add(next(k for k, m in sidecar.items()
                                                if k[0] == image_id and m["index"] + 1 == v))
    return keys


def test_export_drops_by_score_and_flag_from_every_format(run: Path, tmp_path: Path) -> None:
    ran = by_key(run / "masks.jsonl")
    out = tmp_path / "release"
    manifest = export(run, out, min_score=0.6, drop_flags=["loose"])
    expected = {k for k, m in ran.items()
                if m["score"] < 0.6 or "loose" in m["metrics"]["flags"]}
    assert 0 < len(expected) < len(ran)
    dropped = lines(out / "dropped.jsonl")
    assert {(d["image_id"], d["box_id"]) for d in dropped} == expected
    assert manifest["counts"] == {"images": 10, "masks_in_run": len(ran),
                                  "masks_kept": len(ran) - len(expected),
                                  "masks_dropped": len(expected)}
    assert manifest["dropped_by_reason"] == {
        "min_score": sum(m["score"] < 0.6 for m in ran.values()),
        "flag:loose": sum("loose" in m["metrics"]["flags"] for m in ran.values())}
    assert json.loads((out / "export-manifest.json").read_text()) == manifest
    kept = set(ran) - expected
    for fmt, keys in exported_keys(out).items():
        assert keys == kept, fmt


def test_kept_masks_are_the_runs_bytes(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "release"
    export(run, out, min_score=0.6)
    ran, got = by_key(run / "masks.jsonl"), by_key(out / "masks.jsonl")
    assert got
    for k, m in got.items():
        assert m["rle"] == ran[k]["rle"]
        assert {f: v for f, v in m.items() if f != "files"} == \
            {f: v for f, v in ran[k].items() if f != "files"}
        for rel in m["files"].values():
            assert (out / rel).read_bytes() == (run / rel).read_bytes(), rel
    coco_run = json.loads((run / "coco" / "instances.json").read_text())
    coco_out = json.loads((out / "coco" / "instances.json").read_text())
    seg = {a["box_id"]: a["segmentation"] for a in coco_run["annotations"]}
    for a in coco_out["annotations"]:
        assert a["segmentation"] == seg[a["box_id"]]
        assert masks.rle_area(a["segmentation"]) == a["area"]
    assert coco_out["images"] == coco_run["images"]  # images without a kept mask stay


def test_exclude_bad_drops_the_judged_masks_and_reports_bad_lines(run: Path,
                                                                  tmp_path: Path) -> None:
    verdicts = tmp_path / "verdicts.jsonl"
    write_verdicts(run, verdicts, {0: "bad", 1: "good", 2: "bad", 3: "unsure"},
                   extra=["not json", json.dumps({"sample_index": 4, "verdict": "maybe"})])
    sample = lines(run / "review" / "sample.jsonl")
    bad = {(i["image_id"], i["box_id"]) for i in sample if i["sample_index"] in (0, 2)}
    out = tmp_path / "release"
    proc = boxmask("export", str(run), "--output", str(out), "--exclude-bad", str(verdicts),
                   "--sample", str(run / "review"), "--format", "coco")
    assert "warning" in proc.stderr and "not json" not in proc.stdout
    manifest = json.loads((out / "export-manifest.json").read_text())
    assert manifest["dropped_by_reason"] == {"verdict_bad": 2}
    assert len(manifest["problems"]) == 2
    assert manifest["formats"] == ["coco"] and not (out / "openimages").exists()
    assert {(d["image_id"], d["box_id"]) for d in lines(out / "dropped.jsonl")} == bad
    coco = json.loads((out / "coco" / "instances.json").read_text())
    assert {(str(a["image_id"]), a["box_id"]) for a in coco["annotations"]}.isdisjoint(bad)
    assert len(coco["annotations"]) == 8


def test_verdicts_of_another_sample_or_run_are_refused(run: Path, tmp_path: Path) -> None:
    verdicts = tmp_path / "verdicts.jsonl"
    write_verdicts(run, verdicts, {0: "bad"})
    other = [dict(v, sample_id="0123456789abcdef") for v in lines(verdicts)]
    verdicts.write_text("".join(json.dumps(v) + "\n" for v in other))
    with pytest.raises(ExportError, match="another sample"):
        export(run, tmp_path / "a", verdicts=verdicts, sample_dir=run / "review")
    foreign = [dict(v, image_id="999999999", sample_id=None) for v in other]
    verdicts.write_text("".join(json.dumps(v) + "\n" for v in foreign))
    proc = boxmask("export", str(run), "--output", str(tmp_path / "b"), "--exclude-bad",
                   str(verdicts), code=EXIT_FATAL)
    assert "another run" in proc.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert not list(tmp_path.glob(".*partial*"))


def test_a_verdict_on_a_mask_changed_since_review_is_not_applied(run: Path,
                                                                 tmp_path: Path) -> None:
    review = tmp_path / "review"
    shutil.copytree(run / "review", review)
    sample = lines(review / "sample.jsonl")
    sample[0]["rle"]["counts"] = "changed"
    (review / "sample.jsonl").write_text("".join(json.dumps(i) + "\n" for i in sample))
    verdicts = review / "verdicts.jsonl"
    write_verdicts(run, verdicts, {0: "bad", 1: "bad"})
    manifest = export(run, tmp_path / "out", verdicts=verdicts)  # sample found next to verdicts
    assert manifest["counts"]["masks_dropped"] == 1
    assert any("changed since it was reviewed" in p for p in manifest["problems"])


def test_export_needs_a_merged_run_and_a_free_output(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "release"
    export(run, out, formats=["coco"])
    with pytest.raises(FileExistsError):
        export(run, out, formats=["coco"])
    manifest = export(run, out, formats=["pixel-imagenet"], overwrite=True)
    assert not (out / "coco").exists() and manifest["counts"]["masks_dropped"] == 0
    with pytest.raises(ExportError, match="unknown flags"):
        export(run, tmp_path / "x", drop_flags=["wobbly"])
    partial = tmp_path / "partial"
    shutil.copytree(run, partial, symlinks=True)
    (partial / "manifest.json").unlink()
    with pytest.raises(ExportError, match="not merged"):
        export(partial, tmp_path / "y")


def test_an_interrupted_export_leaves_no_release(run: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import boxmask.quality.export as export_module

    out = tmp_path / "release"
    export(run, out, formats=["coco"])
    before = (out / "coco" / "instances.json").read_bytes()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export_module, "write_formats", killed)
    with pytest.raises(KeyboardInterrupt):
        export(run, out, formats=["coco"], min_score=0.99, overwrite=True)
    assert (out / "coco" / "instances.json").read_bytes() == before  # the old release stays
    assert not list(tmp_path.glob(".release.partial-*"))
    monkeypatch.undo()
    leftover = tmp_path / ".release.partial-killed"  # what a killed process leaves
    leftover.mkdir()
    export(run, tmp_path / "release", formats=["coco"], overwrite=True)
    assert not leftover.exists()
