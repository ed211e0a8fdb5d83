"""Atomic writes of the results store: a file appears under its final name whole, or not at all."""

from __future__ import annotations

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
