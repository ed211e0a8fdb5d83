"""Post-processing in worker processes (issue 18): a network on a GPU outruns one core's watershed
and measurement ~40-fold, so ``analyze_tiles(post_workers=N)`` hands each tile's maps to N
processes and keeps the results in tile order. The results are those of the serial path; workers
that die leave the rest to the analysing thread; the automatic choice is 0 on a CPU."""

from __future__ import annotations

import os
import threading
import types
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import pytest

pytest.importorskip("torch")

from senpath import post_workers, tile_engine  # noqa: E402
from senpath.post_workers import POST_WORKERS_ENV, post_workers_for  # noqa: E402
from senpath.slide_plan import SlidePlan  # noqa: E402
from senpath.testing import assert_same_tile_results  # noqa: E402
from senpath.tile_engine import analyze_tiles  # noqa: E402


@pytest.fixture(scope="module")
def serial(cnn_tile_plan: tuple[SlidePlan, Any]) -> list[tile_engine.TileResult]:
    plan, segmenter = cnn_tile_plan
    out = list(analyze_tiles(plan, range(plan.n_tiles), segmenter=segmenter, prefetch=0))
    assert sum(len(r.cells) for r in out) > 20  # nuclei were found at all
    return out


def test_worker_processes_give_the_serial_results(
    cnn_tile_plan: tuple[SlidePlan, Any], serial: list[tile_engine.TileResult]
) -> None:
    plan, segmenter = cnn_tile_plan
    got = list(analyze_tiles(plan, range(plan.n_tiles), segmenter=segmenter, post_workers=2))
    assert_same_tile_results(serial, got)
    pool = post_workers._POOLS[2]  # they did run in other processes
    pids = {p.pid for p in pool._processes.values()}
    assert pids and os.getpid() not in pids


class _DeadPool:
    """A process pool whose workers died: every result is BrokenProcessPool."""

    def __init__(self) -> None:
        self.submitted = 0

    def submit(self, fn: Any, *args: Any) -> Future[Any]:
        self.submitted += 1
        future: Future[Any] = Future()
        future.set_exception(BrokenProcessPool("a worker was killed"))
        return future


def _refuse(workers: int) -> Any:
    raise OSError("no more processes")


@pytest.mark.parametrize(
    ("pool", "message"),
    [(_DeadPool, "BrokenProcessPool: a worker was killed"), (None, "OSError: no more processes")],
    ids=["workers die", "workers cannot start"],
)
def test_failed_workers_leave_the_tiles_to_this_thread(
    cnn_tile_plan: tuple[SlidePlan, Any],
    serial: list[tile_engine.TileResult],
    monkeypatch: pytest.MonkeyPatch,
    pool: Any,
    message: str,
) -> None:
    plan, segmenter = cnn_tile_plan
    dead = pool() if pool is not None else None
    monkeypatch.setattr(post_workers, "_pool", (lambda workers: dead) if dead else _refuse)
    with pytest.warns(RuntimeWarning, match="post-processing worker processes stopped") as caught:
        got = list(analyze_tiles(plan, range(plan.n_tiles), segmenter=segmenter, post_workers=3))
    assert_same_tile_results(serial, got)  # nothing lost
    stopped = [str(w.message) for w in caught if "worker processes stopped" in str(w.message)]
    assert len(stopped) == 1 and message in stopped[0]  # one warning, not one per tile
    if dead is not None:
        assert 1 <= dead.submitted <= 6  # given up at the first dead result


def test_a_closed_run_with_workers_stops_the_network_thread(
    cnn_tile_plan: tuple[SlidePlan, Any],
) -> None:
    plan, segmenter = cnn_tile_plan
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
    assert post_workers_for(_on("cuda")) == post_workers.MAX_AUTO_POST_WORKERS == 8
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


class _GreetingPost:
    """Post-processing that warns once per tile (pickled to the workers by reference)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def on_grid(self, maps: Any, shape: Any, *, mpp: float) -> Any:
        import warnings

        warnings.warn(
            f"tile of shape {tuple(shape)}: post-processing said hello", UserWarning, stacklevel=2
        )
        return self.inner.on_grid(maps, shape, mpp=mpp)


class _Greeting:
    """The CNN segmenter with :class:`_GreetingPost` as its post-processing."""

    def __init__(self, segmenter: Any) -> None:
        self.inner, self.method, self.network = segmenter, segmenter.method, segmenter.network
        self.maps_to_labels = _GreetingPost(segmenter.maps_to_labels)

    def network_maps(self, images: Any, *, mpp: float, context: Any = None) -> Any:
        return self.inner.network_maps(images, mpp=mpp, context=context)

    def tile_batch(self, side_px: int) -> int:
        return 1


def test_warnings_in_the_workers_reach_the_caller(
    cnn_tile_plan: tuple[SlidePlan, Any], serial: list[tile_engine.TileResult]
) -> None:
    """A worker's warnings (a nucleus cut by the halo, ...) are given again in the analysing
    thread, where the caller's filters and ``catch_warnings`` see them, not only the worker's
    stderr."""
    plan, segmenter = cnn_tile_plan
    with pytest.warns(UserWarning, match="post-processing said hello") as caught:
        got = list(
            analyze_tiles(plan, range(plan.n_tiles), segmenter=_Greeting(segmenter), post_workers=2)
        )  # type: ignore[arg-type]
    assert_same_tile_results(serial, got)
    assert len([w for w in caught if "said hello" in str(w.message)]) == plan.n_tiles
