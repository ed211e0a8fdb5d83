"""Review widget safety (issue 15): a closed widget stops editing, one window corrects a store at a
time, the centroids follow nucleus edits, the scale bar reads µm, a moved slide is found again.

Clicks are real mouse clicks on the canvas (Qt events through napari), keys the viewer's bindings.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from senpath.corrections import read_log
from senpath.testing import analysed_synthetic_slide

WIDGET = ("senpath-napari", "Review and correct")


def _open(make_napari_viewer, store: Path):
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1200, 800)
    viewer.open(str(store), plugin="senpath-napari")
    _, widget = viewer.window.add_plugin_dock_widget(*WIDGET)
    assert widget.session is not None
    return viewer, widget


def _click(viewer, qtbot, y_um: float, x_um: float) -> None:
    """A left click on the canvas where the world point (y, x) µm is drawn (the view's centre)."""
    from qtpy.QtCore import QPoint, Qt

    viewer.scene.camera.center = (y_um, x_um)
    viewer.scene.camera.zoom = 4.0
    native = viewer.window._qt_viewer.canvas.native
    qtbot.wait(50)
    centre = QPoint(native.width() // 2, native.height() // 2)
    qtbot.mouseClick(native, Qt.MouseButton.LeftButton, pos=centre)
    qtbot.wait(50)


def _interior_cell(widget) -> tuple[int, float, float]:
    cells = widget.session.cells
    inner = cells[cells["x_um"].between(80, 300) & cells["y_um"].between(80, 300)]
    row = inner.iloc[len(inner) // 2]
    return int(row["cell_id"]), float(row["y_um"]), float(row["x_um"])


def test_a_closed_widget_stops_editing_and_a_reopened_one_counts_a_click_once(
    make_napari_viewer, qtbot, store: Path
) -> None:
    from napari.utils.key_bindings import KeyBinding

    viewer, widget = _open(make_napari_viewer, store)
    cid, y, x = _interior_cell(widget)
    pixel = widget.session.label_mpp
    assert widget.cell_at(y, x) == cid, "the cell's centroid lies in its nucleus"
    widget.click_combo.setCurrentText("flip call")
    _click(viewer, qtbot, y + pixel / 2, x + pixel / 2)
    assert [e["action"] for e in read_log(store)] == ["start", "set_call"]  # a real click edits

    viewer.window.remove_dock_widget(widget)  # what the dock's close button does
    _click(viewer, qtbot, y, x)
    assert len(read_log(store)) == 2, "a closed widget must not edit on clicks"
    assert KeyBinding.from_str("Shift-F") not in viewer.keymap, "nor on its shortcuts"
    assert not (store / "store.lock").exists(), "and it gives the store back"

    _, again = viewer.window.add_plugin_dock_widget(*WIDGET)
    assert again is not widget and not again.session.read_only
    was = bool(again.session.cell(cid)["ki67_positive"])
    again.click_combo.setCurrentText("flip call")
    _click(viewer, qtbot, y, x)
    log = read_log(store)
    assert [e["action"] for e in log] == ["start", "set_call", "set_call"], "one click, one edit"
    assert bool(again.session.cell(cid)["ki67_positive"]) != was


def test_a_second_window_on_the_store_is_read_only_and_says_who_corrects(
    make_napari_viewer, qtbot, store: Path
) -> None:
    viewer1, first = _open(make_napari_viewer, store)
    viewer2, second = _open(make_napari_viewer, store)
    assert not first.session.read_only
    assert second.session.read_only and "read-only" in second.status_label.text()
    assert first.session.user in second.status_label.text()
    cid, y, x = _interior_cell(second)
    was = bool(second.session.cell(cid)["ki67_positive"])
    second.click_combo.setCurrentText("flip call")
    first.click_combo.setCurrentText("flip call")
    second.click_at(y, x)
    second.flip_current()
    second.undo()
    assert second.open_editor((0, 0, 50, 50)) is None
    assert bool(second.session.cell(cid)["ki67_positive"]) == was
    assert read_log(store) == [], "the read-only window wrote nothing"
    # the first window corrects; its undo reverts its own edit, not anyone else's
    first.click_at(y, x)
    first.undo()
    log = read_log(store)
    assert [e["action"] for e in log] == ["start", "set_call", "undo"]
    assert log[2]["undoes"] == log[1]["id"] and len({e["id"] for e in log}) == 3


def test_centroids_follow_a_nucleus_edit_that_keeps_the_cell_count(
    make_napari_viewer, qtbot, store: Path
) -> None:
    from scipy import ndimage as ndi

    viewer, widget = _open(make_napari_viewer, store)
    points = next(layer for layer in viewer.layers if layer.name == "cells")
    cid, y, x = _interior_cell(widget)
    amp = widget.session.label_mpp
    n = len(widget.session.cells)
    cy, cx = int(y / amp), int(x / amp)
    y0, x0 = cy - 50, cx - 50
    widget.auto_apply.setChecked(False)
    editor = widget.open_editor((y0, x0, y0 + 100, x0 + 100))
    edited = np.asarray(editor.data).copy()
    edited[edited == cid] = 0  # delete one nucleus ...
    far = ndi.distance_transform_edt(edited == 0)
    far[:10], far[-10:], far[:, :10], far[:, -10:] = 0, 0, 0, 0
    py, px = np.unravel_index(int(np.argmax(far)), far.shape)
    yy, xx = np.mgrid[0:100, 0:100]
    edited[(yy - py) ** 2 + (xx - px) ** 2 <= 25] = widget.session.next_cell_id()  # ... add one
    editor.data = edited
    entry = widget.apply_nucleus_edits()
    assert entry is not None and entry["removed"] == [cid] and len(entry["added"]) == 1
    cells = widget.session.cells
    assert len(cells) == n, "the edit keeps the number of cells"
    np.testing.assert_array_equal(points.data, cells[["y_um", "x_um"]].to_numpy())
    assert points.features["cell_id"].tolist() == cells["cell_id"].tolist()


def test_the_scale_bar_reads_micrometres(make_napari_viewer, qtbot, store: Path) -> None:
    viewer, widget = _open(make_napari_viewer, store)
    cid, y, x = _interior_cell(widget)
    widget.click_at(y, x, action="inspect")  # adds the "current cell" marker
    widget.open_editor((0, 0, 64, 64))
    viewer.scale_bar.visible = True
    assert len(viewer.layers) >= 4
    assert {str(u) for layer in viewer.layers for u in layer.units} == {"micrometer"}
    assert [str(u) for u in viewer.layers.units] == ["micrometer", "micrometer"]


def test_a_moved_slide_warns_and_is_located_from_the_widget(
    make_napari_viewer, qtbot, tmp_path: Path
) -> None:
    from napari.utils.notifications import notification_manager

    slide, store = analysed_synthetic_slide(tmp_path, name="moved", shape=(256, 256), seed=5)
    moved = tmp_path / "archive" / slide.name
    moved.parent.mkdir()
    shutil.move(slide, moved)
    viewer = make_napari_viewer(show=True)
    before = len(notification_manager.records)
    viewer.open(str(store), plugin="senpath-napari")
    warned = [str(r.message) for r in notification_manager.records[before:]]
    assert any("senpath relink" in m and str(slide) in m for m in warned), warned
    assert not [layer for layer in viewer.layers if layer.metadata.get("senpath_role") == "slide"]
    _, widget = viewer.window.add_plugin_dock_widget(*WIDGET)
    assert widget.locate_button.isVisibleTo(widget)
    assert "relink" in widget.status_label.text()
    assert not widget.relink_slide(tmp_path / "nothing.tif")  # refused, with a message
    assert widget.relink_slide(moved)
    slides = [layer for layer in viewer.layers if layer.metadata.get("senpath_role") == "slide"]
    assert len(slides) == 1 and slides[0].metadata["senpath_slide"] == str(moved.resolve())
    assert viewer.layers.index(slides[0]) == 0 and not widget.locate_button.isVisibleTo(widget)
    assert read_log(store)[-1]["action"] == "relink_slide"


def test_a_click_inspects_by_default_and_edits_only_in_an_edit_mode(
    make_napari_viewer, qtbot, store: Path
) -> None:
    from napari.utils.key_bindings import KeyBinding

    def _press(key: str) -> None:
        viewer.keymap[KeyBinding.from_str(key)](viewer)

    viewer, widget = _open(make_napari_viewer, store)
    assert widget.click_combo.currentText() == "inspect", "opening the widget must not arm edits"
    cid, y, x = _interior_cell(widget)
    was = bool(widget.session.cell(cid)["ki67_positive"])
    pixel = widget.session.label_mpp
    _click(viewer, qtbot, y + pixel / 2, x + pixel / 2)
    assert [e["action"] for e in read_log(store)] in ([], ["start"]), "a click edits nothing"
    assert bool(widget.session.cell(cid)["ki67_positive"]) == was
    assert widget.current_cell == cid
    shown = widget.cell_label.text()
    assert f"cell {cid}:" in shown and "ki67 OD" in shown and "µm²" in shown, shown
    # the queue shortcuts act on the inspected cell
    _press("Shift-F")
    assert [e["action"] for e in read_log(store)] == ["start", "set_call"]
    _press("Shift-U")
    # Shift-M picks the edit mode; then a click flips
    _press("Shift-M")
    assert widget.click_combo.currentText() == "flip call"
    _click(viewer, qtbot, y + pixel / 2, x + pixel / 2)
    assert [e["action"] for e in read_log(store)] == ["start", "set_call", "undo", "set_call"]
    assert bool(widget.session.cell(cid)["ki67_positive"]) != was
    _press("Shift-M")
    assert widget.click_combo.currentText() == "exclude / include"
    _click(viewer, qtbot, y + pixel / 2, x + pixel / 2)
    assert read_log(store)[-1]["action"] == "exclude"
