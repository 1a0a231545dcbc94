"""Engines' default batch sizes by device: a CPU with AMX has its own entry."""

from __future__ import annotations

import pytest
import torch

import boxmask.device as device_module
from boxmask.device import default_batch_size
from boxmask.engines import iog, u2net
from boxmask.models.checkpoint import build_model
from boxmask.models.config import IOGConfig

SIZES = {"cpu": 1, "cpu-amx": 2, "cuda": 32}


@pytest.mark.parametrize(("amx", "dev", "expected"), [
    (False, "cpu", 1), (True, "cpu", 2), (False, "cuda", 32), (True, "cuda", 32)])
def test_default_batch_size_takes_the_amx_entry_only_on_a_cpu_with_amx(monkeypatch, amx, dev,
                                                                      expected):
    monkeypatch.setattr(device_module, "cpu_has_amx", lambda: amx)
    assert default_batch_size(SIZES, torch.device(dev)) == expected


def test_a_table_without_the_amx_entry_or_the_device_falls_back(monkeypatch):
    monkeypatch.setattr(device_module, "cpu_has_amx", lambda: True)
    assert default_batch_size({"cpu": 3}, torch.device("cpu")) == 3
    assert default_batch_size({"cpu": 3}, torch.device("cuda")) == 1


@pytest.mark.parametrize("amx", [False, True])
def test_the_engines_use_their_table_for_the_default(monkeypatch, amx, u2netp_weights):
    monkeypatch.setattr(device_module, "cpu_has_amx", lambda: amx)
    key = "cpu-amx" if amx else "cpu"
    engine = u2net.U2NetEngine(u2netp_weights, device="cpu")
    assert engine.batch_size == u2net.DEFAULT_BATCH_SIZE[key]
    assert u2net.U2NetEngine(u2netp_weights, device="cpu", batch_size=3).batch_size == 3
    net = build_model(IOGConfig.preset("tiny", architecture="iog"))
    assert iog.IOGEngine.from_network(net, device="cpu").batch_size == \
        iog.DEFAULT_BATCH_SIZE[key]
