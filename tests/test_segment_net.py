"""Shapes and configuration of the nucleus U-Net."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from senpath.segment.net import (
    OUTPUT_CHANNELS,
    MaxBlurPool,
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


def test_pool_setting_round_trips_and_older_descriptions_read_as_max_pooling():
    blur = NetConfig(widths=(8, 16, 32), pool="maxblur")
    assert NetConfig.from_dict(blur.to_dict()) == blur
    assert isinstance(build_model(blur.to_dict()).pool, MaxBlurPool)
    # a description written before the setting existed (v1-v4) has no "pool": max pooling
    assert "pool" not in NetConfig().to_dict()
    assert (
        NetConfig.from_dict({"widths": [16, 32], "in_channels": 3, "out_channels": 2}).pool == "max"
    )
    with pytest.raises(ValueError, match="unknown pool 'avg'"):
        NetConfig(pool="avg")


def test_maxblur_pooling_follows_a_one_pixel_shift_where_max_pooling_jumps():
    """An edge moved one input pixel at a time: 2×2 max pooling at stride 2 answers in steps of
    0 and 1 output pixel (aliasing: half the shifts are invisible), the anti-aliased pooling in
    even half steps. Flat input stays flat (edges replicated)."""
    pool, max_pool = MaxBlurPool(), torch.nn.MaxPool2d(2)

    def response(p, edge):
        x = torch.zeros(1, 1, 8, 32)
        x[..., :edge] = 1.0
        return float(p(x)[0, 0, 2].sum())

    blur_steps = np.diff([response(pool, t) for t in range(10, 18)])
    max_steps = np.diff([response(max_pool, t) for t in range(10, 18)])
    np.testing.assert_allclose(blur_steps, 0.5, atol=1e-6)
    assert set(np.round(max_steps, 6)) == {0.0, 1.0}
    flat = torch.full((1, 3, 8, 12), 0.7)
    assert pool(flat).shape == (1, 3, 4, 6) and torch.allclose(pool(flat), torch.tensor(0.7))


@pytest.mark.parametrize("shape", [(1, 3, 64, 64), (2, 3, 32, 96)])
def test_maxblur_network_keeps_the_output_shape(shape):
    model = build_model(NetConfig(widths=(4, 8, 16), pool="maxblur")).eval()
    with torch.no_grad():
        y = model(torch.rand(shape))
    assert y.shape == (shape[0], len(OUTPUT_CHANNELS), shape[2], shape[3])


def test_stem_network_works_at_half_resolution_behind_a_full_resolution_stem():
    """With a stem the U-Net's levels run at half resolution: one more factor of 2 in the stride,
    the same output grid, the head fed by the full-resolution stem."""
    cfg = NetConfig(widths=(8, 16, 32), pool="maxblur", stem=4)
    assert cfg.stride == 8 and NetConfig(widths=(8, 16, 32)).stride == 4
    model = build_model(cfg).eval()
    assert model.head.in_channels == 4
    with torch.no_grad():
        y = model(torch.rand(2, 3, 32, 48))
    assert y.shape == (2, len(OUTPUT_CHANNELS), 32, 48) and torch.isfinite(y).all()
    # the first level's convolutions see the stem's pooled output, not the RGB
    assert model.encoders[0][0].in_channels == 4 and model.stem_in[0].in_channels == 3
    model(torch.rand(1, 3, 16, 16)).sum().backward()
    assert float(model.stem_in[0].weight.grad.abs().sum()) > 0


def test_stem_setting_round_trips_and_is_left_out_of_descriptions_without_one():
    stem = NetConfig(widths=(8, 16), stem=6)
    assert stem.to_dict()["stem"] == 6
    assert NetConfig.from_dict(stem.to_dict()) == stem
    assert build_model(stem.to_dict()).config == stem
    assert "stem" not in NetConfig().to_dict()  # v1-v5 descriptions read the same
    with pytest.raises(ValueError, match="stem must be 0"):
        NetConfig(stem=-1)
