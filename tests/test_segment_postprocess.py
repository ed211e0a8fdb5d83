"""Targets → maps → instances: post-processing recovers the annotated nuclei."""

from __future__ import annotations

import numpy as np
import pytest

from senpath.segment.data import instance_targets
from senpath.segment.postprocess import PostprocessConfig, maps_to_instances


def _discs(shape, centres, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    for i, (cy, cx) in enumerate(centres, start=1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = i
    return labels


def test_targets_by_hand():
    labels = np.zeros((7, 7), np.int32)
    labels[1:6, 1:6] = 3  # a 5x5 square: distance peaks at the centre pixel
    fg, dist = instance_targets(labels)
    assert fg.sum() == 25
    assert dist[3, 3] == 1.0
    assert dist[0].max() == 0.0
    assert 0 < dist[1, 1] < dist[2, 2] < dist[3, 3]


def test_touching_nuclei_are_split():
    # two discs of radius 6 whose centres are 11 px apart overlap: the later one wins the overlap
    labels = _discs((32, 40), [(16, 12), (16, 23)], 6)
    assert len(np.unique(labels)) == 3
    fg, dist = instance_targets(labels)
    out = maps_to_instances(fg, dist, mpp=0.5)
    assert out.max() == 2
    assert out[16, 12] != out[16, 23]


def test_ground_truth_maps_recover_instances():
    from stardist.matching import matching

    rng = np.random.default_rng(0)
    centres = [(int(y), int(x)) for y, x in rng.integers(8, 248, size=(90, 2))]
    labels = _discs((256, 256), centres, 6)
    fg, dist = instance_targets(labels)
    out = maps_to_instances(fg, dist, mpp=0.5)
    assert matching(labels, out, thresh=0.5).f1 > 0.95


def test_small_objects_removed_and_numbering_is_raster_order():
    fg = np.zeros((20, 20), np.float32)
    dist = np.zeros_like(fg)
    fg[2:8, 12:18] = 1.0
    dist[4:6, 14:16] = 1.0
    fg[12:14, 2:4] = 1.0  # 4 px = 1 µm² at 0.5 µm/px: below min_area_um2
    fg[10:18, 10:18] = 1.0
    dist[13:15, 13:15] = 1.0
    out = maps_to_instances(fg, dist, mpp=0.5, config=PostprocessConfig(min_area_um2=3.0))
    assert out.max() == 2
    assert out[3, 13] == 1 and out[15, 15] == 2
    assert out[12, 2] == 0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="equal 2-D shapes"):
        maps_to_instances(np.zeros((4, 4)), np.zeros((4, 5)), mpp=0.5)


@pytest.mark.shared_data
def test_real_annotations_round_trip(shared_data):
    from stardist.matching import matching

    from senpath.segment.data import load_consep

    ims = load_consep(shared_data, split="test", limit=4)
    for im in ims:
        fg, dist = instance_targets(im.labels)
        out = maps_to_instances(fg, dist, mpp=im.mpp)
        assert matching(im.labels, out, thresh=0.5).f1 > 0.95, im.name
