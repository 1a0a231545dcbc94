"""Training settings and the two recipes (``official`` and ``modern``).

``official`` is the recipe of the released IOG models (reference section 5): SGD with momentum
0.9 and weight decay 5e-4, learning rate 1e-8 for the backbone and 1e-7 for the heads (CoarseNet,
FineNet, PSP, click branch), no schedule, batch 5 (refinement: 2), 100 epochs, the loss summed
over pixels / batch size on all five outputs, fp32, BatchNorm in training mode, flip + scale/rotate
augmentation.

``modern`` keeps the data pipeline and the network and changes the optimisation: AdamW
(weight decay 1e-2 on convolution weights only), learning rate 1e-3 for the heads and, for the
backbone, a tenth of it when the backbone starts from trained weights (ImageNet or an IOG
checkpoint: ``pretrained=True``) or the same when it is trained from scratch, linear warmup
(5 % of the run) then cosine decay to 1 % of the peak, the loss **averaged** over pixels (so the
learning rate does not depend on the input size), gradient-norm clipping at 1.0, and mixed
precision (bf16 autocast on CPUs with native bf16 and on GPUs that support it, else fp16 with a
gradient scaler on CUDA; fp32 elsewhere).

Stage 1 uses the IOG recipes (there is no official stage-1 recipe). Every field can be overridden.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from .. import dataclassjson

TASKS = ("iog", "stage1", "refine")
RECIPES = ("official", "modern")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("constant", "cosine")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (recorded in its checkpoints)."""

    task: str = "iog"
    recipe: str = "official"
    model: dict[str, Any] = field(default_factory=dict)
    """``IOGConfig.to_json()`` of the network (architecture follows the task)."""
    epochs: int = 100
    max_steps: int | None = None
    """Stop after this many optimiser steps in total (also ends the schedule there)."""
    batch_size: int = 5
    optimizer: str = "sgd"
    lr: float = 1e-7
    """Learning rate of the heads (CoarseNet, FineNet, PSP, click branch)."""
    backbone_lr: float = 1e-8
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "constant"
    warmup_steps: int = 0
    """Linear warmup steps; -1 = 5 % of the run (at most 1000)."""
    min_lr_ratio: float = 0.01
    """Cosine schedule: the final learning rate as a fraction of the peak."""
    loss_reduction: str = "sum"
    output_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0)
    """Loss weights of ``[coarse0, coarse1, coarse2, coarse3, fine]``."""
    grad_clip: float | None = None
    precision: str = "fp32"
    augment: bool = True
    seed: int = 0
    refine_iou_skip: float = 0.95
    """Refinement: iteration 1 is skipped when the batch IoU of iteration 0 reaches this."""
    click_polarity: str = "correct"
    """Refinement: ``"correct"`` or ``"official"`` (the transposed lookup of the official code)."""

    def __post_init__(self) -> None:
        for name, value, allowed in (("task", self.task, TASKS), ("recipe", self.recipe, RECIPES),
                                     ("optimizer", self.optimizer, OPTIMIZERS),
                                     ("schedule", self.schedule, SCHEDULES),
                                     ("precision", self.precision, PRECISIONS),
                                     ("loss_reduction", self.loss_reduction, ("sum", "mean")),
                                     ("click_polarity", self.click_polarity,
                                      ("correct", "official"))):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
        if self.batch_size < 2:
            raise ValueError("batch_size must be at least 2 (BatchNorm in training mode)")
        if len(self.output_weights) != 5:
            raise ValueError("output_weights needs five values")

    def to_json(self) -> dict[str, Any]:
        return dataclassjson.to_json(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of ``to_json``; keys that are not fields are ignored."""
        return dataclassjson.from_json(cls, d, {"output_weights": float})


def recipe(name: str = "official", task: str = "iog", pretrained: bool = True,
           **overrides: Any) -> TrainConfig:
    """The ``TrainConfig`` of a recipe for a task, with ``overrides`` applied (None values are
    ignored, so command-line options that were not given keep the recipe's value).

    ``pretrained``: whether the backbone starts from trained weights (modern recipe: backbone
    learning rate a tenth of the heads', else equal; the official recipe always uses a tenth).
    """
    if name not in RECIPES:
        raise ValueError(f"recipe must be one of {', '.join(RECIPES)}, not {name!r}")
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, not {task!r}")
    base: dict[str, Any] = {"task": task, "recipe": name}
    ratio = 0.1 if name == "official" or pretrained else 1.0
    if name == "modern":
        base.update(optimizer="adamw", lr=1e-3, backbone_lr=1e-3 * ratio, weight_decay=1e-2,
                    schedule="cosine", warmup_steps=-1, loss_reduction="mean", grad_clip=1.0,
                    precision="auto", batch_size=8, epochs=50)
    if task == "refine":
        base.update(output_weights=(1.0, 1.0, 1.0, 2.0, 1.0))
        if name == "official":
            base.update(batch_size=2)
    given = {k: v for k, v in overrides.items() if v is not None}
    if "lr" in given and "backbone_lr" not in given:
        given["backbone_lr"] = given["lr"] * ratio
    return replace(TrainConfig(**base), **given)
