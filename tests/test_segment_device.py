"""Device resolution: auto → cuda → mps → cpu, clear errors otherwise."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from senpath.segment import device as device_mod  # noqa: E402
from senpath.segment.device import resolve_device  # noqa: E402


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
