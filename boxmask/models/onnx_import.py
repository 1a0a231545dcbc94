"""Read the U²-Net weights out of an exported ONNX graph into a ``U2Net`` state dict.

The released U²-Net ONNX files (PyTorch 1.9 export, opset 11) hold one ``Conv`` node per
convolution of the network; BatchNorm is already folded into the convolutions. Their initializers
are mostly anonymous (numbered), so the weights are matched by position: the ``Conv`` nodes in
graph order are the network's convolutions in execution order (the exporter writes nodes as the
trace runs them), which is the order ``U2Net.side_logits`` calls its ``nn.Conv2d`` modules. Every
pair is checked for equal weight shapes, and the count must match exactly, so a graph of another
architecture is refused rather than loaded wrongly. Parity with onnxruntime on all seven outputs is
tested (``tests/models/test_u2net_model.py``).

Needs the ``onnx`` package (a dependency of boxmask); never executes the graph.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import Tensor, nn

from .u2net import U2Net


class OnnxImportError(ValueError):
    """The ONNX file is not a U²-Net export of the expected variant."""


def execution_order(model: U2Net, size: int = 32) -> list[str]:
    """Names of ``model``'s ``nn.Conv2d`` modules in the order a forward pass calls them."""
    order: list[str] = []
    hooks = [m.register_forward_hook(lambda mod, args, out, name=name: order.append(name))
             for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.inference_mode():
            model.side_logits(torch.zeros(1, 3, size, size))
    finally:
        for h in hooks:
            h.remove()
    return order


def _conv_arrays(path: str | os.PathLike) -> tuple[list[tuple[np.ndarray, np.ndarray | None]],
                                                   list[str]]:
    import onnx
    from onnx import numpy_helper

    try:
        graph = onnx.load(os.fspath(path)).graph
    except Exception as exc:  # protobuf DecodeError, truncated file ...
        raise OnnxImportError(f"{path}: not a readable ONNX file ({type(exc).__name__}: {exc})") \
            from exc
    init = {t.name: t for t in graph.initializer}
    convs = []
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        if node.input[1] not in init:
            raise OnnxImportError(f"{path}: Conv {node.name!r} has a computed weight")
        weight = numpy_helper.to_array(init[node.input[1]])
        bias = (numpy_helper.to_array(init[node.input[2]])
                if len(node.input) > 2 and node.input[2] in init else None)
        convs.append((weight, bias))
    return convs, [i.name for i in graph.input]


def state_dict_from_onnx(path: str | os.PathLike, variant: str) -> dict[str, Tensor]:
    """The ``U2Net(variant)`` state dict (float32, contiguous CPU tensors) held in the ONNX file
    ``path``; ``OnnxImportError`` when the graph does not match the architecture."""
    model = U2Net(variant).eval()
    names = execution_order(model)
    convs, inputs = _conv_arrays(path)
    if len(convs) != len(names):
        raise OnnxImportError(f"{path}: {len(convs)} convolutions, {variant} has {len(names)}; "
                              f"not a {variant} export")
    modules = dict(model.named_modules())
    state: dict[str, Tensor] = {}
    for name, (weight, bias) in zip(names, convs, strict=True):
        conv = modules[name]
        if tuple(weight.shape) != tuple(conv.weight.shape) or bias is None \
                or tuple(bias.shape) != tuple(conv.bias.shape):
            raise OnnxImportError(
                f"{path}: convolution {name} expects weight {tuple(conv.weight.shape)}, the "
                f"graph holds {tuple(weight.shape)}; not a {variant} export")
        state[f"{name}.weight"] = torch.from_numpy(np.array(weight, np.float32, copy=True))
        state[f"{name}.bias"] = torch.from_numpy(np.array(bias, np.float32, copy=True))
    missing = set(model.state_dict()) - set(state)
    if missing:  # pragma: no cover - every parameter of U2Net belongs to a Conv2d
        raise OnnxImportError(f"{path}: no weights for {sorted(missing)[:3]}")
    return state
