"""Planning: deterministic shards by image, the plan as a contract, refusal of other settings."""

from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path

import pytest

from boxmask import __version__
from boxmask.api import convert
from boxmask.engines import create_engine
from boxmask.jobs.layout import JobLayout
from boxmask.jobs.plan import PlanMismatchError, load_plan
from boxmask.jobs.protocol import read_shard_items
from boxmask.jobs.worker import Worker, run_worker
from boxmask.readers import open_reader
from boxmask.records import ImageRecord


@pytest.fixture(scope="module")
def settings(sample_settings):
    """``settings(**overrides)``: the sample in shards of 7 images."""
    return partial(sample_settings, shard_size=7)


def shard_items(out: Path) -> list[list]:
    plan = load_plan(out)
    layout = JobLayout(out)
    return [read_shard_items(layout.shard_file(s["id"])) for s in plan["shards"]]


def test_planning_the_same_input_twice_gives_byte_identical_shards(tmp_path, plan_into, settings):
    a, b = plan_into(tmp_path / "a", settings()), plan_into(tmp_path / "b", settings())
    assert [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]]
    for s in a["shards"]:
        assert JobLayout(tmp_path / "a").shard_file(s["id"]).read_bytes() == \
            JobLayout(tmp_path / "b").shard_file(s["id"]).read_bytes()


def test_shards_hold_whole_images_in_source_order(tmp_path, ilsvrc_sample, plan_into, settings):
    plan = plan_into(tmp_path / "out", settings(shard_size=7))
    reader = open_reader("ilsvrc-loc", ilsvrc_sample)
    source = [item for item in reader]
    shards = shard_items(tmp_path / "out")
    # Every shard but the last holds exactly shard_size items; concatenated they are the source.
    assert [len(s) for s in shards[:-1]] == [7] * (len(shards) - 1)
    assert 1 <= len(shards[-1]) <= 7
    flat = [item for shard in shards for item in shard]
    assert [i.to_json() for i in flat] == [i.to_json() for i in source]
    # An image appears once, with all its boxes, in exactly one shard.
    ids = [i.image_id for i in flat if isinstance(i, ImageRecord)]
    assert len(ids) == len(set(ids)) == 50
    assert plan["totals"]["boxes"] == sum(len(i.boxes) for i in source
                                          if isinstance(i, ImageRecord))
    assert sum(len(i.boxes) for i in flat) > len(ids)  # some images have several boxes


def test_plan_records_engine_policy_version_and_shard_checksums(tmp_path, ilsvrc_sample, plan_into,
                                                                settings):
    plan = plan_into(tmp_path / "out",
                     settings(engine="grabcut", engine_options={"iterations": 3}))
    contract = plan["contract"]
    assert plan["boxmask_version"] == __version__
    assert contract["engine"] == create_engine("grabcut", iterations=3).describe()
    assert contract["settings"]["inside_point"] == "center"
    assert contract["settings"]["shard_size"] == 7
    assert contract["settings"]["input"] == str(ilsvrc_sample)
    assert plan["totals"]["shards"] == len(plan["shards"]) == 8  # ceil(50 / 7)
    assert sum(s["images"] for s in plan["shards"]) == plan["totals"]["images"] == 50
    import hashlib

    for s in plan["shards"]:
        data = JobLayout(tmp_path / "out").shard_file(s["id"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == s["sha256"]


def test_same_settings_resume_the_existing_plan(tmp_path, plan_into, settings):
    first = plan_into(tmp_path / "out", settings())
    again = plan_into(tmp_path / "out", settings())
    assert again["plan_id"] == first["plan_id"]


@pytest.mark.parametrize("change, expected", [
    ({"shard_size": 5}, "shard_size: planned 7, requested 5"),
    ({"engine": "grabcut"}, "engine.name: planned 'box', requested 'grabcut'"),
    ({"formats": ["coco"]}, "settings.formats"),
])
def test_other_settings_are_refused_with_the_differences_listed(tmp_path, change, expected,
                                                                plan_into, settings):
    plan_into(tmp_path / "out", settings())
    with pytest.raises(PlanMismatchError) as e:
        plan_into(tmp_path / "out", settings(**change))
    assert expected in str(e.value)
    assert "--force" in str(e.value)


def test_force_discards_the_previous_conversion(tmp_path, plan_into, settings):
    out = tmp_path / "out"
    summary = convert(settings(), out, progress=False)
    assert summary["complete"]
    assert (out / "coco" / "instances.json").exists()
    plan = plan_into(out, settings(shard_size=5, formats=["pixel-imagenet"]), force=True)
    assert plan["contract"]["settings"]["shard_size"] == 5
    assert not (out / "coco").exists()
    assert not list(JobLayout(out).done_dir.iterdir())
    assert not (out / "manifest.json").exists()


def test_workers_refuse_a_plan_of_another_boxmask_version(tmp_path, plan_into, settings):
    out = tmp_path / "out"
    plan = plan_into(out, settings())
    plan["boxmask_version"] = "0.0.1"
    JobLayout(out).plan.write_text(json.dumps(plan))
    with pytest.raises(PlanMismatchError, match="planned with boxmask 0.0.1"):
        Worker(out)
    with pytest.raises(PlanMismatchError, match="planned with boxmask 0.0.1"):
        plan_into(out, settings())


def test_workers_refuse_an_engine_that_differs_from_the_plan(tmp_path, plan_into, settings):
    out = tmp_path / "out"
    plan_into(out, settings(engine="grabcut", engine_options={"iterations": 3}))
    worker = Worker(out)
    with pytest.raises(PlanMismatchError, match="iterations"):
        worker.use_engine(create_engine("grabcut", iterations=5))
    # Runtime options (threads, device, batch size) may differ: the masks do not.
    worker = Worker(out, engine_overrides={"iterations": 5, "device": "cpu"})
    assert "iterations" not in worker.engine_overrides


def test_a_damaged_shard_file_is_refused_and_nothing_is_marked_done(tmp_path, plan_into, settings):
    out = tmp_path / "out"
    plan_into(out, settings())
    layout = JobLayout(out)
    shard0 = layout.shard_file(0)
    data = bytearray(shard0.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of the compressed stream
    shard0.write_bytes(bytes(data))
    with pytest.raises(PlanMismatchError, match="does not match the plan"):
        run_worker(out, wait_for_others=False)
    assert not layout.done_file(0).exists()
    assert not layout.lease_file(0).exists()


def test_launchers_started_together_plan_once(tmp_path, ilsvrc_sample, start_boxmask):
    out = tmp_path / "out"
    args = ["plan", "--source", "ilsvrc-loc", "--input", str(ilsvrc_sample), "--engine", "box",
            "--shard-size", "3", "--output", str(out)]
    procs = [start_boxmask(*args) for _ in range(3)]
    logs = [p.communicate(timeout=60)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], logs
    assert sum("planned 50 images" in log for log in logs) == 1, logs
    plan = load_plan(out)
    assert plan["totals"]["items"] == sum(len(s) for s in shard_items(out)) == 50


def test_a_worker_of_a_discarded_conversion_stops_instead_of_writing_into_the_new_one(
        tmp_path, plan_into, settings, start_worker):
    out = tmp_path / "out"
    plan_into(out, settings(engine="grabcut", limit=8, shard_size=4))
    layout = JobLayout(out)
    old = start_worker(out)
    deadline = time.monotonic() + 60
    while not list(layout.results_dir.glob("*.jsonl")) and time.monotonic() < deadline:
        time.sleep(0.01)
    new_plan = plan_into(out, settings(shard_size=50), force=True)
    assert old.wait(timeout=60) == 1
    assert "changed while this worker ran" in old.stderr.read()
    assert not list(layout.done_dir.iterdir())
    assert load_plan(out)["plan_id"] == new_plan["plan_id"]


def test_engines_declare_what_workers_may_choose_and_the_size_hint(tmp_path, plan_into, settings):
    from boxmask.engines import engine_class

    assert engine_class("iog").SIZE_HINT == "expected_crops"
    assert engine_class("grabcut").SIZE_HINT is None
    assert engine_class("grabcut").RUNTIME_OPTIONS == frozenset()
    assert {"device", "batch_size"} <= engine_class("fused").RUNTIME_OPTIONS
    with pytest.raises(ValueError, match="unknown engine"):
        engine_class("sam")
    out = tmp_path / "out"
    plan_into(out, settings(engine="grabcut"))
    worker = Worker(out, engine_overrides={"device": "cuda", "batch_size": 8})
    assert worker.engine_overrides == {}  # GrabCut has no device: a worker's --device is moot
    assert worker.engine.name == "grabcut" and worker._batch_boxes() == 1


@pytest.mark.parametrize("old_format", [1, 2])
def test_a_plan_of_an_older_format_is_refused_with_advice(tmp_path, old_format, plan_into,
                                                          settings):
    """Format 1: uncompressed shards; format 2: ``source`` fields in the plan and the shards."""
    out = tmp_path / "out"
    plan_into(out, settings())
    path = JobLayout(out).plan
    plan = json.loads(path.read_text())
    plan["plan_format"] = old_format
    path.write_text(json.dumps(plan))
    with pytest.raises(PlanMismatchError, match=f"format {old_format} .*laid out differently.*"
                                                "reads format 3.*--force to plan again"):
        plan_into(out, settings())
    with pytest.raises(PlanMismatchError, match=f"format {old_format} "):
        run_worker(out, wait_for_others=False)


def test_shard_files_are_gzip_json_lines_and_a_plain_file_is_refused(tmp_path, plan_into, settings):
    import gzip

    out = tmp_path / "out"
    plan_into(out, settings())
    shard0 = JobLayout(out).shard_file(0)
    lines = gzip.decompress(shard0.read_bytes()).decode().splitlines()
    assert len(lines) == 7 and all("record" in json.loads(x) for x in lines)
    shard0.write_text("\n".join(lines) + "\n")  # the same items, uncompressed
    with pytest.raises(PlanMismatchError, match="not a gzip-compressed shard"):
        read_shard_items(shard0)


def test_an_ungrouped_open_images_csv_plans_sorted_and_identically_twice(
        tmp_path, plan_into, settings):
    csv = Path(__file__).parents[1] / "data" / "readers" / "openimages" / "ungrouped.csv"
    oi = settings(input_format="openimages", input=str(csv), images_root=str(tmp_path),
                  shard_size=2)
    a, b = plan_into(tmp_path / "a", oi), plan_into(tmp_path / "b", oi)
    assert [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]]
    assert a["reader"]["grouped_by_image_id"] is False
    items = [i for shard in shard_items(tmp_path / "a") for i in shard]
    assert [(i.image_id, len(i.boxes)) for i in items] == [("a" * 16, 3), ("b" * 16, 2),
                                                           ("c" * 16, 1)]
    assert a["totals"]["read_errors"] == 0 and a["totals"]["boxes"] == 6
