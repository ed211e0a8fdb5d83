"""Tiled prediction, resampling to 0.5 µm/px and back, and the shipped model on real crops."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from senpath.segment.net import NetConfig  # noqa: E402
from senpath.segment.predict import NucleusSegmenter, predict_instances  # noqa: E402


class DarknessOracle(nn.Module):
    """Stand-in network with a 7-px receptive field: dark pixels are nuclei.

    Foreground logit from darkness; the distance logit from darkness averaged over 7x7, which peaks
    inside each dark disc. Its small receptive field makes tiled and untiled maps identical.
    """

    def __init__(self) -> None:
        super().__init__()
        self.config = NetConfig(widths=(4,))  # stride 1
        self.pool = nn.AvgPool2d(7, stride=1, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dark = (1.0 - x.mean(1, keepdim=True) > 0.5).float()
        return torch.cat([40.0 * (dark - 0.5), 30.0 * (self.pool(dark) - 0.8)], dim=1)


def _disc_image(shape, radius, spacing, seed=0):
    """White image with dark discs on a jittered grid, and their labels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    n = 0
    for cy in range(spacing // 2, shape[0] - radius, spacing):
        for cx in range(spacing // 2, shape[1] - radius, spacing):
            n += 1
            jy, jx = rng.integers(-spacing // 6, spacing // 6 + 1, 2)
            labels[(yy - cy - jy) ** 2 + (xx - cx - jx) ** 2 <= radius**2] = n
    rgb = np.full(shape + (3,), 230, np.uint8)
    rgb[labels > 0] = 60
    return rgb, labels


@pytest.fixture()
def oracle():
    return NucleusSegmenter(DarknessOracle(), device="cpu", precision="fp32")


def test_tiled_equals_untiled(oracle):
    rgb, _ = _disc_image((150, 170), radius=6, spacing=22)
    untiled = predict_instances(rgb, mpp=0.5, model=oracle, tile_size=256, halo=32)
    for tile, halo, batch in [(64, 8, 3), (48, 16, 1), (96, 12, 8)]:
        tiled = predict_instances(
            rgb, mpp=0.5, model=oracle, tile_size=tile, halo=halo, batch_size=batch
        )
        np.testing.assert_array_equal(tiled, untiled)
    assert untiled.max() > 20


def test_input_at_quarter_micron_gives_labels_on_input_grid(oracle):
    from stardist.matching import matching

    rgb, labels = _disc_image((300, 260), radius=12, spacing=44)  # 6 µm nuclei at 0.25 µm/px
    out = predict_instances(rgb, mpp=0.25, model=oracle, tile_size=64, halo=8)
    assert out.shape == labels.shape and out.dtype == np.int32
    m = matching(labels, out, thresh=0.5)
    assert m.f1 > 0.95
    assert m.mean_true_score > 0.8  # masks come back at full resolution, not blocky


def test_finer_input_gets_outlines_drawn_at_its_own_resolution(oracle):
    """Soft maps at 0.5 µm/px, as a network gives them, for 5.5 µm nuclei of a 0.25 µm/px image:
    upsampling the maps and drawing the outlines on the image grid beats upsampling the labels."""
    import cv2
    from scipy import ndimage as ndi
    from stardist.matching import matching

    from senpath.segment.data import resample_labels
    from senpath.segment.predict import instances_on_grid

    _, labels = _disc_image((300, 260), radius=11, spacing=40, seed=2)
    blurred = cv2.GaussianBlur((labels > 0).astype(np.float32), (0, 0), 2.0)
    depth = (ndi.distance_transform_edt(labels > 0) / 11.0).astype(np.float32)
    maps = np.stack(
        [cv2.resize(m, (130, 150), interpolation=cv2.INTER_AREA) for m in (blurred, depth)]
    )
    drawn = instances_on_grid(oracle, maps, labels.shape, mpp=0.25)
    blocky = resample_labels(oracle.instances(maps), labels.shape)
    assert drawn.shape == labels.shape and drawn.dtype == np.int32
    fine, coarse = matching(labels, drawn, thresh=0.5), matching(labels, blocky, thresh=0.5)
    assert fine.f1 == coarse.f1 == 1.0
    assert fine.mean_true_score > coarse.mean_true_score + 0.015  # measured 0.947 vs 0.920
    # at the maps' own grid nothing is resampled; a coarser grid gets the labels mapped back
    np.testing.assert_array_equal(
        instances_on_grid(oracle, maps, (150, 130), mpp=0.5), oracle.instances(maps)
    )
    assert instances_on_grid(oracle, maps, (75, 65), mpp=1.0).shape == (75, 65)


def test_predict_maps_pads_to_stride():
    from senpath.segment.net import build_model

    seg = NucleusSegmenter(
        build_model(NetConfig(widths=(4, 8, 16))), device="cpu", precision="fp32"
    )
    maps = seg.predict_maps(np.zeros((2, 30, 22, 3), np.uint8))
    assert maps.shape == (2, 2, 30, 22)
    assert ((maps >= 0) & (maps <= 1)).all()
    assert seg.instances(maps).shape == (2, 30, 22)


def test_bad_inputs_are_explained(oracle):
    with pytest.raises(ValueError, match="uint8 RGB"):
        predict_instances(np.zeros((8, 8, 4), np.uint8), mpp=0.5, model=oracle)
    with pytest.raises(ValueError, match="mpp"):
        predict_instances(np.zeros((8, 8, 3), np.uint8), mpp=0, model=oracle)
    with pytest.raises(ValueError, match="halo"):
        predict_instances(
            np.zeros((8, 8, 3), np.uint8), mpp=0.5, model=oracle, tile_size=32, halo=16
        )
    with pytest.raises(ValueError, match="precision"):
        NucleusSegmenter(DarknessOracle(), device="cpu", precision="int8")


# ---------------------------------------------------------------- shipped weights, real data


@pytest.fixture(scope="module")
def shipped():
    return NucleusSegmenter.from_pretrained(device="cpu")


@pytest.mark.shared_data
def test_shipped_model_on_monuseg_crop(shared_data, shipped):
    from stardist.matching import matching

    from senpath.segment.data import load_monuseg

    im = load_monuseg(shared_data, split="validation", native=True)[0]  # never trained on
    rgb, labels = im.rgb[:512, :512], im.labels[:512, :512]
    out = predict_instances(rgb, mpp=im.mpp, model=shipped)
    assert out.shape == labels.shape
    assert matching(labels, out, thresh=0.5).f1 > MONUSEG_F1_FLOOR


@pytest.mark.shared_data
def test_shipped_model_on_ki67_tile(shared_data, shipped):
    from stardist.matching import matching

    from senpath.segment.data import load_ki67

    im = load_ki67(shared_data, split="validation", native=True)[0]  # never trained on
    out = predict_instances(im.rgb, mpp=im.mpp, model=shipped)
    assert matching(im.labels, out, thresh=0.5).f1 > KI67_F1_FLOOR


@pytest.mark.shared_data
def test_shipped_model_tiling_is_consistent(shared_data, shipped):
    """Overlapping 256 px pieces (32 px halo) agree with one whole-image pass (the default)."""
    from stardist.matching import matching

    from senpath.segment.data import load_monuseg

    im = load_monuseg(shared_data, split="validation", native=True)[1]
    rgb = im.rgb[:640, :640]  # 320 px at 0.5 µm/px
    whole = predict_instances(rgb, mpp=im.mpp, model=shipped)
    tiled = predict_instances(rgb, mpp=im.mpp, model=shipped, tile_size=256)
    assert matching(whole, tiled, thresh=0.5).f1 > 0.95


def test_one_pass_equals_pieces_and_calls_the_network_once(oracle, monkeypatch):
    """An image that fits one pass is run once (no 256² pieces), with the pieces' maps."""
    rgb, _ = _disc_image((150, 170), radius=6, spacing=22)
    shapes = []
    original = oracle.predict_maps

    def counting(batch):
        shapes.append(batch.shape)
        return original(batch)

    monkeypatch.setattr(oracle, "predict_maps", counting)
    one_pass = predict_instances(rgb, mpp=0.5, model=oracle)
    assert shapes == [(1, 150 + 64, 170 + 64, 3)]  # the image and its 32 px context margin
    pieces = predict_instances(rgb, mpp=0.5, model=oracle, tile_size=64, halo=8)
    assert len(shapes) > 2
    np.testing.assert_array_equal(one_pass, pieces)


def test_image_larger_than_one_pass_goes_in_pieces(oracle, monkeypatch):
    from senpath.segment import predict

    monkeypatch.setattr(predict, "MAX_PASS_SIDE", 96)
    rgb, _ = _disc_image((150, 170), radius=6, spacing=22)
    calls = []
    original = oracle.predict_maps
    monkeypatch.setattr(oracle, "predict_maps", lambda b: calls.append(b.shape) or original(b))
    tiled = predict_instances(rgb, mpp=0.5, model=oracle)
    assert calls and all(c[1:3] == (96, 96) for c in calls)
    monkeypatch.setattr(predict, "MAX_PASS_SIDE", 2048)
    np.testing.assert_array_equal(tiled, predict_instances(rgb, mpp=0.5, model=oracle))


def test_shipped_model_one_pass_finds_the_nuclei_of_the_pieces(shipped):
    """Issue 18: one network pass per analysis tile instead of 256² pieces finds the same nuclei
    (instances matched at IoU 0.5) on a synthetic Ki67 tile; measured 460 vs 461 of 461 nuclei on
    a 1120² tile, F1 0.999. The tile holds ~190 nuclei, so the 0.01 F1 allowed is about two of
    them (on a 46-nucleus tile one extra instance is 0.011: v4 found 46 in one pass, 45 in pieces,
    45 true either way)."""
    from stardist.matching import matching

    from senpath.synth import SynthParams, render_region

    region = render_region(
        "ki67", shape=(640, 704), seed=11, params=SynthParams(tissue_fraction=0.95)
    )
    one_pass = predict_instances(region.rgb, mpp=0.5, model=shipped)
    pieces = predict_instances(region.rgb, mpp=0.5, model=shipped, tile_size=256)
    assert len(np.unique(one_pass)) > 150  # nuclei were found at all
    assert matching(pieces, one_pass, thresh=0.5).f1 >= 0.98
    truth_f1 = matching(region.labels, one_pass, thresh=0.5).f1
    assert truth_f1 >= matching(region.labels, pieces, thresh=0.5).f1 - 0.01


#: Floors a little below the F1 measured at export (see models/MODEL_CARD.md).
MONUSEG_F1_FLOOR = 0.55  # v2: 0.569 on this crop (v1: 0.645), 0.681 pooled over the 6 held out
KI67_F1_FLOOR = 0.42


#: The shipped model must find a nucleus stained with a nuclear chromogen as often as an unstained
#: one (model card: stained-vs-unstained recall); checked on held-out MoNuSeg images re-rendered
#: with DAB in a known subset of nuclei.
STAINED_GAP_POINTS = 5.0


@pytest.mark.slow
@pytest.mark.shared_data
@pytest.mark.parametrize(
    ("recipe", "chromogen"), [("h_dab", "dab"), ("h_dab_fast_red", "fast_red")]
)
def test_shipped_model_finds_stained_nuclei_as_often_as_unstained(
    shared_data, shipped, recipe, chromogen
):
    from senpath.segment.data import load_monuseg, rerendered
    from senpath.segment.evaluate import recall_by_stain

    held_out = load_monuseg(shared_data, split="validation", native=True)[:3]
    images = rerendered(held_out, recipe, np.random.default_rng(7))
    preds = [predict_instances(im.rgb, mpp=im.mpp, model=shipped) for im in images]
    recall = recall_by_stain(
        [im.labels for im in images], preds, [im.stained for im in images], thresh=0.5
    )
    assert recall[chromogen]["total"] > 200
    assert recall[f"gap_{chromogen}"]["points"] <= STAINED_GAP_POINTS, recall


def test_test_time_flips_average_the_four_flips_and_follow_a_flipped_image():
    import torch

    from senpath.segment.net import build_model

    torch.manual_seed(3)
    model = build_model(NetConfig(widths=(4, 8, 16)))
    plain = NucleusSegmenter(model, device="cpu", precision="fp32")
    flips = NucleusSegmenter(model, device="cpu", precision="fp32", flips=True)
    batch = np.random.default_rng(0).integers(0, 256, (2, 32, 48, 3), dtype=np.uint8)

    flipped_back = [
        plain.predict_maps(batch),
        plain.predict_maps(batch[:, :, ::-1])[:, :, :, ::-1],
        plain.predict_maps(batch[:, ::-1])[:, :, ::-1],
        plain.predict_maps(batch[:, ::-1, ::-1])[:, :, ::-1, ::-1],
    ]
    maps = flips.predict_maps(batch)
    np.testing.assert_allclose(maps, np.mean(flipped_back, axis=0), atol=1e-6)
    # averaged over the flips, the maps of a flipped tile are the flipped maps; not so without
    np.testing.assert_allclose(
        flips.predict_maps(batch[:, :, ::-1])[:, :, :, ::-1], maps, atol=1e-6
    )
    assert np.abs(flipped_back[1] - flipped_back[0]).max() > 1e-3
    # a tile that is not a multiple of the stride keeps its shape
    assert flips.predict_maps(batch[:, :30, :22]).shape == (2, 2, 30, 22)
