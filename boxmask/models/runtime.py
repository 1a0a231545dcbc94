"""Inference forms of the IOG network family: the fine-logits module, BatchNorm folding and
``torch.compile`` with a fallback.

All of them compute the same function as the network they wrap (within fp32 rounding); they only
change speed. Inputs: ``x`` ``[N, 5, S, S]`` (``[R, G, B, inside, outside]``, 0..255) and, for the
refinement network, ``guidance`` ``[N, 2, S, S]``; output: fine logits ``[N, 1, S, S]``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

FORMS = ("eager", "freeze", "compile")
"""``eager``: the network as built; ``freeze``: BatchNorm folded into the convolutions;
``compile``: ``torch.compile`` of the folded network."""


class FineIOG(nn.Module):
    """``x -> fine logits`` of an IOG network (one module, so that fx can fold and compile it)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net.fine_logits(x)


class FineRefinement(nn.Module):
    """``(x, guidance) -> fine logits`` of an IOG refinement network."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor, guidance: Tensor) -> Tensor:
        return self.net.fine_logits(x, guidance)


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """A copy of an eval-mode module with every BatchNorm that follows a convolution folded into
    the convolution's weights (``torch.fx`` conv-BN fusion)."""
    from torch.fx.experimental.optimization import fuse

    return fuse(module.eval(), inplace=False)


def fine_runner(net: nn.Module, architecture: str, form: str, channels_last: bool = True,
                on_fallback: Callable[[], None] | None = None) -> Callable[..., Tensor]:
    """A callable ``(x[, guidance]) -> fine logits`` of ``net`` (an eval-mode IOG network of
    ``architecture`` ``"iog"`` or ``"iog-refinement"``) in inference ``form`` (``FORMS``).

    With ``compile``, a compiler or backend that fails on the first call makes the runner fall
    back to the folded network for good (logged; ``on_fallback`` is called once), so a machine
    without a working compiler still converts."""
    if form not in FORMS:
        raise ValueError(f"unknown inference form {form!r}; choose from {', '.join(FORMS)}")
    wrapper: nn.Module = (FineRefinement(net) if architecture == "iog-refinement"
                          else FineIOG(net)).eval()
    if form in ("freeze", "compile"):
        wrapper = fold_batchnorm(wrapper)
    if channels_last:
        wrapper = wrapper.to(memory_format=torch.channels_last)
    if form != "compile":
        return wrapper
    folded = wrapper
    state: dict[str, Callable[..., Tensor]] = {"fn": torch.compile(wrapper, dynamic=False)}

    def run(*args: Tensor) -> Tensor:
        try:
            return state["fn"](*args)
        except Exception as exc:  # a missing compiler or backend: fall back, once
            if state["fn"] is folded:
                raise
            logger.warning("torch.compile failed (%s); running the folded network", exc)
            state["fn"] = folded
            if on_fallback is not None:
                on_fallback()
            return folded(*args)

    return run
