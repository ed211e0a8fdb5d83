"""Review status and sign-off: transitions, re-opening by an edit, the CLI, the report and tables.

One small synthetic Ki67 slide is analysed once per module (classical segmenter); each test works
on its own copy of the store.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from senpath.cli import app
from senpath.corrections import (
    CorrectionError,
    CorrectionSession,
    load_results,
    read_log,
    review_status,
)
from senpath.testing import analysed_synthetic_slide, copy_store


@pytest.fixture(scope="module")
def analysed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("signoff")
    return analysed_synthetic_slide(root, name="s1", shape=(384, 384), seed=3)


@pytest.fixture
def store(analysed: tuple[Path, Path], tmp_path: Path) -> Path:
    return copy_store(analysed[1], tmp_path)


def test_status_goes_not_started_in_review_signed_off_and_an_edit_reopens(store: Path) -> None:
    assert review_status(read_log(store)).status == "not started"
    with CorrectionSession(store, user="anna") as s:
        assert s.review.status == "not started"
        cid = int(s.cells["cell_id"].iat[0])
        s.flip_call(cid, "ki67")
        assert s.review.status == "in review" and s.review.reviewer == "anna"
        entry = s.sign_off(reviewer="Dr. B", note="checked the whole slide")
        assert entry["action"] == "review_status" and entry["user"] == "Dr. B"
        st = s.review
        assert (st.status, st.signed_off_by, st.note) == (
            "signed off",
            "Dr. B",
            "checked the whole slide",
        )
        assert st.signed_off_time == entry["time"] and st.started_time < st.signed_off_time
        with pytest.raises(CorrectionError, match="already signed off by Dr. B"):
            s.sign_off(reviewer="Dr. B")
        # an edit of a signed-off slide re-opens it first, and the log says so
        s.exclude([int(s.cells["cell_id"].iat[1])], note="fold")
        assert s.review.status == "in review" and s.review.signed_off_by == ""
        assert "edited after sign-off (exclude)" in s.review.note
        s.sign_off(reviewer="Dr. B")
        s.undo()  # an undo is an edit too
        assert s.review.status == "in review"
        s.sign_off(reviewer="Dr. B")
        with pytest.raises(CorrectionError, match="say why"):
            s.reopen(reason=" ")
        s.reopen(reason="recount the margin", reviewer="Dr. C")
        assert (s.review.status, s.review.reviewer, s.review.note) == (
            "in review", "Dr. C", "recount the margin",
        )  # fmt: skip
        with pytest.raises(CorrectionError, match="not signed off"):
            s.reopen(reason="again")
        with pytest.raises(CorrectionError, match="reviewer's name"):
            s.sign_off(reviewer="  ")
        s.save()
    log = read_log(store)
    statuses = [
        (e["status"], e["previous"], e["user"]) for e in log if e["action"] == "review_status"
    ]
    assert statuses == [
        ("signed off", "in review", "Dr. B"),
        ("in review", "signed off", "anna"),  # re-opened by the exclusion
        ("signed off", "in review", "Dr. B"),
        ("in review", "signed off", "anna"),  # re-opened by the undo
        ("signed off", "in review", "Dr. B"),
        ("in review", "signed off", "Dr. C"),
    ]
    actions = [e["action"] for e in log]
    # each re-opening is logged just before the edit that caused it
    assert actions[actions.index("exclude") - 1] == "review_status"
    assert actions[actions.index("undo") - 1] == "review_status"
    # the status is the log's: a fresh read says the same, and summary.json carries it
    res = load_results(store)
    assert review_status(res.corrections).status == "in review"
    assert res.summary["review"]["status"] == "in review"


def test_a_status_entry_cannot_be_undone_and_the_reason_can_be_required(store: Path) -> None:
    with CorrectionSession(store, user="anna") as s:
        entry = s.sign_off()
        with pytest.raises(CorrectionError, match="no correction"):
            s.undo(entry["id"])
        assert s.undo() is None  # nothing to undo: a sign-off is not an edit
        s.require_exclusion_reason = True
        cid = int(s.cells["cell_id"].iat[2])
        with pytest.raises(CorrectionError, match="reason"):
            s.exclude([cid])
        assert s.review.signed_off  # a refused exclusion re-opens nothing
        s.exclusion_reason = "out of focus"
        logged = s.exclude([cid])
        assert logged["note"] == "out of focus"
        assert s.exclude([int(s.cells["cell_id"].iat[3])], note="tear")["note"] == "tear"


def _batch(analysed: tuple[Path, Path], tmp_path: Path) -> Path:
    """A results root with two slides of two patients (copies of one analysed store)."""
    root = tmp_path / "results"
    first = copy_store(analysed[1], tmp_path)
    second = root / "s2"
    shutil.copytree(first, second)
    from senpath.results import read_manifest, write_manifest

    manifest = read_manifest(second)
    write_manifest(second, slide_id="s2", identity=manifest["identity"],
                   extra={k: v for k, v in manifest.items()
                          if k not in ("store_version", "slide_id", "identity", "files")})  # fmt: skip
    return root


def test_cli_tables_and_report_show_the_status(analysed: tuple[Path, Path], tmp_path: Path) -> None:
    from senpath.export import load_all, marker_table, write_table
    from senpath.report import render_report

    root = _batch(analysed, tmp_path)
    runner = CliRunner()
    r = runner.invoke(app, ["review", "status", str(root)], terminal_width=200)
    assert r.exit_code == 0, r.output
    assert r.output.count("not started") == 2
    r = runner.invoke(
        app, ["review", "sign-off", str(root), "s1", "--reviewer", "Dr. B", "--note", "ok"]
    )
    assert r.exit_code == 0, r.output
    assert "s1: signed off by Dr. B" in r.output
    r = runner.invoke(app, ["review", "sign-off", str(root), "nope", "--reviewer", "Dr. B"])
    assert r.exit_code == 2 and "no complete results store of slide 'nope'" in r.output
    r = runner.invoke(app, ["review", "status", str(root)], terminal_width=200)
    assert "signed off" in r.output and "Dr. B" in r.output and "not started" in r.output

    stores = load_all(root)
    slides = marker_table(stores, by="slide").set_index("slide_id")
    assert slides.loc["s1", "review_status"] == "signed off"
    assert slides.loc["s1", "reviewed_by"] == "Dr. B" and slides.loc["s1", "review_time"]
    assert slides.loc["s2", "review_status"] == "not started"
    assert slides.loc["s2", "reviewed_by"] == "" and slides.loc["s2", "review_time"] == ""
    # both copies belong to one patient: half signed off is still in review
    patients = marker_table(stores, by="patient")
    assert patients["review_status"].tolist() == ["in review"]
    assert patients["n_slides_signed_off"].tolist() == [1]
    written = write_table(slides.reset_index(), tmp_path / "by_slide", ["csv", "xlsx"])
    csv = pd.read_csv(written[0]).set_index("slide_id")
    assert csv.loc["s1", "review_status"] == "signed off"
    xlsx = pd.read_excel(written[1]).set_index("slide_id")
    assert xlsx.loc["s1", "reviewed_by"] == "Dr. B"

    text = render_report(root)
    assert "1 of 2 slide(s) signed off (s1 by Dr. B), 0 in review, 1 not started" in text
    assert "<th class='l'>review</th>" in text and "signed off by Dr. B" in text
    assert "<th>review</th>" in text  # the per-patient table

    r = runner.invoke(app, ["review", "reopen", str(root), "s1", "--reason", "recount"])
    assert r.exit_code == 0 and "in review" in r.output
    r = runner.invoke(app, ["review", "reopen", str(root), "s1", "--reason", "again"])
    assert r.exit_code == 2 and "not signed off" in r.output


def test_a_locked_store_is_refused_with_one_line(store: Path) -> None:
    s = CorrectionSession(store, user="anna")  # another window holds the store
    try:
        r = CliRunner().invoke(
            app, ["review", "sign-off", str(store.parent), store.name, "--reviewer", "b"]
        )
        assert r.exit_code == 2 and "being reviewed" in r.output
        assert len(r.output.strip().splitlines()) == 1 and r.output.startswith("error:")
    finally:
        s.close()
    assert review_status(read_log(store)).status == "not started"


def test_a_sign_off_of_an_earlier_analysis_is_not_shown(store: Path) -> None:
    import json

    log = [
        {"id": "a", "time": "2026-01-01T10:00:00Z", "user": "x", "action": "start",
         "cells_sha256": "0" * 64, "provenance_sha256": "0" * 64},
        {"id": "b", "time": "2026-01-01T10:01:00Z", "user": "Dr. B", "action": "review_status",
         "status": "signed off", "previous": "not started", "cell_ids": []},
    ]  # fmt: skip
    (store / "corrections.jsonl").write_text("".join(json.dumps(e) + "\n" for e in log))
    assert review_status(log).signed_off  # what the log says, for the analysis it was made for
    r = CliRunner().invoke(app, ["review", "status", str(store)], terminal_width=200)
    assert r.exit_code == 0, r.output
    assert "not started" in r.output and "earlier analysis" in r.output
    assert "Dr. B" not in r.output
    from senpath.corrections import StaleCorrectionsWarning

    with pytest.warns(StaleCorrectionsWarning):
        assert load_results(store).summary.get("review") is None  # not applied
