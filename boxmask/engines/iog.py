"""IOG engine: box + inside point -> mask with the Inside-Outside Guidance network, batched.

Boxes are library boxes ``(x0, y0, x1, y1)`` (0-based, inclusive pixel indices); points are
``(x, y)`` = (column, row) in image pixels. The guidance conventions (crop, clicks, heatmaps,
paste-back, 512-space mapping) are those of ``boxmask.guidance``.

What one box goes through
-------------------------
1. Crop box = box +- 30 px (not clipped, zero padding), resized to 512 x 512 bilinearly.
2. Clicks in 512-space: the inside point (``request.inside``, default the box centre) rounded to
   the nearest pixel, and the four corners of the box +- 10 px (``guidance.box_to_512``).
3. Network input ``[R, G, B, inside, outside]`` (0..255); the network's fine logits (512 x 512).
4. Score = stability of the fine logits: IoU of ``sigmoid > 0.5 + delta`` and
   ``sigmoid > 0.5 - delta`` on the 512 crop (``stability_delta``, default 0.25, i.e. logits
   beyond +-1.10); 0 when nothing is found. ``Prediction.extras["stability"]`` holds the same value.
5. ``sigmoid``, bicubic resize to the crop size, paste into the image, ``> threshold`` (0.5).

``Prediction.clicks``: the inside click (positive, kind ``"inside"``), the four corners (negative,
``"corner"``) and any refinement clicks (kind ``"user"``), all as used, mapped back from 512-space
to image pixels.

Refinement
----------
With the refinement checkpoint (``IOG_PASCAL_SBD_REFINEMENT.pth``, detected from its keys) the
backbone encodes the 5-channel input and the guidance branch reads a 2-channel click map: the
inside/outside heatmaps with every extra click of ``request.extra_clicks`` merged in order the
official way (``guidance.add_click``: positive clicks into channel 0, negative into channel 1,
``255 * max(old / 255, g)``, truncated to uint8). Boxes without extra clicks get the plain map.
Extra clicks with the main IOG checkpoint are an error: they need the refinement checkpoint.

Throughput
----------
``segment`` flattens all boxes of all requests and runs them ``batch_size`` crops per forward,
crops from different images mixed. A background thread prepares batch ``k + 1`` while batch ``k``
runs, and a second one pastes masks back; the overlap needs several batches per call, so callers
should hand over ``batch_boxes`` boxes at a time. On CUDA the crop/resize/heatmaps run on the GPU
(``guidance.*_torch``, same inputs as the numpy path within ~2e-5) on a side stream, the
bicubic paste-back too, and the main loop never waits for the GPU. ``forward_batch`` runs the
network alone on a prepared batch (what ``benchmarks/bench_iog.py`` times as the pure forward).

Options (constructor)
---------------------
* ``weights``: checkpoint path or registry name (``boxmask.weights``); required.
* ``device``: ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...
* ``batch_size``: crops per forward (default 32 on CUDA; on a CPU 1, or 2 with AMX:
  ``DEFAULT_BATCH_SIZE``).
* ``precision``: ``"fp32"`` (on CUDA with TF32 disabled, process-wide:
  ``torch.backends.fp32_precision = "ieee"``), ``"bf16"`` or ``"fp16"`` (autocast). On the CPU,
  bf16/fp16 need native support (AVX512-BF16/AMX, AMX-FP16); otherwise the engine refuses.
* ``mode``: the inference form of ``boxmask.models.runtime``: ``"eager"``; ``"fold"``: BatchNorm
  folded into the convolutions (no start-up cost); ``"freeze"``: TorchScript trace + freeze on the
  first batch (5-15 s on 2 cores); ``"compile"``: ``torch.compile`` with inductor freezing (45-75
  s on 2 idle cores, in every new process: the inductor cache keeps the kernels, but tracing and
  the freezing passes run again); ``"auto"``: ``compile`` when ``expected_crops`` is at least
  ``COMPILE_MIN_CROPS`` for the device (``expected_crops``: the job's number of boxes; workers
  pass it, or ``expect``), else ``small_job_mode``: ``freeze`` for fp32 on a CPU with AVX2
  kernels only, ``fold`` elsewhere.
  Results of all modes agree within fp32 rounding.
* ``channels_last`` (default True), ``threshold`` (0.5), ``stability_delta`` (0.25),
  ``preprocess`` (``"auto"``: torch on CUDA, numpy on CPU; ``"numpy"``, ``"torch"``),
  ``workers`` (paste-back threads, default 2), ``num_threads`` (torch CPU threads).

``describe()`` names the weights file (not its folder), its sha256, the architecture, precision,
threshold and the guidance constants: the settings that change masks. Device, batch size, mode and
threads only change speed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from .. import guidance as G
from ..boxes import int_box
from ..device import (
    autocast,
    cpu_kernels,
    cpu_supports,
    default_batch_size,
    disable_tf32,
    resolve_device,
    runtime,
)
from ..models.config import ARCHITECTURES
from ..models.iog import IOGNetworkBase
from ..models.runtime import fine_runner
from ..records import Click
from .base import Engine, Prediction, SegmentRequest, default_inside_points

logger = logging.getLogger(__name__)

MODES = ("auto", "eager", "fold", "freeze", "compile")
PREPROCESS = ("auto", "numpy", "torch")
DEFAULT_BATCH_SIZE = {"cpu": 1, "cpu-amx": 2, "cuda": 32}
"""Crops per forward by default (``boxmask.device.default_batch_size``). CPU: on a 2-core Zen 4
EPYC (AVX-512, no AMX), each contender in a process of its own (``benchmarks/bench_iog.py
--engine-only``), the fp32 engine ran at 1.09-1.15x the official-style loop end to end with
batch 1 against 1.03x with batch 2, and ``fold`` bf16 at 1.94-2.00x against 2.09x; on the 2-core
Xeon with AMX batch 2 was ahead of 4 (batch 1 not measured there)."""
PIPELINE_BATCHES = 4
"""Forward batches per ``segment`` call that a caller should aim for (``batch_boxes``)."""
COMPILE_MIN_CROPS = {"cuda": 50_000, "cpu": 5_000}
"""``mode="auto"`` compiles from this many crops on, else uses ``small_job_mode``. CPU: compiling
costs 45-75 s on 2 idle cores (minutes on a loaded machine; the inductor cache does not shorten it
much: tracing and the freezing passes run every time) and saves about 2 % per crop over
``freeze`` (0.014-0.017 s of 0.64-0.76 s in earlier ``benchmarks/bench_iog.py`` runs on 2-core
AVX-512 CPUs), so it breaks even at 2,600-5,300 crops; a GPU needs large batches to gain."""


def small_job_mode(device: torch.device, precision: str = "fp32",
                   kernels: str | None = None) -> str:
    """The form ``mode="auto"`` uses below ``COMPILE_MIN_CROPS``; ``kernels`` is this CPU's
    ``cpu_kernels()`` unless given. Measured with ``benchmarks/bench_iog.py --engine-only``:

    * fp32 on a CPU with AVX2 kernels only: ``freeze``. On an idle AVX2-only EPYC it ran 1.18x
      the official-style loop end to end against 1.10x for ``fold`` (16 boxes, for about 11 s more
      on the first call; every contender in one process, the method of the time).
    * fp32 on any other CPU: ``fold``. On an idle Zen 4 EPYC with AVX-512, every contender in a
      process of its own, the two ran level (1.22 / 1.21 crops/s at batch 1, 1.08 / 1.09 at batch
      2, 40 boxes, two rounds each) and ``fold``'s first call took 1.1-2.8 s against 4.1-7.3 s.
    * bf16 / fp16 on a CPU: ``fold``. On the same Zen 4 the frozen network under autocast ran at
      1.98 crops/s (batch 1) and 1.60 (batch 2) against 2.13 and 2.20 for ``fold``.
    * a GPU: ``fold`` (what has been measured there).
    """
    if device.type != "cpu" or precision != "fp32":
        return "fold"
    return "freeze" if (kernels or cpu_kernels()) == "AVX2" else "fold"


# --------------------------------------------------------------------------- single object


def predict_proba(net: nn.Module, image_rgb_uint8: np.ndarray, box_xyxy: Sequence[int],
                  inside_xy: Sequence[float]) -> np.ndarray:
    """The single-object IOG path: float32 ``H x W`` foreground probabilities.

    ``box_xyxy`` is a library box (0-based, inclusive pixels), ``inside_xy`` the inside point in
    image pixels. Runs ``net`` in eval mode (BatchNorm with its running statistics; a network in
    training mode is put back in it afterwards) on the device and in the dtype of its parameters,
    with TF32 off on CUDA; probabilities are 0 outside the crop box and may overshoot [0, 1]
    slightly (bicubic resize).
    """
    x, g = G.preprocess_box(np.asarray(image_rgb_uint8), box_xyxy, inside_xy)
    param = next(net.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    if device.type == "cuda":
        disable_tf32()
    was_training = net.training
    net.eval()
    try:
        with torch.inference_mode():
            fine = cast(IOGNetworkBase, net).fine_logits(
                torch.from_numpy(x)[None].to(device=device, dtype=dtype))
    finally:
        net.train(was_training)
    return G.probability_full(fine[0, 0].float().cpu().numpy(), g.crop_box,
                              image_rgb_uint8.shape[:2])


__all__ = ["IOGEngine", "cpu_supports", "disable_tf32", "predict_proba", "resolve_device"]


# --------------------------------------------------------------------------- work items


@dataclass
class _Item:
    request: int
    box_index: int
    box: tuple[int, int, int, int]
    inside: tuple[float, float]
    extra: list[Click]
    guidance: G.Guidance = field(init=False)
    extra_512: list[tuple[int, int, bool]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.guidance = G.guidance_for_box(self.box, self.inside)
        if self.extra:
            pts = np.array([[c.x, c.y] for c in self.extra], dtype=np.float64)
            px = G.round_to_pixel(G.points_to_512(pts, self.guidance.crop_box))
            self.extra_512 = [(int(p[0]), int(p[1]), bool(c.positive))
                              for p, c in zip(px, self.extra, strict=True)]

    def clicks(self) -> list[Click]:
        """The clicks used, in image pixels."""
        crop_box = self.guidance.crop_box
        used = self.guidance.clicks_image()
        out = [Click(float(used[0, 0]), float(used[0, 1]), True, "inside")]
        out += [Click(float(x), float(y), False, "corner") for x, y in used[1:]]
        if self.extra_512:
            pts = G.points_from_512(np.array([p[:2] for p in self.extra_512]), crop_box)
            out += [Click(float(x), float(y), pos, "user")
                    for (x, y), (_, _, pos) in zip(pts, self.extra_512, strict=True)]
        return out


@dataclass
class _Batch:
    items: list[_Item]
    x: Tensor
    """[B, 5, 512, 512] float32 network input on the engine's device."""
    guide: Tensor | None
    """[B, 2, 512, 512] refinement click maps, or None for the IOG architecture."""
    ready: Any = None
    """CUDA event recorded when the inputs are complete (torch preprocessing on a side stream)."""


# --------------------------------------------------------------------------- the engine


class IOGEngine(Engine):
    """IOG masks for boxes, batched across images. See the module docstring for the options."""

    name = "iog"
    RUNTIME_OPTIONS = frozenset({"device", "batch_size", "workers", "num_threads", "mode",
                                 "preprocess", "expected_crops", "channels_last"})
    SIZE_HINT = "expected_crops"

    def __init__(self, weights: str | Path | None = None, *, device: str | None = "auto",
                 batch_size: int | None = None, precision: str = "fp32", mode: str = "auto",
                 channels_last: bool = True, threshold: float = 0.5,
                 stability_delta: float = G.STABILITY_DELTA, preprocess: str = "auto",
                 expected_crops: int | None = None, workers: int | None = None,
                 num_threads: int | None = None) -> None:
        if weights is None:
            raise ValueError("the IOG engine needs weights: a checkpoint path or a registry name "
                             "(e.g. IOG_PASCAL_SBD.pth; see `boxmask weights`)")
        from ..hashing import sha256_file
        from ..models.checkpoint import build_from_checkpoint
        from ..weights import resolve_weights

        path = resolve_weights(weights)
        net = build_from_checkpoint(path)  # official or reduced-width, IOG or refinement
        architecture = net.config.architecture
        size = getattr(getattr(net, "config", None), "input_size", G.INPUT_SIZE)
        if size != G.INPUT_SIZE:
            raise ValueError(f"{path.name} was trained at input size {size}; the IOG engine runs "
                             f"at {G.INPUT_SIZE}")
        self._setup(net, architecture, weights=Path(str(weights)).name, sha256=sha256_file(path),
                    device=device, batch_size=batch_size, precision=precision, mode=mode,
                    channels_last=channels_last, threshold=threshold,
                    stability_delta=stability_delta, preprocess=preprocess,
                    expected_crops=expected_crops, workers=workers, num_threads=num_threads)

    @classmethod
    def from_network(cls, net: nn.Module, architecture: str = "iog", **options: Any) -> IOGEngine:
        """An engine around an already built network (``architecture``: ``"iog"`` or
        ``"iog-refinement"``); ``describe()`` then names no weights file. The engine takes the
        network over: it moves it to its device (and to channels_last unless
        ``channels_last=False``) and drops it once its inference form is built."""
        self = cls.__new__(cls)
        self._setup(net, architecture, weights=None, sha256=None, **options)
        return self

    def _setup(self, net: nn.Module, architecture: str, *, weights: str | None,
               sha256: str | None, device: str | None = "auto", batch_size: int | None = None,
               precision: str = "fp32", mode: str = "auto", channels_last: bool = True,
               threshold: float = 0.5, stability_delta: float = G.STABILITY_DELTA,
               preprocess: str = "auto", expected_crops: int | None = None,
               workers: int | None = None, num_threads: int | None = None) -> None:
        if architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, not {architecture!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        if preprocess not in PREPROCESS:
            raise ValueError(f"preprocess must be one of {', '.join(PREPROCESS)}")
        if not 0.0 < threshold < 1.0 or not 0.0 < stability_delta < 0.5:
            raise ValueError("need 0 < threshold < 1 and 0 < stability_delta < 0.5")
        self.device = runtime(device, precision, num_threads)
        self.weights, self.sha256, self.architecture = weights, sha256, architecture
        self.precision, self.threshold = precision, float(threshold)
        self.stability_delta = float(stability_delta)
        self.channels_last = bool(channels_last)
        self.batch_size = int(batch_size or default_batch_size(DEFAULT_BATCH_SIZE, self.device))
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.use_torch_preprocess = (preprocess == "torch"
                                     or (preprocess == "auto" and self.device.type == "cuda"))
        self.requested_mode = mode
        self.mode = self._choose_mode(expected_crops)
        self._workers = int(workers or 2)
        self._prep_pool: ThreadPoolExecutor | None = None
        self._post_pool: ThreadPoolExecutor | None = None
        self._side_stream: Any = None
        self._main_stream: Any = None
        self._net: nn.Module | None = net.eval().to(self.device)
        self._runner: Callable[..., Tensor] | None = None
        logger.info("IOG engine: %s network on %s, %s, mode %s, %d crops per forward",
                    architecture, self.device, precision, self.mode, self.batch_size)

    # -- network -----------------------------------------------------------------------------
    def _choose_mode(self, expected_crops: int | None) -> str:
        if self.requested_mode != "auto":
            return self.requested_mode
        threshold = COMPILE_MIN_CROPS.get(self.device.type)
        big = threshold is not None and expected_crops is not None and expected_crops >= threshold
        return "compile" if big else small_job_mode(self.device, self.precision)

    def expect(self, crops: int) -> None:
        """Tell the engine how many crops its job has, before the first ``segment``: with
        ``mode="auto"`` this chooses the inference form (``COMPILE_MIN_CROPS``). Later calls, or
        an explicit mode, change nothing."""
        if self._runner is None:
            self.mode = self._choose_mode(crops)

    def _run(self, *args: Tensor) -> Tensor:
        if self._runner is None:  # built on first use: planning alone never pays for it
            def fell_back() -> None:
                self.mode = "fold"

            assert self._net is not None
            self._runner = fine_runner(self._net, self.architecture, self.mode,
                                       self.channels_last, fell_back)
            self._net = None  # the runner holds what it needs
        return self._runner(*args)

    def forward_batch(self, x: Tensor, guidance: Tensor | None = None) -> Tensor:
        """Fine logits ``[N, 1, 512, 512]`` (float32) of a prepared input batch ``x``
        ``[N, 5, 512, 512]`` on the engine's device, with its mode, precision and memory format.
        ``guidance`` ``[N, 2, 512, 512]``: the refinement network's click maps (default: the
        heatmaps of ``x``); ignored by the IOG architecture."""
        if self.architecture == "iog-refinement" and guidance is None:
            guidance = x[:, 3:5]
        elif self.architecture == "iog":
            guidance = None
        n = x.shape[0]
        if self.mode == "compile" and n < self.batch_size:  # one static shape: no recompiles
            pad = self.batch_size - n
            x = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))])
            if guidance is not None:
                guidance = torch.cat([guidance, guidance.new_zeros((pad, *guidance.shape[1:]))])
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
            if guidance is not None:
                guidance = guidance.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), autocast(self.precision, self.device):
            out = self._run(x) if guidance is None else self._run(x, guidance)
        return out[:n].float()

    # -- public API --------------------------------------------------------------------------
    @property
    def batch_boxes(self) -> int:
        """Boxes to hand to one ``segment`` call: ``PIPELINE_BATCHES`` forward batches, so that
        preparing the next batch and pasting the last one overlap the forward passes."""
        return self.batch_size * PIPELINE_BATCHES

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name, "weights": self.weights, "weights_sha256": self.sha256,
            "architecture": self.architecture, "precision": self.precision,
            "threshold": self.threshold, "stability_delta": self.stability_delta,
            "relax": G.RELAX, "input_size": G.INPUT_SIZE, "corner_pad": G.CORNER_PAD,
            "sigma": G.SIGMA,
        }

    def segment(self, requests: Sequence[SegmentRequest]) -> list[list[Prediction]]:
        items = self._items(requests)
        results: list[list[Prediction | None]] = [[None] * len(r.boxes) for r in requests]
        batches = [items[i:i + self.batch_size] for i in range(0, len(items), self.batch_size)]
        if not batches:
            return [[] for _ in requests]
        if self.device.type == "cuda":
            self._main_stream = torch.cuda.current_stream(self.device)
        prep = self._pool("_prep_pool", 1)
        post = self._pool("_post_pool", self._workers)
        pending: list[Future] = []
        next_batch = prep.submit(self._prepare, batches[0], requests)
        for k in range(len(batches)):
            batch = next_batch.result()
            if k + 1 < len(batches):
                next_batch = prep.submit(self._prepare, batches[k + 1], requests)
            if batch.ready is not None:
                self._main_stream.wait_event(batch.ready)
            fine = self.forward_batch(batch.x, batch.guide)
            pending += self._finish(batch, fine, requests, post)
        for fut in pending:
            (r, b), prediction = fut.result()
            results[r][b] = prediction
        return results  # type: ignore[return-value]

    def close(self) -> None:
        for name in ("_prep_pool", "_post_pool"):
            pool = getattr(self, name, None)
            if pool is not None:
                pool.shutdown(wait=True)
                setattr(self, name, None)

    # -- steps -------------------------------------------------------------------------------
    def _pool(self, name: str, workers: int) -> ThreadPoolExecutor:
        pool = getattr(self, name)
        if pool is None:
            pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"iog{name}")
            setattr(self, name, pool)
        return pool

    def _items(self, requests: Sequence[SegmentRequest]) -> list[_Item]:
        items = []
        for r, req in enumerate(requests):
            inside = req.inside if req.inside is not None else default_inside_points(req.boxes)
            for b, box in enumerate(req.boxes):
                extra = list(req.extra_clicks[b] or []) if req.extra_clicks else []
                if extra and self.architecture != "iog-refinement":
                    raise ValueError(
                        "extra clicks need the refinement network: load the refinement "
                        "checkpoint (IOG_PASCAL_SBD_REFINEMENT.pth) instead of "
                        f"{self.weights or 'this IOG network'}")
                items.append(_Item(r, b, int_box(box),
                                   (float(inside[b, 0]), float(inside[b, 1])), extra))
        return items

    def _prepare(self, items: list[_Item], requests: Sequence[SegmentRequest]) -> _Batch:
        if self.use_torch_preprocess:
            return self._prepare_torch(items, requests)
        return prepare_numpy(items, requests, self.architecture == "iog-refinement")

    def _prepare_torch(self, items: list[_Item], requests: Sequence[SegmentRequest]) -> _Batch:
        cuda = self.device.type == "cuda"
        if cuda and self._side_stream is None:
            self._side_stream = torch.cuda.Stream(self.device)
        ctx = torch.cuda.stream(self._side_stream) if cuda else nullcontext()
        with ctx, torch.inference_mode():
            batch = prepare_torch(items, requests, self.architecture == "iog-refinement",
                                  self.device)
            if cuda:
                batch.ready = torch.cuda.Event()
                batch.ready.record(self._side_stream)
                for t in (batch.x, batch.guide):
                    if t is not None:  # used on the main stream: keep it alive until then
                        t.record_stream(self._main_stream)
        return batch

    def _finish(self, batch: _Batch, fine: Tensor, requests: Sequence[SegmentRequest],
                post: ThreadPoolExecutor) -> list[Future]:
        """Scores and masks of a batch, pasted by the ``post`` threads. On CUDA nothing here waits
        for the GPU: the results are copied asynchronously and the threads wait for them."""
        scores = G.stability_score_torch(fine, self.stability_delta)
        if self.device.type != "cuda":
            fine_np, score_list = fine[:, 0].numpy(), scores.tolist()
            return [post.submit(self._paste_numpy, item, fine_np[i], score_list[i], requests)
                    for i, item in enumerate(batch.items)]
        scores_host = torch.empty(scores.shape, dtype=scores.dtype, pin_memory=True)
        scores_host.copy_(scores, non_blocking=True)
        crops = []
        for i, item in enumerate(batch.items):
            h, w = requests[item.request].image.shape[:2]
            crops.append(mask_crop_torch(fine[i], item.guidance.crop_box, h, w, self.threshold))
        done = torch.cuda.Event()
        done.record()
        return [post.submit(self._paste_torch, item, crops[i], done, scores_host, i, requests)
                for i, item in enumerate(batch.items)]

    def _prediction(self, item: _Item, mask: np.ndarray, score: float) -> Prediction:
        extras: dict[str, Any] = {"stability": score}
        if item.extra_512:
            extras["refinement_clicks"] = len(item.extra_512)
        return Prediction(mask=mask, score=score, clicks=item.clicks(), extras=extras)

    def _paste_numpy(self, item: _Item, fine_512: np.ndarray, score: float,
                     requests: Sequence[SegmentRequest]) -> tuple[tuple[int, int], Prediction]:
        h, w = requests[item.request].image.shape[:2]
        p = G.probability_crop(fine_512, item.guidance.crop_box)
        mask = G.paste(p > self.threshold, item.guidance.crop_box, (h, w))
        return (item.request, item.box_index), self._prediction(item, mask, score)

    def _paste_torch(self, item: _Item, crop: Tensor | None, done: Any, scores: Tensor, i: int,
                     requests: Sequence[SegmentRequest]) -> tuple[tuple[int, int], Prediction]:
        done.synchronize()
        h, w = requests[item.request].image.shape[:2]
        mask = np.zeros((h, w), dtype=bool)
        slices = G.inside_slices(item.guidance.crop_box, h, w)
        if slices is not None and crop is not None:
            mask[slices[0]] = crop.numpy()
        return (item.request, item.box_index), self._prediction(item, mask, float(scores[i]))


# --------------------------------------------------------------------------- batch building


def prepare_numpy(items: Sequence[_Item], requests: Sequence[SegmentRequest],
                  refinement: bool) -> _Batch:
    """Network inputs of a batch with the numpy/OpenCV reference functions (CPU)."""
    x = torch.empty((len(items), 5, G.INPUT_SIZE, G.INPUT_SIZE), dtype=torch.float32)
    guide = torch.empty((len(items), 2, G.INPUT_SIZE, G.INPUT_SIZE)) if refinement else None
    for i, item in enumerate(items):
        g = item.guidance
        maps = G.guidance_maps(g.inside_512, g.corners_512)
        crop = G.crop_resized(requests[item.request].image, g.crop_box)
        x[i] = torch.from_numpy(G.network_input(crop, maps))
        if guide is not None:
            for cx, cy, positive in item.extra_512:
                maps = G.add_click(maps, (cx, cy), positive)
            guide[i] = torch.from_numpy(maps)
    return _Batch(list(items), x, guide)


def prepare_torch(items: Sequence[_Item], requests: Sequence[SegmentRequest], refinement: bool,
                  device: torch.device) -> _Batch:
    """Network inputs of a batch computed with torch on ``device`` (the GPU path)."""
    size = G.INPUT_SIZE
    x = torch.empty((len(items), 5, size, size), dtype=torch.float32, device=device)
    images: dict[int, Tensor] = {}
    for i, item in enumerate(items):
        if item.request not in images:
            array = np.ascontiguousarray(requests[item.request].image)
            if not array.flags.writeable:  # torch wants writable memory (e.g. np.asarray(PIL))
                array = array.copy()
            src = torch.from_numpy(array)
            if device.type == "cuda":
                src = src.pin_memory()
            images[item.request] = src.to(device, non_blocking=True).permute(2, 0, 1)
        x[i, :3] = G.crop_resized_torch(images[item.request], item.guidance.crop_box, size)
    clicks = torch.from_numpy(np.stack([it.guidance.clicks_512() for it in items])).to(device)
    x[:, 3:] = G.guidance_maps_torch(clicks, size)
    guide = None
    if refinement:
        guide = x[:, 3:5].clone()
        for i, item in enumerate(items):
            for cx, cy, positive in item.extra_512:
                guide[i] = G.add_click_torch(guide[i], (cx, cy), positive)
    return _Batch(list(items), x, guide)


def mask_crop_torch(fine_512: Tensor, crop_box: Sequence[int], height: int, width: int,
                    threshold: float) -> Tensor | None:
    """The in-image part of one box's thresholded probability crop, as a CPU bool tensor copied
    asynchronously (pinned memory); None when the crop does not touch the image."""
    slices = G.inside_slices(crop_box, height, width)
    if slices is None:
        return None
    p = G.probability_crop_torch(fine_512, crop_box)
    mask = p[slices[1]] > threshold
    out = torch.empty(mask.shape, dtype=torch.bool, pin_memory=True)
    return out.copy_(mask, non_blocking=True)
