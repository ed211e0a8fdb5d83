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
    store.flush()  # the chunks held in memory, into the temporary array
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
    store.flush()
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


class _CountingArray:
    """A zarr array that counts the boxes written into it."""

    def __init__(self, array):
        self.array, self.writes = array, 0
        self.shape, self.chunks, self.dtype = array.shape, array.chunks, array.dtype

    def __getitem__(self, key):
        return self.array[key]

    def __setitem__(self, key, value):
        self.writes += 1
        self.array[key] = value


def _zarr_array(tmp_path, shape, chunk):
    import zarr

    return zarr.open_array(str(tmp_path / "a.zarr"), mode="w", shape=shape, chunks=(chunk, chunk),
                           dtype="int32", fill_value=0, zarr_format=2)  # fmt: skip


def test_the_chunk_cache_reads_and_writes_as_the_array_does(tmp_path):
    """Random boxes, some across several chunks and the image's edge, written and read through
    a cache of 3 chunks: every read matches a plain array at once, and the zarr array after flush."""
    from senpath.labels import ChunkCache

    rng = np.random.default_rng(3)
    shape = (70, 45)
    target, truth = _zarr_array(tmp_path, shape, 16), np.zeros(shape, np.int32)
    cache = ChunkCache(target, capacity=3)
    for _ in range(200):
        y0, x0 = int(rng.integers(0, 69)), int(rng.integers(0, 44))
        y1, x1 = y0 + int(rng.integers(1, 40)), x0 + int(rng.integers(1, 40))  # may pass the edge
        box = (slice(y0, y1), slice(x0, x1))
        np.testing.assert_array_equal(cache[box], truth[box])
        block = rng.integers(0, 5, size=truth[box].shape, dtype=np.int32)
        cache[box] = block
        truth[box] = block
        assert len(cache._held) <= 3
    cache[60:70, 30:45] = 9  # a scalar fills the box, as numpy's
    truth[60:70, 30:45] = 9
    np.testing.assert_array_equal(cache[0:70, 0:45], truth)
    cache.flush()
    np.testing.assert_array_equal(np.asarray(target[:]), truth)
    with pytest.raises(TypeError, match="step 1"):
        cache[0:10:2, 0:10]


def test_tiles_pasted_in_grid_order_write_each_chunk_about_once_per_tile_row(tmp_path):
    """Tile cores on the chunk grid with a halo of nuclei across their edges: each tile meets 9
    chunks. Written through, that is 9 chunk writes per tile (each a decode, merge, compress);
    through the cache, about 3 per chunk for the whole slide."""
    from senpath.labels import ChunkCache
    from senpath.tiling import Box, Instance, paste

    side, n = 32, 6  # 6 x 6 tiles of 32 px, chunks of 32 px
    tiles = []
    for r in range(n):
        for c in range(n):
            y0, x0 = max(0, r * side - 3), max(0, c * side - 3)
            y1, x1 = min(n * side, (r + 1) * side + 3), min(n * side, (c + 1) * side + 3)
            tiles.append([Instance(Box(y0, x0, y1, x1), np.ones((y1 - y0, x1 - x0), bool), 1)])
    plain = np.zeros((n * side,) * 2, np.int32)
    for t in tiles:
        paste(plain, t, next_id=1)
    cached_target = _CountingArray(_zarr_array(tmp_path / "cached", (n * side,) * 2, side))
    cache = ChunkCache(cached_target)
    for t in tiles:
        paste(cache, t, next_id=1)
    cache.flush()
    np.testing.assert_array_equal(np.asarray(cached_target.array[:]), plain)
    # through, one box per tile covers up to 9 chunks: zarr re-encodes each of them
    chunk_writes_through = sum(
        len(
            range(max(0, r * side - 3) // side, (min(n * side, (r + 1) * side + 3) - 1) // side + 1)
        )
        * len(
            range(max(0, c * side - 3) // side, (min(n * side, (c + 1) * side + 3) - 1) // side + 1)
        )
        for r in range(n)
        for c in range(n)
    )
    assert chunk_writes_through == 4 * 4 + 4 * 4 * 6 + 9 * 16  # corners 4, edges 6, inside 9
    assert cached_target.writes <= 3 * n * n  # each of the 36 chunks about once per tile row
    assert cached_target.writes < chunk_writes_through / 2.5
