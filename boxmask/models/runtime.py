"""Inference forms of the IOG network family: the fine-logits module, BatchNorm folding, a frozen
TorchScript form and ``torch.compile``, with a fallback.

All of them compute the same function as the network they wrap (within fp32 rounding: the parity
tolerance of ``tests/models/test_iog_parity_network.py``); they only change speed and start-up cost.
Inputs: ``x`` ``[N, 5, S, S]`` (``[R, G, B, inside, outside]``, 0..255) and, for the refinement
network, ``guidance`` ``[N, 2, S, S]``; output: fine logits ``[N, 1, S, S]``.

Forms (``FORMS``)
-----------------
* ``eager``: the network as built.
* ``fold``: BatchNorm folded into the convolutions (``torch.fx`` conv-BN fusion); no start-up cost.
* ``freeze``: ``torch.jit.trace`` on the first call, then ``torch.jit.freeze`` (BatchNorm folded,
  weights and attributes inlined as constants); the first call's result is the traced eager
  forward's; tracing and freezing add 5-15 s on 2 cores, the next two calls are profiling runs.
* ``compile``: ``torch.compile`` with inductor freezing (folded, prepacked weights); the first call
  compiles (about a minute on a 2-core CPU, in every new process: the compiled kernels are kept in
  ``TORCHINDUCTOR_CACHE_DIR``, default ``<boxmask cache>/inductor`` (``inductor_cache_dir``), but
  tracing and the freezing passes run again).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import cast

import torch
from torch import Tensor, nn

from .iog import IOGNetworkBase

logger = logging.getLogger(__name__)

FORMS = ("eager", "fold", "freeze", "compile")
"""Inference forms, from no start-up cost to the most (see the module docstring)."""

INDUCTOR_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


class FineIOG(nn.Module):
    """``x -> fine logits`` of an IOG network (one module, so that fx can fold and compile it)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return cast(IOGNetworkBase, self.net).fine_logits(x)


class FineRefinement(nn.Module):
    """``(x, guidance) -> fine logits`` of an IOG refinement network."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor, guidance: Tensor) -> Tensor:
        return cast(IOGNetworkBase, self.net).fine_logits(x, guidance)


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """An fx ``GraphModule`` computing eval-mode ``module`` with every BatchNorm that follows a
    convolution folded into the convolution's weights.

    ``module`` is left as it was, and only the folded convolutions get new weights: every other
    layer is shared with ``module``, not copied (fx's ``fuse(inplace=True)`` rewires the traced
    graph module's own containers; ``inplace=False`` would first deep-copy the whole network)."""
    from torch.fx.experimental.optimization import fuse

    return fuse(module.eval(), inplace=True)


def inductor_cache_dir() -> Path:
    """Where inductor keeps compiled kernels: ``$TORCHINDUCTOR_CACHE_DIR`` when the user set it,
    else ``<boxmask cache>/inductor`` (``boxmask.weights.cache_dir``), which this sets in the
    environment so that a second process compiling the same network reuses the kernels."""
    from ..weights import cache_dir

    if os.environ.get(INDUCTOR_CACHE_ENV):
        return Path(os.environ[INDUCTOR_CACHE_ENV])
    path = cache_dir() / "inductor"
    os.environ[INDUCTOR_CACHE_ENV] = str(path)
    return path


class _Frozen:
    """``freeze`` form: traces ``module`` on the first call's inputs, freezes the trace and runs
    the frozen module from then on (the batch size may change between calls)."""

    def __init__(self, module: nn.Module) -> None:
        self.module: nn.Module | None = module
        self.frozen: torch.jit.ScriptModule | None = None

    def __call__(self, *args: Tensor) -> Tensor:
        if self.frozen is not None:
            return self.frozen(*args)
        assert self.module is not None
        with warnings.catch_warnings():  # tracer and deprecation notices: nothing actionable
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(self.module, args, check_trace=False)
            self.frozen = torch.jit.freeze(traced.eval())
        self.module = None  # the frozen module holds what it needs
        return traced(*args)


def _compiled(module: nn.Module, on_fallback: Callable[[], None] | None
              ) -> Callable[..., Tensor]:
    """``compile`` form, falling back to the folded network for good if compilation fails."""
    inductor_cache_dir()
    compiled = torch.compile(module, dynamic=False, options={"freezing": True})
    state: dict[str, Callable[..., Tensor] | None] = {"fn": compiled}

    def run(*args: Tensor) -> Tensor:
        fn = state["fn"]
        if fn is None:  # fell back
            return folded(*args)
        try:
            return fn(*args)
        except Exception as exc:  # a missing compiler or backend: fall back, once
            logger.warning("torch.compile failed (%s); running the folded network", exc)
            state["fn"] = None
            if on_fallback is not None:
                on_fallback()
            return folded(*args)

    folded_module: list[nn.Module] = []

    def folded(*args: Tensor) -> Tensor:
        if not folded_module:
            folded_module.append(fold_batchnorm(module))
        return folded_module[0](*args)

    return run


def fine_runner(net: nn.Module, architecture: str, form: str, channels_last: bool = True,
                on_fallback: Callable[[], None] | None = None) -> Callable[..., Tensor]:
    """A callable ``(x[, guidance]) -> fine logits`` of ``net`` (an eval-mode IOG network of
    ``architecture`` ``"iog"`` or ``"iog-refinement"``) in inference ``form`` (``FORMS``).

    Call it under ``torch.inference_mode()`` (``freeze`` and ``compile`` need it). With
    ``channels_last`` the weights are converted to that memory format; pass inputs in it too.
    ``net`` is not modified (except its memory format) and not copied. With ``compile``, a
    compiler or backend that fails on the first call makes the runner fall back to the folded
    network for good (logged; ``on_fallback`` is called once), so a machine without a working
    compiler still converts."""
    if form not in FORMS:
        raise ValueError(f"unknown inference form {form!r}; choose from {', '.join(FORMS)}")
    wrapper: nn.Module = (FineRefinement(net) if architecture == "iog-refinement"
                          else FineIOG(net)).eval()
    if form == "fold":
        wrapper = fold_batchnorm(wrapper)
    if channels_last:
        wrapper = wrapper.to(memory_format=torch.channels_last)
    if form == "freeze":
        return _Frozen(wrapper)
    if form == "compile":
        return _compiled(wrapper, on_fallback)
    return wrapper
