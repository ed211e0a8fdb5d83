"""Atomic writes of the results store: a file appears under its final name whole, or not at all."""

from __future__ import annotations

import os
import stat

import pytest

from senpath.results import atomic_path, atomic_write_bytes


def test_atomic_path_renames_on_success_and_cleans_up_on_error(tmp_path):
    target = tmp_path / "sub" / "table.bin"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".table.bin.")
        tmp.write_bytes(b"abc")
        assert not target.exists()  # not under the final name until the block succeeds
    assert target.read_bytes() == b"abc"
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt  # killed mid-write
    assert target.read_bytes() == b"abc"  # the old file is untouched
    assert [p.name for p in target.parent.iterdir()] == ["table.bin"]  # no temporary left


def test_atomic_write_bytes_replaces_whole_files(tmp_path):
    target = tmp_path / "summary.json"
    atomic_write_bytes(target, b"{}")
    atomic_write_bytes(target, b'{"n_cells": 3}')
    assert target.read_bytes() == b'{"n_cells": 3}'
    assert len(list(tmp_path.iterdir())) == 1


@pytest.fixture
def umask_022():
    """Run the test under the usual shared-machine umask, then restore the caller's."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_atomic_path_gives_the_mode_the_umask_allows(tmp_path, umask_022):
    target = tmp_path / "cells.parquet"
    atomic_write_bytes(target, b"x")
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # not mkstemp's 0600
    os.umask(0o027)
    atomic_write_bytes(target, b"y")
    assert stat.S_IMODE(target.stat().st_mode) == 0o640


def test_a_whole_store_is_readable_by_colleagues_under_umask_022(tmp_path, umask_022):
    from senpath import synth
    from senpath.config import AnalysisConfig
    from senpath.slide_analysis import analyze_slide

    s = synth.write_slide(tmp_path / "k.tif", assay="ki67", shape=(256, 256), mpp=0.5, seed=3)
    store = analyze_slide(
        s.path, out=tmp_path / "res", assay="ki67", config=AnalysisConfig(segmenter="classical")
    )
    modes = {
        p.relative_to(store).as_posix(): stat.S_IMODE(p.stat().st_mode)
        for p in [store, *store.rglob("*")]
    }
    assert modes["cells.parquet"] == 0o644 and modes["labels.ome.zarr"] == 0o755
    assert {m for m in modes.values()} <= {0o644, 0o755}, modes
