"""Analysis widget: a region in memory and the whole slide into a store, in a worker thread with
progress and cancel (the GUI thread stays free)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from senpath.results import read_manifest


def _widget(make_napari_viewer, slide: Path):
    viewer = make_napari_viewer()
    viewer.open(str(slide), plugin="senpath-napari")
    _, widget = viewer.window.add_plugin_dock_widget("senpath-napari", "Analyse")
    widget.assay_combo.setCurrentText("ki67")
    widget.segmenter_combo.setCurrentText("classical")
    return viewer, widget


def test_region_analysis_runs_in_a_worker(make_napari_viewer, qtbot, analysed) -> None:
    slide, _ = analysed
    viewer, widget = _widget(make_napari_viewer, slide)
    progress: list[tuple[int, int]] = []
    worker = widget.run(scope="current view", box_um=(0.0, 0.0, 200.0, 300.0))
    worker.yielded.connect(progress.append)
    qtbot.waitUntil(lambda: widget.last_result is not None, timeout=60000)
    assert progress and progress[-1][0] == progress[-1][1]
    cells, labels, origin = widget.last_result
    assert labels.shape == (400, 600) and origin == (0.0, 0.0)
    assert len(cells) > 10 and set(np.unique(labels)) - {0} == set(cells["cell_id"])
    assert "ki67 calls (region)" in [layer.name for layer in viewer.layers]
    assert "positive" in widget.result_label.text()

    # the quick look finds the cells the stored run of the slide holds in the region, measured and
    # called the same (the same tile engine, stain vectors and glass intensity)
    _, store = analysed
    saved = pd.read_parquet(store / "cells.parquet")
    y, x = saved["y_um"] / 0.5 - 0.5, saved["x_um"] / 0.5 - 0.5
    saved = saved[(y < 400) & (x < 600)]
    columns = list(cells.columns.drop("cell_id"))
    by_place = ["y_um", "x_um"]
    pd.testing.assert_frame_equal(
        cells[columns].sort_values(by_place).reset_index(drop=True),
        saved[columns].sort_values(by_place).reset_index(drop=True),
        check_exact=True,
    )


def test_whole_slide_analysis_and_cancel(make_napari_viewer, qtbot, analysed, tmp_path) -> None:
    slide, _ = analysed
    viewer, widget = _widget(make_napari_viewer, slide)
    out = tmp_path / "cancelled"
    widget.run(scope="whole slide", out=out)
    assert not widget.run_button.isEnabled()
    widget.cancel()
    qtbot.waitUntil(widget.run_button.isEnabled, timeout=60000)
    assert "cancelled" in widget.result_label.text(), widget.result_label.text()
    assert "failed" not in widget.result_label.text()
    assert read_manifest(out / slide.stem) is None  # nothing committed

    out = tmp_path / "done"
    widget.run(scope="whole slide", out=out)
    qtbot.waitUntil(lambda: widget.last_result is not None, timeout=120000)
    assert read_manifest(out / slide.stem) is not None
    assert widget.last_result == out / slide.stem
    assert "ki67 calls" in [layer.name for layer in viewer.layers]


def test_cancel_says_cancelling_at_once_and_leaves_no_temporary_folders(
    make_napari_viewer, qtbot, analysed, tmp_path, monkeypatch
) -> None:
    import tempfile

    from senpath import pipeline

    slide, _ = analysed
    temp_root = tmp_path / "temp-root"  # the process's temp root, watched for leftovers
    temp_root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp_root))
    viewer, widget = _widget(make_napari_viewer, slide)
    settings = tmp_path / "small-tiles.toml"
    settings.write_text("[analysis]\ntile_size_um = 128\n")  # 9 tiles: cancel lands mid-slide
    widget.settings_edit.setText(str(settings))
    real = pipeline.analyze_slide

    def held(*args, tile_progress, **kwargs):
        def progress(done: int, total: int) -> None:
            assert total > 2
            tile_progress(done, total)
            if done == 1:  # the label store's temporary is on disk: wait here for Cancel
                widget._stop.wait(30)

        return real(*args, tile_progress=progress, **kwargs)

    monkeypatch.setattr(pipeline, "analyze_slide", held)
    out = tmp_path / "out"
    seen: list[str] = []

    def cancel_at_first_tile(_value) -> None:
        if not seen:
            widget.cancel()
            seen.append(widget.result_label.text())
            seen.append(str(widget.cancel_button.isEnabled()))

    worker = widget.run(scope="whole slide", out=out)
    worker.yielded.connect(cancel_at_first_tile)
    qtbot.waitUntil(widget.run_button.isEnabled, timeout=60000)
    assert seen == ["cancelling…", "False"], "Cancel says so at once and cannot be pressed twice"
    assert widget.result_label.text() == "cancelled"
    assert read_manifest(out / slide.stem) is None
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*")) if out.exists() else []
    assert not [p for p in left if p.endswith(".tmp")], left
    assert not (out / slide.stem).exists(), f"the cancelled run's store is removed: {left}"
    assert list(temp_root.iterdir()) == []


def test_a_one_tile_analysis_shows_work_then_a_full_bar(
    make_napari_viewer, qtbot, analysed
) -> None:
    # issue 15: a region inside one tile showed "0 %" all through its only tile, the whole run
    slide, _ = analysed
    viewer, widget = _widget(make_napari_viewer, slide)
    shown: list[tuple[int, int, str]] = []

    def record() -> None:
        bar = widget.progress
        shown.append((bar.value(), bar.maximum(), bar.text()))

    widget.progress.valueChanged.connect(lambda _: record())
    ticks: list[tuple[int, int]] = []
    worker = widget.run(scope="current view", box_um=(0.0, 0.0, 40.0, 40.0))
    worker.yielded.connect(ticks.append)
    record()  # what the bar shows as the run starts
    qtbot.waitUntil(lambda: widget.last_result is not None, timeout=60000)
    qtbot.waitUntil(widget.run_button.isEnabled, timeout=10000)
    assert ticks == [(1, 1)], "the region lies in one tile"
    value, maximum, text = shown[0]
    assert maximum == 0, f"while the only tile runs the bar is busy, not at 0 %: {shown}"
    bar = widget.progress
    assert bar.maximum() == 1 and bar.value() == 1 and bar.text() == "100%", shown


def test_a_model_trained_on_normalised_slides_run_without_it_is_named(
    make_napari_viewer, qtbot, analysed, tmp_path, monkeypatch
) -> None:
    """The widget runs ``analyze_slide`` itself, not ``senpath run``: the warning ``senpath run``
    prints at its start (a network trained with the assay's counterstain brought up to a level
    this run does not use) is shown here too, once per run, with the setting that mends it."""
    import napari.utils.notifications as notifications
    import torch
    from senpath.segment.net import NetConfig, build_model
    from senpath.segment.postprocess import PostprocessConfig
    from senpath.segment.weights import export_checkpoint

    cfg = NetConfig(widths=(4, 8))
    torch.save(
        {
            "model": build_model(cfg).state_dict(),
            "net_config": cfg.to_dict(),
            "step": 1,
            "args": {"counterstain_references": "{'sabgal-eosin': 0.7}"},
        },
        tmp_path / "ckpt.pt",
    )
    export_checkpoint(
        tmp_path / "ckpt.pt", tmp_path / "mine", postprocess=PostprocessConfig().to_dict()
    )
    shown: list[str] = []
    monkeypatch.setattr(notifications, "show_warning", shown.append)
    slide, _ = analysed
    viewer, widget = _widget(make_napari_viewer, slide)
    settings = tmp_path / "mine.toml"
    settings.write_text(f'[analysis]\nsegmenter = "cnn"\nmodel = "{tmp_path / "mine"}"\n')
    widget.settings_edit.setText(str(settings))
    for assay, expected in (("sabgal-eosin", 1), ("ki67", 0)):  # ki67: not trained normalised
        shown.clear()
        widget.assay_combo.setCurrentText(assay)
        widget.last_result = None
        widget.run(scope="current view", box_um=(0.0, 0.0, 40.0, 40.0))
        qtbot.waitUntil(lambda: widget.last_result is not None, timeout=60000)
        qtbot.waitUntil(widget.run_button.isEnabled, timeout=10000)
        assert len(shown) == expected, shown
    widget.assay_combo.setCurrentText("sabgal-eosin")
    widget.run(scope="current view", box_um=(0.0, 0.0, 40.0, 40.0))
    qtbot.waitUntil(widget.run_button.isEnabled, timeout=60000)
    line = shown[-1]
    assert "sabgal-eosin" in line and "counterstain_reference_od = 0.7" in line
    assert "the settings file" in line and "--config" not in line


def test_a_run_that_ends_after_its_widget_is_gone_touches_nothing(
    make_napari_viewer, qtbot, analysed
) -> None:
    """Closing the viewer (or the dock) while an analysis runs deletes the widget's Qt objects; the
    worker's end must not reach them (it did: a deleted QLabel raised in Qt's event loop, in
    whatever test ran next)."""
    slide, _ = analysed
    viewer, widget = _widget(make_napari_viewer, slide)
    label = widget.result_label
    ended: list[str] = []
    worker = widget.run(scope="current view", box_um=(0.0, 0.0, 200.0, 300.0))
    worker.finished.connect(lambda: ended.append("finished"))
    widget.setParent(None)
    widget.deleteLater()
    qtbot.waitUntil(lambda: _deleted(label), timeout=10000)
    qtbot.waitUntil(lambda: bool(ended), timeout=60000)
    qtbot.wait(200)  # the worker's last signals delivered (pytest-qt fails on any exception)


def _deleted(widget) -> bool:
    try:
        widget.objectName()
    except RuntimeError:
        return True
    return False
