"""Serial-section registration and the cross-section co-localisation map, against synthetic truth.

Pairs come from :func:`senpath.registration.synthetic.serial_section_pair`: one synthetic slide in
two assays, every stain turned 6° from the pipeline's vectors, the moving section resampled through
a known affine plus a smooth non-rigid displacement.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from senpath.registration import (
    bin_cells,
    cells_to_reference,
    colocalisation_map,
    parse_rule,
    register_sections,
    section_image_from_rgb,
)
from senpath.registration.synthetic import (
    KnownTransform,
    affine_about,
    centroid_error_um,
    serial_section_pair,
)

MPP = 4.0
SHAPE = (400, 400)  # 1.6 mm sections
#: The bound the recovered transform must meet (µm) on these pairs: cell-centroid error mean and
#: 95th percentile (the benchmark measures 2-5 µm mean at 8 µm/px pictures).
MEAN_BOUND_UM = 8.0
P95_BOUND_UM = 15.0


def _transform(rotation_deg: float, *, nonrigid_um: float = 8.0) -> KnownTransform:
    centre = (SHAPE[1] * MPP / 2, SHAPE[0] * MPP / 2)
    affine = affine_about(
        centre, rotation_deg=rotation_deg, scale=(1.03, 0.98), shear=0.02, shift_um=(120.0, -90.0)
    )
    return KnownTransform(affine, nonrigid_um=nonrigid_um, seed=3)


@pytest.fixture(scope="module")
def pair():
    return serial_section_pair(transform=_transform(-25.0), shape=SHAPE, mpp=MPP, seed=11)


@pytest.fixture(scope="module")
def registered(pair):
    ref = section_image_from_rgb(pair.reference_rgb, mpp=MPP, name="ref")
    mov = section_image_from_rgb(pair.moving_rgb, mpp=MPP, name="mov")
    return register_sections(ref, mov, grid_um=100.0)


@pytest.mark.slow
def test_recovered_transform_is_within_the_bound(pair, registered) -> None:
    assert registered.ok, registered.problems
    error = centroid_error_um(registered.matrix, pair)
    assert error.size > 500  # thousands of truth cells on both sections
    assert error.mean() < MEAN_BOUND_UM
    assert np.percentile(error, 95) < P95_BOUND_UM
    # the stored residual estimate (method disagreement) is of the same order as the true error
    assert registered.residual_um["p95"] < 3 * P95_BOUND_UM
    assert registered.check_matrix is not None
    assert centroid_error_um(registered.check_matrix, pair).mean() < 2 * MEAN_BOUND_UM


@pytest.mark.slow
def test_an_identity_transform_would_be_far_off(pair) -> None:
    """The pair is really transformed: not registering it gives errors of hundreds of µm."""
    assert centroid_error_um(np.eye(3), pair).mean() > 150.0


@pytest.mark.slow
def test_a_failed_check_does_not_discard_a_good_registration(pair, monkeypatch) -> None:
    """When the check method lands 300 µm off, the better-correlating SimpleITK result is kept,
    said so, and the residual estimate comes from the local shifts instead."""
    import senpath.registration._quality as quality

    def wrong(reference, moving, *, model):
        good = quality.register_simpleitk(reference, moving, model=model)
        return np.array([[1.0, 0.0, 300.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) @ good

    monkeypatch.setattr(quality, "register_phase_ecc", wrong)
    ref = section_image_from_rgb(pair.reference_rgb, mpp=MPP, name="ref")
    mov = section_image_from_rgb(pair.moving_rgb, mpp=MPP, name="mov")
    result = register_sections(ref, mov)
    assert result.ok, result.problems
    assert "found a worse alignment" in result.problems[0]
    assert result.method == "simpleitk-affine"
    assert "local shift" in result.residual_definition
    assert result.residual_um["p95"] < P95_BOUND_UM
    assert centroid_error_um(result.matrix, pair).mean() < MEAN_BOUND_UM


@pytest.mark.slow
def test_unrelated_sections_are_flagged_not_used() -> None:
    pair = serial_section_pair(
        transform=_transform(15.0), shape=SHAPE, mpp=MPP, seed=11, moving_seed=4
    )
    ref = section_image_from_rgb(pair.reference_rgb, mpp=MPP, name="ref")
    mov = section_image_from_rgb(pair.moving_rgb, mpp=MPP, name="other")
    result = register_sections(ref, mov)
    assert not result.ok
    assert result.problems
    assert result.quality.unsure[result.quality.tissue].all()
    assert json.loads(json.dumps(result.to_dict()))["ok"] is False


@pytest.mark.slow
def test_senescent_patch_lands_in_its_grid_cells(pair, registered) -> None:
    """A patch of SA-β-gal-high cells on the reference and Ki67-low cells on the moving section
    (defined at the cells' true reference positions) gives 'positive' grid cells exactly there."""
    grid = 100.0
    ref_cells = pair.reference_cells[["cell_id", "x_um", "y_um"]].copy()
    # the patch: a 400 µm square on tissue, corners on the grid
    cx, cy = ref_cells["x_um"].median(), ref_cells["y_um"].median()
    nearest = ref_cells.iloc[int(np.argmin(np.hypot(ref_cells.x_um - cx, ref_cells.y_um - cy)))]
    x0 = math.floor(nearest.x_um / grid) * grid - 200.0
    y0 = math.floor(nearest.y_um / grid) * grid - 200.0

    def in_patch(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return (x >= x0) & (x < x0 + 400) & (y >= y0) & (y < y0 + 400)

    rng = np.random.default_rng(0)
    ref_cells["sabgal_positive"] = in_patch(ref_cells.x_um, ref_cells.y_um) | (
        rng.random(len(ref_cells)) < 0.05
    )
    moving = pair.moving_cells[["cell_id", "x_um", "y_um"]].copy()
    tx, ty = pair.transform.to_reference(moving.x_um.to_numpy(), moving.y_um.to_numpy())
    moving["ki67_positive"] = ~in_patch(tx, ty) & (rng.random(len(moving)) < 0.5)

    q = registered.quality
    shape = q.tissue.shape
    table = colocalisation_map(
        [("ref", ref_cells), ("mov", cells_to_reference(moving, registered.matrix))],
        parse_rule("sabgal>=0.3,ki67<=0.1"),
        grid_um=grid,
        shape=shape,
        unsure={"mov": q.unsure},
    )
    called = table[table.call == "positive"]
    inside = in_patch(called.x_um.to_numpy(), called.y_um.to_numpy())
    assert len(called) >= 8 and inside.all(), called[["row", "col"]]
    # every sure grid cell of the patch with enough cells is found
    patch_cells = table[in_patch(table.x_um.to_numpy(), table.y_um.to_numpy())]
    decided = patch_cells[patch_cells.call.isin(["positive", "negative"])]
    assert (decided.call == "positive").all()
    # without the registration the patch would be missed or misplaced
    raw = colocalisation_map(
        [("ref", ref_cells), ("mov", moving)],
        parse_rule("sabgal>=0.3,ki67<=0.1"),
        grid_um=grid,
        shape=shape,
    )
    assert (raw.call == "positive").sum() < len(called)


def test_unsure_grid_cells_are_never_called() -> None:
    cells = pd.DataFrame(
        {"x_um": [50.0] * 6 + [150.0] * 6, "y_um": [50.0] * 12, "sabgal_positive": [True] * 12}
    )
    other = cells.rename(columns={"sabgal_positive": "ki67_positive"}).assign(ki67_positive=False)
    unsure = np.array([[False, True]])
    table = colocalisation_map(
        [("a", cells), ("b", other)],
        parse_rule("sabgal>=0.5,ki67<=0.1"),
        grid_um=100.0,
        shape=(1, 2),
        unsure={"b": unsure},
    )
    assert table.set_index("col").call.to_dict() == {0: "positive", 1: "unsure"}
    assert table.sabgal_section.unique().tolist() == ["a"]
    assert table.ki67_section.unique().tolist() == ["b"]


def test_bin_cells_by_hand() -> None:
    rows, cols, inside = bin_cells(
        np.array([0.0, 99.9, 100.0, 250.0, -1.0]),
        np.array([0.0, 0.0, 199.0, 50.0, 10.0]),
        grid_um=100.0,
        shape=(2, 2),
    )
    assert rows[inside].tolist() == [0, 0, 1]
    assert cols[inside].tolist() == [0, 0, 1]
    assert inside.tolist() == [True, True, True, False, False]


@pytest.mark.parametrize(
    "rule, message",
    [
        ("sabgal>0.3", "MARKER>=FRACTION"),
        ("sabgal>=1.5", "in [0, 1]"),
        ("ki67<=0.1,ki67>=0.2", "once"),
    ],
)
def test_bad_rules_say_how_to_write_them(rule: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_rule(rule)


def test_a_missing_marker_is_named() -> None:
    cells = pd.DataFrame({"x_um": [1.0], "y_um": [1.0], "p16_positive": [True]})
    with pytest.raises(ValueError, match="no section scored marker 'sabgal'.*p16"):
        colocalisation_map([("a", cells)], parse_rule("sabgal>=0.3"), grid_um=100.0, shape=(1, 1))


@pytest.mark.slow
def test_register_command_writes_the_map_and_residual(tmp_path) -> None:
    """Two synthetic sections of one patient, named by the sample sheet's `section` column, one
    of them scanned twice: `senpath register` registers one store per section within the bound,
    says which store of the doubled section it left out, writes the map (table and OME-Zarr image
    in the reference's µm), the alignment picture and the provenance, and reports it."""
    import tifffile
    from typer.testing import CliRunner

    from senpath.cli import app
    from senpath.config import AnalysisConfig, load_assays
    from senpath.pipeline import run_batch
    from senpath.samplesheet import read_sample_sheet
    from senpath.spatial import read_density_zarr

    mpp = 0.5
    shape = (1024, 1024)
    centre = (shape[1] * mpp / 2, shape[0] * mpp / 2)
    transform = KnownTransform(
        affine_about(centre, rotation_deg=9.0, scale=(1.01, 0.99), shift_um=(25.0, -15.0))
    )
    pair = serial_section_pair(
        transform=transform, shape=shape, mpp=mpp, seed=2, tissue_fraction=0.8
    )
    results = tmp_path / "results"
    rows = ["patient_id,slide_id,path,assay,section"]
    for name, rgb, assay in (
        ("P9-sabgal", pair.reference_rgb, "sabgal"),
        ("P9-ki67", pair.moving_rgb, "ki67"),
    ):
        path = tmp_path / f"{name}.tif"
        tifffile.imwrite(
            path,
            rgb,
            tile=(256, 256),
            photometric="rgb",
            resolution=(1e4 / mpp, 1e4 / mpp),
            resolutionunit="CENTIMETER",
        )
        rows.append(f"P9,{name},{path},{assay},{'S1' if assay == 'sabgal' else 'S2'}")
    # the Ki67 section again under another slide id (a rescan): one section, two stores
    rows.append(f"P9,P9-ki67-rescan,{tmp_path / 'P9-ki67.tif'},ki67,S2")
    sheet = tmp_path / "samples.csv"
    sheet.write_text("\n".join(rows) + "\n")
    jobs, problems = read_sample_sheet(sheet, known_assays=load_assays())
    assert problems == []
    reports = run_batch(jobs, out=results, config=AnalysisConfig(segmenter="classical"))
    assert [r.status for r in reports] == ["ok"] * 3, [r.message for r in reports]
    outcome = CliRunner().invoke(app, ["register", str(results)])
    assert outcome.exit_code == 0, outcome.output
    assert "P9-ki67 -> P9-sabgal" in outcome.output and "residual estimate" in outcome.output
    assert "P9: section S2 has 2 stores: registered P9-ki67, not used P9-ki67-rescan" in (
        outcome.output
    )
    folder = results / "_sections" / "P9"
    record = json.loads((folder / "registration.json").read_text())
    assert record["reference"] == "P9-sabgal"
    (reg,) = record["registrations"]
    assert reg["ok"], reg["problems"]
    matrix = np.asarray(reg["moving_to_reference_um"])
    error = centroid_error_um(matrix, pair)
    assert error.mean() < MEAN_BOUND_UM and np.percentile(error, 95) < P95_BOUND_UM
    assert reg["residual_um"]["p95"] < 3 * P95_BOUND_UM
    assert set(record["sections"]) == {"P9-sabgal", "P9-ki67"}
    assert record["sections"]["P9-ki67"]["section"] == "S2"
    assert record["duplicate_sections"] == {"S2": ["P9-ki67", "P9-ki67-rescan"]}
    table = pd.read_parquet(folder / "colocalisation.parquet")
    assert {"sabgal_positive_fraction", "ki67_positive_fraction", "call"} <= set(table.columns)
    assert len(table) >= 4
    # the same map as an OME-Zarr image on the reference's grid: 100 µm bins from (0, 0) µm
    image = read_density_zarr(folder / "senescence_map.ome.zarr")
    assert image.grid.origin_um == (0.0, 0.0) and image.grid.spacing_um == 100.0
    calls = image.channels["senescence_map"][table["row"], table["col"]]
    assert np.array_equal(calls == 1, (table["call"] == "positive").to_numpy())
    assert np.array_equal(calls == 0, (table["call"] == "negative").to_numpy())
    assert np.allclose(
        image.channels["sabgal_pct_positive"][table["row"], table["col"]],
        100 * table["sabgal_positive_fraction"],
        equal_nan=True,
    )
    assert (folder / "alignment.png").stat().st_size > 1000
    # the report shows the map and the residual
    from senpath.report import render_report

    page = render_report(results)
    assert "Serial sections" in page and "residual estimate mean" in page
    assert "_sections/P9/alignment.png" in page
    # a reference that is not the patient's: one line, exit status 1
    wrong = CliRunner().invoke(
        app, ["register", str(results), "--patient", "P9", "--reference", "P1-x"]
    )
    assert wrong.exit_code == 1
    assert "'P1-x' is not a slide of patient 'P9'" in wrong.output


def test_the_elastix_benchmark_leaves_no_files_in_the_working_directory(
    tmp_path, monkeypatch, benchmark_script
):
    """transformix writes ``deformationField.nii`` into its output directory, the working
    directory unless told (a 1.1 MB one was committed from a benchmark run at the repo root):
    the benchmark's elastix rows give it a scratch folder. ``itk`` is faked (it is optional):
    the fake writes where the real one does."""
    import sys
    import types
    from pathlib import Path

    written: list[Path] = []

    def transformix_deformation_field(moving, result, output_directory=""):
        path = Path(output_directory or ".") / "deformationField.nii"
        path.write_bytes(b"field")
        written.append(path.resolve())
        return np.zeros((*moving.shape, 2), np.float32)

    class _Image:
        def __init__(self, array):
            self.shape = array.shape

        def SetSpacing(self, spacing):  # noqa: N802 (ITK's names)
            pass

        def SetOrigin(self, origin):  # noqa: N802
            pass

    class _Params:
        @staticmethod
        def New():  # noqa: N802
            return _Params()

        def GetDefaultParameterMap(self, name):  # noqa: N802
            return {}

        def AddParameterMap(self, pmap):  # noqa: N802
            pass

    itk = types.ModuleType("itk")
    itk.MultiThreaderBase = types.SimpleNamespace(SetGlobalDefaultNumberOfThreads=lambda n: None)
    itk.GetImageFromArray = _Image
    itk.GetArrayFromImage = np.asarray
    itk.ParameterObject = _Params
    itk.elastix_registration_method = lambda fixed, moving, **kw: (None, "result")
    itk.transformix_deformation_field = transformix_deformation_field
    monkeypatch.setitem(sys.modules, "itk", itk)
    bench = benchmark_script("bench_registration")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    section = types.SimpleNamespace(od=np.zeros((8, 8), np.float32), mpp=2.0)
    to_moving = bench._elastix(("rigid", "affine"))(section, section)
    x, y = to_moving(np.array([3.0]), np.array([5.0]))
    assert (x[0], y[0]) == (3.0, 5.0)  # the (zero) field was read
    assert written and list(work.iterdir()) == []
    assert not any(p.exists() for p in written)  # the scratch folder is gone too
