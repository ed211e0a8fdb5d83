"""The report's serial-sections part: per patient, the alignment picture and the residual error."""

from __future__ import annotations

import html
import os
from pathlib import Path

from senpath.registration._store import ALIGNMENT, read_patient_sections, summary_lines


def sections_html(results_root: str | Path, *, link_from: str | Path) -> str:
    """HTML for every ``_sections/<patient>/`` under ``results_root`` ('' when there is none).

    The alignment picture is linked by a path relative to ``link_from`` (the report's folder),
    like the QC overlays.
    """
    found = read_patient_sections(results_root)
    if not found:
        return ""
    parts = [
        "<h2>Serial sections</h2><p>Adjacent sections registered onto a reference section "
        "(<code>senpath register</code>): magenta = reference only, green = the aligned section "
        "only, yellow = grid cells where the registration is unsure (not used in the map). The "
        "residual estimate is the disagreement of two independent registration methods over the "
        "tissue (on synthetic sections with known transforms the true cell-centroid error was 3-5 µm mean, at most 8 µm p95; see docs/serial_sections.md).</p>"
    ]
    for folder, record in found:
        pid = html.escape(str(record.get("patient_id", folder.name)))
        rule = html.escape(str(record.get("settings", {}).get("rule", "")))
        counts = record.get("map", {})
        parts.append(f"<h3>{pid}</h3><ul>")
        for line in summary_lines(record):
            cls = "" if "FAILED" not in line else " class='fail'"
            parts.append(f"<li{cls}>{html.escape(line)}</li>")
        parts.append(
            f"</ul><p>Map ({rule}): {counts.get('positive', 0)} positive, "
            f"{counts.get('negative', 0)} negative, {counts.get('unsure', 0)} unsure, "
            f"{counts.get('too few cells', 0)} with too few cells of "
            f"{counts.get('grid_cells', 0)} grid cells.</p>"
        )
        picture = folder / ALIGNMENT
        if picture.is_file():
            href = html.escape(Path(os.path.relpath(picture, link_from)).as_posix())
            parts.append(
                f"<a href='{href}'><img src='{href}' alt='alignment {pid}' "
                "style='max-width:100%'></a>"
            )
    return "\n".join(parts)
