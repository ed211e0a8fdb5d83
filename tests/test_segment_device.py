"""Device resolution: auto → cuda → mps → cpu, clear errors otherwise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from senpath.segment import device as device_mod
from senpath.segment.device import resolve_device


def test_cpu_always_resolves():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_auto_without_accelerators_is_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device_mod, "_mps_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")


def test_auto_prefers_cuda_then_mps(monkeypatch):
    monkeypatch.setattr(device_mod, "_mps_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto").type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto").type == "mps"


def test_missing_cuda_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        resolve_device("cuda:0")


def test_cuda_index_out_of_range(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(RuntimeError, match="only 1 CUDA device"):
        resolve_device("cuda:1")
    with pytest.raises(ValueError, match="cuda:N"):
        resolve_device("cuda:first")


def test_missing_mps_and_unknown_names(monkeypatch):
    monkeypatch.setattr(device_mod, "_mps_available", lambda: False)
    with pytest.raises(RuntimeError, match="MPS"):
        resolve_device("mps")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")


@pytest.mark.gpu
def test_shipped_model_on_cuda_finds_the_nuclei_it_finds_on_cpu():
    """The shipped network on a real CUDA device (fp32) segments a synthetic tile like the CPU."""
    from senpath import synth
    from senpath.segment.predict import NucleusSegmenter, predict_instances

    rgb = synth.render_region("ki67", shape=(512, 512), mpp=0.5, seed=3).rgb
    cpu = NucleusSegmenter.from_pretrained(device="cpu", precision="fp32")
    cuda = NucleusSegmenter.from_pretrained(device="cuda", precision="fp32")
    assert cuda.device.type == "cuda"
    on_cpu = predict_instances(rgb, mpp=0.5, model=cpu)
    on_cuda = predict_instances(rgb, mpp=0.5, model=cuda)
    n_cpu, n_cuda = len(np.unique(on_cpu)) - 1, len(np.unique(on_cuda)) - 1
    assert n_cpu > 20 and abs(n_cuda - n_cpu) <= max(1, n_cpu // 50)
    a, b = on_cpu > 0, on_cuda > 0
    assert (a & b).sum() / (a | b).sum() > 0.99  # foreground IoU
