"""boxmask redo: chosen masks of a real run (GrabCut on 10 COCO-MVal images, all formats)
converted again with other settings, applied by merge in every format, with their history."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from boxmask import api, masks
from boxmask.jobs.layout import JobLayout
from boxmask.jobs.merge import merge
from boxmask.jobs.plan import Settings, load_plan
from boxmask.quality.export import export
from boxmask.quality.redo import RedoError, RedoRequest
from boxmask.quality.review import read_sample
from boxmask.readers import open_reader
from boxmask.records import ErrorRecord, ImageRecord

REPO = Path(__file__).resolve().parents[2]
COCO_JSON = REPO / "tests" / "data" / "readers" / "coco" / "instances_mval.json"
IMAGES = REPO / "tests" / "data" / "coco_mval" / "img"
FORMATS = ["coco", "openimages", "pixel-imagenet"]
ITERATE = {"engine": "grabcut", "inside_point": "iterate"}
"""A redo with another inside-point policy (the run used the box centre)."""


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "boxmask", *args]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A merged GrabCut run of 10 images in shards of 3, with a 6-mask review sample."""
    out = tmp_path_factory.mktemp("redo") / "run"
    settings = Settings(input_format="coco", input=str(COCO_JSON), images_root=str(IMAGES),
                        formats=FORMATS, engine="grabcut", limit=10, shard_size=3)
    assert api.convert(settings, out, progress=False)["complete"]
    api.sample(out, out / "review", n=6)
    return out


@pytest.fixture
def run(pristine: Path, tmp_path: Path) -> Path:
    """A copy of the run that a test may redo."""
    copy = tmp_path / "run"
    shutil.copytree(pristine, copy, symlinks=True)
    return copy


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def by_key(path: Path) -> dict[tuple[str, str], dict]:
    return {(m["image_id"], m["box_id"]): m for m in lines(path)}


def outputs(run: Path) -> dict[str, bytes]:
    """Every merged output file of a run (no job state, no manifest), by relative path."""
    out = {}
    for p in sorted(run.rglob("*")):
        rel = p.relative_to(run).as_posix()
        if p.is_file() and not p.is_symlink() and rel.split("/")[0] in (*FORMATS, "masks.jsonl",
                                                                        "errors.jsonl"):
            out[rel] = p.read_bytes()
    return out


def format_masks(run: Path) -> dict[str, dict[tuple[str, str], np.ndarray]]:
    """Each mask of the run read back from each output format, by (image_id, box_id)."""
    side = by_key(run / "masks.jsonl")
    got: dict[str, dict] = {"coco": {}, "openimages": {}, "pixel-imagenet": {}}
    coco = json.loads((run / "coco" / "instances.json").read_text())
    ids = {i["id"]: i for i in coco["images"]}
    for a in coco["annotations"]:
        image = ids[a["image_id"]]["file_name"]
        key = next(k for k, m in side.items() if m["image_path"] == image
                   and m["box_id"] == a["box_id"])
        got["coco"][key] = masks.decode_rle(a["segmentation"])
    written = {(m["written_ids"]["openimages"]["ImageID"],
                m["written_ids"]["openimages"]["BoxID"]): k for k, m in side.items()}
    with open(run / "openimages" / "labels" / "segmentations.csv", newline="") as f:
        for row in csv.DictReader(f):
            key = written[(row["ImageID"], row["BoxID"])]
            png = run / side[key]["files"]["openimages"]
            assert png.name == row["MaskPath"]
            got["openimages"][key] = np.asarray(Image.open(png).convert("L")) > 0
    for key, m in side.items():
        label_image = np.asarray(Image.open(run / m["files"]["pixel-imagenet"]))
        got["pixel-imagenet"][key] = label_image == m["index"] + 1
    return got


def redo_masks(run: Path, name: str) -> dict[tuple[str, str], dict]:
    return by_key(run / "redo" / name / "masks.jsonl")


def test_a_redo_replaces_the_masks_in_every_format_and_keeps_their_history(
        run: Path, pristine: Path) -> None:
    before = by_key(pristine / "masks.jsonl")
    loose = {k for k, m in before.items() if "loose" in m["metrics"]["flags"]}
    assert 0 < len(loose) < len(before)
    out = api.redo(run, RedoRequest(flags=("loose",), name="iterate", **ITERATE),
                   progress=False)
    assert out["complete"] and out["selected"] == len(loose)
    selection = lines(run / "redo" / "iterate" / "selection.jsonl")
    assert {(s["record"]["image_id"], b["box_id"]) for s in selection
            for b in s["record"]["boxes"]} == loose
    assert all(r == ["flag:loose"] for s in selection for r in s["reasons"].values())
    new = redo_masks(run, "iterate")
    assert set(new) == loose
    after = by_key(run / "masks.jsonl")
    assert any(new[k]["rle"] != before[k]["rle"] for k in loose)  # the redo changed something
    for key, m in after.items():
        if key not in loose:
            assert m == before[key]
            continue
        assert m["rle"] == new[key]["rle"] and m["score"] == new[key]["score"]
        assert (m["engine"], m["inside_policy"], m["redo"]) == ("grabcut", "iterate", "iterate")
        old = before[key]
        assert m["history"] == [{
            "version": 0, "redo": None, "engine": "grabcut", "inside_policy": "center",
            "score": old["score"], "flags": old["metrics"]["flags"],
            "mask_xyxy": old["mask_xyxy"], "rle_sha256": m["history"][0]["rle_sha256"],
            "replaced_by": "iterate",
            "replaced_at": json.loads((run / "redo" / "iterate" / "redo.json").read_text())
            ["created"]}]
    for fmt, got in format_masks(run).items():
        assert set(got) == set(after), fmt
        for key, mask in got.items():
            assert np.array_equal(mask, masks.decode_rle(after[key]["rle"])), (fmt, key)
    manifest = json.loads((run / "manifest.json").read_text())
    assert [r["name"] for r in manifest["redos"]] == ["iterate"]

    # The shards' done markers follow the rewritten files: a verifying merge keeps every
    # shard and writes the same bytes; merging again rewrites nothing.
    files = outputs(run)
    merge(run, verify_files=True)
    assert len(list((run / "state" / "done").glob("*.json"))) == 4
    assert not list(run.rglob("*.damaged"))
    assert outputs(run) == files


def test_later_redos_apply_on_top_and_a_removed_redo_gives_the_old_masks_back(
        run: Path, pristine: Path) -> None:
    before = by_key(pristine / "masks.jsonl")
    api.redo(run, RedoRequest(flags=("loose",), name="first", **ITERATE), progress=False)
    after_first = by_key(run / "masks.jsonl")
    low = {k for k, m in after_first.items() if m["score"] < 0.6}
    second = RedoRequest(engine="grabcut", engine_options={"iterations": 2}, min_score=0.6,
                         name="second")
    api.redo(run, second, progress=False)
    after = by_key(run / "masks.jsonl")
    twice = low & set(redo_masks(run, "first"))
    assert twice  # a mask the first redo made, redone by the second
    for key in twice:
        assert [h["redo"] for h in after[key]["history"]] == [None, "first"]
        assert [h["replaced_by"] for h in after[key]["history"]] == ["first", "second"]
        assert after[key]["rle"] == redo_masks(run, "second")[key]["rle"]
    # Running the first command again resumes it: the same selection, nothing converted anew.
    done = sorted(p.read_bytes() for p in (run / "redo" / "first" / "state" / "done").iterdir())
    again = api.redo(run, RedoRequest(flags=("loose",), name="first", **ITERATE),
                     progress=False)
    assert again["complete"] and again["selected"] == len(redo_masks(run, "first"))
    assert done == sorted(p.read_bytes()
                          for p in (run / "redo" / "first" / "state" / "done").iterdir())
    with pytest.raises(RedoError, match="another selection"):
        api.redo(run, RedoRequest(min_score=0.9, name="first", **ITERATE), progress=False)
    with pytest.raises(RedoError, match="other settings"):
        api.redo(run, RedoRequest(flags=("loose",), name="first", engine="grabcut"),
                 progress=False)
    # Another redo under a freed name, on the same images: the per-image files follow it.
    shutil.rmtree(run / "redo" / "second")
    second.engine_options = {"iterations": 3}
    api.redo(run, second, progress=False)
    now = by_key(run / "masks.jsonl")
    assert any(now[k]["rle"] != after[k]["rle"] for k in redo_masks(run, "second"))
    for fmt, got in format_masks(run).items():
        for key, mask in got.items():
            assert np.array_equal(mask, masks.decode_rle(now[key]["rle"])), (fmt, key)
    # A redo made for an earlier conversion of the run (planned again since) is not applied.
    info_file = run / "redo" / "second" / "redo.json"
    info_file.write_text(json.dumps(dict(json.loads(info_file.read_text()),
                                         run_plan_id="0123456789abcdef")))
    merge(run)
    assert by_key(run / "masks.jsonl") == after_first
    with pytest.raises(RedoError, match="earlier conversion"):
        api.redo(run, second, progress=False)
    shutil.rmtree(run / "redo")
    merge(run, verify_files=True)
    assert by_key(run / "masks.jsonl") == before
    assert outputs(run) == outputs(pristine)


def write_verdicts(run: Path, path: Path, verdicts: dict[int, str]) -> set[tuple[str, str]]:
    """Verdicts as the review page exports them on ``run/review``; returns the bad masks."""
    sample, design, _ = read_sample(run / "review")
    out = [{"sample_index": i["sample_index"], "image_id": i["image_id"], "box_id": i["box_id"],
            "label": i["label"], "verdict": verdicts[i["sample_index"]], "reason": "leaks",
            "reviewed_at": "2026-01-01T00:00:00Z", "run": str(run),
            "sample_id": design["sample_id"]} for i in sample if i["sample_index"] in verdicts]
    path.write_text("".join(json.dumps(v) + "\n" for v in out))
    return {(v["image_id"], v["box_id"]) for v in out if v["verdict"] == "bad"}


def test_a_redo_from_verdicts_and_an_export_after_it(run: Path, tmp_path: Path) -> None:
    verdicts = run / "review" / "verdicts.jsonl"
    bad = write_verdicts(run, verdicts, {0: "bad", 1: "good", 2: "bad", 3: "unsure"})
    api.redo(run, RedoRequest(verdicts_file=str(verdicts), **ITERATE), progress=False)
    (folder,) = (run / "redo").iterdir()
    assert set(redo_masks(run, folder.name)) == bad
    assert all(v == ["verdict:bad"] for s in lines(folder / "selection.jsonl")
               for v in s["reasons"].values())
    current = by_key(run / "masks.jsonl")
    release = tmp_path / "release"
    manifest = export(run, release, verdicts=verdicts)
    exported = by_key(release / "masks.jsonl")
    assert set(exported) == set(current)  # the redone masks are not the ones judged bad
    assert sum("changed since it was reviewed" in p for p in manifest["problems"]) == len(bad)
    for key, m in exported.items():
        assert m["rle"] == current[key]["rle"]
        assert ("history" in m) == (key in bad)
    coco = json.loads((release / "coco" / "instances.json").read_text())
    assert sorted(a["segmentation"]["counts"] for a in coco["annotations"]) == \
        sorted(m["rle"]["counts"] for m in current.values())


def test_verdicts_on_a_sample_of_another_run_are_refused(run: Path) -> None:
    design_file = run / "review" / "sample_design.json"
    meta = json.loads(design_file.read_text())
    assert meta["design"]["plan_id"] == load_plan(run)["plan_id"]
    verdicts = run / "review" / "verdicts.jsonl"
    write_verdicts(run, verdicts, {0: "bad"})
    meta["design"]["plan_id"] = "0123456789abcdef"
    design_file.write_text(json.dumps(meta))
    with pytest.raises(RedoError, match="another run"):
        api.redo(run, RedoRequest(verdicts_file=str(verdicts), **ITERATE), progress=False)
    foreign = [dict(v, image_id="999999999") for v in lines(verdicts)]
    verdicts.write_text("".join(json.dumps(v) + "\n" for v in foreign))
    with pytest.raises(RedoError, match="another run"):
        api.redo(run, RedoRequest(verdicts_file=str(verdicts), sample_dir=str(tmp_sample(run)),
                                  **ITERATE), progress=False)
    with pytest.raises(RedoError, match="nothing to redo"):
        api.redo(run, RedoRequest(min_score=0.0, **ITERATE), progress=False)
    assert not (run / "redo").exists() or not list((run / "redo").glob("*/redo.json"))


def tmp_sample(run: Path) -> Path:
    """A copy of the run's review sample without the recorded plan id (an older report)."""
    folder = run / "review-old"
    shutil.copytree(run / "review", folder)
    meta = json.loads((folder / "sample_design.json").read_text())
    meta["design"].pop("plan_id")
    (folder / "sample_design.json").write_text(json.dumps(meta))
    return folder


def test_a_redo_killed_midway_resumes_to_the_same_output(pristine: Path,
                                                         tmp_path: Path) -> None:
    args = ["--min-score", "0.77", "--engine", "grabcut", "--engine-option", "iterations=2",
            "--name", "low", "--no-progress"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    for copy in (whole, killed):
        shutil.copytree(pristine, copy, symlinks=True)
    api.redo(whole, RedoRequest(min_score=0.77, engine="grabcut",
                                engine_options={"iterations": 2}, name="low"), progress=False)
    done = killed / "redo" / "low" / "state" / "done"
    proc = subprocess.Popen(cli("redo", str(killed), *args), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (done.is_dir() and any(done.glob("*.json"))) and time.time() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    plan = load_plan(killed / "redo" / "low")
    assert plan is not None and len(plan["shards"]) == 2
    assert len(list(done.glob("*.json"))) < 2, "the redo ended before it could be killed"
    assert not JobLayout(killed / "redo" / "low").manifest.exists()
    proc = subprocess.run(cli("redo", str(killed), *args), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "redo low: 5 masks of 5 images chosen" in proc.stderr
    a, b = outputs(whole), outputs(killed)
    assert a.keys() == b.keys()
    for rel in a:
        if rel != "masks.jsonl":
            assert a[rel] == b[rel], rel
    created = {str(p): json.loads((p / "redo" / "low" / "redo.json").read_text())["created"]
               for p in (whole, killed)}

    def unstamped(run: Path) -> list[dict]:
        out = lines(run / "masks.jsonl")
        for m in out:
            for h in m.get("history", []):
                assert h["replaced_at"] == created[str(run)]
                h["replaced_at"] = None
        return out

    assert unstamped(whole) == unstamped(killed)
    assert sum("history" in m for m in lines(whole / "masks.jsonl")) == 5


def test_the_records_reader_reads_selections_back(tmp_path: Path) -> None:
    record = ImageRecord("a", "a.jpg", width=4, height=3)
    path = tmp_path / "selection.jsonl"
    path.write_text(json.dumps({"record": record.to_json(), "reasons": {}}) + "\n\nnot json\n")
    items = list(open_reader("records", path, tmp_path))
    assert items[0] == record
    assert isinstance(items[1], ErrorRecord) and items[1].stage == "read"
