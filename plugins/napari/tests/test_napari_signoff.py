"""Sign-off panel driven as a reviewer would, beside the review panel: a name, a reason for
exclusions, sign-off, re-opening by an edit, and QuPath-edited cells imported back.

Writes ``signoff_widget.png`` to the screenshot folder (``$SENPATH_SCREENSHOTS``).
"""

from __future__ import annotations

import json
from pathlib import Path

import senpath
from senpath.corrections import read_log
from senpath.geojson import write_slide_geojson
from senpath.store_lock import STORE_LOCK


def _panels(make_napari_viewer, store: Path):
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1500, 950)
    viewer.open(str(store), plugin="senpath-napari")
    _, review = viewer.window.add_plugin_dock_widget("senpath-napari", "Review and correct")
    _, signoff = viewer.window.add_plugin_dock_widget(
        "senpath-napari", "Sign-off and QuPath", tabify=True
    )
    return viewer, review, signoff


def test_sign_off_reason_reopen_and_qupath_import_from_the_panels(
    make_napari_viewer, qtbot, store: Path, tmp_path: Path, screenshot_dir: Path
) -> None:
    viewer, review, signoff = _panels(make_napari_viewer, store)
    assert signoff.folder == store and signoff.review_panel() is review
    assert signoff.status_label.text() == "<b>not started</b>"
    signoff.reviewer_edit.setText("Dr. Lee")
    cells = review.session.cells
    interior = cells[cells["x_um"].between(40, 300) & cells["y_um"].between(40, 300)]
    excluded, flipped = (int(c) for c in interior["cell_id"].iloc[:2])
    row = review.session.cell(excluded)

    # an exclusion needs a reason while the panel is open: refused, then made with it
    review.click_at(row["y_um"], row["x_um"], action="exclude / include")
    assert not review.session.cell(excluded)["excluded"]
    assert "reason" in review.status_label.text()
    signoff.reason_edit.setText("tissue fold")
    review.click_at(row["y_um"], row["x_um"], action="exclude / include")
    assert review.session.cell(excluded)["excluded"]
    last = read_log(store)[-1]
    assert (last["action"], last["note"], last["user"]) == ("exclude", "tissue fold", "Dr. Lee")

    # sign off from the panel; a later flip in the review panel re-opens it, shown by itself
    signoff.note_edit.setText("whole slide checked")
    signoff.sign_off_button.click()
    assert signoff.status_label.text().startswith("<b>signed off by Dr. Lee")
    assert not signoff.sign_off_button.isEnabled() and signoff.reopen_button.isEnabled()
    entry = read_log(store)[-1]
    assert (entry["action"], entry["status"], entry["note"]) == (
        "review_status", "signed off", "whole slide checked",
    )  # fmt: skip
    frow = review.session.cell(flipped)
    review.click_at(frow["y_um"], frow["x_um"], action="flip call")
    qtbot.waitUntil(lambda: "in review" in signoff.status_label.text(), timeout=3000)
    assert [e["action"] for e in read_log(store)[-2:]] == ["review_status", "set_call"]

    # QuPath: export, re-classify one cell as QuPath would, import from the panel
    exported = write_slide_geojson(senpath.load_results(store), tmp_path / "cells.geojson")
    fc = json.loads(exported.read_text())
    target = int(interior["cell_id"].iloc[3])
    was = bool(review.session.cell(target)["ki67_positive"])
    for f in fc["features"]:
        if int(f["properties"]["measurements"]["cell_id"]) == target:
            name = "ki67: Negative" if was else "ki67: Positive"
            f["properties"]["classification"] = {"name": name, "color": [1, 2, 3]}
    edited = tmp_path / "qupath.geojson"
    edited.write_text(json.dumps(fc))
    done = signoff.import_qupath(edited)
    assert done is not None and list(done.calls) == [target]
    assert bool(review.session.cell(target)["ki67_positive"]) is not was  # the panel's cells
    assert "1 call(s) changed" in signoff.import_label.text()
    qupath = [e for e in read_log(store) if e.get("source") == "qupath"]
    assert [e["action"] for e in qupath] == ["set_call", "note"]
    assert qupath[0]["cell_ids"] == [target] and qupath[0]["user"] == "Dr. Lee"
    bad = tmp_path / "bad.geojson"
    bad.write_text("{oops")
    assert signoff.import_qupath(bad) is None
    assert "bad.geojson: not valid JSON" in signoff.message_label.text()
    qtbot.wait(100)  # let the labels' new text lay out before the picture
    signoff.grab().save(str(screenshot_dir / "signoff_widget.png"))


def test_the_panel_alone_signs_off_and_releases_the_store(
    make_napari_viewer, qtbot, store: Path
) -> None:
    from senpath_napari._signoff_widget import SignOffWidget

    viewer = make_napari_viewer()
    panel = SignOffWidget(viewer)
    panel.set_store(store)
    panel.reviewer_edit.setText("")
    assert panel.sign_off() is None and "reviewer's name" in panel.message_label.text()
    panel.reviewer_edit.setText("Dr. Lee")
    assert panel.sign_off()["user"] == "Dr. Lee"
    assert not (store / STORE_LOCK).exists()  # opened for the action only
    assert "signed off by Dr. Lee" in panel.status_label.text()
    assert panel.reopen() is None and "say why" in panel.message_label.text()
    panel.note_edit.setText("recount")
    assert panel.reopen()["status"] == "in review"
    assert senpath.load_results(store).summary["review"]["status"] == "in review"
