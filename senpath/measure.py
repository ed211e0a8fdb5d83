"""Per-cell measurements: morphology and stain optical density per compartment.

Compartments (all in µm):
- ``nucleus``: the segmented nucleus;
- ``cytoplasm``: a ring grown outwards from the nucleus by ``cytoplasm_um`` (QuPath's default cell
  expansion is 5 µm), stopped where it meets a neighbouring cell (``skimage.segmentation.expand_labels``);
- ``cell``: nucleus + cytoplasm.

Statistics per stain and compartment are computed for all cells at once with sorted group reductions
(no per-cell Python loop), so a tile with thousands of cells costs a few array passes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from skimage.measure import regionprops_table
from skimage.segmentation import expand_labels

COMPARTMENTS = ("nucleus", "cytoplasm", "cell")
#: The high percentile reported per compartment (robust "max").
HIGH_PERCENTILE = 90


def cell_compartments(
    nuclei: NDArray[np.integer], *, mpp: float, cytoplasm_um: float = 5.0
) -> dict[str, NDArray[np.int32]]:
    """Label images of the three compartments, sharing the nucleus ids.

    Parameters
    ----------
    nuclei : (Y, X) int
        Nucleus instance labels, 0 = background.
    mpp : pixel size in µm.
    cytoplasm_um : width of the cytoplasm ring.

    Returns
    -------
    dict with ``nucleus``, ``cytoplasm`` and ``cell`` (Y, X) int32 label images.
    """
    nuclei = np.asarray(nuclei, dtype=np.int32)
    cell = expand_labels(nuclei, distance=cytoplasm_um / mpp).astype(np.int32)
    cytoplasm = np.where(nuclei > 0, 0, cell).astype(np.int32)
    return {"nucleus": nuclei, "cytoplasm": cytoplasm, "cell": cell}


def _group_stats(
    labels: NDArray[np.int32], values: NDArray[np.float32], ids: NDArray[np.int64]
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Mean, max and high percentile of ``values`` per label id in ``ids`` (NaN where a label is empty)."""
    flat_l = labels.ravel()
    sel = flat_l > 0
    lab = flat_l[sel]
    val = values.ravel()[sel].astype(np.float64)
    n = len(ids)
    mean = np.full(n, np.nan)
    vmax = np.full(n, np.nan)
    high = np.full(n, np.nan)
    if lab.size == 0:
        return mean, vmax, high
    order = np.lexsort((val, lab))
    lab_s, val_s = lab[order], val[order]
    uniq, start, count = np.unique(lab_s, return_index=True, return_counts=True)
    sums = np.add.reduceat(val_s, start)
    last = start + count - 1
    # nearest-rank percentile inside each sorted group
    k = start + np.ceil(HIGH_PERCENTILE / 100.0 * count).astype(np.int64) - 1
    k = np.clip(k, start, last)
    pos = np.searchsorted(ids, uniq)
    ok = (pos < n) & (ids[np.minimum(pos, n - 1)] == uniq)
    pos, uniq_ok = pos[ok], ok
    mean[pos] = (sums / count)[uniq_ok]
    vmax[pos] = val_s[last][uniq_ok]
    high[pos] = val_s[k][uniq_ok]
    return mean, vmax, high


def measure_cells(
    nuclei: NDArray[np.integer],
    stain_od: NDArray[np.floating],
    *,
    stain_names: Sequence[str],
    mpp: float,
    cytoplasm_um: float = 5.0,
    origin_um: tuple[float, float] = (0.0, 0.0),
    compartments: dict[str, NDArray[np.int32]] | None = None,
) -> pd.DataFrame:
    """Measure every nucleus and its cell.

    Parameters
    ----------
    nuclei : (Y, X) int
        Nucleus instance labels (0 = background). Label values become ``cell_id``.
    stain_od : (Y, X, S) float
        Per-stain concentration in OD units (from :func:`senpath.stain.deconvolve`).
    stain_names : the S stain names, used in column names (``dab_od_mean_nucleus``).
    mpp : pixel size in µm.
    cytoplasm_um : cytoplasm ring width.
    origin_um : (x, y) position in µm of pixel (0, 0) in slide coordinates, added to centroids.
    compartments : precomputed output of :func:`cell_compartments` (computed when omitted).

    Returns
    -------
    DataFrame, one row per nucleus, sorted by ``cell_id``, with ``x_um``, ``y_um`` (nucleus centroid),
    ``nucleus_area_um2``, ``nucleus_perimeter_um``, ``nucleus_eccentricity``, ``nucleus_solidity``,
    ``cell_area_um2``, and ``{stain}_od_{mean,max,p90}_{nucleus,cytoplasm,cell}``.
    """
    nuclei = np.asarray(nuclei, dtype=np.int32)
    if stain_od.shape[:2] != nuclei.shape:
        raise ValueError(f"stain_od shape {stain_od.shape[:2]} differs from labels shape {nuclei.shape}")
    if stain_od.shape[-1] != len(stain_names):
        raise ValueError(f"{len(stain_names)} stain names for {stain_od.shape[-1]} stain channels")
    comps = compartments or cell_compartments(nuclei, mpp=mpp, cytoplasm_um=cytoplasm_um)
    props = regionprops_table(
        nuclei, properties=("label", "centroid", "area", "perimeter", "eccentricity", "solidity")
    )
    ids = np.asarray(props["label"], dtype=np.int64)
    df = pd.DataFrame(
        {
            "cell_id": ids,
            "x_um": origin_um[0] + (np.asarray(props["centroid-1"]) + 0.5) * mpp,
            "y_um": origin_um[1] + (np.asarray(props["centroid-0"]) + 0.5) * mpp,
            "nucleus_area_um2": np.asarray(props["area"], dtype=np.float64) * mpp**2,
            "nucleus_perimeter_um": np.asarray(props["perimeter"], dtype=np.float64) * mpp,
            "nucleus_eccentricity": np.asarray(props["eccentricity"], dtype=np.float64),
            "nucleus_solidity": np.asarray(props["solidity"], dtype=np.float64),
        }
    )
    cell_area = np.bincount(comps["cell"].ravel(), minlength=int(ids.max(initial=0)) + 1)
    df["cell_area_um2"] = cell_area[ids] * mpp**2 if ids.size else np.zeros(0)
    for s, name in enumerate(stain_names):
        channel = np.asarray(stain_od[..., s], dtype=np.float32)
        for comp in COMPARTMENTS:
            mean, vmax, high = _group_stats(comps[comp], channel, ids)
            df[f"{name}_od_mean_{comp}"] = mean
            df[f"{name}_od_max_{comp}"] = vmax
            df[f"{name}_od_p{HIGH_PERCENTILE}_{comp}"] = high
    return df
