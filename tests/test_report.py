"""HTML batch report: self-contained, one image per plot, every slide mentioned, written atomically."""

from __future__ import annotations

import base64
import os
import re

import pytest
from typer.testing import CliRunner

from senpath.cli import app
from senpath.report import REPORT, failed_slides, write_report


def test_report_contents(batch_results):
    r = CliRunner().invoke(app, ["report", str(batch_results)])
    assert r.exit_code == 0, r.output
    text = (batch_results / REPORT).read_text(encoding="utf-8")
    images = re.findall(r'<img alt="([^"]*)"[^>]*src="data:image/png;base64,([^"]+)"', text)
    # 1 bar chart + 1 histogram per marker (ki67, p16) + 1 QC overlay per complete slide
    assert sorted(alt for alt, _ in images) == sorted([
        "markers by patient", "ki67 OD histogram", "p16 OD histogram",
        "QC p1-ki67", "QC p2-p16",
    ])  # fmt: skip
    for _, data in images:
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
    assert 'src="http' not in text and "<script" not in text  # nothing fetched from elsewhere
    for slide_id in ("p1-ki67", "p2-p16", "p3-broken"):
        assert slide_id in text
    (failure,) = failed_slides(batch_results)
    assert failure[0] == "p3-broken" and "corrupt.tif" in failure[1]
    assert "Failed slides" in text and failure[2].split(":")[0] in text
    assert "threshold" in text and "P1" in text and "P2" in text


def test_report_is_written_atomically(batch_results, tmp_path, monkeypatch):
    out = tmp_path / "r.html"
    out.write_text("old report")

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_report(batch_results, out=out)
    assert out.read_text() == "old report"
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]  # no temporary file left


def test_report_without_results_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="senpath run"):
        write_report(tmp_path)


def test_a_corrected_slide_is_named_in_the_report(batch_results, tmp_path):
    import shutil

    from senpath.corrections import CorrectionSession

    root = tmp_path / "batch"
    shutil.copytree(batch_results, root)
    plain = (write_report(root)).read_text(encoding="utf-8")
    assert "<b>Corrected:</b>" not in plain and "<th>corrected</th>" not in plain  # unreviewed
    s = CorrectionSession(root / "p1-ki67", user="reviewer")
    s.flip_call(int(s.cells["cell_id"].iat[0]), "ki67")
    s.save()
    text = write_report(root).read_text(encoding="utf-8")
    assert re.search(r"<b>Corrected:</b> 1 slide\(s\).*\(p1-ki67\)", text)
    assert re.search(
        r"<td class='l warn'>yes: 1 correction\(s\), last [^<]* by reviewer</td>", text
    )
    assert "<td class='l warn'>no</td>" in text  # p2-p16, not reviewed
    assert "p1-ki67 <span class='warn'>(pipeline's calls, before the review)</span>" in text
    assert "<th>corrected</th>" in text  # the per-patient table says it too
