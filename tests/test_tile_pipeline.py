"""The tile engine's pipeline (issue 18): the network runs on the next tiles in a worker thread while
this one post-processes and measures; the results are those of the serial path, a cancel stops
it, and no more than ``prefetch`` batches wait."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")

import senpath  # noqa: E402
from senpath.config import AnalysisConfig  # noqa: E402
from senpath.slide_plan import (  # noqa: E402
    SlidePlan,
    read_grid_box,  # noqa: E402
)
from senpath.testing import assert_same_tile_results  # noqa: E402
from senpath.tile_engine import analyze_tiles  # noqa: E402


class Recorder:
    """Wraps a CNN segmenter's halves and records (event, tile count, thread name)."""

    def __init__(
        self, segmenter: Any, *, fail_at: int | None = None, ahead: tuple[int, int] | None = None
    ) -> None:
        self.inner, self.fail_at = segmenter, fail_at
        # (depth, tiles): the post step of tile k waits until the network has started on
        # min(k + 1 + depth, tiles) tiles, so "it ran ahead" does not depend on thread timing
        self.ahead = ahead
        self.events: list[tuple[str, int, str]] = []
        self.method = segmenter.method
        self.lock = threading.Condition()

    def _log(self, event: str, n: int) -> None:
        with self.lock:
            self.events.append((event, n, threading.current_thread().name))
            self.lock.notify_all()

    def network_maps(self, images: Any, *, mpp: float, context: Any = None) -> Any:
        n = sum(e == "network" for e, _, _ in self.events)
        if self.fail_at is not None and n == self.fail_at:
            raise RuntimeError("network failed on purpose")
        self._log("network", len(images))
        return self.inner.network_maps(images, mpp=mpp, context=context)

    def labels_from_maps(self, maps: Any, shape: Any, *, mpp: float) -> Any:
        if self.ahead is not None:
            depth, tiles = self.ahead
            k = self.count("post")
            with self.lock:  # bounded: a pipeline that never runs ahead fails below, not hangs
                self.lock.wait_for(lambda: self.count("network") >= min(k + 1 + depth, tiles), 30)
        self._log("post", 1)
        return self.inner.labels_from_maps(maps, shape, mpp=mpp)

    def tile_batch(self, side_px: int) -> int:
        return 1

    def segment(self, rgb: Any, *, mpp: float, concentrations: Any = None) -> Any:
        return self.inner.segment(rgb, mpp=mpp)

    def count(self, event: str) -> int:
        return sum(e == event for e, _, _ in self.events)


def test_halves_of_the_cnn_give_its_labels(cnn_tile_plan: tuple[SlidePlan, Any]) -> None:
    plan, segmenter = cnn_tile_plan
    for tile in plan.tiles[:3]:
        rgb = read_grid_box(senpath.open_slide(plan.path), tile.box, 0.5)
        (maps,) = segmenter.network_maps([rgb], mpp=0.5)
        np.testing.assert_array_equal(
            segmenter.labels_from_maps(maps, rgb.shape[:2], mpp=0.5),
            segmenter.segment(rgb, mpp=0.5),
        )


def test_an_analysis_tile_is_not_padded_again_for_the_network(
    cnn_tile_plan: tuple[SlidePlan, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tile that carries its 24 µm halo goes through the network as it is (its halo is the
    network's context); a tile on the slide's edge, with no real image on one side, still gets the
    16 µm reflected margin there. Before, every tile got the margin: 10 % more network pixels for
    a 512 µm tile."""
    plan, segmenter = cnn_tile_plan
    fed: list[tuple[int, int]] = []
    predict = segmenter.network.predict_maps

    def spy(batch: Any) -> Any:
        fed.extend(tuple(b.shape[:2]) for b in batch)
        return predict(batch)

    monkeypatch.setattr(segmenter.network, "predict_maps", spy)
    centre = next(i for i, t in enumerate(plan.tiles) if (t.row, t.col) == (1, 1))
    assert plan.tiles[centre].context == 48  # 24 µm at 0.5 µm/px on every side
    list(analyze_tiles(plan, [centre], segmenter=segmenter, prefetch=0))
    assert fed == [plan.tiles[centre].box.shape]  # 224² (a multiple of the stride): as read
    fed.clear()
    corner = next(i for i, t in enumerate(plan.tiles) if (t.row, t.col) == (0, 0))
    assert plan.tiles[corner].context == 0
    list(analyze_tiles(plan, [corner], segmenter=segmenter, prefetch=0))
    (y, x) = plan.tiles[corner].box.shape
    assert fed == [(y + 64, x + 64)]  # 32 px of reflected margin per side, as before


@pytest.mark.slow
def test_pipelined_results_equal_the_serial_ones(cnn_tile_plan: tuple[SlidePlan, Any]) -> None:
    plan, segmenter = cnn_tile_plan
    indices = range(plan.n_tiles)
    serial = list(analyze_tiles(plan, indices, segmenter=segmenter, prefetch=0))
    recorder = Recorder(segmenter, ahead=(2, plan.n_tiles))
    piped = list(analyze_tiles(plan, indices, segmenter=recorder, prefetch=2))  # type: ignore[arg-type]
    assert [r.index for r in piped] == list(indices)
    assert sum(len(r.cells) for r in serial) > 20  # nuclei were found at all
    assert_same_tile_results(serial, piped)
    # the network ran in the worker, the watershed here, and never more than 2 tiles ahead
    threads = {e: {name for ev, _, name in recorder.events if ev == e} for e in ("network", "post")}
    assert all(name.startswith("senpath-tiles") for name in threads["network"])
    assert threads["post"] == {threading.current_thread().name}
    networks_before_post = []
    n_net = 0
    for event, _, _ in recorder.events:
        if event == "network":
            n_net += 1
        else:
            networks_before_post.append(n_net)
    # when tile k (0-based) is post-processed, at most k + 1 + 2 tiles have been through the network
    assert all(n <= k + 3 for k, n in enumerate(networks_before_post))
    assert max(n - k for k, n in enumerate(networks_before_post)) >= 2  # it did run ahead


def test_a_closed_pipeline_stops_the_network(cnn_tile_plan: tuple[SlidePlan, Any]) -> None:
    plan, segmenter = cnn_tile_plan
    recorder = Recorder(segmenter)
    results = analyze_tiles(plan, range(plan.n_tiles), segmenter=recorder, prefetch=2)  # type: ignore[arg-type]
    next(results)
    results.close()  # what a cancelled slide does to it
    stopped_at = recorder.count("network")
    assert stopped_at <= 3  # the tile taken and at most 2 ahead
    assert not [t for t in threading.enumerate() if t.name.startswith("senpath-tiles")]
    assert recorder.count("network") == stopped_at


@pytest.mark.slow
def test_a_cancelled_slide_stops_within_prefetch(
    cnn_tile_plan: tuple[SlidePlan, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import senpath.slide_analysis as slide_analysis

    plan, segmenter = cnn_tile_plan
    recorder = Recorder(segmenter)
    monkeypatch.setattr(slide_analysis, "plan_segmenter", lambda plan: recorder)

    class Cancelled(Exception):
        pass

    def progress(done: int, total: int) -> None:
        if done == 2:
            raise Cancelled

    with pytest.raises(Cancelled):
        senpath.analyze_slide(
            plan.path, out=tmp_path, assay="ki67", config=plan.config, tile_progress=progress
        )
    assert recorder.count("network") <= 2 + 2
    assert not [t for t in threading.enumerate() if t.name.startswith("senpath-tiles")]


def test_an_error_in_the_worker_is_raised_for_its_tile(
    cnn_tile_plan: tuple[SlidePlan, Any],
) -> None:
    plan, segmenter = cnn_tile_plan
    recorder = Recorder(segmenter, fail_at=3)
    results = analyze_tiles(plan, range(plan.n_tiles), segmenter=recorder, prefetch=2)  # type: ignore[arg-type]
    got = [next(results) for _ in range(3)]
    assert [r.index for r in got] == [0, 1, 2]
    with pytest.raises(RuntimeError, match="on purpose"):
        next(results)


@pytest.mark.slow
def test_provenance_records_the_precision_auto_chose(
    cnn_tile_plan: tuple[SlidePlan, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``precision = "auto"`` in the config; the provenance says what it resolved to on this CPU."""
    import json

    from senpath.segment import predict, runtime

    plan, _ = cnn_tile_plan
    monkeypatch.delenv(runtime.PRECISION_ENV, raising=False)
    monkeypatch.setattr(predict, "_CACHE", {})  # a network built for this test, not a cached one
    # the calibration's outcome (fp32, not the bf16 the test suite pins), without its seconds
    picked: list[str] = []

    def choose(build: Any, spec: Any = None, *, refresh: bool = False) -> str:
        picked.append("fp32")
        return "fp32"

    monkeypatch.setattr(runtime, "choose_cpu_precision", choose)
    store = senpath.analyze_slide(plan.path, out=tmp_path, assay="ki67", config=plan.config)
    provenance = json.loads((store / "provenance.json").read_text())
    assert picked == ["fp32"] and provenance["config"]["precision"] == "auto"
    assert provenance["network_precision"] == "fp32"
    classical = senpath.analyze_slide(
        plan.path, out=tmp_path / "classical", assay="ki67",
        config=AnalysisConfig(segmenter="classical", tile_size_um=64),
    )  # fmt: skip
    assert json.loads((classical / "provenance.json").read_text())["network_precision"] is None
