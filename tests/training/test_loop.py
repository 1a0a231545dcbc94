"""The trainer on real data: learning, overfitting, resume, logs, exported checkpoints.

Reduced-width networks (``IOGConfig.preset("tiny")``) at small inputs keep this on a CPU in
seconds; the loop, the data pipeline and the losses are the ones used at full size.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import default_collate

from boxmask.models import (
    IOGConfig,
    IOGNetwork,
    build_from_checkpoint,
    build_iog,
    export_checkpoint,
    load_checkpoint,
    read_checkpoint,
)
from boxmask.models.stage1 import load_stage1, stage1_inside_points
from boxmask.training import ResumeError, TrainOptions, make_trainer
from boxmask.training.losses import multi_output_loss
from boxmask.training.samples import CropDataset

DATA = Path(__file__).parents[1] / "data"
MVAL = f"folder:{DATA}/coco_mval,images_dir=img,masks_dir=gt"
THREADS = 1  # 2-core CI machines: one thread per process is the fastest and the most stable


def options(out: Path, **kw) -> TrainOptions:
    overrides = {"precision": "fp32", "epochs": 1000}
    overrides.update(kw.pop("overrides", {}))
    base = {"data": [MVAL], "recipe": "modern", "model": "tiny", "input_size": 128,
            "workers": 0, "threads": THREADS, "log_every": 1, "save_every": 0,
            "snapshot_every": 0}
    base.update(kw)
    return TrainOptions(output=out, overrides=overrides, **base)


def plain_copy(dataset: CropDataset) -> CropDataset:
    """The same instances without augmentation (a fixed evaluation set)."""
    return CropDataset(dataset.dataset, dataset.refs, dataset.crop)


def train_mode_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> float:
    """Loss on a fixed batch with BatchNorm in training mode, on a copy (statistics untouched)."""
    m = copy.deepcopy(model).train()
    with torch.no_grad():
        loss, _ = multi_output_loss(m(batch["x"]), batch["gt"], batch["void"], reduction="mean")
    return loss.item()


@pytest.mark.parametrize("recipe", ["official", "modern"])
def test_a_few_steps_on_real_data_decrease_the_loss(tmp_path, recipe):
    trainer = make_trainer(options(tmp_path / "run", recipe=recipe, max_instances=8,
                                   overrides={"max_steps": 12, "batch_size": 4}))
    fixed = plain_copy(trainer.train_set)
    batch = default_collate([fixed[i] for i in range(len(fixed))])
    before = train_mode_loss(trainer.model, batch)
    summary = trainer.fit()
    after = train_mode_loss(trainer.model, batch)
    assert summary["status"] == "done" and summary["step"] == 12
    assert after < 0.97 * before, (before, after)


def test_a_micro_set_is_overfitted_to_high_iou(tmp_path):
    trainer = make_trainer(options(tmp_path / "run", max_instances=4, val_every=1000, overrides={
        "max_steps": 80, "batch_size": 4, "augment": False, "lr": 3e-3, "backbone_lr": 3e-3,
        "warmup_steps": 10}))
    trainer.val_set = plain_copy(trainer.train_set)  # validate on the training instances
    summary = trainer.fit()
    assert summary["val"]["instances"] == 4
    assert summary["val"]["iou"] >= 0.9, summary["val"]


def test_metrics_are_logged_per_epoch_and_the_final_checkpoint_rebuilds_the_network(tmp_path):
    out = tmp_path / "run"
    summary = make_trainer(options(out, max_instances=8, val_fraction=0.25, overrides={
        "epochs": 2, "batch_size": 2})).fit()
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [0, 1]
    for r in lines:
        assert set(r["train"]) >= {"loss", "iou", "coarse0", "coarse1", "coarse2", "coarse3",
                                   "fine"}
        assert {"iou", "instances"} <= set(r["val"]) and r["elapsed_s"] > 0
        assert set(r["lr"]) == {"backbone", "backbone-no-decay", "heads", "heads-no-decay"}
    steps = [json.loads(x) for x in (out / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == list(range(1, summary["step"] + 1))
    state, config = read_checkpoint(out / "model_final.pth")
    assert config["width"] == 8 and config["task"] == "iog" and config["input_size"] == 128
    net = build_from_checkpoint(out / "model_final.pth")
    assert net.config == IOGConfig.preset("tiny", input_size=128)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in state.items())
    info = json.loads((out / "model_final.json").read_text())
    assert info["checkpoint_format"] == "state_dict+config" and info["steps"] == summary["step"]
    run_info = json.loads((out / "train_config.json").read_text())
    assert run_info["software"]["torch"] == torch.__version__.split("+")[0]
    assert run_info["software"]["opencv"] is not None


def test_an_interrupted_run_resumes_at_the_same_step_and_ends_identically(tmp_path):
    kw = {"max_instances": 5, "overrides": {"max_steps": 7, "batch_size": 2}}
    full = make_trainer(options(tmp_path / "full", **kw))
    full.fit()
    part = make_trainer(options(tmp_path / "part", **kw))
    assert part.fit(stop_at_step=3)["status"] == "stopped"  # mid-epoch (2 steps per epoch)
    # `boxmask train --resume --output DIR`: settings and data come from the run itself
    resumed = make_trainer(TrainOptions(output=tmp_path / "part", data=[], resume=True,
                                        workers=0, threads=THREADS, log_every=1, save_every=0,
                                        snapshot_every=0))
    assert resumed.step == 3 and resumed.epoch == 1
    assert resumed.fit()["status"] == "done"
    for k, v in full.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[k], v), k
    for name in ("steps.jsonl", "metrics.jsonl"):
        a = [json.loads(x) for x in (tmp_path / "full" / name).read_text().splitlines()]
        b = [json.loads(x) for x in (tmp_path / "part" / name).read_text().splitlines()]
        strip = lambda rows: [{k: v for k, v in r.items() if "elapsed" not in k}  # noqa: E731
                              for r in rows]
        assert strip(a) == strip(b), name


def test_resume_refuses_other_settings_or_data_and_a_new_run_refuses_an_old_folder(tmp_path):
    kw = {"max_instances": 4, "overrides": {"max_steps": 2, "batch_size": 2}}
    make_trainer(options(tmp_path / "run", **kw)).fit(stop_at_step=1)
    with pytest.raises(ResumeError, match="already holds"):
        make_trainer(options(tmp_path / "run", **kw))
    with pytest.raises(ResumeError, match="batch_size"):
        make_trainer(options(tmp_path / "run", resume=True, max_instances=4,
                             overrides={"max_steps": 2, "batch_size": 3}))
    with pytest.raises(ResumeError, match="data differ"):
        make_trainer(options(tmp_path / "run", resume=True, max_instances=3,
                             overrides={"max_steps": 2, "batch_size": 2}))


def test_official_architecture_exports_a_raw_state_dict_the_official_loader_reads(tmp_path):
    model = build_iog()
    path = export_checkpoint(model, tmp_path / "IOG_trained.pth", {"task": "iog"})
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert list(raw) == list(model.state_dict())  # no wrapper, official key order
    fresh = load_checkpoint(IOGNetwork(), path)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in raw.items())
    assert read_checkpoint(path)[1] is None


def test_a_trained_checkpoint_segments_boxes_in_the_iog_engine(tmp_path):
    from boxmask.engines.base import SegmentRequest
    from boxmask.engines.iog import IOGEngine

    out = tmp_path / "run"
    make_trainer(options(out, input_size=512, max_instances=2, overrides={
        "max_steps": 1, "batch_size": 2})).fit()
    net = build_from_checkpoint(out / "model_final.pth")
    engine = IOGEngine.from_network(net, "iog", device="cpu", mode="eager", num_threads=THREADS)
    image = np.array(Image.open(DATA / "voc2012/JPEGImages/2007_000063.jpg").convert("RGB"))
    boxes = np.array([[122, 114, 378, 274], [74, 0, 427, 374]])
    try:
        (preds,) = engine.segment([SegmentRequest(image, boxes)])
    finally:
        engine.close()
    assert len(preds) == 2
    for p in preds:
        assert p.mask.shape == image.shape[:2] and p.mask.dtype == bool
        assert 0.0 <= p.score <= 1.0


@pytest.mark.parametrize("task", ["stage1", "refine"])
def test_stage1_and_refinement_tasks_train_and_validate(tmp_path, task):
    out = tmp_path / task
    summary = make_trainer(options(out, task=task, max_instances=4, val_fraction=0.3,
                                   overrides={"max_steps": 3, "batch_size": 2})).fit()
    assert summary["status"] == "done"
    state, config = read_checkpoint(out / "model_final.pth")
    assert config["task"] == task
    assert config["architecture"] == ("iog-refinement" if task == "refine" else "iog")
    extra = {"stage1": "inside_hit", "refine": "iou1"}[task]
    assert extra in summary["val"]
    if task == "stage1":  # what the stage-1 inside-point policy does with the checkpoint
        net = load_stage1(out / "model_final.pth")
        image = np.array(Image.open(DATA / "voc2012/JPEGImages/2007_000063.jpg").convert("RGB"))
        boxes = np.array([[122, 114, 378, 274], [74, 0, 427, 374]])
        points = stage1_inside_points(net, image, boxes)
        assert points.shape == (2, 2)
        assert ((points >= boxes[:, :2] - 1) & (points <= boxes[:, 2:] + 1)).all()
    else:
        with pytest.raises(ValueError, match="not 'stage1'"):
            load_stage1(out / "model_final.pth")


KILL_SCRIPT = """
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from {module} import options
from boxmask.training import make_trainer
make_trainer(options(Path({out!r}), save_every=1, max_instances=5,
                     overrides={{"max_steps": 7, "batch_size": 2}})).fit()
"""


def test_a_run_killed_outright_resumes_from_its_last_checkpoint(tmp_path):
    kw = {"max_instances": 5, "overrides": {"max_steps": 7, "batch_size": 2}}
    full = make_trainer(options(tmp_path / "full", **kw))
    full.fit()
    out = tmp_path / "killed"
    script = KILL_SCRIPT.format(tests=str(Path(__file__).parent), module=Path(__file__).stem,
                                out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ,
                                                                   "PYTHONPATH": os.getcwd()})
    steps = out / "steps.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if steps.exists() and len(steps.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = make_trainer(options(out, resume=True, **kw))
    assert 2 <= resumed.step < 7
    resumed.fit()
    for k, v in full.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[k], v), k
