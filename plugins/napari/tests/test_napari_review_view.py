"""See what you judge (issue 15): outlines by default, a legend, the raw stain on one key, the overlay
recoloured live (debounced) as the threshold slider moves, the cell under the cursor; and the
measurement dock: a sortable table whose rows go to their cell, the OD histogram whose threshold line
is dragged.

Values are checked against the store: the classes drawn at each nucleus, the cells whose calls a
threshold move changes (exactly those between the old and the new threshold), the camera's centre.
Writes ``review_outlines.png``, ``review_raw_stain.png`` and ``review_measurements.png`` to the
screenshot folder (``$SENPATH_SCREENSHOTS``, default ``results/screenshots``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from senpath_napari import _layers, _overlay

WIDGET = ("senpath-napari", "Review and correct")


def _open(make_napari_viewer, store: Path):
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1500, 950)
    viewer.open(str(store), plugin="senpath-napari")
    _, widget = viewer.window.add_plugin_dock_widget(*WIDGET)
    assert widget.session is not None and widget.marker == "ki67"
    return viewer, widget


def _press(viewer, key: str) -> None:
    from napari.utils.key_bindings import KeyBinding

    viewer.keymap[KeyBinding.from_str(key)](viewer)


def _calls(viewer):
    return next(lay for lay in viewer.layers if lay.metadata.get("senpath_role") == "calls")


def _drawn(widget, viewer) -> pd.Series:
    """The overlay class drawn at each cell whose centroid lies in its own nucleus (by cell_id)."""
    layer = _calls(viewer)
    level0 = np.asarray(layer.data[0] if layer.multiscale else layer.data)
    cells = widget.session.cells
    amp = widget.session.label_mpp
    i = (cells["y_um"].to_numpy() // amp).astype(int)
    j = (cells["x_um"].to_numpy() // amp).astype(int)
    values = level0[i, j]
    ids = cells["cell_id"].to_numpy()
    labels = np.asarray(widget.session.read_labels(0, 0, *widget.session.label_shape))
    inside = labels[i, j] == ids
    assert inside.mean() > 0.8, "most centroids lie in their nucleus"
    # the value also tells cells apart (outlines of touching nuclei): class + 8 * (id % 31)
    np.testing.assert_array_equal(values[inside] // 8, ids[inside] % 31)
    return pd.Series(_layers.overlay_class(values[inside]), index=ids[inside])


def _class_of(widget, viewer, cell: int) -> int:
    """The overlay class drawn over the pixels of one nucleus (all of them agree)."""
    layer = _calls(viewer)
    level0 = np.asarray(layer.data[0] if layer.multiscale else layer.data)
    labels = np.asarray(widget.session.read_labels(0, 0, *widget.session.label_shape))
    classes = np.unique(_layers.overlay_class(level0[labels == cell]))
    assert len(classes) == 1, classes
    return int(classes[0])


def _expected_classes(cells: pd.DataFrame, marker: str, threshold: float, assay) -> pd.Series:
    shown = _overlay.preview_cells(cells, assay, marker, threshold)
    return pd.Series(_layers.call_classes(shown, marker), index=cells["cell_id"].to_numpy())


def test_outlines_legend_raw_stain_key_and_hover(
    make_napari_viewer, qtbot, store: Path, screenshot_dir: Path
) -> None:
    viewer, widget = _open(make_napari_viewer, store)
    calls = _calls(viewer)
    # outlines by default, not fills hiding the stain; fills on request
    assert widget.display_combo.currentText() == "outlines"
    assert calls.contour == _overlay.OUTLINE_PX and calls.opacity == 1.0
    drawn = _drawn(widget, viewer)
    cells = widget.session.cells
    truth = _expected_classes(
        cells, "ki67", widget.session.thresholds["ki67"], widget.session.assay
    )
    pd.testing.assert_series_equal(drawn, truth.loc[drawn.index], check_dtype=False)
    widget.set_display("filled")
    assert calls.contour == 0 and calls.opacity < 1.0
    widget.set_display("outlines")

    # the legend names every class in its overlay colour, per colour mode
    legend = widget.legend_label.text()
    for name, rgba in (
        ("positive", _layers.CALL_COLOURS[_layers.BIN1]),
        ("negative", _layers.CALL_COLOURS[_layers.NEGATIVE]),
        ("positive (by hand)", _layers.CALL_COLOURS[_layers.MANUAL_POSITIVE]),
        ("negative (by hand)", _layers.CALL_COLOURS[_layers.MANUAL_NEGATIVE]),
        ("excluded", _layers.CALL_COLOURS[_layers.EXCLUDED]),
    ):
        colour = "#" + "".join(f"{round(255 * c):02x}" for c in rgba[:3])
        assert f'color:{colour}">&#9632;</span>&nbsp;{name}' in legend, (name, legend)
    widget.colour_combo.setCurrentText("bin")
    assert "3+" in widget.legend_label.text() and "2+" in widget.legend_label.text()
    widget.colour_combo.setCurrentText("call")

    # one key hides every overlay (the raw stain), the same key brings them back as they were
    points = next(lay for lay in viewer.layers if lay.name == "cells")
    slide = next(lay for lay in viewer.layers if lay.metadata.get("senpath_role") == "slide")
    points.visible = True
    _press(viewer, "Shift-O")
    assert not calls.visible and not points.visible and slide.visible
    qtbot.wait(100)
    viewer.window.screenshot(str(screenshot_dir / "review_raw_stain.png"), canvas_only=True)
    _press(viewer, "Shift-O")
    assert calls.visible and points.visible and slide.visible  # each as it was
    points.visible = False
    _press(viewer, "Shift-O")
    _press(viewer, "Shift-O")
    assert calls.visible and not points.visible

    # hover: a real mouse move over a nucleus shows its id and measurements
    from qtpy.QtCore import QPoint

    inner = cells[cells["x_um"].between(80, 300) & cells["y_um"].between(80, 300)]
    row = inner.iloc[len(inner) // 3]
    cid = int(row["cell_id"])
    pixel = widget.session.label_mpp
    y, x = float(row["y_um"]) + pixel / 2, float(row["x_um"]) + pixel / 2
    assert widget.cell_at(y, x) == cid
    text = widget.hover_text(y, x)
    assert text.startswith(f"cell {cid}: ki67 OD {row['ki67_od']:.3f}, ")
    assert f"nucleus {row['nucleus_area_um2']:.0f} µm²" in text
    viewer.scene.camera.center = (y, x)
    viewer.scene.camera.zoom = 4.0
    native = viewer.window._qt_viewer.canvas.native
    qtbot.wait(50)
    centre = QPoint(native.width() // 2, native.height() // 2)
    qtbot.mouseMove(native, pos=centre - QPoint(5, 5))
    qtbot.mouseMove(native, pos=centre)
    qtbot.waitUntil(lambda: widget.hover_label.text() == text, timeout=5000)
    qtbot.wait(300)  # napari's own status update (from its thread) has come and gone
    assert viewer.status == text, "napari's status bar shows it too"

    # calls set by hand are drawn apart from the automatic ones; excluded cells grey
    near = inner.assign(d=(inner["y_um"] - y) ** 2 + (inner["x_um"] - x) ** 2).sort_values("d")
    flipped = int(near.loc[near["ki67_positive"], "cell_id"].iat[0])
    excluded = int(near.loc[~near["ki67_positive"] & (near["cell_id"] != cid), "cell_id"].iat[0])
    for cell, action in ((flipped, "flip call"), (excluded, "exclude / include")):
        r = widget.session.cell(cell)
        assert widget.click_at(r["y_um"], r["x_um"], action=action) == cell
    assert _class_of(widget, viewer, flipped) == _layers.MANUAL_NEGATIVE
    assert _class_of(widget, viewer, excluded) == _layers.EXCLUDED
    widget.hover_label.setText(text)  # the picture: the hovered cell's line
    viewer.scene.camera.zoom = 3.0
    qtbot.wait(100)
    viewer.window.screenshot(str(screenshot_dir / "review_outlines.png"), canvas_only=False)


def test_the_overlay_follows_the_slider_live_and_debounced(
    make_napari_viewer, qtbot, store: Path
) -> None:
    viewer, widget = _open(make_napari_viewer, store)
    session = widget.session
    old = session.thresholds["ki67"]
    before = _drawn(widget, viewer)
    calls = _calls(viewer)
    data_before = calls.data
    new = 0.3
    for value in np.linspace(old, new, 8)[1:]:  # a slider dragged in steps
        widget.spin.setValue(float(value))
    assert calls.data is data_before, "no redraw per slider step (debounced)"
    qtbot.waitUntil(lambda: calls.data is not data_before, timeout=5000)
    after = _drawn(widget, viewer)
    od = session.cells.set_index("cell_id")["ki67_od"].loc[after.index]
    between = od.between(old, new, inclusive="left")
    changed = after != before.loc[after.index]
    assert changed.sum() > 3
    pd.testing.assert_series_equal(changed, between, check_names=False)
    # nothing is written until "Apply to slide": the slide's threshold is unchanged
    assert session.thresholds["ki67"] == old
    assert widget.preview_label.text().startswith("at 0.300 OD")
    # back at the slide's threshold, the overlay shows the slide's calls again
    widget.spin.setValue(old)
    qtbot.waitUntil(lambda: widget._drawn_threshold == pytest.approx(old), timeout=5000)
    pd.testing.assert_series_equal(_drawn(widget, viewer), before.loc[after.index].rename(None))


def test_table_sorts_goes_to_a_cell_and_histogram_line_drags_the_threshold(
    make_napari_viewer, qtbot, store: Path, screenshot_dir: Path
) -> None:
    from matplotlib.backend_bases import MouseEvent
    from qtpy.QtCore import Qt

    viewer, widget = _open(make_napari_viewer, store)
    session = widget.session
    panel = widget.show_measurements()
    assert widget.show_measurements() is panel, "one dock"
    table, model = panel.table, panel.table.cell_model
    cells = session.cells
    assert model.rowCount() == len(cells)
    assert model.column_values("cell_id").tolist() == cells["cell_id"].tolist()

    # sort by the marker's OD, highest first (a click on the header does this)
    col = [model.headerData(c, Qt.Orientation.Horizontal) for c in range(model.columnCount())]
    table.sortByColumn(col.index("ki67_od"), Qt.SortOrder.DescendingOrder)
    od = model.column_values("ki67_od").astype(float)
    finite = od[np.isfinite(od)]
    assert np.all(np.diff(finite) <= 0) and np.isfinite(od[: len(finite)]).all()
    assert model.cell_id(0) == int(cells.loc[cells["ki67_od"].idxmax(), "cell_id"])

    # a real click on row i centres the camera on cell i and selects it
    row = 7
    cid = model.cell_id(row)
    rect = table.visualRect(model.index(row, 0))
    qtbot.mouseClick(table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    truth = session.cell(cid)
    assert widget.current_cell == cid
    centre = viewer.scene.camera.center[-2:]
    assert centre == pytest.approx((truth["y_um"], truth["x_um"]))
    marked = next(lay for lay in viewer.layers if lay.name == "current cell")
    np.testing.assert_allclose(marked.data, [[truth["y_um"], truth["x_um"]]])
    assert f"cell {cid}:" in widget.cell_label.text()
    # and a cell inspected in the viewer selects its row
    other = int(cells["cell_id"].iat[len(cells) // 2])
    o = session.cell(other)
    widget.click_at(o["y_um"], o["x_um"], action="inspect")
    selected = table.selectionModel().selectedRows()
    assert [model.cell_id(i.row()) for i in selected] == [other]

    # the histogram: the threshold line, dragged from the slide's threshold to a new one
    hist = panel.histogram
    old = session.thresholds["ki67"]
    assert hist.threshold == pytest.approx(old)
    before = session.cells.set_index("cell_id")[["ki67_positive", "ki67_od"]].copy()
    drawn_before = _drawn(widget, viewer)
    hist.draw()
    x0, y0 = hist.line_position_px()
    target = old + 0.12
    x1, _ = hist.axes.transData.transform((target, 0.0))
    for name, x in (
        ("button_press_event", x0),
        ("motion_notify_event", (x0 + x1) / 2),
        ("motion_notify_event", x1),
        ("button_release_event", x1),
    ):
        hist.callbacks.process(name, MouseEvent(name, hist, x, y0, button=1))
    new = widget.spin.value()
    assert new == pytest.approx(target, abs=0.01), "the slider follows the line"
    assert hist.threshold == pytest.approx(new)
    qtbot.waitUntil(lambda: widget._drawn_threshold == pytest.approx(new), timeout=5000)
    drawn = _drawn(widget, viewer)
    od = before["ki67_od"].loc[drawn.index]
    pd.testing.assert_series_equal(
        drawn != drawn_before.loc[drawn.index],
        od.between(old, new, inclusive="left"),
        check_names=False,
    )
    # applied: the slide's calls change for exactly the cells between the two thresholds
    widget.apply_threshold()
    after = session.cells.set_index("cell_id")["ki67_positive"]
    flipped = set(after.index[after != before["ki67_positive"]])
    between = set(before.index[before["ki67_od"].between(old, new, inclusive="left")])
    assert flipped == between and len(flipped) > 3
    # the table and the histogram are redrawn after the correction
    assert hist.threshold == pytest.approx(new)
    assert model.rowCount() == len(session.cells)
    table.activate_row(0)  # the strongest cell, for the picture
    viewer.scene.camera.zoom = 2.5
    qtbot.wait(100)
    viewer.window.screenshot(str(screenshot_dir / "review_measurements.png"), canvas_only=False)


def test_closing_the_review_removes_its_measurement_dock(
    make_napari_viewer, qtbot, store: Path
) -> None:
    viewer, widget = _open(make_napari_viewer, store)
    panel = widget.show_measurements()
    docks = viewer.window._dock_widgets
    assert "senpath measurements" in docks
    viewer.window.remove_dock_widget(widget)
    assert widget.measurements is None and "senpath measurements" not in docks
    assert widget._on_hover not in viewer.mouse_move_callbacks
    assert panel.review is widget
