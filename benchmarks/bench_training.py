"""Training recipes compared: the official IOG recipe vs the modern one, same init, same data.

Every recipe starts from the same initial weights (the official random init with ``--seed``) and
trains on the same instances in the same order with the same augmentations (the data order and
augmentation are functions of the seed only), for the same number of steps (``--steps``) or the
same wall-clock budget per recipe (``--seconds``). Recipes:

* ``official``: SGD momentum 0.9, wd 5e-4, lr 1e-8 backbone / 1e-7 heads, no schedule, loss summed
  over pixels / batch (reference section 5.1), fp32.
* ``official-lr-scaled``: the same with both learning rates multiplied by ``(512 / S)^2``. The
  summed loss grows with the pixel count, so at an input of S < 512 the official learning rates
  are effectively ``(512 / S)^2`` times lower than in the official 512 setting; this variant
  restores the official effective step size (it is the official recipe when S = 512).
* ``modern``: AdamW (lr 1e-3 for heads and backbone: the backbone starts from scratch here;
  wd 1e-2 on conv weights), linear warmup +
  cosine, loss averaged over pixels, gradient clipping 1.0, bf16 autocast where the CPU/GPU has
  it (``--precision`` overrides).

Data: the bundled real samples: training on the 40 COCO-MVal instances with the official
augmentation, validation on the 34 DAVIS instances (``--val davis``, default) or on a held-out
fraction of the COCO-MVal images (``--val 0.2``, chosen by a hash of the image id). Every
``--eval-every`` steps the script measures, with BatchNorm in eval mode, the crop IoU on the
training instances (without augmentation) and on the held-out ones, and the mean per-pixel BCE of
the fine output on the training instances (BatchNorm in training mode, on a copy), and prints one
row per recipe and evaluation point, then a summary.

The network is a reduced-width IOG (``--model tiny``/``small``, ``IOGConfig.preset``) at a reduced
input (``--input-size``, default 128) so that a run takes minutes on a CPU; the recipes, losses,
data pipeline and trainer are the full-size ones. Timings on a shared machine are noisy.

    python benchmarks/bench_training.py                      # ~2.5 min on 2 CPU cores
    python benchmarks/bench_training.py --steps 600 --model small --input-size 256
    python benchmarks/bench_training.py --seconds 120         # same wall-clock per recipe
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import default_collate

from boxmask.training import TrainOptions, make_trainer
from boxmask.training.losses import bce_loss, crop_iou
from boxmask.training.run import build_and_init, train_config
from boxmask.training.samples import CropDataset

ROOT = Path(__file__).resolve().parents[1]
DATA = f"folder:{ROOT}/tests/data/coco_mval,images_dir=img,masks_dir=gt"
DAVIS = f"folder:{ROOT}/tests/data/davis,images_dir=img,masks_dir=gt"
RECIPES = ("official", "official-lr-scaled", "modern")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seconds", type=float, default=None,
                   help="wall-clock budget per recipe (overrides --steps as the stop rule)")
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--model", default="tiny", choices=("tiny", "small", "official"))
    p.add_argument("--input-size", type=int, default=128)
    p.add_argument("--val", default="davis",
                   help="'davis' (train on all 40 COCO-MVal instances, validate on the 34 DAVIS "
                        "instances) or a held-out fraction of the COCO-MVal images, e.g. 0.2")
    p.add_argument("--precision", default=None, help="modern recipe precision (default auto)")
    p.add_argument("--modern-lr", type=float, default=None, help="modern: heads lr")
    p.add_argument("--modern-backbone-lr", type=float, default=None, help="modern: backbone lr")
    p.add_argument("--recipes", default=",".join(RECIPES))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write all measurements here")
    return p.parse_args(argv)


def recipe_options(name: str, args: argparse.Namespace, out: Path) -> TrainOptions:
    overrides: dict = {"max_steps": args.steps if args.seconds is None else 10**7,
                       "epochs": 10**6, "batch_size": args.batch_size, "seed": args.seed}
    base = "modern" if name == "modern" else "official"
    if name == "official-lr-scaled":
        k = (512 / args.input_size) ** 2
        overrides.update(lr=1e-7 * k, backbone_lr=1e-8 * k)
    if name == "modern":
        overrides.update(lr=args.modern_lr, backbone_lr=args.modern_backbone_lr)
    if name == "modern" and args.seconds is not None:
        overrides["max_steps"] = args.steps  # the cosine schedule needs an end; see --steps
    overrides["precision"] = (args.precision or "auto") if base == "modern" else "fp32"
    val = {"val_data": [DAVIS]} if args.val == "davis" else {"val_fraction": float(args.val)}
    return TrainOptions(output=out, data=[DATA], **val, recipe=base,
                        model=args.model, input_size=args.input_size, workers=0,
                        threads=args.threads, log_every=10**6, save_every=0, snapshot_every=0,
                        val_every=10**6, overrides=overrides)


class Probe:
    """The measurements taken every ``--eval-every`` steps."""

    def __init__(self, train_plain: CropDataset, val: CropDataset, device: torch.device) -> None:
        self.train_batch = default_collate([train_plain[i] for i in range(len(train_plain))])
        self.val_batch = default_collate([val[i] for i in range(len(val))])
        self.device = device

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        out = {}
        m = copy.deepcopy(model).train()  # training-mode BN on a copy: statistics untouched
        b = {k: v.to(self.device) for k, v in self.train_batch.items()}
        out["train_bce"] = float(bce_loss(m.forward_fine(b["x"]), b["gt"], b["void"], "mean"))
        model.eval()
        for name, batch in (("train_iou", self.train_batch), ("val_iou", self.val_batch)):
            ious = []
            for i in range(0, len(batch["x"]), 8):
                x = batch["x"][i:i + 8].to(self.device)
                fine = model.forward_fine(x)
                ious += crop_iou(fine, batch["gt"][i:i + 8].to(self.device),
                                 batch["void"][i:i + 8].to(self.device)).tolist()
            out[name] = float(np.mean(ious))
        model.train()
        return out


def run_recipe(name: str, args: argparse.Namespace, init_state: dict, work: Path) -> list[dict]:
    out = work / name
    shutil.rmtree(out, ignore_errors=True)
    trainer = make_trainer(recipe_options(name, args, out))
    trainer.model.load_state_dict(init_state)
    plain = CropDataset(trainer.train_set.dataset, trainer.train_set.refs, trainer.train_set.crop)
    probe = Probe(plain, trainer.val_set, trainer.device)
    rows = [{"recipe": name, "step": 0, "time_s": 0.0, **probe(trainer.model)}]
    clock = {"train": 0.0, "t": time.perf_counter()}

    def on_step(record: dict) -> None:
        now = time.perf_counter()
        clock["train"] += now - clock["t"]
        if record["step"] % args.eval_every == 0:
            rows.append({"recipe": name, "step": record["step"],
                         "time_s": round(clock["train"], 2), **probe(trainer.model)})
            print(fmt(rows[-1]), flush=True)
        if args.seconds is not None and clock["train"] >= args.seconds:
            trainer.request_stop()
        clock["t"] = time.perf_counter()  # evaluation time is not training time

    trainer.on_step = on_step
    trainer.fit()
    if rows[-1]["step"] != trainer.step:
        rows.append({"recipe": name, "step": trainer.step, "time_s": round(clock["train"], 2),
                     **probe(trainer.model)})
        print(fmt(rows[-1]), flush=True)
    rows[-1]["precision"] = trainer.precision
    return rows


def fmt(r: dict) -> str:
    return (f"{r['recipe']:>20} {r['step']:>6} {r['time_s']:>8.1f} {r['train_bce']:>10.4f} "
            f"{r['train_iou']:>9.3f} {r['val_iou']:>8.3f}")


def first_step(rows: list[dict], key: str, level: float) -> str:
    for r in rows:
        if r[key] >= level:
            return f"{r['step']} ({r['time_s']:.0f} s)"
    return "not reached"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench_training_"))
    names = [n.strip() for n in args.recipes.split(",") if n.strip()]
    cfg = train_config(recipe_options("official", args, work / "init"))
    model, _ = build_and_init(cfg)
    init_state = copy.deepcopy(model.state_dict())
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model {args.model} ({n_params / 1e6:.2f} M parameters), input {args.input_size}^2, "
          f"batch {args.batch_size}, seed {args.seed}, torch threads {torch.get_num_threads()}")
    print(f"{'recipe':>20} {'step':>6} {'time_s':>8} {'train_bce':>10} {'train_iou':>9} "
          f"{'val_iou':>8}")
    results = {}
    try:
        for name in names:
            results[name] = run_recipe(name, args, init_state, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\nsummary (train IoU = fit of the training instances, eval-mode BatchNorm)")
    print(f"{'recipe':>20} {'precision':>9} {'steps':>6} {'s/step':>7} {'final bce':>9} "
          f"{'train IoU':>9} {'val IoU':>8} {'best val':>8}  train IoU >= 0.5 at")
    for name, rows in results.items():
        last = rows[-1]
        per_step = last["time_s"] / max(last["step"], 1)
        best = max(r["val_iou"] for r in rows)
        print(f"{name:>20} {last['precision']:>9} {last['step']:>6} {per_step:>7.3f} "
              f"{last['train_bce']:>9.4f} {last['train_iou']:>9.3f} {last['val_iou']:>8.3f} "
              f"{best:>8.3f}  {first_step(rows, 'train_iou', 0.5)}")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
