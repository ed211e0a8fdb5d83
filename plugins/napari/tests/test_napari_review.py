"""Review widget driven as a person would: open a slide's results, flip calls, exclude a cell, step
through the near-threshold queue with the keyboard, move the threshold, delete and paint nuclei,
save; then check the store, the audit log and a re-export changed exactly as intended.

Writes ``review_widget.png`` (the widget) and ``review_viewer.png`` (the whole window) to the
screenshot folder (``$SENPATH_SCREENSHOTS``, default ``results/screenshots``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import senpath
from scipy import ndimage as ndi
from senpath.corrections import read_log

from senpath_napari import _layers


def _press(viewer, key: str) -> None:
    """Run the viewer's binding of ``key`` (what pressing it does)."""
    from napari.utils.key_bindings import KeyBinding

    viewer.keymap[KeyBinding.from_str(key)](viewer)


def _export(root: Path) -> pd.Series:
    out = root / "markers"
    subprocess.run(
        [sys.executable, "-c", "from senpath.cli import main; main()", "export", str(root),
         "--by", "slide", "--format", "csv", "--out", str(out)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return pd.read_csv(f"{out}.csv").iloc[0]


def _open(make_napari_viewer, store: Path):
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1500, 950)
    viewer.open(str(store), plugin="senpath-napari")
    _, widget = viewer.window.add_plugin_dock_widget("senpath-napari", "Review and correct")
    assert widget.session is not None and widget.marker == "ki67"  # picked up from the layers
    return viewer, widget


def test_review_corrections_reach_store_log_and_export(
    make_napari_viewer, qtbot, store: Path, screenshot_dir: Path
) -> None:
    before = _export(store.parent)
    viewer, widget = _open(make_napari_viewer, store)
    raw = senpath.load_results(store, corrections=False).cells.set_index("cell_id")
    amp = widget.session.label_mpp
    interior = raw[raw["x_um"].between(40, 340) & raw["y_um"].between(40, 340)]

    # 1. pick the flip mode (a click only inspects by default), click a positive cell: it flips
    widget.click_combo.setCurrentText("flip call")
    flipped = int(interior.index[interior["ki67_positive"]][0])
    assert widget.click_at(raw.loc[flipped, "y_um"], raw.loc[flipped, "x_um"]) == flipped
    # 2. click another with the exclude action
    excluded = int(interior.index[~interior["ki67_positive"]][0])
    widget.click_at(
        raw.loc[excluded, "y_um"], raw.loc[excluded, "x_um"], action="exclude / include"
    )
    # 3. the near-threshold queue, with the keyboard
    widget.band_spin.setValue(0.2)
    queue = widget.build_queue()
    assert queue and flipped not in queue and excluded not in queue
    _press(viewer, "Shift-N")
    queued = widget.current_cell
    assert queued == queue[0]
    _press(viewer, "Shift-F")
    # 4. move the threshold (live preview), then apply it to the slide
    widget.spin.setValue(0.25)
    assert widget.preview_label.text().startswith("at 0.250 OD")
    widget.apply_threshold()
    # 5. delete a nucleus (fill with 0) and paint a missing one, in an editable region
    others = interior.drop(index=[flipped, excluded, queued], errors="ignore")
    deleted = int(others.index[len(others) // 2])
    cy, cx = int(raw.loc[deleted, "y_um"] / amp), int(raw.loc[deleted, "x_um"] / amp)
    y0, x0 = cy - 50, cx - 50
    editor = widget.open_editor((y0, x0, y0 + 100, x0 + 100))
    assert isinstance(editor.data, np.ndarray) and editor.translate[-1] == pytest.approx(x0 * amp)
    editor.fill((cy - y0, cx - x0), 0)
    qtbot.waitUntil(lambda: read_log(store)[-1]["action"] == "edit_nuclei", timeout=10000)
    new_id = widget.new_nucleus_id()
    far = ndi.distance_transform_edt(np.asarray(editor.data) == 0)
    far[:10], far[-10:], far[:, :10], far[:, -10:] = 0, 0, 0, 0
    py, px = np.unravel_index(int(np.argmax(far)), far.shape)
    assert far[py, px] > 6
    editor.paint((py, px), new_id)
    qtbot.waitUntil(lambda: new_id in set(widget.session.cells["cell_id"]), timeout=10000)
    widget.save()
    # the call overlay shows the corrections (fresh dask names: no stale cached chunk)
    calls = next(layer for layer in viewer.layers if layer.name == "ki67 calls")
    level0 = calls.data[0] if calls.multiscale else calls.data

    def overlay_at(cell: int) -> int:
        y, x = int(raw.loc[cell, "y_um"] / amp), int(raw.loc[cell, "x_um"] / amp)
        return int(_layers.overlay_class(np.asarray(level0[y, x])))

    assert overlay_at(flipped) == _layers.MANUAL_NEGATIVE, "a call set by hand is drawn apart"
    assert overlay_at(excluded) == _layers.EXCLUDED and overlay_at(deleted) == 0
    points = next(layer for layer in viewer.layers if layer.name == "cells")
    assert points.features["cell_id"].tolist() == widget.session.cells["cell_id"].tolist()

    widget.grab().save(str(screenshot_dir / "review_widget.png"))
    viewer.scene.camera.center = (cy * amp, cx * amp)
    viewer.scene.camera.zoom = 3.0
    viewer.window.screenshot(str(screenshot_dir / "review_viewer.png"), canvas_only=False)
    assert (screenshot_dir / "review_widget.png").stat().st_size > 10_000

    # the audit log: what, when, previous value
    log = read_log(store)
    assert [e["action"] for e in log] == [
        "start", "set_call", "exclude", "set_call", "set_thresholds", "edit_nuclei", "edit_nuclei",
    ]  # fmt: skip
    assert log[1]["cell_ids"] == [flipped] and log[1]["previous"][0]["positive"] is True
    assert log[2]["cell_ids"] == [excluded] and log[2]["previous"] == [False]
    assert log[3]["cell_ids"] == [queued]
    assert log[4]["previous"] == {"ki67": 0.15} and log[4]["new"] == {"ki67": 0.25}
    assert log[5]["removed"] == [deleted] and log[5]["added"] == []
    assert log[6]["added"] == [new_id] and log[6]["removed"] == []
    # the store: corrected cells, exactly
    res = senpath.load_results(store)
    c = res.cells.set_index("cell_id")
    assert deleted not in c.index and new_id in c.index
    assert c.loc[new_id, "nucleus_area_um2"] == pytest.approx(
        (np.asarray(editor.data) == new_id).sum() * amp**2
    )
    expected = c["ki67_od"] >= 0.25
    expected[flipped] = False
    expected[queued] = not bool(raw.loc[queued, "ki67_positive"])
    assert c["ki67_positive"].equals(expected.astype(bool))
    assert c.loc[excluded, "excluded"] and int(c["excluded"].sum()) == 1
    assert set(c.index[c["ki67_manual"]]) == {flipped, queued}
    summary = json.loads((store / "summary.json").read_text())
    kept = c[~c["excluded"]]
    assert summary["markers"]["ki67"]["n_positive"] == int(kept["ki67_positive"].sum())
    assert senpath.results.is_complete(store, senpath.results.read_manifest(store)["identity"])
    # re-export: the slide's row changed by these corrections and nothing else
    after = _export(store.parent)
    assert after["ki67_n_cells"] == before["ki67_n_cells"] - 1 - 1 + 1  # excluded, deleted, added
    assert after["ki67_n_positive"] == int(kept["ki67_positive"].sum())
    assert after["ki67_threshold_od"] == pytest.approx(0.25)
    assert before["ki67_threshold_od"] == pytest.approx(0.15)


def test_undo_from_the_keyboard_and_reopen(make_napari_viewer, qtbot, store: Path) -> None:
    viewer, widget = _open(make_napari_viewer, store)
    cells = widget.session.cells
    cid = int(cells["cell_id"].iat[len(cells) // 2])
    was = bool(widget.session.cell(cid)["ki67_positive"])
    row = widget.session.cell(cid)
    widget.click_combo.setCurrentText("flip call")
    widget.click_at(row["y_um"], row["x_um"])
    assert bool(widget.session.cell(cid)["ki67_positive"]) != was
    _press(viewer, "Shift-U")
    assert bool(widget.session.cell(cid)["ki67_positive"]) == was
    # the nucleus editor over the visible view (no ROI), then closed with nothing changed
    viewer.scene.camera.center = (row["y_um"], row["x_um"])
    viewer.scene.camera.zoom = 4.0
    editor = widget.open_editor()
    h, w = editor.data.shape
    assert 0 < h <= 2048 and 0 < w <= 2048
    y0, x0 = widget.editor_origin
    assert editor.data[int(row["y_um"] / 0.5) - y0, int(row["x_um"] / 0.5) - x0] == cid
    qtbot.wait(200)  # let the canvas draw the new layer before it goes
    widget.close_editor()
    qtbot.wait(200)
    assert editor not in viewer.layers
    assert [e["action"] for e in read_log(store)] == ["start", "set_call", "undo"]
    widget.save()
    res = senpath.load_results(store)
    assert not res.cells.set_index("cell_id").loc[cid, "ki67_manual"]


def test_threshold_profile_for_the_batch(make_napari_viewer, store: Path, tmp_path: Path) -> None:
    from senpath.config import load_assays

    _, widget = _open(make_napari_viewer, store)
    widget.spin.setValue(0.3)
    widget.apply_threshold()
    path = widget.save_profile(tmp_path / "lab.toml", name="lab-ki67")
    assert load_assays(path)["lab-ki67"].marker("ki67").threshold_od == pytest.approx(0.3)


def test_canvas_size_uses_the_public_canvas_model(make_napari_viewer):
    from types import SimpleNamespace

    from senpath_napari._review_widget import _canvas_size

    viewer = make_napari_viewer()
    viewer.window._qt_window.resize(900, 700)
    viewer.window._qt_window.show()
    h, w = _canvas_size(viewer)
    qt = tuple(viewer.window._qt_viewer.canvas.size)  # the private path, for comparison only
    assert (h, w) == tuple(viewer.canvas.size) == qt, "the public model follows the real canvas"
    assert (h, w) != (600, 800)  # the model's default: the window's size reached it
    # an older napari: only the private Qt canvas has it; with neither, a typical canvas
    old = SimpleNamespace(
        window=SimpleNamespace(_qt_viewer=SimpleNamespace(canvas=SimpleNamespace(size=(5, 6))))
    )
    assert _canvas_size(old) == (5, 6)
    assert _canvas_size(SimpleNamespace()) == (800, 1000)
