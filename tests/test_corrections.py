"""Corrections API (senpath.corrections): audit log, replay, thresholds, nucleus edits, undo.

No display needed. One small synthetic slide is analysed once per module (classical segmenter) and
each test works on its own copy of the store.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from senpath.config import AnalysisConfig, get_assay, load_assays, load_config
from senpath.corrections import (
    CORRECTIONS,
    CorrectionError,
    CorrectionSession,
    StaleCorrectionsWarning,
    apply_corrections,
    load_results,
    marker_stats,
    read_log,
    review_queue,
)
from senpath.labels import load_labels
from senpath.results import is_complete, read_manifest
from senpath.score import score_cells
from senpath.testing import analysed_synthetic_slide, copy_store


@pytest.fixture(scope="module")
def analysed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(slide file, results store) of a 512 x 512 px Ki67 slide."""
    root = tmp_path_factory.mktemp("corr")
    return analysed_synthetic_slide(root, name="s1", shape=(512, 512), seed=1)


@pytest.fixture
def store(analysed: tuple[Path, Path], tmp_path: Path) -> Path:
    """A fresh copy of the analysed store (same slide file)."""
    return copy_store(analysed[1], tmp_path)


def _identity(store: Path) -> dict:
    return read_manifest(store)["identity"]


def _recommit(store: Path) -> None:
    """Rewrite the manifest after a test changed a file by hand (as an older store was written)."""
    from senpath.results import write_manifest

    manifest = read_manifest(store)
    write_manifest(store, slide_id=manifest["slide_id"], identity=manifest["identity"])


def test_flip_exclude_threshold_are_logged_and_loaded(store: Path) -> None:
    raw = load_results(store)
    assert "excluded" not in raw.cells.columns  # no log: the table as written
    s = CorrectionSession(store, user="tester")
    ids = s.cells["cell_id"].to_numpy()
    pos0 = s.cells.set_index("cell_id")["ki67_positive"]
    flip, excl = int(ids[0]), int(ids[1])

    s.flip_call(flip, "ki67")
    s.exclude([excl])
    entry = s.set_thresholds({"ki67": 0.30})
    s.save()

    log = read_log(store)
    assert [e["action"] for e in log] == ["start", "set_call", "exclude", "set_thresholds"]
    assert all(e["user"] == "tester" and e["time"].endswith("Z") for e in log)
    assert log[1]["previous"] == [
        {
            "positive": bool(pos0[flip]),
            "bin": int(raw.cells.set_index("cell_id").loc[flip, "ki67_bin"]),
        }
    ]
    assert log[1]["new"]["positive"] is (not bool(pos0[flip]))
    assert log[3]["previous"] == {"ki67": 0.15} and log[3]["new"] == {"ki67": 0.30}
    assert entry is not None and log[3]["n_changed"] == entry["n_changed"]

    res = load_results(store)
    c = res.cells.set_index("cell_id")
    assert c.loc[flip, "ki67_positive"] == (not pos0[flip]) and c.loc[flip, "ki67_manual"]
    assert c.loc[excl, "excluded"] and int(c["excluded"].sum()) == 1
    # every other cell is called at the new threshold
    other = c.drop(index=[flip])
    expected = other["dab_od_mean_nucleus"].to_numpy() >= 0.30
    assert np.array_equal(other["ki67_positive"].to_numpy(), expected)
    # summary.json rewritten from the corrected cells, the pipeline's figures kept
    on_disk = json.loads((store / "summary.json").read_text())
    kept = c[~c["excluded"]]
    assert on_disk["markers"]["ki67"]["n_cells"] == len(kept) == len(c) - 1
    assert on_disk["markers"]["ki67"]["n_positive"] == int(kept["ki67_positive"].sum())
    assert on_disk["markers"]["ki67"]["threshold_od"] == 0.30
    assert (
        on_disk["uncorrected"]["markers"]["ki67"]["n_positive"]
        == raw.summary["markers"]["ki67"]["n_positive"]
    )
    assert (
        res.summary["markers"]["ki67"]["pct_positive"] == on_disk["markers"]["ki67"]["pct_positive"]
    )
    assert res.provenance.markers[0].threshold_od == 0.30
    assert res.provenance.markers[0].pipeline_threshold_od == 0.15
    # the raw table and the pipeline's summary stay reachable
    plain = load_results(store, corrections=False)
    pd.testing.assert_frame_equal(plain.cells, raw.cells)
    assert plain.summary["markers"]["ki67"] == raw.summary["markers"]["ki67"]
    # the store is still complete for the same run identity (a resume does not redo it)
    assert is_complete(store, _identity(store))
    assert CORRECTIONS in read_manifest(store)["files"]


def test_export_reflects_corrections(store: Path) -> None:
    from senpath.export import load_all, marker_table

    before = marker_table(load_all(store.parent), by="slide").iloc[0]
    s = CorrectionSession(store, user="t")
    negatives = s.cells.loc[~s.cells["ki67_positive"], "cell_id"].to_numpy()[:3]
    s.set_call(negatives, "ki67", positive=True)
    s.exclude([int(s.cells["cell_id"].iat[-1])])
    s.save()
    after = marker_table(load_all(store.parent), by="slide").iloc[0]
    last_positive = bool(s.raw.cells["ki67_positive"].iat[-1])
    assert after["ki67_n_cells"] == before["ki67_n_cells"] - 1
    assert after["ki67_n_positive"] == before["ki67_n_positive"] + 3 - int(last_positive)


def test_session_state_equals_replay_of_the_log(store: Path) -> None:
    s = CorrectionSession(store, user="t")
    ids = s.cells["cell_id"].to_numpy()
    s.flip_call(int(ids[2]), "ki67")
    s.set_thresholds({"ki67": 0.2})
    s.flip_call(int(ids[2]), "ki67")
    s.exclude(ids[3:6])
    s.include([int(ids[4])])
    s.undo()  # the include
    s.set_call([int(ids[7])], "ki67", positive=True, bin=3)
    replay = apply_corrections(
        s.raw.cells, read_log(store), assay=s.assay, thresholds=s.base_thresholds
    )
    pd.testing.assert_frame_equal(replay, s.cells, check_dtype=False)
    s.close()  # one writer at a time: the next session opens once this one is closed
    reopened = CorrectionSession(store, user="t")
    pd.testing.assert_frame_equal(reopened.cells, s.cells, check_dtype=False)
    assert int(reopened.cells.set_index("cell_id").loc[int(ids[7]), "ki67_bin"]) == 3


def test_manual_calls_survive_a_threshold_change(store: Path) -> None:
    s = CorrectionSession(store, user="t")
    weak = s.cells.sort_values("ki67_od")["cell_id"].iat[0]  # the faintest cell
    s.set_call([int(weak)], "ki67", positive=True)
    s.set_thresholds({"ki67": 0.9})
    assert bool(s.cell(int(weak))["ki67_positive"])
    assert int(s.cells["ki67_positive"].sum()) >= 1


def test_undo_keeps_history_and_undoing_an_undo_redoes(store: Path) -> None:
    s = CorrectionSession(store, user="t")
    cid = int(s.cells["cell_id"].iat[0])
    before = bool(s.cell(cid)["ki67_positive"])
    flip = s.flip_call(cid, "ki67")
    undo = s.undo()
    assert undo["undoes"] == flip["id"] and bool(s.cell(cid)["ki67_positive"]) == before
    s.undo(undo["id"])  # redo
    assert bool(s.cell(cid)["ki67_positive"]) != before
    assert [e["action"] for e in read_log(store)] == ["start", "set_call", "undo", "undo"]
    with pytest.raises(CorrectionError, match="already undone"):
        s.undo(undo["id"])


def _centre_px(s: CorrectionSession, cid: int) -> tuple[int, int]:
    row = s.cell(cid)
    return int(row["y_um"] / s.label_mpp), int(row["x_um"] / s.label_mpp)


def test_nucleus_edits_write_labels_and_remeasure_only_changed(store: Path) -> None:
    s = CorrectionSession(store, user="t")
    raw = s.raw.cells.set_index("cell_id")
    cells = s.cells
    original = load_labels(store, 0).compute()
    # a cell away from the border, and its region of 80 x 80 px
    inner = cells[(cells["x_um"].between(60, 196)) & (cells["y_um"].between(60, 196))]
    target = int(inner["cell_id"].iat[0])
    cy, cx = _centre_px(s, target)
    y0, x0 = cy - 40, cx - 40
    region = s.read_labels(y0, x0, y0 + 80, x0 + 80)
    present = set(np.unique(region)) - {0}
    assert target in present

    # delete the target nucleus, paint a new one in an empty corner, split a neighbour
    edited = region.copy()
    edited[edited == target] = 0
    new_id = s.next_cell_id()
    free = np.argwhere(edited == 0)
    yy, xx = np.mgrid[0:80, 0:80]
    for y, x in free:
        disc = (yy - y) ** 2 + (xx - x) ** 2 <= 16
        if 6 <= y < 74 and 6 <= x < 74 and not edited[disc].any():
            edited[disc] = new_id
            break
    entry = s.edit_nuclei(edited, origin=(y0, x0))
    assert entry["removed"] == [target] and entry["added"] == [new_id]
    assert (store / entry["labels"]).is_file()

    level0 = load_labels(store, 0).compute()
    assert np.array_equal(level0[y0 : y0 + 80, x0 : x0 + 80], edited)
    after = s.cells.set_index("cell_id")
    assert target not in after.index and new_id in after.index
    assert after.loc[new_id, "nucleus_area_um2"] == pytest.approx(
        (edited == new_id).sum() * s.label_mpp**2
    )
    # cells not touched keep their measurements exactly
    untouched = [c for c in raw.index if c != target]
    cols = ["x_um", "y_um", "nucleus_area_um2", "dab_od_mean_nucleus"]
    pd.testing.assert_frame_equal(after.loc[untouched, cols], raw.loc[untouched, cols])
    s.save()
    res = load_results(store)
    assert set(res.cells["cell_id"]) == set(after.index)
    assert is_complete(store, _identity(store))

    # merge two neighbours: paint the second with the first's id
    cells2 = s.cells.set_index("cell_id")
    a = int(inner["cell_id"].iat[1])
    d = np.hypot(cells2["x_um"] - cells2.loc[a, "x_um"], cells2["y_um"] - cells2.loc[a, "y_um"])
    b = int(d.drop(index=a).idxmin())
    my = int((cells2.loc[a, "y_um"] + cells2.loc[b, "y_um"]) / 2 / s.label_mpp)
    mx = int((cells2.loc[a, "x_um"] + cells2.loc[b, "x_um"]) / 2 / s.label_mpp)
    my0, mx0 = my - 60, mx - 60
    region2 = s.read_labels(my0, mx0, my0 + 120, mx0 + 120)
    edge = np.concatenate([region2[0], region2[-1], region2[:, 0], region2[:, -1]])
    inside = [c for c in (a, b) if c in region2 and c not in edge]
    assert len(inside) >= 2
    a, b = int(inside[0]), int(inside[1])
    merged = region2.copy()
    merged[merged == b] = a
    e2 = s.edit_nuclei(merged, origin=(my0, mx0))
    assert e2["removed"] == [b] and e2["modified"] == [a]
    assert s.cell(a)["nucleus_area_um2"] == pytest.approx((merged == a).sum() * s.label_mpp**2)
    s.undo()
    # undo the first edit: the labels and the table are as the pipeline left them
    s.undo()
    assert np.array_equal(load_labels(store, 0).compute(), original)
    pd.testing.assert_frame_equal(
        s.cells[s.raw.cells.columns].reset_index(drop=True),
        s.raw.cells.reset_index(drop=True),
        check_dtype=False,
    )


def test_write_label_region_rebuilds_every_level(tmp_path: Path) -> None:
    from senpath.corrections import write_label_region
    from senpath.labels import LabelStore

    rng = np.random.default_rng(0)
    store = LabelStore(tmp_path, (300, 500), mpp=0.5, chunk=64)
    store.level0[:, :] = rng.integers(0, 50, size=(300, 500), dtype=np.int32)
    store.commit(min_side=40)
    n_levels = len(
        json.loads((tmp_path / "labels.ome.zarr" / ".zattrs").read_text())["multiscales"][0][
            "datasets"
        ]
    )
    assert n_levels >= 3
    for origin, shape in (((37, 91), (45, 70)), ((0, 0), (3, 3)), ((299, 499), (1, 1))):
        block = rng.integers(100, 200, size=shape, dtype=np.int32)
        write_label_region(tmp_path, origin, block)
        level0 = load_labels(tmp_path, 0).compute()
        y0, x0 = origin
        assert np.array_equal(level0[y0 : y0 + shape[0], x0 : x0 + shape[1]], block)
        for k in range(1, n_levels):
            level = load_labels(tmp_path, k).compute()
            f = 2**k
            assert np.array_equal(level, level0[::f, ::f]), f"level {k} differs after {origin}"


def test_overlapping_nucleus_edit_cannot_be_undone_out_of_order(store: Path) -> None:
    s = CorrectionSession(store, user="t")
    region = s.read_labels(60, 60, 200, 200)
    ids = [c for c in np.unique(region) if c]
    first = region.copy()
    first[first == ids[0]] = 0
    e1 = s.edit_nuclei(first, origin=(60, 60))
    second = first.copy()
    second[second == ids[1]] = 0
    s.edit_nuclei(second, origin=(60, 60))
    with pytest.raises(CorrectionError, match="undo that one first"):
        s.undo(e1["id"])


def test_a_torn_last_line_is_dropped_and_the_log_goes_on(store: Path) -> None:
    s = CorrectionSession(store, user="t")
    s.flip_call(int(s.cells["cell_id"].iat[0]), "ki67")
    with open(store / CORRECTIONS, "a", encoding="utf-8") as fh:
        fh.write('{"action": "set_call", "cell_ids": [1')  # a crash mid-write
    with pytest.warns(UserWarning, match="incomplete"):
        assert len(read_log(store)) == 2
    s.close()
    s2 = CorrectionSession(store, user="t")
    s2.exclude([int(s2.cells["cell_id"].iat[1])])
    lines = (store / CORRECTIONS).read_text().splitlines()
    assert [json.loads(x)["action"] for x in lines] == ["start", "set_call", "exclude"]


def test_a_log_from_an_earlier_analysis_is_not_applied_and_kept(
    store: Path, analysed: tuple[Path, Path]
) -> None:
    from senpath.pipeline import analyze_slide

    s = CorrectionSession(store, user="t")
    s.exclude([int(s.cells["cell_id"].iat[0])])
    s.save()
    s.close()
    log = (store / CORRECTIONS).read_text()
    with pytest.warns(UserWarning, match="corrections of the previous analysis are kept"):
        analyze_slide(  # what `senpath run --force` does: the log is set aside, not lost
            analysed[0],
            out=store.parent,
            assay="ki67",
            config=AnalysisConfig(segmenter="classical"),
        )
    (kept,) = store.glob("corrections.*.jsonl")
    assert kept.read_text() == log and not (store / CORRECTIONS).exists()
    assert "excluded" not in load_results(store).cells.columns
    # a log that still does not match the analysis (copied back by hand, or an older senpath) is
    # detected by its cells/provenance sha256 and never applied
    (store / CORRECTIONS).write_text(log)
    with pytest.warns(StaleCorrectionsWarning):
        res = load_results(store)
    assert "excluded" not in res.cells.columns
    with pytest.warns(StaleCorrectionsWarning, match="moved aside"):
        s2 = CorrectionSession(store, user="t")
    assert s2.moved_aside is not None and s2.moved_aside.is_file()
    assert not (store / CORRECTIONS).exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_results(store)


def test_profile_round_trip(store: Path, tmp_path: Path) -> None:
    s = CorrectionSession(store, user="t")
    s.set_thresholds({"ki67": 0.22})
    path = s.save_profile(tmp_path / "lab.toml", name="lab-ki67")
    assay = load_assays(path)["lab-ki67"]
    assert assay.marker("ki67").threshold_od == pytest.approx(0.22)
    assert load_config(path).stain_vectors == "preset"
    vectors = s.raw.provenance.assay.stain_vectors
    assert np.allclose(assay.stain_vectors["dab"], vectors[1], atol=1e-6)


# --------------------------------------------------------------- hand-made tables (no store)


def _tiny(assay_name: str = "p16+ki67") -> tuple[pd.DataFrame, object]:
    assay = get_assay(assay_name)
    cols = {
        "cell_id": [1, 2, 3, 4],
        "nucleus_area_um2": [30.0, 30.0, 30.0, 30.0],
    }
    values = {"p16": [0.05, 0.20, 0.50, 0.80], "ki67": [0.05, 0.05, 0.40, 0.05]}
    from senpath.score import marker_value_column

    for rule in assay.markers:
        cols[marker_value_column(rule)] = values[rule.name]
    cells = score_cells(pd.DataFrame(cols), assay)
    return cells, assay


def test_apply_corrections_by_hand() -> None:
    cells, assay = _tiny()
    pheno = next(iter(assay.phenotypes))
    thresholds = {r.name: r.threshold_od for r in assay.markers}
    assert cells[pheno].tolist() == [False, True, False, True]  # p16+ ki67-
    entries = [
        {"id": 0, "action": "start"},
        {
            "id": 1,
            "action": "set_call",
            "marker": "ki67",
            "cell_ids": [2],
            "new": {"positive": True, "bin": 1},
        },
        {"id": 2, "action": "exclude", "cell_ids": [4]},
        {"id": 3, "action": "set_thresholds", "new": {"p16": 0.6}},
        {
            "id": 4,
            "action": "set_call",
            "marker": "p16",
            "cell_ids": [1],
            "new": {"positive": True, "bin": 2},
        },
        {"id": 5, "action": "undo", "undoes": 4},
    ]
    out = apply_corrections(cells, entries, assay=assay, thresholds=thresholds)
    assert out["p16_positive"].tolist() == [False, False, False, True]
    assert out["ki67_positive"].tolist() == [False, True, True, False]
    assert out["ki67_manual"].tolist() == [False, True, False, False]
    assert out[pheno].tolist() == [False, False, False, True]
    assert out["excluded"].tolist() == [False, False, False, True]
    stats = marker_stats(out, assay, "p16")
    assert (stats["n_cells"], stats["n_positive"]) == (3, 0)
    at = marker_stats(out, assay, "p16", threshold_od=0.1)
    assert (at["n_cells"], at["n_positive"]) == (3, 2)
    assert at["h_score"] == pytest.approx(100 * (1 * 1 + 1 * 2) / 3)  # bins 1+ (0.20), 2+ (0.50)


def test_review_queue_orders_by_distance_to_threshold() -> None:
    cells, _ = _tiny()
    cells["excluded"] = [False, False, False, True]
    cells["p16_manual"] = [False, False, True, False]
    q = review_queue(cells, "p16", threshold_od=0.18)
    assert q.tolist() == [2, 1]  # 0.02 away, then 0.13; 3 is manual, 4 excluded
    assert review_queue(cells, "p16", threshold_od=0.18, band_od=0.05).tolist() == [2]


def test_a_relabelled_nucleus_is_remeasured_as_the_pipeline_measured_it(store: Path) -> None:
    """Nucleus edits measure with the glass intensity the cells were measured with. A store whose
    provenance has no ``background_i0`` was measured at the pipeline's default (240), not 255."""
    prov = json.loads((store / "provenance.json").read_text())
    assert prov.pop("background_i0") == [240.0, 240.0, 240.0]  # the synthetic slide's glass
    (store / "provenance.json").write_text(json.dumps(prov))  # as a store without the key
    _recommit(store)
    s = CorrectionSession(store, user="t")
    cells = s.cells
    inner = cells[(cells["x_um"].between(60, 196)) & (cells["y_um"].between(60, 196))]
    target = int(inner["cell_id"].iat[0])
    cy, cx = _centre_px(s, target)
    y0, x0 = cy - 40, cx - 40
    edited = s.read_labels(y0, x0, y0 + 80, x0 + 80)
    new_id = s.next_cell_id()
    edited[edited == target] = new_id  # the same pixels under a new id: re-measured
    entry = s.edit_nuclei(edited, origin=(y0, x0))
    assert entry is not None and entry["removed"] == [target] and entry["added"] == [new_id]
    before, after = s.raw.cells.set_index("cell_id").loc[target], s.cell(new_id)
    od = [c for c in before.index if "_od_" in c]
    assert od and "dab_od_mean_nucleus" in od
    np.testing.assert_allclose(after[od].to_numpy(float), before[od].to_numpy(float), rtol=1e-6)
    assert after["nucleus_area_um2"] == before["nucleus_area_um2"]


# ------------------------------------------------------------- one writer at a time (issue 15)

_HOLD_SESSION = """
import sys, time
from senpath.corrections import CorrectionSession
s = CorrectionSession(sys.argv[1], user="other-reviewer")
print("open", flush=True)
time.sleep(120)
"""


def test_a_second_writer_is_refused_and_can_only_read(store: Path) -> None:
    import os
    import socket

    from senpath.corrections import LOCK, StoreLockedError

    first = CorrectionSession(store, user="anna")
    lock = json.loads((store / LOCK).read_text())
    assert lock["host"] == socket.gethostname() and lock["pid"] == os.getpid()
    assert lock["user"] == "anna" and lock["time"]
    # a second window on the same folder (same process): refused, then opened read-only
    with pytest.raises(StoreLockedError, match="anna .*read-only"):
        CorrectionSession(store, user="ben")
    second = CorrectionSession(store, user="ben", read_only=True)
    assert second.read_only and second.locked_by is not None
    cid = int(second.cells["cell_id"].iat[0])
    with pytest.raises(CorrectionError, match="read-only"):
        second.flip_call(cid, "ki67")
    with pytest.raises(CorrectionError, match="read-only"):
        second.undo()
    first.flip_call(cid, "ki67")
    first.close()
    assert not (store / LOCK).exists()
    with pytest.raises(CorrectionError, match="read-only"):
        first.exclude([cid])  # a closed session no longer writes
    third = CorrectionSession(store, user="ben")  # the lock is free again
    third.exclude([cid])
    third.close()
    assert [e["user"] for e in read_log(store)] == ["anna", "anna", "ben"]


def test_a_live_writer_in_another_process_locks_and_a_dead_one_is_taken_over(
    store: Path,
) -> None:
    import subprocess
    import sys

    from senpath.corrections import StaleLockWarning, StoreLockedError

    other = subprocess.Popen(
        [sys.executable, "-c", _HOLD_SESSION, str(store)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert other.stdout is not None and other.stdout.readline().strip() == "open"
        with pytest.raises(StoreLockedError, match=f"other-reviewer .*process {other.pid}"):
            CorrectionSession(store, user="me")
    finally:
        other.kill()
        other.wait()
    # its process is gone (killed: the lock file is left behind): taken over, with a message
    with pytest.warns(StaleLockWarning, match=f"other-reviewer .*process {other.pid}"):
        s = CorrectionSession(store, user="me")
    assert s.lock_taken_over is not None and s.lock_taken_over.pid == other.pid
    s.flip_call(int(s.cells["cell_id"].iat[0]), "ki67")
    s.close()


def test_entry_ids_are_unique_and_old_numbered_logs_still_replay(store: Path) -> None:
    s = CorrectionSession(store, user="t")
    ids = s.cells["cell_id"].to_numpy()
    a, b = int(ids[0]), int(ids[1])
    s.flip_call(a, "ki67")
    s.close()
    # an earlier version numbered entries 0, 1, 2 ...: rewrite the log that way
    log = read_log(store)
    for n, e in enumerate(log):
        e["id"] = n
    (store / CORRECTIONS).write_text("".join(json.dumps(e) + "\n" for e in log))
    s = CorrectionSession(store, user="t")
    flip_b = s.flip_call(b, "ki67")
    undo = s.undo(1)  # the old entry, by its number
    assert undo is not None and undo["undoes"] == 1
    assert not bool(s.cell(a)["ki67_manual"]) and bool(s.cell(b)["ki67_manual"])
    s.undo(flip_b["id"])
    log = read_log(store)
    keys = [str(e["id"]) for e in log]
    assert len(set(keys)) == len(keys) == 5
    assert all(isinstance(e["id"], str) and len(e["id"]) == 32 for e in log[2:])
    s.close()
    replayed = load_results(store).cells.set_index("cell_id")
    assert not replayed.loc[[a, b], "ki67_manual"].any()


# ----------------------------------------------- a nucleus edit changes its neighbours' rings


def _full_remeasure(store: Path, slide: Path, s: CorrectionSession) -> pd.DataFrame:
    """Every cell of the store measured anew on the whole label image (the reference)."""
    from senpath.io import open_slide
    from senpath.measure import measure_cells
    from senpath.stain import StainSet, deconvolve

    prov = s.raw.provenance
    labels = np.asarray(load_labels(store, 0).compute(), dtype=np.int32)
    amp = s.label_mpp
    rgb = open_slide(slide).read_region(0, 0, labels.shape[1] * amp, labels.shape[0] * amp, mpp=amp)
    stains = StainSet(prov.assay.stains, np.asarray(prov.assay.stain_vectors, dtype=float))
    conc = deconvolve(rgb, stains, prov.background_i0)
    return measure_cells(
        labels, conc, stain_names=stains.names, mpp=amp, cytoplasm_um=prov.cytoplasm_um
    ).set_index("cell_id")


@pytest.mark.parametrize("edit", ["delete", "grow"])
def test_a_nucleus_edit_remeasures_the_neighbours_whose_ring_changes(
    store: Path, analysed: tuple[Path, Path], edit: str
) -> None:
    from skimage.segmentation import expand_labels

    s = CorrectionSession(store, user="t")
    before = _full_remeasure(store, analysed[0], s)
    cols = ["nucleus_area_um2", "cell_area_um2", "dab_od_mean_cytoplasm", "dab_od_mean_cell"]
    # the pipeline's measurements are those of a whole-image measurement
    raw = s.raw.cells.set_index("cell_id")
    np.testing.assert_allclose(raw[cols], before.loc[raw.index, cols], rtol=1e-6)

    cells = s.cells.set_index("cell_id")
    inner = cells[cells["x_um"].between(60, 196) & cells["y_um"].between(60, 196)]
    # the inner cell with the most neighbours within two cytoplasm rings
    gap = np.hypot(
        inner["x_um"].to_numpy()[:, None] - cells["x_um"].to_numpy()[None],
        inner["y_um"].to_numpy()[:, None] - cells["y_um"].to_numpy()[None],
    )
    target = int(inner.index[np.argmax((gap < 14).sum(axis=1))])
    cy, cx = _centre_px(s, target)
    y0, x0 = cy - 30, cx - 30
    region = s.read_labels(y0, x0, y0 + 60, x0 + 60)
    edited = region.copy()
    if edit == "delete":
        edited[edited == target] = 0
    else:  # redraw the nucleus 2 px larger
        grown = expand_labels(np.where(region == target, target, 0), distance=2)
        edited[(grown == target) & (region == 0)] = target
    entry = s.edit_nuclei(edited, origin=(y0, x0))
    after = _full_remeasure(store, analysed[0], s)
    now = s.cells.set_index("cell_id")
    assert set(now.index) == set(after.index)
    np.testing.assert_allclose(now[cols], after.loc[now.index, cols], rtol=1e-6)
    assert entry is not None and entry["remeasured"], "the edit changes neighbours' rings"
    assert target not in entry["remeasured"]
    # the neighbours did change (the pipeline's values would be wrong for them)
    changed = before.loc[entry["remeasured"], "cell_area_um2"]
    assert (changed != after.loc[entry["remeasured"], "cell_area_um2"]).any()
    # the log replays to the same table; undo gives the pipeline's rows back
    s.close()
    replayed = load_results(store).cells.set_index("cell_id")
    np.testing.assert_allclose(replayed[cols], now.loc[replayed.index, cols], rtol=1e-9)
    s = CorrectionSession(store, user="t")
    s.undo()
    back = s.cells.set_index("cell_id")
    np.testing.assert_allclose(back[cols], raw.loc[back.index, cols], rtol=1e-9)
    s.close()


# --------------------------------------------------------------------- a slide that has moved


def test_a_moved_slide_is_relinked_from_the_command_line(tmp_path: Path) -> None:
    import shutil

    from typer.testing import CliRunner

    from senpath import synth
    from senpath.cli import app
    from senpath.results import PROVENANCE
    from senpath.testing import analysed_synthetic_slide

    slide, store = analysed_synthetic_slide(tmp_path, name="m1", shape=(256, 256), seed=4)
    provenance = (store / PROVENANCE).read_bytes()
    moved = tmp_path / "archive" / slide.name
    moved.parent.mkdir()
    shutil.move(slide, moved)
    s = CorrectionSession(store, user="t")
    assert not s.slide_found and s.slide_path == slide
    cid = int(s.cells["cell_id"].iat[0])
    cy, cx = _centre_px(s, cid)
    region = s.read_labels(cy - 10, cx - 10, cy + 10, cx + 10)
    with pytest.raises(CorrectionError, match="slide_path"):  # nucleus edits need the pixels
        s.edit_nuclei(np.where(region == cid, 0, region), origin=(cy - 10, cx - 10))
    s.close()

    runner = CliRunner()
    other = synth.write_slide(tmp_path / "other.tif", assay="ki67", shape=(200, 256), mpp=0.5)
    r = runner.invoke(app, ["relink", str(store), str(other.path)])
    assert r.exit_code == 2 and "does not look like the slide" in r.output  # a wrong file
    r = runner.invoke(app, ["relink", str(store), str(moved)])
    assert r.exit_code == 0, r.output
    res = load_results(store)
    assert res.provenance.slide_path == str(moved.resolve())
    assert res.provenance.slide["analysed_path"] == str(slide)
    assert (store / PROVENANCE).read_bytes() == provenance  # the analysis record is untouched
    assert res.summary["corrections"]["n_corrections"] == 0  # not a correction of the cells
    assert is_complete(store, _identity(store))
    with CorrectionSession(store, user="t") as s:  # the review finds it and edits nuclei again
        assert s.slide_found and s.slide_path == moved.resolve()
        entry = s.edit_nuclei(np.where(region == cid, 0, region), origin=(cy - 10, cx - 10))
        assert entry is not None and entry["removed"] == [cid]
        assert s.undo() is not None and s.undo() is None  # undo leaves the relink alone
    assert load_results(store).provenance.slide_path == str(moved.resolve())
