"""Culture experiments: marker figures per well and per condition, differences, and plate maps.

The question a culture lab asks is "how many more cells are SA-β-gal+ after treatment?". The slides
of a batch are grouped by the layout (``<results>/layout.csv``, from the sample sheet's
``condition``, ``plate``, ``well``, ``replicate``; :mod:`senpath.plate`):

- a **well** pools the cells of its images (several fields of one well are one sample); an image
  without a well is a unit of its own;
- a **condition** gets two kinds of figures, named apart in every column:

  * *pooled*: all its cells together, % positive with a Wilson 95% CI. This treats every cell as
    independent, which cells of one well are not: the interval says how well the cells were
    counted, not how much the result would move in another well;
  * *across replicates*: the mean of the per-replicate % positive with a t 95% CI over them. The
    replicates are the biological ones (the sheet's ``replicate``: independent experiments, whose
    wells are pooled first) when every well has one, else the wells. This is the figure to compare
    conditions by;

- each condition against a **reference** condition (``untreated``, ``vehicle``, ...): the difference
  in pooled % positive with Newcombe's hybrid-score 95% CI, and the difference of the replicate
  means with Welch's t 95% CI and p-value (statsmodels).

Stain controls (``control`` = negative/positive) calibrate cut-offs and are not part of any
condition; slides flagged unreliable by stain QC are left out unless ``include_unreliable`` (the
tables say which and how many). Cells a reviewer excluded are left out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from senpath.export import is_reliable, marker_names, stain_qc_status, write_table
from senpath.plate import Placement, parse_well, plate_format, read_layout
from senpath.qc_plots import figure, png_bytes
from senpath.results import SlideResults, atomic_write_bytes
from senpath.score import wilson_interval

#: Condition names taken as the reference when none is named (case-insensitive, exactly one).
REFERENCE_NAMES = ("untreated", "control", "vehicle", "dmso", "mock", "ctrl", "nt", "pbs")


class ConditionError(ValueError):
    """A condition table that cannot be made (no layout, an unknown reference condition)."""


# ------------------------------------------------------------------------------------- statistics


def mean_ci(values: Sequence[float]) -> tuple[float, float, float, float]:
    """Mean, standard deviation and t 95% CI of the mean of ``values`` (% per replicate).

    The CI is clipped to 0-100 % (a percentage cannot leave it); it is NaN for fewer than two
    values (no spread to estimate), as the standard deviation is.
    """
    from statsmodels.stats.weightstats import DescrStatsW

    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return (math.nan,) * 4
    mean = float(x.mean())
    if x.size < 2:
        return mean, math.nan, math.nan, math.nan
    stats = DescrStatsW(x)
    lo, hi = stats.tconfint_mean(alpha=0.05)
    return mean, float(stats.std_ddof(1)), max(0.0, float(lo)), min(100.0, float(hi))


def pooled_difference(k: int, n: int, k_ref: int, n_ref: int) -> tuple[float, float, float]:
    """Difference of two proportions k/n - k_ref/n_ref, in percentage points, with Newcombe's
    hybrid-score 95% CI (from the two Wilson intervals; statsmodels ``method="newcomb"``)."""
    from statsmodels.stats.proportion import confint_proportions_2indep

    if n == 0 or n_ref == 0:
        return (math.nan,) * 3
    lo, hi = confint_proportions_2indep(k, n, k_ref, n_ref, method="newcomb", compare="diff")
    return 100.0 * (k / n - k_ref / n_ref), 100.0 * float(lo), 100.0 * float(hi)


def mean_difference(
    values: Sequence[float], reference: Sequence[float]
) -> tuple[float, float, float, float]:
    """Difference of two means (percentage points) with Welch's t 95% CI and two-sided p-value
    (unequal variances); the CI and p-value are NaN with fewer than two values on a side."""
    from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

    a = np.asarray(values, dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    if a.size == 0 or b.size == 0:
        return (math.nan,) * 4
    diff = float(a.mean() - b.mean())
    if a.size < 2 or b.size < 2:
        return diff, math.nan, math.nan, math.nan
    compare = CompareMeans(DescrStatsW(a), DescrStatsW(b))
    lo, hi = compare.tconfint_diff(alpha=0.05, usevar="unequal")
    _, p, _ = compare.ttest_ind(usevar="unequal")
    return diff, float(lo), float(hi), float(p)


# ----------------------------------------------------------------------------------------- wells


def _kept_cells(res: SlideResults) -> pd.DataFrame:
    cells = res.cells
    if "excluded" in cells.columns:
        cells = cells[~cells["excluded"].astype(bool)]
    return cells


def well_table(
    stores: Iterable[SlideResults],
    layout: Mapping[str, Placement],
    *,
    include_unreliable: bool = False,
) -> pd.DataFrame:
    """One row per well (or per image without a well) of the layout's conditions.

    Columns: ``condition``, ``plate``, ``well``, ``replicate``, ``unit`` (``plate:well``, or the
    slide id of an image without a well), ``n_slides``, ``slide_ids``, ``stain_qc``, ``reliable``,
    ``n_slides_unreliable``, ``unreliable_slide_ids``, ``n_cells``, and per marker ``m``:
    ``m_n_cells``, ``m_n_positive``, ``m_pct_positive`` with its Wilson 95% CI. Slides without a
    condition and stain controls are left out; unreliable slides too unless ``include_unreliable``.
    """
    groups: dict[str, list[SlideResults]] = {}
    places: dict[str, Placement] = {}
    for res in stores:
        place = layout.get(res.slide_id)
        if place is None or place.condition is None or place.control is not None:
            continue
        unit = f"{place.plate or ''}:{place.well}" if place.well else res.slide_id
        groups.setdefault(unit, []).append(res)
        places.setdefault(unit, place)
    rows = []
    for unit, group in groups.items():
        place = places[unit]
        unreliable = [r for r in group if not is_reliable(r)]
        kept = group if include_unreliable else [r for r in group if is_reliable(r)]
        row: dict[str, Any] = {
            "condition": place.condition,
            "plate": place.plate or "",
            "well": place.well or "",
            "replicate": place.replicate or "",
            "unit": unit,
            "n_slides": len(kept),
            "slide_ids": ";".join(sorted(r.slide_id for r in kept)),
            "stain_qc": ";".join(sorted({stain_qc_status(r) for r in group})),
            "reliable": "no" if (unreliable and include_unreliable) or not kept else "yes",
            "n_slides_unreliable": len(unreliable),
            "unreliable_slide_ids": ";".join(sorted(r.slide_id for r in unreliable)),
        }
        cells = [_kept_cells(r) for r in kept]
        row["n_cells"] = int(sum(len(c) for c in cells))
        for m in sorted({m for c in cells for m in marker_names(c)}):
            calls = np.concatenate(
                [c[f"{m}_positive"].to_numpy(dtype=bool) for c in cells if f"{m}_positive" in c]
            )
            k, n = int(calls.sum()), int(calls.size)
            row[f"{m}_n_cells"], row[f"{m}_n_positive"] = n, k
            row[f"{m}_pct_positive"] = 100.0 * k / n if n else math.nan
            lo, hi = wilson_interval(k, n)
            row[f"{m}_pct_positive_ci95_low"], row[f"{m}_pct_positive_ci95_high"] = lo, hi
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    keys = [
        (str(c), *_sort_key(p, w, u))
        for c, p, w, u in zip(
            table["condition"], table["plate"], table["well"], table["unit"], strict=True
        )
    ]
    table = table.iloc[sorted(range(len(table)), key=keys.__getitem__)]
    return _with_counts(table.reset_index(drop=True))


def _sort_key(plate: str, well: str, unit: str) -> tuple[str, int, int, str]:
    row, column = parse_well(well) if well else (99, 99)
    return (plate, row, column, unit)


def _with_counts(table: pd.DataFrame) -> pd.DataFrame:
    for col in table.columns:
        if col in ("n_slides", "n_cells", "n_slides_unreliable") or col.endswith(
            ("_n_cells", "_n_positive", "_n_replicates", "_n_wells")
        ):
            table[col] = table[col].astype("Int64")
    return table


def _markers(wells: pd.DataFrame) -> list[str]:
    return sorted(c[: -len("_n_positive")] for c in wells.columns if c.endswith("_n_positive"))


# ------------------------------------------------------------------------------------ conditions


def default_reference(conditions: Iterable[str]) -> str | None:
    """The condition named like an untreated reference (:data:`REFERENCE_NAMES`), when exactly one
    is."""
    found = [c for c in conditions if c.strip().lower() in REFERENCE_NAMES]
    return found[0] if len(found) == 1 else None


def replicate_unit(wells: pd.DataFrame) -> str:
    """``replicate`` when every well names its biological replicate, else ``well``."""
    if len(wells) and (wells["replicate"].astype(str) != "").all():
        return "replicate"
    return "well"


def _per_replicate(wells: pd.DataFrame, marker: str, unit: str) -> tuple[list[float], list[str]]:
    """% positive per replicate of one condition's wells (a replicate pools its wells' cells)."""
    with_cells = wells[wells[f"{marker}_n_cells"].fillna(0).astype(int) > 0]
    key = "replicate" if unit == "replicate" else "unit"
    pooled = with_cells.groupby(key, sort=True)[[f"{marker}_n_positive", f"{marker}_n_cells"]].sum()
    k = pooled[f"{marker}_n_positive"].to_numpy(dtype=np.float64)
    n = pooled[f"{marker}_n_cells"].to_numpy(dtype=np.float64)
    return list(100.0 * k / n), [str(x) for x in pooled.index]


def condition_table(
    wells: pd.DataFrame, *, reference: str | None = None, unit: str | None = None
) -> pd.DataFrame:
    """One row per condition: pooled and across-replicate figures, and differences to ``reference``.

    Parameters
    ----------
    wells : :func:`well_table`.
    reference : the condition the others are compared with (default: :func:`default_reference`;
        no difference columns when there is none).
    unit : ``well`` or ``replicate``: what the across-replicate figures average over (default:
        :func:`replicate_unit`).

    Returns
    -------
    Columns ``condition``, ``n_wells``, ``n_slides``, ``n_cells``, ``replicate_unit``,
    ``reference_condition`` and per marker ``m``:

    - ``m_n_cells``, ``m_n_positive``, ``m_pct_positive`` and ``m_pct_positive_ci95_low/high``:
      cells pooled, Wilson 95% CI;
    - ``m_n_replicates``, ``m_replicate_mean_pct_positive`` with ``_ci95_low/high`` (t, over the
      replicates) and ``m_replicate_sd_pct_positive``;
    - with a reference: ``m_pooled_diff_pct_positive`` with its Newcombe ``_ci95_low/high``, and
      ``m_replicate_diff_pct_positive`` with its Welch ``_ci95_low/high`` and
      ``m_replicate_diff_p_value`` (percentage points; empty on the reference's own row).

    Raises
    ------
    ConditionError
        When ``reference`` is not one of the conditions.
    """
    if wells.empty:
        return pd.DataFrame()
    conditions = sorted(wells["condition"].astype(str).unique())
    if reference is not None and reference not in conditions:
        raise ConditionError(
            f"reference condition {reference!r} is not a condition of these results: "
            f"{', '.join(conditions)}"
        )
    reference = reference if reference is not None else default_reference(conditions)
    unit = unit or replicate_unit(wells)
    markers = _markers(wells)
    if reference is not None:  # the reference first, then the others as sorted
        conditions = [reference] + [c for c in conditions if c != reference]
    rows = []
    for condition in conditions:
        mine = wells[wells["condition"] == condition]
        row: dict[str, Any] = {
            "condition": condition,
            "n_wells": int((mine["well"] != "").sum()),
            "n_slides": int(mine["n_slides"].sum()),
            "n_cells": int(mine["n_cells"].sum()),
            "n_slides_unreliable": int(mine["n_slides_unreliable"].sum()),
            "replicate_unit": unit,
            "reference_condition": reference or "",
        }
        for m in markers:
            row.update(_marker_columns(mine, wells, m, unit, condition, reference))
        rows.append(row)
    return _with_counts(pd.DataFrame(rows))


def _marker_columns(
    mine: pd.DataFrame,
    wells: pd.DataFrame,
    m: str,
    unit: str,
    condition: str,
    reference: str | None,
) -> dict[str, Any]:
    k = int(mine[f"{m}_n_positive"].fillna(0).sum())
    n = int(mine[f"{m}_n_cells"].fillna(0).sum())
    lo, hi = wilson_interval(k, n)
    per, _ = _per_replicate(mine, m, unit)
    mean, sd, mlo, mhi = mean_ci(per)
    out: dict[str, Any] = {
        f"{m}_n_cells": n,
        f"{m}_n_positive": k,
        f"{m}_pct_positive": 100.0 * k / n if n else math.nan,
        f"{m}_pct_positive_ci95_low": lo,
        f"{m}_pct_positive_ci95_high": hi,
        f"{m}_n_replicates": len(per),
        f"{m}_replicate_mean_pct_positive": mean,
        f"{m}_replicate_mean_pct_positive_ci95_low": mlo,
        f"{m}_replicate_mean_pct_positive_ci95_high": mhi,
        f"{m}_replicate_sd_pct_positive": sd,
    }
    if reference is None:
        return out
    diff_cols = (
        f"{m}_pooled_diff_pct_positive",
        f"{m}_pooled_diff_pct_positive_ci95_low",
        f"{m}_pooled_diff_pct_positive_ci95_high",
        f"{m}_replicate_diff_pct_positive",
        f"{m}_replicate_diff_pct_positive_ci95_low",
        f"{m}_replicate_diff_pct_positive_ci95_high",
        f"{m}_replicate_diff_p_value",
    )
    if condition == reference:
        return {**out, **dict.fromkeys(diff_cols, math.nan)}
    ref = wells[wells["condition"] == reference]
    k0 = int(ref[f"{m}_n_positive"].fillna(0).sum())
    n0 = int(ref[f"{m}_n_cells"].fillna(0).sum())
    ref_per, _ = _per_replicate(ref, m, unit)
    values = (*pooled_difference(k, n, k0, n0), *mean_difference(per, ref_per))
    return {**out, **dict(zip(diff_cols, values, strict=True))}


# ------------------------------------------------------------------------------------- plate map


def plate_map_figure(wells: pd.DataFrame, marker: str) -> Any:
    """Plate maps: one panel per plate, each well a disc coloured by its % ``marker``-positive.

    A well's label is its % positive; its condition is written under it. Wells without cells are
    grey; unreliable ones (stain QC, with ``include_unreliable``) are hatched. Returns a matplotlib
    Figure, or ``None`` when no image of ``wells`` names a well.
    """
    from matplotlib import colormaps
    from matplotlib.colors import Normalize
    from matplotlib.patches import Circle

    placed = wells[wells["well"] != ""]
    if placed.empty or f"{marker}_pct_positive" not in placed.columns:
        return None
    plates = sorted(placed["plate"].unique())
    formats = [plate_format(placed.loc[placed["plate"] == p, "well"]) for p in plates]
    values = pd.to_numeric(placed[f"{marker}_pct_positive"], errors="coerce")
    top = float(np.nanmax(values)) if values.notna().any() else 100.0
    norm = Normalize(0.0, max(1.0, math.ceil(top / 10) * 10))
    cmap = colormaps["viridis"]
    width = sum(0.75 * c + 1.2 for _, c in formats)
    fig = figure(max(5.0, width + 1.0), 0.75 * max(r for r, _ in formats) + 1.6)
    axes = fig.subplots(1, len(plates), squeeze=False)[0]
    for ax, plate, (n_rows, n_cols) in zip(axes, plates, formats, strict=True):
        mine = placed[placed["plate"] == plate].set_index("well")
        for r in range(n_rows):
            for c in range(n_cols):
                ax.add_patch(Circle((c, r), 0.42, facecolor="white", edgecolor="0.8", lw=0.8))
        for well, row in mine.iterrows():
            r, c = parse_well(str(well))
            pct = pd.to_numeric(row[f"{marker}_pct_positive"], errors="coerce")
            colour = "0.75" if pd.isna(pct) else cmap(norm(float(pct)))
            hatch = "///" if row["reliable"] == "no" else None
            ax.add_patch(Circle((c, r), 0.42, facecolor=colour, edgecolor="0.3", hatch=hatch))
            text = "–" if pd.isna(pct) else f"{float(pct):.0f}"
            dark = not pd.isna(pct) and norm(float(pct)) < 0.6
            ax.text(c, r - 0.05, text, ha="center", va="center", fontsize=7,
                    color="white" if dark else "black")  # fmt: skip
            ax.text(c, r + 0.27, str(row["condition"])[:10], ha="center", va="center",
                    fontsize=4.5, color="white" if dark else "black")  # fmt: skip
        ax.set_xlim(-0.6, n_cols - 0.4)
        ax.set_ylim(n_rows - 0.4, -0.6)
        ax.set_aspect("equal")
        ax.set_xticks(range(n_cols), [str(c + 1) for c in range(n_cols)], fontsize=7)
        ax.set_yticks(range(n_rows), [chr(ord("A") + r) for r in range(n_rows)], fontsize=7)
        ax.tick_params(length=0)
        ax.xaxis.tick_top()
        ax.set_title(f"plate {plate}" if plate else "plate", fontsize=9)
        for side in ax.spines.values():
            side.set_visible(False)
    from matplotlib.cm import ScalarMappable

    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=list(axes), shrink=0.8)
    bar.set_label(f"% {marker}+ per well")
    return fig


# ------------------------------------------------------------------------ exports and the report


def condition_tables(
    stores: Sequence[SlideResults],
    results_root: str | Path,
    *,
    reference: str | None = None,
    include_unreliable: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(well table, condition table) of the stores, grouped by ``<results_root>/layout.csv``.

    Raises
    ------
    ConditionError
        When no stored slide has a condition in the layout (none given in the sample sheet).
    """
    layout = read_layout(results_root)
    wells = well_table(stores, layout, include_unreliable=include_unreliable)
    if wells.empty:
        raise ConditionError(
            f"no slide under {results_root} has a condition: add the columns condition (and "
            "plate, well, replicate) to the sample sheet and run it again (complete slides are "
            "skipped; the layout is written to layout.csv)"
        )
    return wells, condition_table(wells, reference=reference)


def export_conditions(
    stores: Sequence[SlideResults],
    results_root: str | Path,
    *,
    by: str,
    formats: Sequence[str],
    stem: str | Path | None = None,
    reference: str | None = None,
    include_unreliable: bool = False,
) -> list[Path]:
    """Write the condition table (``by="condition"``) or the well table (``by="well"``) in
    ``formats``, and a plate map per marker (``<stem>_plate_map_<marker>.png``) when wells are
    named; returns the paths written."""
    if by not in ("condition", "well"):
        raise ValueError("by must be 'condition' or 'well'")
    root = Path(results_root)
    wells, conditions = condition_tables(
        stores, root, reference=reference, include_unreliable=include_unreliable
    )
    stem = Path(stem) if stem is not None else root / f"markers_by_{by}"
    written = write_table(conditions if by == "condition" else wells, stem, formats)
    for m in _markers(wells):
        fig = plate_map_figure(wells, m)
        if fig is not None:
            path = stem.parent / f"plate_map_{m}.png"
            atomic_write_bytes(path, png_bytes(fig))
            written.append(path)
    return written


def _with_ci(value: Any, low: Any, high: Any, *, signed: bool = False) -> str | None:
    if pd.isna(value):
        return None
    fmt = "{:+.1f}" if signed else "{:.1f}"
    text = fmt.format(float(value))
    if not (pd.isna(low) or pd.isna(high)):
        text += f" ({fmt.format(float(low))} to {fmt.format(float(high))})"
    return text


def readable_condition_table(conditions: pd.DataFrame) -> pd.DataFrame:
    """The condition table's headline columns as text for the report (``None`` = no figure)."""
    out = pd.DataFrame({"condition": conditions["condition"].astype(str)})
    unit = str(conditions["replicate_unit"].iloc[0]) if len(conditions) else "well"
    out["slides"] = conditions["n_slides"].astype(str)
    out["cells"] = conditions["n_cells"].astype(str)
    c = conditions

    def with_ci(column: str, *, signed: bool = False) -> list[str | None]:
        """A figure and its 95% CI (``column``, ``column_ci95_low/high``) as text, per row."""
        low, high = c[f"{column}_ci95_low"], c[f"{column}_ci95_high"]
        rows = zip(c[column], low, high, strict=True)
        return [_with_ci(v, lo, hi, signed=signed) for v, lo, hi in rows]

    for m in _markers(conditions):
        out[f"{m} % pooled (Wilson 95% CI)"] = with_ci(f"{m}_pct_positive")
        out[f"{m} {unit}s"] = c[f"{m}_n_replicates"].astype(str)
        out[f"{m} % mean of {unit}s (t 95% CI)"] = with_ci(f"{m}_replicate_mean_pct_positive")
        if f"{m}_replicate_diff_pct_positive" in c.columns:
            ref = str(c["reference_condition"].iloc[0])
            out[f"vs {ref}: pooled, pp (Newcombe 95% CI)"] = with_ci(
                f"{m}_pooled_diff_pct_positive", signed=True
            )
            out[f"vs {ref}: {unit} means, pp (Welch 95% CI)"] = with_ci(
                f"{m}_replicate_diff_pct_positive", signed=True
            )
            out["p (Welch)"] = [
                None if pd.isna(p) else f"{float(p):.3g}" for p in c[f"{m}_replicate_diff_p_value"]
            ]
    return out


def report_section(
    stores: Sequence[SlideResults], results_root: str | Path, *, include_unreliable: bool = False
) -> tuple[pd.DataFrame, list[tuple[str, bytes]], str] | None:
    """What the report shows of a culture experiment: the readable condition table, plate-map
    PNGs ``(marker, bytes)`` and a sentence saying which interval is which; ``None`` when no slide
    has a condition."""
    try:
        wells, conditions = condition_tables(
            stores, results_root, include_unreliable=include_unreliable
        )
    except ConditionError:
        return None
    unit = str(conditions["replicate_unit"].iloc[0])
    ref = str(conditions["reference_condition"].iloc[0])
    replicates = (
        "biological replicates (the sheet's replicate column; a replicate pools its wells)"
        if unit == "replicate"
        else "wells (a well pools its images; give a replicate column to average over "
        "independent experiments instead)"
    )
    note = (
        "Pooled: every cell of the condition together, Wilson 95% CI (cells of one well are not "
        f"independent: this interval is the narrower one). Mean of {unit}s: the average of the "
        f"per-{unit} % positive over {replicates}, t 95% CI; compare conditions by this one. "
        + (
            f"Differences are against {ref!r} in percentage points (pooled: Newcombe CI; "
            f"{unit} means: Welch t CI and p-value). "
            if ref
            else "Name a reference condition (senpath export --by condition --reference NAME) "
            "for differences. "
        )
        + "Stain controls are not in any condition"
        + (
            "; slides flagged unreliable by stain QC are pooled in (--include-unreliable)."
            if include_unreliable
            else "; slides flagged unreliable by stain QC are left out."
        )
    )
    pictures = []
    for m in _markers(wells):
        fig = plate_map_figure(wells, m)
        if fig is not None:
            pictures.append((m, png_bytes(fig)))
    return readable_condition_table(conditions), pictures, note
