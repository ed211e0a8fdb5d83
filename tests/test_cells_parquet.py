"""``cells.parquet`` across slides: identifier columns in every file, one type per shared column, and
one call that reads every slide's cells (the union of their columns)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from senpath.results import CELL_ID_COLUMNS, CELLS, cells_dataset, with_stable_cell_types


def test_every_cells_file_says_its_slide_patient_and_assay(mixed_assays):
    for slide_id, patient_id, assay in (("p1-ki67", "P1", "ki67"), ("p2-sabgal", "P2", "sabgal")):
        cells = pd.read_parquet(mixed_assays / slide_id / CELLS)
        assert list(cells.columns[:3]) == list(CELL_ID_COLUMNS)
        assert len(cells) > 0
        assert set(cells["slide_id"]) == {slide_id}
        assert set(cells["patient_id"]) == {patient_id} and set(cells["assay"]) == {assay}


def test_shared_columns_have_one_type_and_one_call_reads_all_slides(mixed_assays):
    ki67, sabgal = (pq.read_schema(mixed_assays / s / CELLS) for s in ("p1-ki67", "p2-sabgal"))
    shared = set(ki67.names) & set(sabgal.names)
    assert {"patient_id", "assay", "cell_id", "nucleus_area_um2"} <= shared
    assert {n: str(ki67.field(n).type) for n in shared} == {
        n: str(sabgal.field(n).type) for n in shared
    }
    table = cells_dataset(mixed_assays).to_table().to_pandas()
    n = {s: len(pd.read_parquet(mixed_assays / s / CELLS)) for s in ("p1-ki67", "p2-sabgal")}
    assert len(table) == sum(n.values())
    assert table.groupby("slide_id", observed=True).size().to_dict() == n
    # each slide's marker column is null for the other slide's cells
    is_ki67 = (table["slide_id"] == "p1-ki67").to_numpy()
    assert table.loc[is_ki67, "ki67_positive"].notna().all()
    assert table.loc[~is_ki67, "ki67_positive"].isna().all()
    assert table.loc[~is_ki67, "sabgal_positive"].notna().all()


def test_an_empty_slide_writes_the_same_types_as_a_full_one():
    full = pd.DataFrame({
        "slide_id": ["a"], "cell_id": [1], "tile_label": np.array([3], np.int32),
        "x_um": [1.5], "ki67_positive": [True], "ki67_bin": [2], "nucleus_area_um2": [30],
    })  # fmt: skip
    empty = full.iloc[:0].astype({"cell_id": float, "ki67_positive": object, "ki67_bin": float})
    kinds = [
        with_stable_cell_types(t, slide_id="a", patient_id="P", assay="ki67").dtypes.astype(str)
        for t in (full, empty)
    ]
    assert kinds[0].to_dict() == kinds[1].to_dict()
    assert kinds[0]["cell_id"] == "int64" and kinds[0]["ki67_bin"] == "int8"
    assert kinds[0]["nucleus_area_um2"] == "float64" and kinds[0]["ki67_positive"] == "bool"
