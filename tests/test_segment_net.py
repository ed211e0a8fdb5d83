"""Shapes and configuration of the nucleus U-Net."""

from __future__ import annotations

import pytest
import torch

from senpath.segment.net import (
    OUTPUT_CHANNELS,
    NetConfig,
    NucleusUNet,
    build_model,
    count_parameters,
)


def test_default_network_size_is_compact():
    n = count_parameters(NucleusUNet())
    assert 0.5e6 <= n <= 2.0e6, n


@pytest.mark.parametrize("shape", [(1, 3, 64, 64), (2, 3, 32, 96)])
def test_output_shape_matches_input(shape):
    model = build_model(NetConfig(widths=(4, 8, 16)))
    model.eval()
    with torch.no_grad():
        y = model(torch.rand(shape))
    assert y.shape == (shape[0], len(OUTPUT_CHANNELS), shape[2], shape[3])
    assert torch.isfinite(y).all()


def test_stride_follows_depth():
    assert NetConfig(widths=(4, 8, 16)).stride == 4
    assert NetConfig().stride == 16


def test_config_round_trip():
    cfg = NetConfig(widths=(8, 16, 32))
    assert NetConfig.from_dict(cfg.to_dict()) == cfg
    assert build_model(cfg.to_dict()).config == cfg


def test_gradients_reach_first_layer():
    model = build_model(NetConfig(widths=(4, 8)))
    model(torch.rand(1, 3, 16, 16)).sum().backward()
    first = next(model.parameters())
    assert first.grad is not None and float(first.grad.abs().sum()) > 0
