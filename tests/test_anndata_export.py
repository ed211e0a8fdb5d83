"""``cells.h5ad`` as scanpy takes it: a NaN-free ``X`` without coordinates, plain calls in ``obs``,
``uns['spatial']`` per slide; measurements only some assays make are kept beside ``X``."""

from __future__ import annotations

import numpy as np
import pytest

from senpath.export import cells_anndata, load_all, write_anndata

anndata = pytest.importorskip("anndata")


def test_x_has_no_nan_and_no_coordinates(mixed_assays):
    stores = load_all(mixed_assays)
    adata = cells_anndata(stores)
    assert adata.n_obs == sum(len(r.cells) for r in stores) > 20
    x = np.asarray(adata.X)
    assert np.isfinite(x).all()  # sc.pp.pca refuses NaN
    assert "nucleus_area_um2" in adata.var_names
    assert not {"x_um", "y_um"} & set(adata.var_names)
    ki67 = stores[0].cells.sort_values("cell_id")
    np.testing.assert_allclose(adata.obsm["spatial"][: len(ki67)], ki67[["x_um", "y_um"]])
    # the DAB ODs of the Ki67 slide are kept beside X, missing for the SA-β-gal slide's cells
    partial = adata.obsm["partial_measurements"]
    dab = [c for c in partial.columns if c.startswith("dab_od_")]
    assert dab and not set(dab) & set(adata.var_names)
    is_ki67 = (adata.obs["slide_id"] == "p1-ki67").to_numpy()
    assert partial.loc[is_ki67, dab].notna().all().all()
    assert partial.loc[~is_ki67, dab].isna().all().all()


def test_obs_calls_are_plain_bools_or_categories(mixed_assays):
    adata = cells_anndata(load_all(mixed_assays))
    obs = adata.obs
    for col in obs.columns:  # no pandas nullable extension dtypes (scanpy's plots reject them)
        assert str(obs[col].dtype) in ("category", "bool", "int64"), (col, obs[col].dtype)
    ki67 = obs["ki67_positive"]
    assert list(ki67.cat.categories) == ["negative", "positive"]
    is_ki67 = obs["slide_id"] == "p1-ki67"
    assert ki67[is_ki67].notna().all() and ki67[~is_ki67].isna().all()
    cells = load_all(mixed_assays)[0].cells.sort_values("cell_id")
    expected = np.where(cells["ki67_positive"].to_numpy(bool), "positive", "negative")
    assert (ki67[is_ki67].astype(str).to_numpy() == expected).all()
    assert list(obs["ki67_bin"].cat.categories) == [0, 1, 2, 3]
    assert obs["sabgal_positive"][~is_ki67].notna().all()  # each slide has its own call


def test_uns_spatial_survives_h5ad_and_scales_um_to_image_px(mixed_assays, tmp_path):
    path = write_anndata(load_all(mixed_assays), tmp_path / "cells.h5ad")
    adata = anndata.read_h5ad(path)
    assert set(adata.uns["spatial"]) == {"p1-ki67", "p2-sabgal"}
    lib = adata.uns["spatial"]["p1-ki67"]
    image = lib["images"]["hires"]
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    scale = lib["scalefactors"]["tissue_hires_scalef"]
    # the slide is 384 px at 0.5 µm/px = 192 µm: its image spans 192 µm * scale px
    assert abs(image.shape[1] - 192 * scale) <= 1
    assert lib["scalefactors"]["spot_diameter_fullres"] > 0


def test_scanpy_pca_and_spatial_plot_run_unedited(mixed_assays, tmp_path):
    sc = pytest.importorskip("scanpy")  # not a senpath dependency; checked where installed
    import matplotlib

    matplotlib.use("Agg")
    adata = anndata.read_h5ad(write_anndata(load_all(mixed_assays), tmp_path / "cells.h5ad"))
    sc.pp.pca(adata, n_comps=3)
    assert np.isfinite(adata.obsm["X_pca"]).all()
    one = adata[adata.obs["slide_id"] == "p1-ki67"]
    sc.pl.spatial(one, library_id="p1-ki67", color="ki67_positive", show=False)
    sc.pl.embedding(adata, basis="pca", color=["ki67_positive", "slide_id"], show=False)
