"""One writer per store, a store complete only when every part reads back and matches its manifest,
slide ids that stay inside ``out``, results folders that cannot be used, stale temporaries (issue 16).

One small synthetic slide is analysed once per module (classical segmenter); each test works on its
own copy of the store. Claims about two processes are tested with two processes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import senpath
from senpath.config import AnalysisConfig
from senpath.pipeline import run_batch
from senpath.results import (
    IncompleteStoreError,
    atomic_write_json,
    is_complete,
    read_manifest,
    store_problems,
)
from senpath.samplesheet import SlideJob
from senpath.store_lock import StoreBusyError
from senpath.testing import analysed_synthetic_slide, copy_store

CLASSICAL = AnalysisConfig(segmenter="classical")


@pytest.fixture(scope="module")
def analysed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(slide file, results store) of a 256 x 256 px Ki67 slide."""
    root = tmp_path_factory.mktemp("safety")
    return analysed_synthetic_slide(root, name="s1", shape=(256, 256), seed=3)


@pytest.fixture
def store(analysed: tuple[Path, Path], tmp_path: Path) -> Path:
    return copy_store(analysed[1], tmp_path)


def _job(analysed: tuple[Path, Path]) -> SlideJob:
    return SlideJob("s1", analysed[0], "ki67", "P1")


def _child(code: str, *args: str) -> subprocess.Popen[str]:
    """A Python process running ``code``; it prints ``ready`` once it holds what it takes."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


_HOLD_RUN = """
import sys, time
from senpath.store_lock import hold_store
with hold_store(sys.argv[1], user="other-run"):
    print("ready", flush=True)
    time.sleep(120)
"""

_DIE_HOLDING_RUN = """
import os, sys
from senpath.store_lock import hold_store
with hold_store(sys.argv[1], user="killed-run"):
    print("ready", flush=True)
    os.kill(os.getpid(), 9)
"""


# ------------------------------------------------------------------ one writer per store


def test_a_second_run_on_a_store_being_written_is_refused_naming_the_first(
    analysed: tuple[Path, Path], store: Path
) -> None:
    other = _child(_HOLD_RUN, str(store))
    try:
        before = {p.name: p.stat().st_mtime_ns for p in store.iterdir() if p.is_file()}
        assert "store.lock" in before
        (report,) = run_batch([_job(analysed)], out=store.parent, config=CLASSICAL, force=True)
        assert report.status == "failed"
        assert "being written by a senpath run of other-run on " in report.message
        assert f"process {other.pid}" in report.message and "run again" in report.message
        with pytest.raises(StoreBusyError, match="other-run"):
            senpath.analyze_slide(analysed[0], out=store.parent, assay="ki67", config=CLASSICAL)
        after = {p.name: p.stat().st_mtime_ns for p in store.iterdir() if p.is_file()}
        assert after == before  # untouched, its lock too
    finally:
        other.kill()
        other.wait()


def test_a_run_while_a_review_is_open_is_refused_and_a_review_while_a_run_writes(
    analysed: tuple[Path, Path], store: Path
) -> None:
    from senpath.corrections import CorrectionSession, StoreLockedError

    review = _child(
        "import sys, time\nfrom senpath.corrections import CorrectionSession\n"
        "s = CorrectionSession(sys.argv[1], user='reviewer')\nprint('ready', flush=True)\n"
        "time.sleep(120)\n",
        str(store),
    )
    try:
        (report,) = run_batch([_job(analysed)], out=store.parent, config=CLASSICAL, force=True)
        assert report.status == "failed" and "being reviewed" in report.message
        assert "reviewer on" in report.message
    finally:
        review.kill()
        review.wait()
    run = _child(_HOLD_RUN, str(store))
    try:
        with pytest.raises(StoreLockedError, match="senpath run of other-run .*read-only"):
            CorrectionSession(store, user="reviewer")
    finally:
        run.kill()
        run.wait()


def test_a_killed_runs_lock_is_taken_over_with_a_message(
    analysed: tuple[Path, Path], store: Path
) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", _DIE_HOLDING_RUN, str(store)], capture_output=True, text=True
    )
    assert dead.returncode == -signal.SIGKILL and (store / "store.lock").exists()
    (report,) = run_batch([_job(analysed)], out=store.parent, config=CLASSICAL, force=True)
    assert report.status == "ok", report.message
    assert "took over the store lock of killed-run" in report.message
    assert "a run that is no longer running" in report.message
    assert not (store / "store.lock").exists() and is_complete(store)


_RUN_SLIDE = """
import sys
from senpath import analyze_slide
from senpath.config import AnalysisConfig
from senpath.store_lock import StoreBusyError
import os, time
print("ready", flush=True)
while not os.path.exists(sys.argv[3]):  # both start together
    time.sleep(0.01)
try:
    analyze_slide(sys.argv[1], out=sys.argv[2], assay="ki67",
                  config=AnalysisConfig(segmenter="classical"))
    print("ok", flush=True)
except StoreBusyError as exc:
    print("busy", exc, flush=True)
"""


def test_two_runs_at_once_give_one_whole_store(analysed: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "results"
    start = tmp_path / "go"
    runs = [_child(_RUN_SLIDE, str(analysed[0]), str(out), str(start)) for _ in range(2)]
    start.touch()
    lines = [r.communicate(timeout=120)[0].strip() for r in runs]
    assert all(line == "ok" or line.startswith("busy") for line in lines), lines
    assert "ok" in lines
    for line in lines:
        if line.startswith("busy"):
            assert "being written by a senpath run of" in line
    res = senpath.load_results(out / "s1")  # whole: every part reads back, hashes match
    assert store_problems(out / "s1") == [] and len(res.cells)
    reference = senpath.load_results(analysed[1]).cells
    assert res.cells.equals(reference)


_KEEP_LABEL_TMP = """
import sys, time
from senpath.labels import LabelStore
store = LabelStore(sys.argv[1], (64, 64), mpp=0.5)
print("ready", flush=True)
time.sleep(120)
"""


def test_a_label_store_leaves_another_live_writers_temporary_alone(tmp_path: Path) -> None:
    from senpath.labels import LabelStore

    other = _child(_KEEP_LABEL_TMP, str(tmp_path))
    try:
        (theirs,) = tmp_path.glob(".labels.ome.zarr.*.tmp")
        mine = LabelStore(tmp_path, (64, 64), mpp=0.5)
        assert theirs.is_dir() and (theirs / "0").is_dir()  # the cause of KeyError: '0'
        mine.commit()
        assert theirs.is_dir()
    finally:
        other.kill()
        other.wait()
    LabelStore(tmp_path, (64, 64), mpp=0.5).abort()  # its writer is gone now: removed
    assert not theirs.exists()


# --------------------------------------------------- complete only when whole and as listed


def test_a_store_whose_labels_do_not_read_back_is_never_committed(
    analysed: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from senpath.labels import LabelStore

    commit = LabelStore.commit

    def commit_then_lose_level_0(self: LabelStore, **kw: object) -> Path:
        final = commit(self, **kw)
        shutil.rmtree(final / "0")  # what another process's cleanup did to the label store
        return final

    monkeypatch.setattr(LabelStore, "commit", commit_then_lose_level_0)
    with pytest.raises(RuntimeError, match=r"did not read back .*left incomplete"):
        senpath.analyze_slide(analysed[0], out=tmp_path, assay="ki67", config=CLASSICAL)
    assert read_manifest(tmp_path / "s1") is None and not is_complete(tmp_path / "s1")


def test_resume_redoes_a_store_marked_complete_with_unreadable_labels(
    analysed: tuple[Path, Path], store: Path
) -> None:
    import shutil

    from senpath.labels import load_labels
    from senpath.results import write_manifest

    shutil.rmtree(store / "labels.ome.zarr" / "0")  # as an earlier version could commit it
    manifest = read_manifest(store)
    write_manifest(store, slide_id="s1", identity=manifest["identity"], extra={"assay": "ki67"})
    assert store_problems(store) == ["labels.ome.zarr lacks level(s) 0"]
    with pytest.raises(IncompleteStoreError, match="labels.ome.zarr lacks level"):
        senpath.load_results(store)
    (report,) = run_batch([_job(analysed)], out=store.parent, config=CLASSICAL)
    assert report.status == "ok"  # redone, not skipped as complete
    assert is_complete(store) and load_labels(store).shape == (256, 256)


_KILL_INSIDE_SAVE = """
import os, sys
import senpath.corrections.session as session
from senpath.corrections import CorrectionSession
s = CorrectionSession(sys.argv[1], user="reviewer")
s.exclude([int(s.cells["cell_id"].iat[0])])
def killed(*args, **kwargs):
    os.kill(os.getpid(), 9)  # the summary is written, the manifest not yet
session.write_manifest = killed
print("ready", flush=True)
s.save()
"""


def test_a_kill_inside_a_corrections_save_makes_the_store_incomplete_and_resume_redoes_it(
    analysed: tuple[Path, Path], store: Path
) -> None:
    summary = (store / "summary.json").read_bytes()
    killed = _child(_KILL_INSIDE_SAVE, str(store))
    assert killed.wait(timeout=60) == -signal.SIGKILL
    assert (store / "summary.json").read_bytes() != summary  # the save got that far
    assert not is_complete(store)
    with pytest.raises(IncompleteStoreError, match="summary.json does not match manifest.json"):
        senpath.load_results(store)
    with pytest.raises(IncompleteStoreError, match="run `senpath run` again"):
        senpath.load_results(store)
    with pytest.warns(UserWarning, match="corrections of the previous analysis are kept"):
        (report,) = run_batch([_job(analysed)], out=store.parent, config=CLASSICAL)
    assert report.status == "ok" and is_complete(store)
    assert list(store.glob("corrections.*.jsonl"))  # the reviewer's log is kept aside


def test_a_changed_file_of_any_kind_makes_the_store_incomplete(store: Path) -> None:
    assert store_problems(store) == []
    for name in ("cells.parquet", "provenance.json", "qc_overlay.png"):
        original = (store / name).read_bytes()
        (store / name).write_bytes(original + b" ")
        assert store_problems(store) == [f"{name} does not match manifest.json"], name
        (store / name).write_bytes(original)
    (store / "summary.json").unlink()
    assert store_problems(store) == ["summary.json is missing"]


def test_a_review_between_saves_keeps_the_store_complete(store: Path) -> None:
    from senpath.corrections import CorrectionSession

    s = CorrectionSession(store, user="t")
    inner = s.cells[s.cells["x_um"].between(30, 90) & s.cells["y_um"].between(30, 90)]
    cid = int(inner["cell_id"].iat[0])
    s.exclude([cid])  # the log grows before the save: not a change of the analysis
    y, x = (int(v / s.label_mpp) for v in s.cell(cid)[["y_um", "x_um"]])
    block = s.read_labels(y - 8, x - 8, y + 8, x + 8)
    block[block == cid] = 0
    s.edit_nuclei(block, origin=(y - 8, x - 8))  # labels change before the save too
    assert is_complete(store), store_problems(store)
    s.save()
    s.close()
    assert is_complete(store) and senpath.load_results(store).cells["excluded"].any()


# ------------------------------------------------------------------------- slide ids


@pytest.mark.parametrize("slide_id", ["../../x", "../x", "a/b", "..", ".hidden", ""])
def test_the_api_refuses_a_slide_id_that_leaves_out(
    analysed: tuple[Path, Path], tmp_path: Path, slide_id: str
) -> None:
    out = tmp_path / "a" / "b" / "out"
    with pytest.raises(ValueError, match="slide_id .* may only use letters"):
        senpath.analyze_slide(
            analysed[0], out=out, assay="ki67", config=CLASSICAL, slide_id=slide_id
        )
    assert not any(p.is_file() for p in tmp_path.rglob("*"))  # nothing written anywhere


def test_the_sheet_and_the_api_share_one_slide_id_rule(tmp_path: Path) -> None:
    from senpath.results import slide_id_problem
    from senpath.samplesheet import SampleSheetError, read_sample_sheet

    sheet = tmp_path / "s.csv"
    (tmp_path / "a.tif").write_bytes(b"x")
    sheet.write_text("patient_id,slide_id,path,assay\nP1,../../x,a.tif,ki67\n")
    with pytest.raises(SampleSheetError) as err:
        read_sample_sheet(sheet, known_assays=["ki67"])
    assert str(slide_id_problem("../../x")) in str(err.value)


# ------------------------------------------------------------------------ temporaries

_KILL_INSIDE_WRITE = """
import os, sys
from senpath.results import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_text('{"type": "FeatureCollection", "feat')
    os.kill(os.getpid(), 9)
"""


def test_a_rerun_removes_the_temporary_of_a_killed_geojson_export(
    store: Path, tmp_path: Path
) -> None:
    from senpath.export import export_geojson

    folder = tmp_path / "qupath"
    folder.mkdir()
    killed = subprocess.run(
        [sys.executable, "-c", _KILL_INSIDE_WRITE, str(folder / "s1.geojson")], check=False
    )
    assert killed.returncode == -signal.SIGKILL
    assert [p.name.endswith(".tmp") for p in folder.iterdir()] == [True]
    export_geojson([senpath.load_results(store)], folder)
    assert [p.name for p in folder.iterdir()] == ["s1.geojson"]
    json.loads((folder / "s1.geojson").read_text())


def test_an_atomic_write_leaves_a_live_writers_temporary_alone(tmp_path: Path) -> None:
    code = (
        "import sys, time\nfrom senpath.results import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n    print('ready', flush=True)\n    time.sleep(120)\n"
    )
    other = _child(code, str(tmp_path / "t.json"))
    try:
        (theirs,) = tmp_path.glob(".t.json.*.tmp")
        atomic_write_json(tmp_path / "t.json", {"a": 1})
        assert theirs.exists()
    finally:
        other.kill()
        other.wait()


# ------------------------------------------------------------------ the command line


def _cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str]:
    """Run ``senpath ARGS`` in this process: (exit code, stdout + stderr)."""
    from senpath import cli

    monkeypatch.setattr(cli, "_DEBUG", False, raising=False)
    monkeypatch.setattr(sys, "argv", ["senpath", *args])
    monkeypatch.setenv("COLUMNS", "1000")
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.mark.parametrize("where", ["file", "under_a_file", "not_writable"])
def test_an_unusable_out_folder_is_one_line(
    analysed: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    where: str,
) -> None:
    blocker = tmp_path / "results.txt"
    blocker.write_text("not a folder")
    out = {"file": blocker, "under_a_file": blocker / "results"}.get(where, tmp_path / "ro")
    if where == "not_writable":
        if os.geteuid() == 0:
            pytest.skip("root writes in any folder")
        out.mkdir()
        out.chmod(0o500)
    args = ["run", str(analysed[0]), "--assay", "ki67", "--segmenter", "classical"]
    code, output = _cli(monkeypatch, capsys, *args, "--out", str(out))
    assert code == 2 and "Traceback" not in output, output
    (line,) = [x for x in output.splitlines() if x.strip()]
    problem = {
        "file": "is a file, not a folder",
        "under_a_file": f"cannot be created because {blocker} is a file",
        "not_writable": "cannot write in this folder",
    }[where]
    assert line.startswith(f"error: results folder {out}: ") and problem in line, line


def test_a_failed_slide_names_its_file_once_and_debug_prints_the_traceback(
    analysed: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    slides = tmp_path / "slides"
    slides.mkdir()
    (slides / "broken.tif").write_bytes(analysed[0].read_bytes()[:3000])
    (slides / "loop.tif").symlink_to(slides / "loop.tif")
    args = ["run", str(slides), "--assay", "ki67", "--segmenter", "classical"]
    args += ["--out", str(tmp_path / "r")]
    code, output = _cli(monkeypatch, capsys, *args)
    assert code == 1 and "Traceback" not in output, output
    rows = {line.split()[1]: line for line in output.splitlines() if " failed " in line}
    assert rows["broken"].count("broken.tif") == 1 and "SlideError" not in rows["broken"]
    assert "a symbolic link loop" in rows["loop"] and "OSError" not in rows["loop"], rows
    assert "Traceback" in (tmp_path / "r" / "failures.log").read_text()

    code, output = _cli(monkeypatch, capsys, *args, "--debug")
    assert code == 1 and "Traceback (most recent call last)" in output
    assert "--- broken" in output
