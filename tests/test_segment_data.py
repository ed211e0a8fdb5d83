"""Training data: resampling, stain re-rendering, deterministic crops, LR schedule."""

from __future__ import annotations

import numpy as np
import pytest

from senpath.segment import data as D


def _image(seed=0, shape=(120, 140)):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    for i, (cy, cx) in enumerate(rng.integers(8, min(shape) - 8, size=(25, 2)), start=1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= 25] = i
    rgb = np.full(shape + (3,), (230, 200, 225), np.uint8)  # pink eosin-ish background
    rgb[labels > 0] = (90, 60, 150)  # hematoxylin-ish nuclei
    return D.AnnotatedImage("synthetic", "he", rgb, labels, 0.5)


def test_resample_labels_nearest_round_trip():
    labels = np.arange(12, dtype=np.int32).reshape(3, 4)
    up = D.resample_labels(labels, (6, 8))
    np.testing.assert_array_equal(up[::2, ::2], labels)
    np.testing.assert_array_equal(D.resample_labels(up, (3, 4)), labels)


def test_shape_at_mpp():
    assert D.shape_at_mpp((1000, 1000, 3), 0.25, 0.5) == (500, 500)
    assert D.shape_at_mpp((256, 256), 0.38, 0.5) == (195, 195)


@pytest.mark.parametrize("recipe", list(D.RECIPES))
def test_every_recipe_renders_nuclei_darker_than_background(recipe):
    im = _image()
    cells = D.cell_regions(im.labels, mpp=im.mpp)
    rgb = D.render_crop(
        im.rgb, im.labels, cells, kind="he", rng=np.random.default_rng(3), recipe=recipe
    )
    assert rgb.shape == im.rgb.shape and rgb.dtype == np.uint8
    brightness = rgb.astype(float).mean(axis=2)
    assert brightness[im.labels > 0].mean() < brightness[cells == 0].mean()


def test_unknown_recipe_is_an_error():
    im = _image()
    with pytest.raises(ValueError, match="unknown recipe"):
        D.render_crop(
            im.rgb, im.labels, im.labels, kind="he", rng=np.random.default_rng(0), recipe="x"
        )


def test_batches_depend_only_on_seed_and_step():
    sources = {"a": [_image(0)], "b": [_image(1)]}
    s1 = D.CropSampler(sources, {"a": 0.5, "b": 0.5}, crop_size=48, seed=7)
    s2 = D.CropSampler(sources, {"a": 0.5, "b": 0.5}, crop_size=48, seed=7)
    x1, y1 = s1.batch(5, 3)
    s2.batch(4, 3)  # another step in between must not change step 5
    x2, y2 = s2.batch(5, 3)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert x1.shape == (3, 3, 48, 48) and y1.shape == (3, 2, 48, 48)
    assert not np.array_equal(x1, s1.batch(6, 3)[0])
    fg, dist = y1[:, 0], y1[:, 1]
    assert set(np.unique(fg)) <= {0.0, 1.0}
    assert (dist[fg == 0] == 0).all() and dist.max() <= 1.0


def test_learning_rate_schedule():
    from senpath.segment.train import learning_rate

    assert learning_rate(0, 1000, peak=1.0, warmup=10) == pytest.approx(0.1)
    assert learning_rate(10, 1000, peak=1.0, warmup=10) == pytest.approx(1.0)
    assert learning_rate(1000, 1000, peak=1.0, warmup=10) == pytest.approx(0.01)


def test_source_weights_with_a_synthetic_share():
    assert D.source_weights(0.0) == D.SOURCE_WEIGHTS
    w = D.source_weights(0.15)
    assert w["synth"] == 0.15 and sum(w.values()) == pytest.approx(1.0)
    ratio = D.SOURCE_WEIGHTS["monuseg"] / D.SOURCE_WEIGHTS["consep"]
    assert w["monuseg"] / w["consep"] == pytest.approx(ratio)
    with pytest.raises(ValueError, match="synthetic_share"):
        D.source_weights(1.0)


def test_source_weights_overrides_replace_some_and_keep_the_sum():
    w = D.source_weights(0.0, {"consep": 0.4})
    assert sum(w.values()) == pytest.approx(1.0)
    assert w["consep"] / w["monuseg"] == pytest.approx(0.4 / D.SOURCE_WEIGHTS["monuseg"])
    assert w["cpm15"] / w["dsb2018"] == pytest.approx(1.0)  # the others keep their ratios
    w = D.source_weights(0.1, {"dsb2018": 0.0})
    assert w["dsb2018"] == 0.0 and w["synth"] == 0.1 and sum(w.values()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown source"):
        D.source_weights(0.0, {"monusegg": 0.3})
    with pytest.raises(ValueError, match=">= 0"):
        D.source_weights(0.0, {"consep": -0.1})
    with pytest.raises(ValueError, match="sum to 0"):
        D.source_weights(0.0, dict.fromkeys(D.SOURCE_WEIGHTS, 0.0))


def test_source_weights_choose_the_source():
    sources = {"monuseg": [_image(1)], "consep": [_image(2)]}
    default = D.CropSampler(sources, D.source_weights(0.0), crop_size=32)
    assert default.source_names == ["monuseg", "consep"]
    assert default.source_p.tolist() == pytest.approx([0.36 / 0.56, 0.2 / 0.56])
    only_consep = D.CropSampler(sources, D.source_weights(0.0, {"monuseg": 0.0}), crop_size=32)
    assert only_consep.source_p.tolist() == [0.0, 1.0]


def test_synthetic_regions_are_annotated_and_kept_in_their_stains():
    images = D.load_synthetic(per_assay=1, shape=(128, 128))
    assert len(images) == 6 and all(im.kind == "synth" for im in images)
    assert all(len(np.unique(im.labels)) > 3 for im in images)
    sampler = D.CropSampler({"synth": images}, {"synth": 1.0}, crop_size=64, seed=0)
    x, y = sampler.batch(0, 4)
    assert x.shape == (4, 3, 64, 64) and y.shape == (4, 2, 64, 64)
    assert y[:, 0].mean() > 0.01  # nuclei in the crops
    np.testing.assert_array_equal(x, sampler.batch(0, 4)[0])  # deterministic per (seed, step)


@pytest.mark.parametrize(
    ("recipe", "counterstain", "chromogen"),
    [
        ("h_dab", "hematoxylin", "dab"),
        ("h_dab_fast_red", "hematoxylin", "fast_red"),
        ("xgal_h_dab", "hematoxylin", "xgal"),
        ("xgal_nfr", "nuclear_fast_red", "xgal"),
    ],
)
def test_rendering_says_which_nuclei_carry_the_chromogen(recipe, counterstain, chromogen):
    from senpath.stain import StainSet, deconvolve

    im = _image(seed=2)
    cells = D.cell_regions(im.labels, mpp=im.mpp)
    rng = np.random.default_rng(11)
    rgb, stained = D.render_with_truth(im.rgb, im.labels, cells, kind="he", rng=rng, recipe=recipe)
    ids = np.unique(im.labels)[1:]
    marked = stained[chromogen]
    assert 0 < len(marked) < len(ids) and np.isin(marked, ids).all()
    # The listed nuclei (X-gal: their cells) hold more of the chromogen than the others.
    amount = deconvolve(rgb, StainSet.from_names((counterstain, chromogen)))[..., 1]
    where = cells if chromogen == "xgal" else im.labels
    mean = np.array([amount[where == i].mean() for i in ids])
    assert mean[np.isin(ids, marked)].mean() > mean[~np.isin(ids, marked)].mean() + 0.02
    # Same generator state, same picture: render_crop is the same rendering without the truth.
    again = D.render_crop(
        im.rgb, im.labels, cells, kind="he", rng=np.random.default_rng(11), recipe=recipe
    )
    np.testing.assert_array_equal(rgb, again)


def test_estimated_mpp_from_nucleus_size():
    from senpath.segment.datasets import NUCLEUS_DIAMETER_UM, estimated_mpp

    labels = np.zeros((200, 200), np.int32)
    yy, xx = np.mgrid[:200, :200]
    for i, (cy, cx) in enumerate([(30, 30), (30, 100), (100, 60), (150, 150)], start=1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= 10**2] = i  # ~20 px across
    diameter = 2 * np.sqrt((labels == 1).sum() / np.pi)
    assert estimated_mpp(labels) == pytest.approx(NUCLEUS_DIAMETER_UM / diameter)
    with pytest.raises(ValueError, match="without annotated nuclei"):
        estimated_mpp(np.zeros((5, 5), np.int32))


def test_new_sets_load_with_disjoint_splits(shared_data):
    for loader in (D.load_cpm15, D.load_dsb2018, D.load_monuseg):
        train = {im.name for im in loader(shared_data, split="train", native=True)}
        held = {im.name for im in loader(shared_data, split="validation", native=True)}
        assert train and held and not train & held
    dsb = D.load_dsb2018(shared_data, split="validation")
    assert all(im.kind == "hematoxylin" and im.mpp == D.NETWORK_MPP for im in dsb)
    ki67 = D.load_ki67(shared_data, split="validation", native=True)
    assert all(len(im.stained["dab"]) > 0 for im in ki67)  # the annotated Ki67-positive nuclei


def test_pale_nuclei_fades_only_unstained_nuclei():
    im = _image(2)
    stained = np.arange(1, 13, dtype=np.int64)  # nuclei 1-12 carry a chromogen
    out = D.pale_nuclei(im.rgb, im.labels, stained, np.random.default_rng(0))
    od_in = -np.log10(np.maximum(im.rgb.astype(float), 1) / 255).sum(axis=2)
    od_out = -np.log10(np.maximum(out.astype(float), 1) / 255).sum(axis=2)
    keep = np.isin(im.labels, stained)
    far = D.cell_regions(im.labels, mpp=0.5) == 0  # background well away from any nucleus
    np.testing.assert_allclose(od_out[far], od_in[far], atol=0.02)
    # Stained nuclei keep their stain (away from their edges, where a faded neighbour may blur in).
    core = keep & (np.abs(np.gradient(im.labels.astype(float))[0]) == 0)
    assert np.abs(od_out[core] - od_in[core]).mean() < 0.02
    faded = [
        i
        for i in range(13, 26)
        if od_out[im.labels == i].mean() < 0.85 * od_in[im.labels == i].mean()
    ]
    assert len(faded) >= 3  # a share of 30-100 % of the 13 unstained nuclei, at 25-80 % of their OD


def test_pale_floor_fades_further_and_pale_blur_spreads_only_the_faded_nuclei():
    im = _image(2)
    stained = np.arange(1, 13, dtype=np.int64)

    def od(rgb):
        return -np.log10(np.maximum(rgb.astype(float), 1) / 255).sum(axis=2)

    def pale(**kw):
        return D.pale_nuclei(im.rgb, im.labels, stained, np.random.default_rng(0), **kw)

    v3 = pale()
    np.testing.assert_array_equal(pale(floor=D.PALE_FLOOR, blur_share=0.0), v3)  # v3's bits
    unstained = (im.labels > 12) & (im.labels > 0)
    # the same nuclei are chosen (drawn first); each keeps a smaller share of its density
    assert od(pale(floor=0.08))[unstained].sum() < 0.9 * od(v3)[unstained].sum()
    blurred = pale(blur_share=1.0)
    changed = np.abs(od(blurred) - od(v3)) > 0.02
    assert changed.any()
    keep = np.isin(im.labels, stained)
    core = keep & (np.abs(np.gradient(im.labels.astype(float))[0]) == 0)
    far = D.cell_regions(im.labels, mpp=0.5) == 0
    # far background and stained nuclei stay sharp (but where a faded neighbour's 2 px margin
    # reaches): the blur is confined to the faded nuclei
    assert not changed[far].any()
    assert np.abs(od(blurred) - od(v3))[core].mean() < 0.02
    with pytest.raises(ValueError, match="floor"):
        pale(floor=0.0)
    with pytest.raises(ValueError, match="pale_floor"):
        D.CropSampler({"a": [_image(0)]}, {"a": 1.0}, crop_size=48, pale_floor=0.9)


def test_pale_share_zero_keeps_the_batches_and_a_share_changes_them():
    sources = {"a": [_image(0)]}
    plain = D.CropSampler(sources, {"a": 1.0}, crop_size=48, seed=3).batch(2, 4)[0]
    zero = D.CropSampler(sources, {"a": 1.0}, crop_size=48, seed=3, pale_share=0.0).batch(2, 4)[0]
    pale = D.CropSampler(sources, {"a": 1.0}, crop_size=48, seed=3, pale_share=1.0).batch(2, 4)[0]
    np.testing.assert_array_equal(plain, zero)
    assert pale.mean() > plain.mean()  # faded nuclei: a brighter crop
    with pytest.raises(ValueError, match="pale_share"):
        D.CropSampler(sources, {"a": 1.0}, crop_size=48, pale_share=1.5)


def test_recipe_weights_and_stained_weight_keep_default_batches_and_change_the_rest():
    sources = {"a": [_image(0)]}
    plain_x, plain_y = D.CropSampler(sources, {"a": 1.0}, crop_size=48, seed=3).batch(2, 4)
    same_x, same_y = D.CropSampler(
        sources, {"a": 1.0}, crop_size=48, seed=3, recipe_weights=None, stained_weight=1.0
    ).batch(2, 4)
    np.testing.assert_array_equal(plain_x, same_x)
    np.testing.assert_array_equal(plain_y, same_y)
    assert plain_y.shape[1] == 2  # no weight channel unless asked for
    only_eosin = {name: 0.0 for name in D.RECIPES} | {"xgal_eosin": 1.0}
    eosin_x, _ = D.CropSampler(
        sources, {"a": 1.0}, crop_size=48, seed=3, recipe_weights=only_eosin
    ).batch(2, 4)
    assert not np.array_equal(eosin_x, plain_x)
    x, y = D.CropSampler(sources, {"a": 1.0}, crop_size=48, seed=3, stained_weight=4.0).batch(2, 8)
    assert y.shape[1] == 3
    weights = np.unique(y[:, 2])
    assert set(weights.tolist()) <= {1.0, 4.0} and 4.0 in weights  # some nuclei carry a chromogen
    assert (y[:, 0][y[:, 2] == 4.0] == 1).all()  # the weight sits on nucleus pixels only
    with pytest.raises(ValueError, match="unknown recipe"):
        D.CropSampler(sources, {"a": 1.0}, recipe_weights={"xgal_blue": 1.0})
    with pytest.raises(ValueError, match="stained_weight"):
        D.CropSampler(sources, {"a": 1.0}, stained_weight=0.0)


def test_contact_pixels_are_where_two_nuclei_meet_or_nearly_do():
    labels = np.zeros((8, 9), np.int32)
    labels[1:4, 1:4], labels[1:4, 4:7] = 1, 2  # touching
    labels[6:8, 1:3] = 3  # two rows below nucleus 1: a gap of 2 px
    contact = D.contact_pixels(labels, radius=1)
    expected = np.zeros_like(contact)
    expected[0:5, 3:5] = True  # either side of the 1|2 border, and the rows just outside it
    np.testing.assert_array_equal(contact, expected)
    wide = D.contact_pixels(labels, radius=2)
    assert wide[4:6, 1:3].any() and not wide[:, 8].any()  # the 1-3 gap within 2 px; far: not
    assert not D.contact_pixels(np.where(labels == 3, 0, labels == 1).astype(np.int32)).any()


def test_contact_weight_weighs_up_the_contacts_and_keeps_the_default_batches():
    sources = {"a": [_image(0)]}
    plain_x, plain_y = D.CropSampler(sources, {"a": 1.0}, crop_size=48, seed=3).batch(2, 4)
    one = D.CropSampler(sources, {"a": 1.0}, crop_size=48, seed=3, contact_weight=1.0)
    np.testing.assert_array_equal(one.batch(2, 4)[1], plain_y)
    sampler = D.CropSampler(sources, {"a": 1.0}, crop_size=48, seed=3, contact_weight=5.0)
    x, y = sampler.batch(2, 4)
    np.testing.assert_array_equal(x, plain_x)  # the same crops, weighed
    assert y.shape[1] == 3
    rng = np.random.default_rng([3, 2])  # the batch's crops, drawn again: (seed, step)
    for target in y:
        labels = sampler.crop_with_stained(rng)[1]
        np.testing.assert_array_equal(target[2], np.where(D.contact_pixels(labels), 5.0, 1.0))
    assert (y[:, 2] == 5.0).any()
    with pytest.raises(ValueError, match="contact_weight"):
        D.CropSampler(sources, {"a": 1.0}, contact_weight=0.0)


def test_recipe_weights_choose_the_recipe():
    im = _image(0)
    cells = D.cell_regions(im.labels, mpp=0.5)
    only = {name: 0.0 for name in D.RECIPES} | {"xgal_nfr": 1.0}
    for seed in range(5):
        _, stained = D.render_with_truth(
            im.rgb,
            im.labels,
            cells,
            kind="he",
            rng=np.random.default_rng(seed),
            recipe_weights=only,
        )
        assert set(stained) <= {"xgal"}  # X-gal + nuclear fast red marks only X-gal


def test_annotation_offset_moves_a_misregistered_annotation_onto_its_nuclei():
    from senpath.segment.datasets import annotation_offset, shift_labels

    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[:256, :256]
    labels = np.zeros((256, 256), np.int32)
    for i in range(1, 41):
        cy, cx = rng.integers(20, 236, 2)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= rng.integers(16, 50)] = i
    rgb = np.full((256, 256, 3), 235, np.uint8)
    rgb[labels > 0] = (90, 70, 150)  # dark nuclei on pale glass
    rgb = np.clip(rgb + rng.normal(0, 8, rgb.shape), 0, 255).astype(np.uint8)
    assert annotation_offset(rgb, labels) == (0, 0)  # drawn on the nuclei: left as drawn
    drawn_off = shift_labels(labels, (-7, 4))  # drawn 7 px too high, 4 px to the right
    offset = annotation_offset(rgb, drawn_off)
    assert offset == (7, -4)
    moved = shift_labels(drawn_off, offset)
    inner = (slice(12, -12), slice(12, -12))
    np.testing.assert_array_equal(moved[inner], labels[inner])
    # beyond the search range, or no nuclei: taken as drawn
    assert annotation_offset(rgb, drawn_off, max_shift=5) == (0, 0)
    assert annotation_offset(rgb, np.zeros_like(labels)) == (0, 0)


def test_shift_labels_cuts_and_fills():
    from senpath.segment.datasets import shift_labels

    a = np.arange(1, 13, dtype=np.int32).reshape(3, 4)
    np.testing.assert_array_equal(
        shift_labels(a, (1, -2)), [[0, 0, 0, 0], [3, 4, 0, 0], [7, 8, 0, 0]]
    )
    np.testing.assert_array_equal(shift_labels(a, (0, 0)), a)
    assert not shift_labels(a, (5, 0)).any()


def test_the_deepliif_label_panels_that_are_off_their_images_are_moved_back(shared_data):
    from senpath.segment.datasets import annotation_offset, ki67_tile

    offsets = {}
    for path in sorted((shared_data / "ki67_ihc_tiles").glob("*_ihc.png")):
        stem = path.name[: -len("_ihc.png")]
        rgb, labels, offsets[stem] = ki67_tile(shared_data, stem)
        assert annotation_offset(rgb, labels) == (0, 0)  # once moved, nothing left to move
    # Lung1's nuclei are drawn ~2 µm below the stained ones, Bladder1's 1.5 µm to the left
    assert offsets["Lung1"][0] <= -6 and abs(offsets["Lung1"][1]) <= 1
    assert offsets["Bladder1"][1] >= 5 and abs(offsets["Bladder1"][0]) <= 1
    assert all(offsets[s] == (0, 0) for s in offsets if s not in ("Lung1", "Bladder1"))


def test_ignore_padding_gives_the_padding_of_a_small_image_weight_zero():
    """An image smaller than the crop is padded by reflection: its mirrored nuclei are not
    annotated, so without ``ignore_padding`` they are taught as background (v1-v5's recipe)."""
    im = _image(0, shape=(30, 36))
    yy, xx = np.mgrid[:30, :36]
    labels = np.zeros((30, 36), np.int32)  # nuclei up to every edge, so the mirror shows them
    for i, (cy, cx) in enumerate((cy, cx) for cy in range(2, 30, 7) for cx in range(2, 36, 7)):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= 6] = i + 1
    rgb = np.full((30, 36, 3), (230, 200, 225), np.uint8)
    rgb[labels > 0] = (90, 60, 150)
    small = {"a": [D.AnnotatedImage("small", "he", rgb, labels, im.mpp)]}
    plain_x, plain_y = D.CropSampler(small, {"a": 1.0}, crop_size=48, seed=2).batch(0, 6)
    x, y = D.CropSampler(small, {"a": 1.0}, crop_size=48, seed=2, ignore_padding=True).batch(0, 6)
    np.testing.assert_array_equal(x, plain_x)  # the same crops: only the targets change
    np.testing.assert_array_equal(y[:, :2], plain_y)
    assert y.shape[1] == 3 and set(np.unique(y[:, 2]).tolist()) == {0.0, 1.0}
    for crop, (fg, _, weight) in zip(x, y, strict=True):
        # about the image's share of the (scale-jittered, 38-60 px) crop is counted...
        assert 0.2 < weight.mean() < 0.9
        # ...and the padding is the reflected image: it has pixels nearer the annotated nuclei's
        # darkness than the background's (mirrored nuclei), none of them annotated
        brightness = crop.mean(axis=0)
        nucleus_level = np.median(brightness[fg == 1])
        background_level = np.median(brightness[(fg == 0) & (weight == 1)])
        assert (brightness[weight == 0] < (nucleus_level + background_level) / 2).any()
        assert not fg[weight == 0].any()
    # an image as large as the crop: every pixel counts
    big = {"a": [_image(0, shape=(120, 140))]}
    y_big = D.CropSampler(big, {"a": 1.0}, crop_size=48, seed=2, ignore_padding=True).batch(0, 4)[1]
    assert (y_big[:, 2] == 1.0).all()


def test_crop_assay_names_the_assay_a_crop_is_stained_as():
    im = _image(0)
    assert D.crop_assay(im, "xgal_h_dab") == "sabgal+ki67"
    assert D.crop_assay(im, "he") == "he"
    assert D.crop_assay(im, None) is None
    ihc = D.AnnotatedImage("ki67/Lung1", "ihc", im.rgb, im.labels, 0.5)
    assert D.crop_assay(ihc, None) == "ki67"
    for assay in ("sabgal-eosin", "p16+ki67"):
        synth = D.AnnotatedImage(f"synth/{assay}-1300@400,250", "synth", im.rgb, im.labels, 0.5)
        assert D.crop_assay(synth, None) == assay
    assert set(D.RECIPE_ASSAYS) == set(D.RECIPES)


def _faint_image(seed=0, shape=(120, 140)):
    """Pale hematoxylin-only nuclei on glass: a faint counterstain (level well below 0.6)."""
    im = _image(seed, shape)
    rgb = np.full(shape + (3,), 238, np.uint8)
    rgb[im.labels > 0] = (200, 190, 220)
    return D.AnnotatedImage("faint", "hematoxylin", rgb, im.labels, 0.5)


def test_counterstain_references_show_crops_as_senpath_run_shows_their_assay():
    from senpath.config import get_assay
    from senpath.segment.counterstain import counterstain_level
    from senpath.stain import StainSet, estimate_background, estimate_stains, rgb_to_od

    sources = {"a": [_faint_image(0)]}
    only_h_dab = {name: 0.0 for name in D.RECIPES} | {"h_dab": 1.0}
    kwargs = dict(crop_size=64, seed=3, recipe_weights=only_h_dab)
    # with references the sampler draws each crop's recipe itself (its assay decides), so the
    # same crops come from any references: an assay the crops are not stained as leaves them
    boosted = D.CropSampler(sources, {"a": 1.0}, counterstain_references={"p16": 0.6}, **kwargs)
    other = D.CropSampler(sources, {"a": 1.0}, counterstain_references={"sabgal": 0.8}, **kwargs)
    assay = get_assay("p16")
    prior = StainSet.from_names(assay.stains)

    def levels(sampler):
        out = []
        for crop in sampler.batch(1, 6)[0]:
            rgb = np.rint(crop.transpose(1, 2, 0) * 255).astype(np.uint8)
            od = rgb_to_od(rgb, estimate_background(rgb).tolist()).reshape(-1, 3)
            stains = estimate_stains(od, prior, max_angle_deg=assay.stain_tolerance_deg).stains
            out.append(counterstain_level(od, stains, counterstain=stains.index("hematoxylin")))
        return np.array(out)

    before, after = levels(other), levels(boosted)
    # the same crops with their hematoxylin brought up (never past the reference)
    assert (after >= before - 1e-3).all() and (after > 1.5 * before).any()
    assert np.nanmax(after) <= 0.6
    # without references the batches are those of earlier runs (v1-v5 are reproduced)
    plain = D.CropSampler(sources, {"a": 1.0}, **kwargs).batch(1, 6)
    same = D.CropSampler(sources, {"a": 1.0}, counterstain_references=None, **kwargs).batch(1, 6)
    np.testing.assert_array_equal(plain[0], same[0])


@pytest.mark.parametrize("recipe", [*D.RECIPES, "ihc"])
def test_counterstain_scale_weakens_only_the_counterstain(recipe):
    """A faintly counterstained crop: the counterstain's amount scales, the nuclei chosen to carry
    the chromogens do not change (the same draws)."""
    from senpath.config import get_assay
    from senpath.segment.rerender import RECIPE_ASSAYS, estimate_background
    from senpath.stain import StainSet, deconvolve

    im = _image(4)
    cells = D.cell_regions(im.labels, mpp=im.mpp)
    kind, name = ("ihc", None) if recipe == "ihc" else ("he", recipe)

    def render(scale):
        return D.render_with_truth(
            im.rgb,
            im.labels,
            cells,
            kind=kind,
            rng=np.random.default_rng(5),
            recipe=name,
            counterstain_scale=scale,
        )

    plain, plain_marks = render(1.0)
    faint, faint_marks = render(0.3)
    assert plain_marks.keys() == faint_marks.keys()
    for chromogen, ids in plain_marks.items():
        np.testing.assert_array_equal(ids, faint_marks[chromogen])
    marked = np.concatenate([np.zeros(0, np.int64), *plain_marks.values()])
    unstained = (im.labels > 0) & ~np.isin(im.labels, marked)
    assert unstained.sum() > 100
    assay = get_assay(RECIPE_ASSAYS.get(recipe, "ki67"))  # the stains senpath run analyses it in
    stains = StainSet.from_names(assay.stains)
    first = stains.index(assay.nuclear_stains[0])

    def counterstain(rgb):
        return deconvolve(rgb, stains, estimate_background(rgb))[..., first][unstained].mean()

    assert 0.2 < counterstain(faint) / counterstain(plain) < 0.45
    with pytest.raises(ValueError, match="counterstain_scale"):
        render(0.0)


def test_faint_share_zero_keeps_the_batches_and_a_share_lightens_the_crops():
    sources = {"a": [_image(0)]}
    plain = D.CropSampler(sources, {"a": 1.0}, crop_size=48, seed=3).batch(2, 32)[0]
    zero = D.CropSampler(sources, {"a": 1.0}, crop_size=48, seed=3, faint_share=0.0).batch(2, 32)
    faint = D.CropSampler(sources, {"a": 1.0}, crop_size=48, seed=3, faint_share=1.0).batch(2, 32)
    np.testing.assert_array_equal(plain, zero[0])
    # a weaker counterstain: brighter nuclei (the draw shifts the crops' other draws, so on average)
    nuclei = faint[1][:, 0] > 0, zero[1][:, 0] > 0
    assert faint[0].mean(axis=1)[nuclei[0]].mean() > zero[0].mean(axis=1)[nuclei[1]].mean() + 0.05
    with pytest.raises(ValueError, match="faint_share"):
        D.CropSampler(sources, {"a": 1.0}, crop_size=48, faint_share=1.5)
    with pytest.raises(ValueError, match="faint_range"):
        D.CropSampler(sources, {"a": 1.0}, crop_size=48, faint_share=0.5, faint_range=(0.6, 0.3))
