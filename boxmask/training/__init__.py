"""Training of every network in the project: IOG, the refinement network and the first stage.

* ``datasets``: instance-mask readers (VOC, SBD, COCO, image/mask folders).
* ``transforms``: augmentation and the official crop / click pipeline.
* ``samples``: the torch dataset and the deterministic batch order.
* ``losses``: the official BCE (summed) and a mean-reduced variant; crop IoU.
* ``init``: official random init, ImageNet ResNet-101, IOG checkpoints.
* ``optim``, ``config``: optimisers, schedules, precision; the ``official`` and ``modern`` recipes.
* ``loop``: the trainer (checkpoints, resume, logs); ``refine``: corrective-click simulation;
  ``run``: ``boxmask train`` in one call.
"""

from __future__ import annotations

from .config import RECIPES, TASKS, TrainConfig, recipe
from .datasets import DataSpec, open_dataset
from .loop import ResumeError, Trainer
from .run import TrainOptions, make_trainer, run_training

__all__ = [
    "RECIPES",
    "TASKS",
    "DataSpec",
    "ResumeError",
    "TrainConfig",
    "TrainOptions",
    "Trainer",
    "make_trainer",
    "open_dataset",
    "recipe",
    "run_training",
]
