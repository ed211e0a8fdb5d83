"""HTML batch report: self-contained, one image per plot, every slide mentioned, written atomically."""

from __future__ import annotations

import base64
import os
import re

import pytest
from typer.testing import CliRunner

from senpath.cli import app
from senpath.report import (
    MISSING,
    REPORT,
    THUMBNAIL_PX,
    failed_slides,
    marker_bars_figure,
    write_report,
)


def test_report_contents(batch_results):
    r = CliRunner().invoke(app, ["report", str(batch_results)])
    assert r.exit_code == 0, r.output
    text = (batch_results / REPORT).read_text(encoding="utf-8")
    images = re.findall(r'<img alt="([^"]*)"[^>]*src="data:image/(png|jpeg);base64,([^"]+)"', text)
    # 1 bar chart + 1 histogram per marker (ki67, p16) + 1 QC overlay thumbnail per complete slide
    assert sorted(alt for alt, _, _ in images) == sorted([
        "markers by patient", "ki67 OD histogram", "p16 OD histogram",
        "QC p1-ki67", "QC p2-p16",
    ])  # fmt: skip
    for alt, kind, data in images:
        magic = b"\xff\xd8\xff" if alt.startswith("QC ") else b"\x89PNG\r\n\x1a\n"
        assert kind == ("jpeg" if alt.startswith("QC ") else "png")
        assert base64.b64decode(data).startswith(magic)
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


def test_report_embeds_thumbnails_linked_to_the_full_pictures(batch_results, tmp_path):
    import cv2
    import numpy as np

    for out in (batch_results / REPORT, tmp_path / "elsewhere" / "batch.html"):
        text = write_report(batch_results, out=out).read_text(encoding="utf-8")
        links = re.findall(r'<a href="([^"]+)"><img alt="QC ([^"]+)"[^>]*base64,([^"]+)"', text)
        assert sorted(slide for _, slide, _ in links) == ["p1-ki67", "p2-p16"]
        for href, slide, data in links:
            full = out.parent / href  # a relative link that resolves from where the report is
            assert full.resolve() == (batch_results / slide / "qc_overlay.png").resolve()
            thumb = cv2.imdecode(np.frombuffer(base64.b64decode(data), np.uint8), cv2.IMREAD_COLOR)
            assert thumb.shape[1] <= THUMBNAIL_PX < cv2.imread(str(full)).shape[1]
        hists = re.findall(r"<a href='([^']+)'>histograms</a>", text)
        assert len(hists) == 2 and all((out.parent / h).is_file() for h in hists)
        # the overlays are not embedded: the report is a fraction of the pictures it shows
        full_size = sum(
            (batch_results / s / "qc_overlay.png").stat().st_size for s in ("p1-ki67", "p2-p16")
        )
        assert len(text) < full_size


def test_per_patient_table_is_short_and_shows_missing_values_one_way(batch_results):
    text = write_report(batch_results).read_text(encoding="utf-8")
    table_html = text.split("<h2>Per-patient table</h2>")[1].split("</table>")[0]
    heads = re.findall(r"<th>([^<]*)</th>", table_html)
    assert heads == [
        "patient", "slides", "assays", "cells", "ki67 % positive (95% CI)", "ki67 H-score",
        "p16 % positive (95% CI)", "p16 H-score", "senescent index % (95% CI)",
        "median nucleus area (µm²)", "review",
    ]  # fmt: skip
    cells = re.findall(r"<td>([^<]*)</td>", table_html)
    assert "&lt;NA&gt;" not in table_html and "" not in cells  # not `<NA>` here and blanks there
    # P1 has no p16 slide, P2 no ki67 slide (2 figures each); only one has a senescent index
    assert cells.count(MISSING) == 5
    assert re.search(r"<td>\d+\.\d \(\d+\.\d–\d+\.\d\)</td>", table_html)  # % with its CI


def test_bar_chart_leaves_out_patients_without_a_marker():
    import pandas as pd

    table = pd.DataFrame({
        "patient_id": ["P1", "P2", "P3"],
        "ki67_pct_positive": [20.0, 30.0, None],
        "ki67_pct_positive_ci95_low": [15.0, 25.0, None],
        "ki67_pct_positive_ci95_high": [25.0, 35.0, None],
    })  # fmt: skip
    fig = marker_bars_figure(table)
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["P1", "P2"]  # no empty slot for P3
    assert marker_bars_figure(table.iloc[2:]) is None
