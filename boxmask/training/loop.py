"""The training loop: steps, validation, checkpoints, resume and metric logs.

Output folder
-------------
::

    train_config.json        the TrainConfig, run settings and software versions (written at the
                             start)
    checkpoints/last.pt      full training state (atomic; every ``save_every`` steps and at the
                             end of every epoch): model, optimiser, scheduler, gradient scaler,
                             step, epoch, running epoch sums, RNG states, the configs
    checkpoints/epoch-NNNN.pth   weights every ``snapshot_every`` epochs (export format)
    metrics.jsonl            one line per epoch: training losses per output, batch IoU, lr per
                             group, validation IoU/loss, times
    steps.jsonl              one line every ``log_every`` steps: loss, per-output losses, lr
    model_final.pth          the trained weights (``boxmask.models.export_checkpoint``: a raw
                             state dict for the official architecture, else with its config)
    model_final.json         config, task, steps, final validation metrics, initialisation

Resume: ``Trainer(..., resume=True)`` loads ``checkpoints/last.pt`` and continues from its step.
The data order and augmentations are functions of ``(seed, epoch, index)``
(``boxmask.training.samples``), so a resumed run computes the same steps as an uninterrupted one
(bit for bit on the CPU with the same thread count). SIGINT/SIGTERM stop the run after the current
step with a checkpoint (status ``"interrupted"``).

Validation IoU is measured on the network's crop (S x S), ``sigmoid > 0.5`` against the resized
ground truth ``>= 0.5``, void excluded; BatchNorm in eval mode.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..atomic import atomic_open, atomic_write_text
from ..boxes import mask_to_box
from ..device import resolve_device
from ..models import IOGConfig, IOGNetworkBase, IOGRefinementNetwork, export_checkpoint
from ..models.stage1 import inside_point_512
from ..software import software_versions
from .config import TrainConfig
from .losses import bce_loss, crop_iou, multi_output_loss
from .optim import (
    autocast,
    make_optimizer,
    make_scaler,
    make_scheduler,
    resolve_precision,
)
from .refine import refinement_eval, refinement_step
from .samples import CropDataset, epoch_batches

log = logging.getLogger(__name__)

CHECKPOINT = "last.pt"
RESUMABLE_CHANGES = ("epochs", "max_steps")
"""TrainConfig fields a resumed run may change (with a warning: they move the schedule's end)."""


class ResumeError(RuntimeError):
    """The checkpoint does not belong to this run (other settings or other data)."""


def refs_fingerprint(dataset: CropDataset) -> str:
    """sha256 of the ordered instance list (a resumed run must see the same data)."""
    h = hashlib.sha256()
    for r in dataset.refs:
        h.update(f"{r.dataset}\t{r.image_id}\t{r.instance}\n".encode())
    return h.hexdigest()


class Trainer:
    """Trains ``model`` on ``train_set`` with ``cfg`` and writes to ``out_dir`` (module doc).

    ``model`` is already initialised (see ``boxmask.training.init``); it is moved to ``device``.
    ``val_set`` (optional) is measured at the end of every ``val_every`` epochs.
    """

    def __init__(self, cfg: TrainConfig, model: IOGNetworkBase, train_set: CropDataset,
                 out_dir: str | Path, *, val_set: CropDataset | None = None,
                 device: str | torch.device | None = "auto", num_workers: int = 0,
                 save_every: int = 0, snapshot_every: int = 10, log_every: int = 1,
                 val_every: int = 1, num_threads: int | None = None, resume: bool = False,
                 init_report: dict[str, Any] | None = None,
                 options_record: dict[str, Any] | None = None,
                 on_step: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.cfg = cfg
        self.device = resolve_device(device)
        self.precision = resolve_precision(cfg.precision, self.device)
        self.model = model.to(self.device)
        self.train_set, self.val_set = train_set, val_set
        self.out = Path(out_dir)
        self.num_workers, self.save_every = int(num_workers), int(save_every)
        self.snapshot_every, self.log_every = int(snapshot_every), max(int(log_every), 1)
        self.val_every, self.num_threads = max(int(val_every), 1), num_threads
        self.init_report, self.on_step = init_report, on_step
        self.options_record = options_record or {}
        self.steps_per_epoch = len(epoch_batches(len(train_set), cfg.batch_size, cfg.seed, 0))
        if self.steps_per_epoch == 0:
            raise ValueError(f"{len(train_set)} training instances are fewer than 2: nothing "
                             "to train on")
        total = cfg.epochs * self.steps_per_epoch
        self.total_steps = min(total, cfg.max_steps) if cfg.max_steps is not None else total
        self.optimizer = make_optimizer(self.model, cfg)
        self.scheduler = make_scheduler(self.optimizer, cfg, self.total_steps)
        self.scaler = make_scaler(self.precision, self.device)
        self.step = 0
        self.epoch = 0
        self.elapsed = 0.0
        self._sums: dict[str, float] = {}
        self._stop_requested = False
        self.model_config: IOGConfig = model.config
        self.crop_size = self.train_set.crop.size
        self.sigma = self.train_set.crop.sigma
        if resume:
            self._resume()
        else:
            self._start()

    def request_stop(self) -> None:
        """Stop after the current step with a checkpoint (what SIGINT/SIGTERM do)."""
        self._stop_requested = True

    # -- files ---------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.out / "checkpoints" / CHECKPOINT

    def _run_info(self) -> dict[str, Any]:
        return {
            "train_config": self.cfg.to_json(),
            "model_config": {**self.model_config.to_json(), "task": self.cfg.task},
            "device": str(self.device), "precision": self.precision,
            "train_instances": len(self.train_set),
            "val_instances": len(self.val_set) if self.val_set is not None else 0,
            "steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps,
            "data_fingerprint": refs_fingerprint(self.train_set),
            "init": self.init_report,
            "options": self.options_record,
            "software": software_versions(),
        }

    def _start(self) -> None:
        if self.checkpoint_path.exists():
            raise ResumeError(f"{self.out} already holds a training run; resume it or choose "
                              "another output folder")
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.out / "train_config.json",
                          json.dumps(self._run_info(), indent=2) + "\n")
        for name in ("metrics.jsonl", "steps.jsonl"):
            atomic_write_text(self.out / name, "")

    def _append(self, name: str, record: dict[str, Any]) -> None:
        with open(self.out / name, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    # -- checkpoints ---------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        rng: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "state_dict": self.model.state_dict(),
            "config": {**self.model_config.to_json(), "task": self.cfg.task},
            "train_config": self.cfg.to_json(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "epoch_sums": dict(self._sums),
            "elapsed_s": self.elapsed,
            "rng": rng,
            "data_fingerprint": refs_fingerprint(self.train_set),
        }

    def save(self) -> Path:
        """Write ``checkpoints/last.pt`` atomically."""
        with atomic_open(self.checkpoint_path, "wb") as f:
            torch.save(self.state(), f)
        return self.checkpoint_path

    def _resume(self) -> None:
        if not self.checkpoint_path.is_file():
            raise ResumeError(f"nothing to resume: {self.checkpoint_path} does not exist")
        ck = torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
        saved = TrainConfig.from_json(ck["train_config"])
        diff = {f: (getattr(saved, f), getattr(self.cfg, f)) for f in saved.to_json()
                if getattr(saved, f) != getattr(self.cfg, f)}
        fatal = {k: v for k, v in diff.items() if k not in RESUMABLE_CHANGES}
        if fatal:
            raise ResumeError("the checkpoint was made with other settings: " + ", ".join(
                f"{k}: {a!r} -> {b!r}" for k, (a, b) in fatal.items()))
        for k, (a, b) in diff.items():
            log.warning("resuming with %s changed from %r to %r", k, a, b)
        if ck["data_fingerprint"] != refs_fingerprint(self.train_set):
            raise ResumeError("the training data differ from the checkpoint's (other instances "
                              "or order): the resumed run would not continue the same one")
        self.model.load_state_dict(ck["state_dict"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        if ck.get("scaler"):
            self.scaler.load_state_dict(ck["scaler"])
        self.step, self.epoch = int(ck["step"]), int(ck["epoch"])
        self._sums = {k: float(v) for k, v in ck.get("epoch_sums", {}).items()}
        self.elapsed = float(ck.get("elapsed_s", 0.0))
        torch.set_rng_state(ck["rng"]["torch"])
        random.setstate(ck["rng"]["python"])
        if "cuda" in ck["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ck["rng"]["cuda"])
        if self.init_report is None and (self.out / "train_config.json").is_file():
            self.init_report = json.loads((self.out / "train_config.json").read_text()).get("init")
        self._trim_logs()
        log.info("resumed %s at step %d (epoch %d)", self.out, self.step, self.epoch)

    def _trim_logs(self) -> None:
        """Drop log lines written after the checkpoint (they will be written again)."""
        for name, keep in (("steps.jsonl", lambda r: r["step"] <= self.step),
                           ("metrics.jsonl", lambda r: r["epoch"] < self.epoch)):
            path = self.out / name
            lines = path.read_text().splitlines() if path.exists() else []
            kept = [ln for ln in lines if ln.strip() and keep(json.loads(ln))]
            atomic_write_text(path, "".join(ln + "\n" for ln in kept))

    # -- training ------------------------------------------------------------------------
    def fit(self, stop_at_step: int | None = None) -> dict[str, Any]:
        """Train to ``total_steps`` (or stop after ``stop_at_step``, saving a checkpoint as an
        interruption would). Returns a summary with ``status`` ``"done"``, ``"stopped"`` or
        ``"interrupted"``."""
        old_threads = torch.get_num_threads()
        if self.num_threads:
            torch.set_num_threads(int(self.num_threads))
        handlers = self._install_signal_handlers()
        try:
            status = self._run(stop_at_step)
        finally:
            self._restore_signal_handlers(handlers)
            torch.set_num_threads(old_threads)
        summary: dict[str, Any] = {"status": status, "step": self.step, "epoch": self.epoch,
                                   "total_steps": self.total_steps, "out_dir": str(self.out)}
        if status == "done":
            summary.update(self._finish())
        return summary

    def _run(self, stop_at_step: int | None) -> str:
        while self.step < self.total_steps:
            offset = self.step - self.epoch * self.steps_per_epoch
            batches = epoch_batches(len(self.train_set), self.cfg.batch_size, self.cfg.seed,
                                    self.epoch)[offset:]
            self.train_set.set_epoch(self.epoch)
            loader = DataLoader(self.train_set, batch_sampler=batches,
                                num_workers=self.num_workers,
                                pin_memory=self.device.type == "cuda")
            t_last = time.perf_counter()
            for batch in loader:
                record = self._train_step(batch)
                now = time.perf_counter()
                self.elapsed += now - t_last  # data loading included
                t_last = now
                record["elapsed_s"] = round(self.elapsed, 4)
                if self.step % self.log_every == 0 or self.step == self.total_steps:
                    self._append("steps.jsonl", record)
                if self.on_step is not None:
                    self.on_step(record)
                if self.step >= self.total_steps:
                    break
                if self._stop_requested or (stop_at_step is not None
                                            and self.step >= stop_at_step):
                    self.save()
                    return "interrupted" if self._stop_requested else "stopped"
                if self.save_every and self.step % self.save_every == 0:
                    self.save()
            if self.step - self.epoch * self.steps_per_epoch >= self.steps_per_epoch \
                    or self.step >= self.total_steps:
                self._end_epoch()
        return "done"

    def _refinement_network(self) -> IOGRefinementNetwork:
        if not isinstance(self.model, IOGRefinementNetwork):
            raise TypeError("the refine task trains an IOG refinement network, not "
                            f"{type(self.model).__name__}")
        return self.model

    def _train_step(self, batch: dict[str, Tensor]) -> dict[str, Any]:
        self.model.train()
        x = batch["x"].to(self.device, non_blocking=True)
        gt = batch["gt"].to(self.device, non_blocking=True)
        void = batch["void"].to(self.device, non_blocking=True)
        cfg = self.cfg
        with autocast(self.precision, self.device):
            if cfg.task == "refine":
                loss, parts, fine = refinement_step(
                    self._refinement_network(), x, gt, void, cfg.output_weights, cfg.loss_reduction,
                    cfg.refine_iou_skip, cfg.click_polarity, self.sigma)
            else:
                outs = self.model(x)
                loss, parts = multi_output_loss(outs, gt, void, cfg.output_weights,
                                                cfg.loss_reduction)
                fine = outs[4]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at step {self.step}")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        lrs = self._lrs()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        iou = float(crop_iou(fine, gt, void).mean())
        n = x.shape[0]
        values = {"loss": float(loss.detach()), "iou": iou, **parts}
        for k, v in values.items():
            self._sums[k] = self._sums.get(k, 0.0) + v * n
        self._sums["samples"] = self._sums.get("samples", 0.0) + n
        self._sums["batches"] = self._sums.get("batches", 0.0) + 1
        return {"step": self.step, "epoch": self.epoch, **values, "lr": lrs}

    def _lrs(self) -> dict[str, float]:
        return {g["name"]: float(g["lr"]) for g in self.optimizer.param_groups}

    def _end_epoch(self) -> None:
        n = max(self._sums.get("samples", 0.0), 1.0)
        train = {k: v / n for k, v in self._sums.items() if k not in ("samples", "batches")}
        record: dict[str, Any] = {
            "epoch": self.epoch, "step": self.step, "samples": int(self._sums.get("samples", 0)),
            "train": train, "lr": self._lrs(), "elapsed_s": round(self.elapsed, 3),
        }
        if self.val_set is not None and len(self.val_set) and (
                (self.epoch + 1) % self.val_every == 0 or self.step >= self.total_steps):
            t0 = time.perf_counter()
            record["val"] = self.validate()
            record["val_time_s"] = round(time.perf_counter() - t0, 3)
        self._append("metrics.jsonl", record)
        log.info("epoch %d step %d loss %.4g%s", self.epoch, self.step, train.get("loss", 0.0),
                 f" val IoU {record['val']['iou']:.4f}" if "val" in record else "")
        self.epoch += 1
        self._sums = {}
        if self.snapshot_every and self.epoch % self.snapshot_every == 0:
            self.export(self.out / "checkpoints" / f"epoch-{self.epoch:04d}.pth")
        self.save()

    @torch.no_grad()
    def validate(self) -> dict[str, Any]:
        """Crop IoU (and loss) on the validation set, BatchNorm in eval mode."""
        assert self.val_set is not None
        self.model.eval()
        batches = epoch_batches(len(self.val_set), self.cfg.batch_size, 0, 0, shuffle=False,
                                min_batch=1)
        loader = DataLoader(self.val_set, batch_sampler=batches, num_workers=self.num_workers)
        ious: list[float] = []
        losses: list[float] = []
        extra: dict[str, list[float]] = {"iou1": [], "inside_hit": []}
        for batch in loader:
            x = batch["x"].to(self.device)
            gt = batch["gt"].to(self.device)
            void = batch["void"].to(self.device)
            with autocast(self.precision, self.device):
                if self.cfg.task == "refine":
                    fine, iou0, iou1 = refinement_eval(self._refinement_network(), x, gt, void,
                                                       self.cfg.click_polarity, self.sigma)
                    extra["iou1"] += iou1.tolist()
                else:
                    fine = self.model.fine_logits(x)
                    iou0 = crop_iou(fine, gt, void)
            ious += iou0.tolist()
            losses.append(float(bce_loss(fine, gt, void, "mean")) * x.shape[0])
            if self.cfg.task == "stage1":
                extra["inside_hit"] += _inside_hits(fine, gt)
        self.model.train()
        out: dict[str, Any] = {"iou": float(np.mean(ious)), "fine_loss_mean": float(
            np.sum(losses) / len(ious)), "instances": len(ious)}
        if extra["iou1"]:
            out["iou1"] = float(np.mean(extra["iou1"]))
        if extra["inside_hit"]:
            out["inside_hit"] = float(np.mean(extra["inside_hit"]))
        return out

    # -- end -----------------------------------------------------------------------------
    def export(self, path: Path) -> Path:
        return export_checkpoint(self.model, path, {"task": self.cfg.task})

    def _finish(self) -> dict[str, Any]:
        final = self.export(self.out / "model_final.pth")
        lines = (self.out / "metrics.jsonl").read_text().splitlines()
        last = json.loads(lines[-1]) if lines else {}
        info = {**self._run_info(), "steps": self.step, "epochs": self.epoch,
                "final": {k: last.get(k) for k in ("train", "val")},
                "checkpoint_format": "state_dict" if self.model_config.is_official
                else "state_dict+config"}
        atomic_write_text(self.out / "model_final.json", json.dumps(info, indent=2) + "\n")
        return {"model": str(final), "val": last.get("val"), "train": last.get("train")}

    # -- signals -------------------------------------------------------------------------
    def _install_signal_handlers(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}

        def request_stop(signum: int, _frame: Any) -> None:
            log.warning("signal %d: stopping after this step (a checkpoint will be saved)",
                        signum)
            self._stop_requested = True

        old: dict[int, Any] = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, request_stop)
        return old

    @staticmethod
    def _restore_signal_handlers(handlers: dict[int, Any]) -> None:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def _inside_hits(fine: Tensor, gt: Tensor) -> list[float]:
    """Per sample: 1 if the distance-transform maximum of the prediction (inside the tight box
    of the ground truth) lies on the object, else 0."""
    logits = fine.float().cpu().numpy()[:, 0]
    ref = gt.float().cpu().numpy()[:, 0] > 0.5
    hits = []
    for lg, m in zip(logits, ref, strict=True):
        box = mask_to_box(m)
        p = inside_point_512(lg, box) if box is not None else None
        hits.append(float(p is not None and m[p[1], p[0]]))
    return hits

