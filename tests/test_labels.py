"""Label image store: tile-by-tile paste with recorded ids, OME-Zarr pyramid, ids = the cell table's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

import senpath
from senpath import synth
from senpath.config import AnalysisConfig
from senpath.labels import LABELS, LabelStore, label_mpp, load_labels
from senpath.results import is_complete, read_manifest
from senpath.tiling import Box, Instance


def _square(y0, x0, size, label=1):
    return Instance(Box(y0, x0, y0 + size, x0 + size), np.ones((size, size), bool), label)


def test_paste_records_ids_first_writer_wins(tmp_path):
    store = LabelStore(tmp_path, (40, 50), mpp=0.5, chunk=16)
    ids = store.add_instances([_square(0, 0, 4, 1), _square(10, 10, 5, 2)])
    assert ids.tolist() == [1, 2]
    # overlaps id 2 partly (keeps its free pixels), then one entirely covered by id 1 (no id)
    ids = store.add_instances([_square(12, 12, 5, 1), _square(1, 1, 2, 2), _square(30, 40, 3, 3)])
    assert ids.tolist() == [3, 0, 4]
    lab = np.asarray(store.level0[:])  # before commit: the temporary array
    assert (lab == 1).sum() == 16 and (lab == 2).sum() == 25
    assert (lab == 3).sum() == 25 - 9  # 3x3 of its 5x5 already held by id 2
    assert (lab == 4).sum() == 9 and store.count == 4


def test_pyramid_metadata_and_atomic_rename(tmp_path):
    rng = np.random.default_rng(0)
    store = LabelStore(tmp_path, (70, 45), mpp=0.5, chunk=16)
    for k in range(30):
        y, x = rng.integers(0, 65), rng.integers(0, 40)
        store.add_instances([_square(int(y), int(x), 4, k + 1)])
    assert not (tmp_path / LABELS).exists()  # nothing under the final name until commit
    level0 = np.asarray(store.level0[:])
    final = store.commit()
    assert final == tmp_path / LABELS and not list(tmp_path.glob(".*.tmp"))
    attrs = json.loads((final / ".zattrs").read_text())
    (ms,) = attrs["multiscales"]
    assert ms["version"] == "0.4" and "image-label" in attrs
    assert [a["name"] for a in ms["axes"]] == ["y", "x"]
    assert {a["unit"] for a in ms["axes"]} == {"micrometer"}
    scales = [d["coordinateTransformations"][0]["scale"] for d in ms["datasets"]]
    assert scales == [[0.5, 0.5], [1.0, 1.0], [2.0, 2.0], [4.0, 4.0]]  # 70 -> 35 -> 18 -> 9 <= 16
    zarray = json.loads((final / "0" / ".zarray").read_text())
    assert zarray["zarr_format"] == 2 and zarray["dimension_separator"] == "/"
    assert zarray["chunks"] == [16, 16] and zarray["dtype"] == "<i4"
    np.testing.assert_array_equal(load_labels(tmp_path).compute(), level0)
    for k in range(1, 4):
        step = 2**k
        np.testing.assert_array_equal(
            load_labels(tmp_path, level=k).compute(), level0[::step, ::step]
        )
        assert label_mpp(tmp_path, k) == 0.5 * step
    with pytest.raises(ValueError, match="levels 0-3"):
        load_labels(tmp_path, level=4)


_KILLED_WRITER = """
import os, sys
from senpath.labels import LabelStore
store = LabelStore(sys.argv[1], (20, 20), mpp=1.0, chunk=16)
print(store.tmp, flush=True)
os._exit(0)  # gone without cleaning up, like a killed run
"""


def test_recommit_replaces_and_stale_tmp_is_removed(tmp_path):
    import subprocess
    import sys

    first = LabelStore(tmp_path, (20, 20), mpp=1.0, chunk=16)
    first.add_instances([_square(0, 0, 3)])
    first.commit()
    out = subprocess.run(
        [sys.executable, "-c", _KILLED_WRITER, str(tmp_path)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    stale = Path(out.strip())  # an interrupted run's leftover: its process is gone
    assert stale.exists() and stale.parent == tmp_path
    live = LabelStore(tmp_path, (20, 20), mpp=1.0, chunk=16)  # a writer still at work
    second = LabelStore(tmp_path, (20, 20), mpp=1.0, chunk=16)
    assert not stale.exists() and live.tmp.exists()  # only the dead writer's is removed
    second.add_instances([_square(5, 5, 2), _square(10, 10, 2)])
    second.commit()
    assert int(load_labels(tmp_path).max().compute()) == 2
    left = live.tmp
    del live  # abandoned without commit or abort: removed
    assert not left.exists()


def test_slide_label_ids_are_the_cell_table_ids(tmp_path):
    s = synth.write_slide(
        tmp_path / "k.tif", assay="ki67", shape=(512, 512), mpp=0.5, seed=1,
        params=synth.SynthParams(tissue_fraction=0.95),
    )  # fmt: skip
    # 64 µm tiles = 128 px at 0.5 µm/px: 16 tiles, so many nuclei sit in halos and on tile edges
    config = AnalysisConfig(segmenter="classical", tile_size_um=64)
    store = senpath.analyze_slide(s.path, out=tmp_path / "res", assay="ki67", config=config)
    res = senpath.load_results(store)
    cells = res.cells.set_index("cell_id")
    assert res.summary["n_tiles"] > 4 and len(cells) > 20
    lab = load_labels(store).compute()
    amp = config.analysis_mpp
    assert lab.shape == (512, 512)  # the slide is at 0.5 µm/px, the analysis too
    ids = np.unique(lab[lab > 0])
    np.testing.assert_array_equal(ids, np.sort(cells.index.to_numpy()))
    area = ndimage.sum_labels(np.ones_like(lab), lab, ids) * amp**2
    np.testing.assert_allclose(area, cells.loc[ids, "nucleus_area_um2"], rtol=1e-9)
    cy, cx = np.asarray(ndimage.center_of_mass(np.ones_like(lab), lab, ids)).T
    np.testing.assert_allclose((cx + 0.5) * amp, cells.loc[ids, "x_um"], atol=1e-6)
    np.testing.assert_allclose((cy + 0.5) * amp, cells.loc[ids, "y_um"], atol=1e-6)
    # the labels are part of the committed store
    assert LABELS in read_manifest(store)["files"] and is_complete(store)
    assert not list(store.glob(".*.tmp"))
