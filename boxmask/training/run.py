"""``boxmask train``: one call from options to a trained checkpoint.

``run_training(TrainOptions(...))`` opens the training datasets, builds and initialises the network,
and runs the ``Trainer`` (see ``boxmask.training.loop`` for the output folder). Tasks:

* ``iog``: the IOG network (inside + corner clicks).
* ``stage1``: the same network with the inside channel empty (boxes only); its masks give inside
  points (``boxmask.models.stage1.stage1_inside_points``).
* ``refine``: the refinement network with simulated corrective clicks.

Initialisation: the official random init, then optionally an ImageNet ResNet-101 file
(``imagenet``) and/or an IOG checkpoint (``init_checkpoint``; for ``refine`` and ``stage1`` an
IOG checkpoint is the natural start). On resume the weights come from the run's checkpoint.

Validation: ``val_data`` datasets (VOC/SBD default to split ``val``); images of the validation set
are removed from the training set (as the official training removes VOC val images from SBD).
Without ``val_data``, ``val_fraction`` of the training images (chosen by a hash of their ids) are
held out.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..guidance import CropSettings
from ..models import IOGConfig, IOGNetworkBase, build_model
from .config import TrainConfig, recipe
from .datasets import CombinedDatasets, InstanceDataset, InstanceRef, holdout_split, open_dataset
from .init import init_from_checkpoint, init_from_imagenet, official_init
from .loop import CHECKPOINT, RESUMABLE_CHANGES, ResumeError, Trainer
from .samples import CropDataset
from .transforms import AugmentSettings

log = logging.getLogger(__name__)


@dataclass
class TrainOptions:
    """Options of ``boxmask train`` (the command-line flags map one to one)."""

    output: str | Path
    data: list[str]
    """Training datasets, ``FORMAT:PATH[,key=value...]``
    (``boxmask.training.datasets.DataSpec``)."""
    val_data: list[str] = field(default_factory=list)
    val_fraction: float = 0.0
    val_max: int | None = None
    """Use at most this many validation instances (evenly spread over the list)."""
    task: str = "iog"
    recipe: str = "official"
    model: str = "official"
    """Model size preset: ``official``, ``small`` or ``tiny`` (``IOGConfig.preset``)."""
    input_size: int | None = None
    imagenet: str | Path | None = None
    init_checkpoint: str | Path | None = None
    resume: bool = False
    device: str = "auto"
    workers: int = 2
    threads: int | None = None
    save_every: int = 500
    snapshot_every: int = 10
    log_every: int = 10
    val_every: int = 1
    max_instances: int | None = None
    """Train on the first N instances only (quick trials)."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """``TrainConfig`` fields replacing the recipe's (``epochs``, ``lr``, ``batch_size``...)."""


def _combine(datasets: list[InstanceDataset],
             exclude: frozenset[str] | set[str] = frozenset()) -> InstanceDataset:
    if len(datasets) == 1 and not exclude:
        return datasets[0]
    return CombinedDatasets(datasets, exclude)


def _spread(refs: list[InstanceRef], n: int | None) -> list[InstanceRef]:
    if n is None or len(refs) <= n:
        return refs
    picks = np.linspace(0, len(refs) - 1, n).round().astype(int)
    return [refs[i] for i in picks]


def open_data(options: TrainOptions) -> tuple[InstanceDataset, list[InstanceRef],
                                              InstanceDataset | None, list[InstanceRef]]:
    """``(train dataset, train refs, val dataset, val refs)`` of the options."""
    val_datasets = [open_dataset(s, default_split="val") for s in options.val_data]
    val_refs = [r for s in val_datasets for r in s.refs()]
    exclude = {r.image_id for r in val_refs}
    train_dataset = _combine([open_dataset(s, default_split="train") for s in options.data],
                            exclude)
    train_refs = train_dataset.refs()
    val_dataset: InstanceDataset | None = _combine(val_datasets) if val_datasets else None
    if val_dataset is None and options.val_fraction > 0:
        train_refs, val_refs = holdout_split(train_refs, options.val_fraction)
        val_dataset = train_dataset
    if options.max_instances is not None:
        train_refs = train_refs[:options.max_instances]
    return train_dataset, train_refs, val_dataset, _spread(val_refs, options.val_max)


def train_config(options: TrainOptions) -> TrainConfig:
    """The recipe of the options with their overrides and model config."""
    arch = "iog-refinement" if options.task == "refine" else "iog"
    extra = {"input_size": options.input_size} if options.input_size else {}
    model = IOGConfig.preset(options.model, arch, **extra)
    pretrained = options.imagenet is not None or options.init_checkpoint is not None
    return recipe(options.recipe, options.task, pretrained, model=model.to_json(),
                  **options.overrides)


DATA_OPTIONS = ("data", "val_data", "val_fraction", "val_max", "max_instances")


def resumed_config(options: TrainOptions) -> tuple[TrainConfig, TrainOptions]:
    """The settings of the run in ``options.output``: its ``TrainConfig`` (with the ``epochs`` /
    ``max_steps`` of ``options.overrides`` when given) and the options with the run's data
    options filled in where ``options`` leaves them empty. Raises ``ResumeError`` when
    ``options.overrides`` contradicts the run."""
    out = Path(options.output)
    ck = out / "checkpoints" / CHECKPOINT
    if not ck.is_file():
        raise ResumeError(f"nothing to resume: {ck} does not exist")
    saved = torch.load(ck, map_location="cpu", weights_only=True)["train_config"]
    cfg = TrainConfig.from_json(saved)
    conflicts = {k: (getattr(cfg, k), v) for k, v in options.overrides.items()
                 if v is not None and k not in RESUMABLE_CHANGES and getattr(cfg, k) != v}
    if conflicts:
        raise ResumeError("the run was made with other settings: " + ", ".join(
            f"{k}: {a!r} -> {b!r}" for k, (a, b) in conflicts.items()))
    cfg = replace(cfg, **{k: v for k, v in options.overrides.items()
                          if k in RESUMABLE_CHANGES and v is not None})
    info_path = out / "train_config.json"
    if not options.data and info_path.is_file():
        recorded = json.loads(info_path.read_text()).get("options", {})
        options = replace(options, **{k: recorded[k] for k in DATA_OPTIONS if k in recorded})
    return cfg, options


def build_and_init(cfg: TrainConfig, imagenet: str | Path | None = None,
                   init_checkpoint: str | Path | None = None
                   ) -> tuple[IOGNetworkBase, dict[str, Any]]:
    """The network of ``cfg`` with the official random init (seeded with ``cfg.seed``), then
    the ImageNet backbone and/or the checkpoint; returns ``(model, init report)``."""
    torch.manual_seed(cfg.seed)
    model = build_model(IOGConfig.from_json(cfg.model))
    official_init(model)
    report: dict[str, Any] = {"random": f"official init (seed {cfg.seed})"}
    if imagenet is not None:
        r = init_from_imagenet(model, imagenet)
        r.log()
        report["imagenet"] = r.to_json()
    if init_checkpoint is not None:
        r = init_from_checkpoint(model, init_checkpoint)
        r.log()
        report["checkpoint"] = r.to_json()
    return model, report


def make_trainer(options: TrainOptions, **trainer_kwargs: Any) -> Trainer:
    """The ``Trainer`` the options describe (data opened, model built and initialised). With
    ``resume`` the run's own settings are used (``resumed_config``)."""
    if options.resume:
        cfg, options = resumed_config(options)
    else:
        cfg = train_config(options)
    if not options.data:
        raise ValueError("no training data given")
    train_dataset, train_refs, val_dataset, val_refs = open_data(options)
    log.info("%d training instances, %d validation instances", len(train_refs), len(val_refs))
    crop = CropSettings(size=IOGConfig.from_json(cfg.model).input_size,
                        inside=cfg.task != "stage1")
    train_set = CropDataset(train_dataset, train_refs, crop,
                            AugmentSettings() if cfg.augment else None, cfg.seed)
    val_set = CropDataset(val_dataset, val_refs, crop) if val_dataset is not None else None
    if options.resume:
        model, report = build_model(IOGConfig.from_json(cfg.model)), None
    else:
        model, report = build_and_init(cfg, options.imagenet, options.init_checkpoint)
    recorded = {k: getattr(options, k) for k in DATA_OPTIONS}
    recorded.update(imagenet=options.imagenet and str(options.imagenet),
                    init_checkpoint=options.init_checkpoint and str(options.init_checkpoint))
    return Trainer(cfg, model, train_set, options.output, val_set=val_set, device=options.device,
                   num_workers=options.workers, save_every=options.save_every,
                   snapshot_every=options.snapshot_every, log_every=options.log_every,
                   val_every=options.val_every, num_threads=options.threads,
                   resume=options.resume, init_report=report, options_record=recorded,
                   **trainer_kwargs)


def run_training(options: TrainOptions) -> dict[str, Any]:
    """Train as the options say; returns the run summary (``status``, ``model``, ``val``...)."""
    return make_trainer(options).fit()
