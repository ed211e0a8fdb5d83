"""Issue 18's faster measurement gives the values of the code it replaced, bit for bit:

- the five compartments' statistics from one sort of the cell's pixels (``_nested_stats``) equal
  one sort per compartment (``_group_stats``, the path of given compartments), ties, -0.0 and NaN
  included;
- ``cell_ids`` (a tile's owned nuclei only) gives exactly those rows of the full table.
"""

import numpy as np
import pandas as pd
import pytest
from skimage.segmentation import watershed

from senpath import measure
from senpath.measure import cell_compartments, measure_cells

STAINS = ("hematoxylin", "dab")


@pytest.fixture(scope="module")
def tile():
    """Seeded nuclei (watershed blobs, some touching, some on the edge) and two OD channels
    quantised to 0.01 (many equal values inside and across compartments) with -0.0, negative
    values and NaN sprinkled in."""
    rng = np.random.default_rng(18)
    shape = (300, 340)
    seeds = np.zeros(shape, np.int32)
    pts = rng.integers(0, shape, size=(90, 2))
    seeds[pts[:, 0], pts[:, 1]] = np.arange(1, 91)
    from scipy import ndimage as ndi

    dist = ndi.distance_transform_edt(seeds == 0)
    nuclei = watershed(dist, seeds, mask=dist < rng.uniform(3, 9, shape).astype(np.float32))
    nuclei = nuclei.astype(np.int32)
    nuclei[nuclei == 7] = 0  # gaps in the numbering
    nuclei[nuclei == 40] = 400
    od = np.round(rng.gamma(2.0, 0.15, shape + (2,)), 2).astype(np.float32)
    od[rng.random(shape) < 0.02, 0] = -0.0
    od[rng.random(shape) < 0.01, 1] = -0.05
    od[rng.random(shape) < 0.002, 1] = np.nan
    assert len(np.unique(nuclei)) > 60
    return nuclei, od


def _frames_equal(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Equal bit for bit, but the perimeter to 1e-12: it is a BLAS product over the table's
    nuclei (``histogram @ weights`` in ``senpath.morphology``), whose summation order may depend
    on how many rows it has (3.6e-15 µm seen on 5 of 1,820 nuclei of a slide)."""
    assert list(a.columns) == list(b.columns)
    a, b = a.reset_index(drop=True), b.reset_index(drop=True)
    np.testing.assert_allclose(a.pop("nucleus_perimeter_um"), b.pop("nucleus_perimeter_um"),
                               rtol=1e-12, atol=0)  # fmt: skip
    pd.testing.assert_frame_equal(a, b, check_exact=True)


def test_one_sort_equals_one_sort_per_compartment(tile):
    nuclei, od = tile
    fast = measure_cells(nuclei, od, stain_names=STAINS, mpp=0.5)
    comps = cell_compartments(nuclei, mpp=0.5)
    per_compartment = measure_cells(nuclei, od, stain_names=STAINS, mpp=0.5, compartments=comps)
    _frames_equal(fast, per_compartment)
    assert fast["dab_od_max_cell"].isna().any()  # a NaN pixel, kept as np.sort keeps it (last)


def test_one_sort_path_is_taken_and_falls_back_for_huge_labels(tile, monkeypatch):
    nuclei, od = tile
    calls = []
    original = measure._nested_stats

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(measure, "_nested_stats", spy)
    # labels up to 2**10 fit a key with the label from bit 54 (2**30 with the real bit 34)
    monkeypatch.setattr(measure, "_LABEL_SHIFT", 54)
    big = nuclei.copy()
    big[big == 400] = (1 << 10) + 5  # beyond the key's label bits
    fast = measure_cells(big, od, stain_names=STAINS, mpp=0.5)
    ref = measure_cells(
        big, od, stain_names=STAINS, mpp=0.5, compartments=cell_compartments(big, mpp=0.5)
    )
    _frames_equal(fast, ref)
    measure_cells(nuclei, od, stain_names=STAINS, mpp=0.5)
    assert calls == [False, True]


@pytest.mark.parametrize("given_compartments", [False, True])
def test_cell_ids_give_exactly_those_rows(tile, given_compartments):
    nuclei, od = tile
    comps = cell_compartments(nuclei, mpp=0.5) if given_compartments else None
    full = measure_cells(nuclei, od, stain_names=STAINS, mpp=0.5, compartments=comps)
    rng = np.random.default_rng(3)
    chosen = rng.choice(full["cell_id"].to_numpy(), size=len(full) // 2, replace=False)
    # ids that are absent or 0 are ignored
    asked = np.r_[chosen, 0, 7, 10_000]
    part = measure_cells(
        nuclei, od, stain_names=STAINS, mpp=0.5, compartments=comps, cell_ids=asked
    )
    _frames_equal(part, full[full["cell_id"].isin(chosen)])
    none = measure_cells(nuclei, od, stain_names=STAINS, mpp=0.5, cell_ids=[])
    assert len(none) == 0 and list(none.columns) == list(full.columns)


def test_a_tile_measures_only_its_owned_nuclei_with_the_values_of_all(monkeypatch):
    """analyze_tile's table equals the one before issue 18: every nucleus of the tile (halo too)
    measured, then the owned ones in the size range kept."""
    from senpath import tile_engine
    from senpath.config import AnalysisConfig
    from senpath.segment.classical import segment_classical
    from senpath.stain import REFERENCE_STAINS, StainSet, deconvolve
    from senpath.synth import SynthParams, render_region
    from senpath.tiling import Box, Tile, keep_owned

    perturbed = (
        ("hematoxylin", tuple(np.add(REFERENCE_STAINS["hematoxylin"], (0.03, -0.02, 0.02)))),
        ("dab", tuple(np.add(REFERENCE_STAINS["dab"], (-0.02, 0.03, 0.01)))),
    )
    region = render_region(
        "ki67", shape=(320, 352), seed=21,
        params=SynthParams(tissue_fraction=0.95, stain_vectors=perturbed),
    )  # fmt: skip
    stains = StainSet.from_names(STAINS)
    od = deconvolve(region.rgb, stains)
    labels = segment_classical(
        region.rgb, mpp=0.5, stains=stains, nuclear_stains=STAINS, concentrations=od
    )
    # the tile sits at (100, 60) of a larger image; a 40 px halo on every side
    box = Box(100, 60, 420, 412)
    tile = Tile(row=1, col=1, core=Box(140, 100, 380, 372), box=box)
    config = AnalysisConfig(min_nucleus_area_um2=8.0, max_nucleus_area_um2=90.0)
    asked = []
    original = tile_engine.measure_cells

    def spy(*args, **kwargs):
        asked.append(kwargs.get("cell_ids"))
        return original(*args, **kwargs)

    monkeypatch.setattr(tile_engine, "measure_cells", spy)
    result, _ = tile_engine.analyze_tile(
        region.rgb, tile, segmenter=None, stains=stains, i0=240.0, mpp=0.5, config=config,
        image_shape=(1000, 1000), labels=labels,
    )  # fmt: skip
    # before: all nuclei measured, then the owned ones in the size range kept
    everything = measure_cells(labels, od, stain_names=STAINS, mpp=0.5, origin_um=(30.0, 50.0))
    owned = {i.local_label for i in keep_owned(labels, tile, image_shape=(1000, 1000))}
    area = everything["nucleus_area_um2"]
    before = everything[everything["cell_id"].isin(owned) & (area >= 8.0) & (area <= 90.0)]
    assert 20 < len(before) < len(everything) - 20  # the halo and the size range both drop cells
    _frames_equal(result.cells, before)
    assert [i.local_label for i in result.instances] == before["cell_id"].tolist()
    assert asked[0] is not None and len(asked[0]) == len(before)
