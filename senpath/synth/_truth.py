"""The per-cell truth table: its columns for each assay, its rows from cells, its parquet schema."""

from __future__ import annotations

import numpy as np
import pandas as pd

from senpath.synth._layout import _Cells
from senpath.synth._params import ASSAY_MARKERS, ASSAYS


def truth_columns(assay: str) -> list[str]:
    """Columns of the truth table for ``assay``, in order."""
    if assay not in ASSAY_MARKERS:
        raise ValueError(f"unknown assay {assay!r}: use one of {', '.join(ASSAYS)}")
    cols = ["cell_id", "x_um", "y_um", "nucleus_area_um2", "senescent"]
    for marker in sorted(ASSAY_MARKERS[assay], key=["ki67", "p16", "sabgal"].index):
        cols += [f"{marker}_level", f"{marker}_positive"]
    return cols


def _truth_frame(assay: str, cells: _Cells) -> pd.DataFrame:
    data: dict[str, object] = {
        "cell_id": cells.cell_id.astype(np.int64),
        "x_um": cells.x_um,
        "y_um": cells.y_um,
        "nucleus_area_um2": cells.nucleus_area_um2,
        "senescent": cells.senescent.astype(bool),
    }
    for col in truth_columns(assay)[5::2]:
        marker = col.removesuffix("_level")
        data[col] = cells.levels[marker].astype(np.int8)
        data[f"{marker}_positive"] = cells.levels[marker] >= 1
    return pd.DataFrame(data, columns=truth_columns(assay))


def _truth_schema(assay: str) -> object:
    import pyarrow as pa

    types = {
        "cell_id": pa.int64(),
        "x_um": pa.float64(),
        "y_um": pa.float64(),
        "nucleus_area_um2": pa.float64(),
        "senescent": pa.bool_(),
    }
    return pa.schema(
        [
            (c, types.get(c, pa.int8() if c.endswith("_level") else pa.bool_()))
            for c in truth_columns(assay)
        ]
    )
