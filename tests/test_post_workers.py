"""Post-processing in worker processes (issue 18): a network on a GPU outruns one core's watershed
and measurement ~40-fold, so ``analyze_tiles(post_workers=N)`` hands each tile's maps to N
processes and keeps the results in tile order. The results are those of the serial path; workers
that die leave the rest to the analysing thread; the automatic choice is 0 on a CPU."""

from __future__ import annotations

import threading
import types
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("torch")

from senpath import synth, tile_engine  # noqa: E402
from senpath.config import AnalysisConfig, get_assay  # noqa: E402
from senpath.slide_plan import SlidePlan, plan_slide  # noqa: E402
from senpath.tile_engine import (  # noqa: E402
    POST_WORKERS_ENV,
    analyze_tiles,
    plan_segmenter,
    post_workers_for,
)

#: 64 µm tiles (128 px at 0.5 µm/px): a 384-px slide has 9.
CONFIG = AnalysisConfig(segmenter="cnn", device="cpu", tile_size_um=64)


@pytest.fixture(scope="module")
def slide_plan(tmp_path_factory: pytest.TempPathFactory) -> tuple[SlidePlan, Any]:
    root = tmp_path_factory.mktemp("post_workers")
    s = synth.write_slide(
        root / "k.tif", assay="ki67", shape=(384, 384), mpp=0.5, seed=7,
        params=synth.SynthParams(tissue_fraction=0.95),
    )  # fmt: skip
    plan = plan_slide(s.path, assay=get_assay("ki67"), config=CONFIG)
    assert plan.n_tiles == 9
    return plan, plan_segmenter(plan)


@pytest.fixture(scope="module")
def serial(slide_plan: tuple[SlidePlan, Any]) -> list[tile_engine.TileResult]:
    plan, segmenter = slide_plan
    out = list(analyze_tiles(plan, range(plan.n_tiles), segmenter=segmenter, prefetch=0))
    assert sum(len(r.cells) for r in out) > 20  # nuclei were found at all
    return out


def _assert_same(a: list[tile_engine.TileResult], b: list[tile_engine.TileResult]) -> None:
    assert [r.index for r in a] == [r.index for r in b]
    for ra, rb in zip(a, b, strict=True):
        pd.testing.assert_frame_equal(ra.cells, rb.cells)
        assert len(ra.instances) == len(rb.instances)
        for ia, ib in zip(ra.instances, rb.instances, strict=True):
            assert (ia.local_label, ia.bbox) == (ib.local_label, ib.bbox)
            np.testing.assert_array_equal(ia.mask, ib.mask)


def test_worker_processes_give_the_serial_results(
    slide_plan: tuple[SlidePlan, Any], serial: list[tile_engine.TileResult]
) -> None:
    plan, segmenter = slide_plan
    got = list(analyze_tiles(plan, range(plan.n_tiles), segmenter=segmenter, post_workers=2))
    _assert_same(serial, got)
    pool = tile_engine._POST_POOLS[2]  # they did run in other processes
    pids = {p.pid for p in pool._processes.values()}
    assert pids and all(pid != __import__("os").getpid() for pid in pids)


class _DeadPool:
    """A process pool whose workers died: every result is BrokenProcessPool."""

    def __init__(self) -> None:
        self.submitted = 0

    def submit(self, fn: Any, *args: Any) -> Future[Any]:
        self.submitted += 1
        future: Future[Any] = Future()
        future.set_exception(BrokenProcessPool("a worker was killed"))
        return future


def test_dead_workers_leave_the_tiles_to_this_thread(
    slide_plan: tuple[SlidePlan, Any],
    serial: list[tile_engine.TileResult],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plan, segmenter = slide_plan
    dead = _DeadPool()
    monkeypatch.setattr(tile_engine, "_post_pool", lambda workers: dead)
    with pytest.warns(RuntimeWarning, match="post-processing worker processes stopped") as caught:
        got = list(analyze_tiles(plan, range(plan.n_tiles), segmenter=segmenter, post_workers=3))
    _assert_same(serial, got)  # nothing lost
    assert len([w for w in caught if "worker processes stopped" in str(w.message)]) == 1
    assert 1 <= dead.submitted <= 6  # given up at the first dead result, not once per tile


def test_workers_that_cannot_start_leave_the_tiles_to_this_thread(
    slide_plan: tuple[SlidePlan, Any],
    serial: list[tile_engine.TileResult],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plan, segmenter = slide_plan

    def refuse(workers: int) -> Any:
        raise OSError("no more processes")

    monkeypatch.setattr(tile_engine, "_post_pool", refuse)
    with pytest.warns(RuntimeWarning, match="OSError: no more processes"):
        got = list(analyze_tiles(plan, range(plan.n_tiles), segmenter=segmenter, post_workers=2))
    _assert_same(serial, got)


def test_a_closed_run_with_workers_stops_the_network_thread(
    slide_plan: tuple[SlidePlan, Any],
) -> None:
    plan, segmenter = slide_plan
    results = analyze_tiles(plan, range(plan.n_tiles), segmenter=segmenter, post_workers=2)
    first = next(results)
    assert first.index == 0
    results.close()  # what a cancelled slide does
    assert not [t for t in threading.enumerate() if t.name.startswith("senpath-tiles")]


def _on(device: str) -> Any:
    return types.SimpleNamespace(
        network=types.SimpleNamespace(device=types.SimpleNamespace(type=device))
    )


def test_the_automatic_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(POST_WORKERS_ENV, raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert post_workers_for(_on("cpu")) == 0  # the network's threads hold the cores
    assert post_workers_for(types.SimpleNamespace()) == 0  # classical: no network
    assert post_workers_for(_on("cuda")) == tile_engine.MAX_AUTO_POST_WORKERS == 8
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert post_workers_for(_on("cuda")) == 2  # a core for the network's feeder, one for here
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0})
    assert post_workers_for(_on("cuda")) == 0
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.setattr(
        "multiprocessing.current_process", lambda: types.SimpleNamespace(daemon=True)
    )
    assert post_workers_for(_on("cuda")) == 0  # a dask worker may not start processes


@pytest.mark.parametrize("value", ["-1", "two", "1.5", "٣"])
def test_a_bad_setting_is_named(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(POST_WORKERS_ENV, value)
    with pytest.raises(ValueError, match=f"{POST_WORKERS_ENV}=.* is not a number of worker"):
        post_workers_for(_on("cuda"))


def test_the_setting_overrides_the_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(POST_WORKERS_ENV, "3")
    assert post_workers_for(_on("cpu")) == 3
    monkeypatch.setenv(POST_WORKERS_ENV, " 0 ")
    assert post_workers_for(_on("cuda")) == 0
