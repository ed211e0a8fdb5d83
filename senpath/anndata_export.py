"""Every cell of a batch as one AnnData (``cells.h5ad``) that scanpy and squidpy take as it is.

Layout (see :func:`cells_anndata`): ``X`` holds only measurements every cell has (no NaN, no
coordinates), so ``sc.pp.pca`` runs; the stain measurements a slide's assay lacks are kept in
``obsm["partial_measurements"]`` (NaN there); calls are plain ``bool`` or ``category`` columns of
``obs``; ``obsm["spatial"]`` holds the centroids in µm and ``uns["spatial"][slide_id]`` each slide's
low-resolution image and scale factors in the layout ``sc.pl.spatial`` reads.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from senpath.results import SlideResults, atomic_path

#: Longest side in px of the slide image stored per slide in ``uns["spatial"]``.
SPATIAL_IMAGE_PX = 800
#: Spot diameter (µm, the unit of ``obsm["spatial"]``) ``sc.pl.spatial`` draws a cell with.
SPOT_DIAMETER_UM = 8.0
_IDS = ("slide_id", "patient_id", "assay")
_COORDINATES = ("x_um", "y_um")


def _categorical(values: Any, categories: list[Any] | None = None) -> pd.Categorical:
    # object-dtype categories: anndata's h5ad writer cannot store pandas' Arrow strings
    values = np.asarray(values, dtype=object)
    if categories is None:
        categories = sorted({v for v in values if not pd.isna(v)})
    return pd.Categorical(values, categories=pd.Index(categories, dtype=object))


def _call_column(values: pd.Series) -> Any:
    """A call as plain ``bool`` when every cell has it, else a ``negative``/``positive`` category
    (missing where the slide's assay does not make the call): scanpy's plots take both."""
    if not values.isna().any():
        return values.to_numpy(dtype=bool)
    text = values.map({True: "positive", False: "negative"})
    return _categorical(text, ["negative", "positive"])


def _spatial_entry(res: SlideResults) -> dict[str, Any]:
    """``uns["spatial"][slide_id]``: a low-resolution slide image (when the slide file is still
    there) and the scale factors from µm (``obsm["spatial"]``) to its pixels."""
    entry: dict[str, Any] = {
        "scalefactors": {"spot_diameter_fullres": SPOT_DIAMETER_UM},
        "metadata": {"units": "obsm['spatial'] in µm", "slide_path": res.provenance.slide_path},
    }
    try:
        from senpath.io import open_slide

        slide = open_slide(res.provenance.slide_path, mpp=float(res.provenance.slide["mpp"][0]))
        height_um = slide.shape[0] * slide.mpp[1]
        width_um = slide.shape[1] * slide.mpp[0]
        mpp = max(max(height_um, width_um) / SPATIAL_IMAGE_PX, slide.level_mpp(0))
        image = np.asarray(slide.read_region(0, 0, width_um, height_um, mpp=mpp), np.uint8)
    except (OSError, ValueError, KeyError, IndexError, RuntimeError):
        return entry  # the slide moved or is unreadable: spots are still drawn, without the image
    entry["images"] = {"hires": image}
    entry["scalefactors"]["tissue_hires_scalef"] = 1.0 / mpp
    return entry


def cells_anndata(results: Iterable[SlideResults], *, images: bool = True) -> Any:
    """Every cell of the batch as one :class:`anndata.AnnData` (for scanpy / squidpy).

    Parameters
    ----------
    results : the slides' stores (corrections already applied are carried as they are).
    images : store each slide's low-resolution image in ``uns["spatial"]`` (read from the slide
        file named in the provenance; left out when the file is gone).

    Returns
    -------
    AnnData with

    - ``X`` (float32): the per-cell measurements every cell of the batch has (nucleus and cell
      morphology in µm / µm², the ODs of stains all slides share), named in ``var_names``; no NaN
      and no coordinates, so ``sc.pp.pca`` runs on it;
    - ``obsm["partial_measurements"]`` (DataFrame): the measurements only some slides have (the
      ODs of stains other assays lack), NaN elsewhere;
    - ``obsm["spatial"]``: nucleus centroids (x, y) in µm;
    - ``obs``: ``slide_id``, ``patient_id``, ``assay`` (categories), ``cell_id`` (int),
      ``region`` (categories; when a slide has regions, see :mod:`senpath.regions`),
      ``excluded`` (bool), ``<marker>_positive`` and phenotype calls (``bool`` when every cell has
      the call, else categories ``negative``/``positive``, missing for cells whose assay lacks the
      marker), ``<marker>_bin`` (ordered categories 0-3);
    - ``uns["spatial"][slide_id]``: ``images["hires"]`` and ``scalefactors`` as ``sc.pl.spatial``
      reads them (a batch holds several slides: plot one with
      ``sc.pl.spatial(ad[ad.obs.slide_id == s], library_id=s, color=...)``);
    - ``uns["slides"]``: each slide's patient, assay, thresholds and model.

    ``obs_names`` are ``<slide_id>:<cell_id>``.
    """
    try:
        import anndata
    except ImportError:
        raise RuntimeError("AnnData export needs anndata: pip install 'senpath[anndata]'") from None

    obs_parts, value_parts, slides, spatial = [], [], {}, {}
    for res in results:
        cells = res.cells.sort_values("cell_id").reset_index(drop=True)
        assay = str(res.manifest.get("assay", ""))
        ids = pd.DataFrame(
            {"slide_id": res.slide_id, "patient_id": res.patient_id, "assay": assay},
            index=cells.index,
        )
        if "region" in cells.columns:  # the slide's regions (senpath.regions)
            ids["region"] = cells["region"].astype(object).to_numpy()
        flags = [
            c
            for c in cells.columns
            if c not in _IDS
            and (pd.api.types.is_bool_dtype(cells[c]) or c.endswith("_bin") or c == "cell_id")
        ]
        obs_parts.append(pd.concat([ids, cells[flags]], axis=1))
        numeric = [
            c
            for c in cells.columns
            if c not in flags
            and c != "tile_label"
            and pd.api.types.is_numeric_dtype(cells[c])
            and not pd.api.types.is_bool_dtype(cells[c])
        ]
        value_parts.append(cells[numeric].astype("float64"))
        slides[res.slide_id] = {
            "patient_id": res.patient_id,
            "assay": assay,
            "thresholds_od": res.provenance.thresholds,
            "model_sha256": str(res.provenance.model_sha256),
        }
        spatial[res.slide_id] = _spatial_entry(res) if images else {}
    if not obs_parts:
        raise ValueError("no slides to export")
    obs = pd.concat(obs_parts, ignore_index=True)
    values = pd.concat(value_parts, ignore_index=True)
    for col in obs.columns:
        if col in _IDS:
            obs[col] = _categorical(obs[col])
        elif col == "region":  # a slide without regions is one region, Tissue
            obs[col] = _categorical(obs[col].fillna("Tissue"))
        elif col == "cell_id":
            obs[col] = obs[col].to_numpy(dtype=np.int64)
        elif col.endswith("_bin"):
            codes = pd.to_numeric(obs[col], errors="coerce")
            obs[col] = pd.Categorical(codes.astype("Int64").astype(object).where(codes.notna()),
                                      categories=[0, 1, 2, 3], ordered=True)  # fmt: skip
        else:
            obs[col] = _call_column(obs[col].astype("boolean"))
    obs.index = pd.Index(
        [f"{s}:{c}" for s, c in zip(obs["slide_id"], obs["cell_id"], strict=True)], dtype=object
    )
    measured = values.drop(columns=list(_COORDINATES))
    complete = [str(c) for c in measured.columns if measured[c].notna().all()]
    partial = measured.drop(columns=complete)
    adata = anndata.AnnData(
        X=measured[complete].to_numpy(dtype=np.float32),
        obs=obs,
        var=pd.DataFrame(index=pd.Index(complete, dtype=object)),
    )
    adata.obsm["spatial"] = values[list(_COORDINATES)].to_numpy(dtype=np.float64)
    partial.index = obs.index
    partial.columns = pd.Index([str(c) for c in partial.columns], dtype=object)
    adata.obsm["partial_measurements"] = partial.astype("float32")
    adata.uns["spatial"] = spatial
    adata.uns["slides"] = slides
    adata.uns["units"] = "optical density (OD), µm, µm²; obsm['spatial'] in µm"
    return adata


def write_anndata(results: Iterable[SlideResults], path: str | Path) -> Path:
    """Write :func:`cells_anndata` to ``path`` (``.h5ad``) atomically; returns the path."""
    path = Path(path)
    adata = cells_anndata(results)
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp, compression="gzip")  # the slide images compress well
    return path
