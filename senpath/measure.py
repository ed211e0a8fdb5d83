"""Per-cell measurements: morphology and stain optical density per compartment.

Compartments (all in µm):
- ``nucleus``: the segmented nucleus;
- ``cytoplasm``: a ring grown outwards from the nucleus by ``cytoplasm_um`` (QuPath's default cell
  expansion is 5 µm), stopped halfway to a neighbouring nucleus (the rule of
  ``skimage.segmentation.expand_labels``);
- ``cell``: nucleus + cytoplasm;
- ``perinuclear``: the inner part of the cytoplasm ring, within ``perinuclear_um`` of the nucleus (by
  default half of ``cytoplasm_um``, 2.5 µm);
- ``nucleus_perinuclear``: nucleus + perinuclear ring.

Why a perinuclear compartment: a fixed 5 µm ring is an upper bound on the cytoplasm, not a measurement of
it. Where cells are small or packed (epithelium, lymphocytes, or small cells wrapped by a large flat
senescent cell) the outer part of the ring lies in a neighbour's cytoplasm or in stroma, so a negative
cell picks up its neighbour's chromogen and a weakly stained cell is diluted by unstained stroma. The
pixels next to the nucleus are the ones most likely to belong to the cell, and they are where the markers
we score concentrate (SA-beta-gal is lysosomal and perinuclear; cytoplasmic p16 is strongest around the
nucleus). Marker rules therefore choose their compartment and statistic as data (``presets/assays.toml``),
while ``cell_area_um2`` and the ``cytoplasm``/``cell`` columns keep QuPath's 5 µm convention.

Statistics per stain and compartment (``mean``, ``median``, ``p75``, ``p90``, ``max``) are computed for
all cells at once with sorted group reductions (no per-cell Python loop), so a tile with thousands of
cells costs a few array passes: one sort per stain of the cells' pixels serves all five compartments
(:func:`_nested_stats`). Percentiles use the nearest-rank definition. The nucleus shape columns
come from :func:`senpath.morphology.shape_table` (scikit-image's ``regionprops`` values, vectorised).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from scipy import ndimage as ndi

from senpath.morphology import shape_table

COMPARTMENTS = ("nucleus", "cytoplasm", "cell", "perinuclear", "nucleus_perinuclear")
#: Per-compartment statistics, in column-name order; ``pNN`` is the nearest-rank NN-th percentile.
STATISTICS = ("mean", "median", "p75", "p90", "max")
_PERCENTILES = {"median": 50, "p75": 75, "p90": 90}


def cell_compartments(
    nuclei: NDArray[np.integer],
    *,
    mpp: float,
    cytoplasm_um: float = 5.0,
    perinuclear_um: float | None = None,
) -> dict[str, NDArray[np.int32]]:
    """Label images of the compartments, sharing the nucleus ids.

    Parameters
    ----------
    nuclei : (Y, X) int
        Nucleus instance labels, 0 = background.
    mpp : pixel size in µm.
    cytoplasm_um : width of the cytoplasm ring.
    perinuclear_um : width of the perinuclear ring (at most ``cytoplasm_um``); default half of
        ``cytoplasm_um``.

    Returns
    -------
    dict of (Y, X) int32 label images: ``nucleus``, ``cytoplasm``, ``cell``, ``perinuclear``,
    ``nucleus_perinuclear``. Each background pixel goes to its nearest nucleus (so rings stop halfway
    between nuclei), as in ``skimage.segmentation.expand_labels``.
    """
    if mpp <= 0:
        raise ValueError(f"mpp={mpp}: give the pixel size in µm (> 0)")
    if cytoplasm_um < 0:
        raise ValueError(f"cytoplasm_um={cytoplasm_um}: give a ring width >= 0 µm")
    peri_um = cytoplasm_um / 2.0 if perinuclear_um is None else float(perinuclear_um)
    if not 0 <= peri_um <= cytoplasm_um:
        raise ValueError(
            f"perinuclear_um={peri_um} must lie in [0, cytoplasm_um={cytoplasm_um}] µm"
        )
    nuc: NDArray[np.int32] = np.asarray(nuclei, dtype=np.int32)
    background = nuc == 0
    cell: NDArray[np.int32]
    peri_cell: NDArray[np.int32]
    if background.all() or not background.any():
        cell = nuc.copy()
        peri_cell = nuc.copy()
    else:
        # one distance transform for both rings (expand_labels does the same per call)
        dist, (iy, ix) = ndi.distance_transform_edt(background, return_indices=True)
        nearest = nuc[iy, ix]
        cell = np.where(dist <= cytoplasm_um / mpp, nearest, 0).astype(np.int32)
        peri_cell = np.where(dist <= peri_um / mpp, nearest, 0).astype(np.int32)
    not_nucleus = nuc == 0
    return {
        "nucleus": nuc,
        "cytoplasm": np.where(not_nucleus, cell, 0).astype(np.int32),
        "cell": cell,
        "perinuclear": np.where(not_nucleus, peri_cell, 0).astype(np.int32),
        "nucleus_perinuclear": peri_cell,
    }


def _sort_keys(values: NDArray[np.float32]) -> NDArray[np.uint64]:
    """Keys (uint32 values, as uint64) that sort as the float32 ``values`` do (NaN last, as ``np.sort`` puts it)."""
    v = np.where(np.isnan(values), np.float32(np.nan), values)  # one NaN bit pattern, positive
    bits = v.view(np.uint32)
    # IEEE floats order as sign-magnitude integers: flip the sign bit of positives, all bits of
    # negatives, and unsigned integer order is float order
    negative = (bits >> np.uint32(31)).astype(bool)
    return np.where(negative, ~bits, bits | np.uint32(0x80000000)).astype(np.uint64)


def _from_sort_keys(keys: NDArray[np.uint64]) -> NDArray[np.float32]:
    """Inverse of :func:`_sort_keys` (the low 32 bits of ``keys``)."""
    low = (keys & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    positive = (low >> np.uint32(31)).astype(bool)
    return np.where(positive, low & np.uint32(0x7FFFFFFF), ~low).view(np.float32)


def _group_stats(
    labels: NDArray[np.int32], channels: Sequence[NDArray[np.float32]], ids: NDArray[np.int64]
) -> list[dict[str, NDArray[np.float64]]]:
    """Each of :data:`STATISTICS` per label id in ``ids`` (NaN where a label is empty), per channel.

    One sort per channel of a single uint64 key, ``label << 32 | float bits``, orders the pixels by
    label and then by value (a plain integer sort, several times faster than ``np.lexsort`` on the
    two arrays); values come back bit for bit from the key, so the statistics are unchanged.
    """
    n = len(ids)
    flat_l = labels.ravel()
    sel = np.flatnonzero(flat_l > 0)
    outs = [{name: np.full(n, np.nan) for name in STATISTICS} for _ in channels]
    if sel.size == 0 or n == 0:
        return outs
    high = flat_l[sel].astype(np.uint64) << np.uint64(32)
    for channel, out in zip(channels, outs, strict=True):
        keys = high | _sort_keys(np.ascontiguousarray(channel, dtype=np.float32).ravel()[sel])
        keys.sort()
        _sorted_stats(keys, ids, out, value_shift=0, label_shift=32)
    return outs


#: The rings of :func:`cell_compartments` as disjoint regions of the cell: 0 nucleus, 1 perinuclear
#: ring, 2 the rest of the cytoplasm ring; each compartment is a union of them.
_REGIONS = {
    "nucleus": (0,),
    "cytoplasm": (1, 2),
    "cell": (0, 1, 2),
    "perinuclear": (1,),
    "nucleus_perinuclear": (0, 1),
}
#: Key layout of :func:`_nested_stats`: ``label << 34 | float bits << 2 | region``.
_LABEL_SHIFT, _VALUE_SHIFT = 34, 2


def _nested_stats(
    cell: NDArray[np.int32],
    region: NDArray[np.uint8],
    channels: Sequence[NDArray[np.float32]],
    ids: NDArray[np.int64],
) -> dict[str, list[dict[str, NDArray[np.float64]]]] | None:
    """:func:`_group_stats` of every compartment in :data:`_REGIONS` with one sort per channel.

    Parameters
    ----------
    cell : (Y, X) int32, the cell labels (0 outside every cell).
    region : (Y, X) uint8, the region of each cell pixel (keys of :data:`_REGIONS`' values).
    channels, ids : as :func:`_group_stats`.

    Returns
    -------
    ``{compartment: [statistics per channel]}``, the values of :func:`_group_stats` on each
    compartment's label image bit for bit; ``None`` when a label is too large for the key.

    Notes
    -----
    The region sits in the key's lowest bits, below the value: sorting the cell's pixels once
    orders them by label, then value, and a region only breaks ties between equal values. Keeping
    the pixels of some regions keeps that order, so each compartment's pixels come out sorted as
    their own sort would give them, with no sort of their own: one sort of every cell pixel
    replaces five (nucleus, cytoplasm, cell, perinuclear and nucleus + perinuclear: about 2.6
    times as many pixels).
    """
    n = len(ids)
    flat_l = cell.ravel()
    sel = np.flatnonzero(flat_l > 0)
    if sel.size and int(flat_l[sel].max()) >= 1 << (64 - _LABEL_SHIFT):
        return None
    outs = {comp: [{name: np.full(n, np.nan) for name in STATISTICS} for _ in channels]
            for comp in _REGIONS}  # fmt: skip
    if sel.size == 0 or n == 0:
        return outs
    high = (flat_l[sel].astype(np.uint64) << np.uint64(_LABEL_SHIFT)) | region.ravel()[sel]
    for c, channel in enumerate(channels):
        value = _sort_keys(np.ascontiguousarray(channel, dtype=np.float32).ravel()[sel])
        keys = high | (value << np.uint64(_VALUE_SHIFT))
        del value
        keys.sort()
        tag = (keys & np.uint64(3)).astype(np.uint8)
        for comp, regions in _REGIONS.items():
            if len(regions) == 3:
                part = keys
            elif len(regions) == 1:
                part = keys[tag == regions[0]]
            else:  # two of the three: all but the third
                part = keys[tag != ({0, 1, 2} - set(regions)).pop()]
            _sorted_stats(part, ids, outs[comp][c], value_shift=_VALUE_SHIFT,
                          label_shift=_LABEL_SHIFT)  # fmt: skip
    return outs


def _sorted_stats(
    keys: NDArray[np.uint64],
    ids: NDArray[np.int64],
    out: dict[str, NDArray[np.float64]],
    *,
    value_shift: int,
    label_shift: int,
) -> None:
    """Fill ``out`` (one array per statistic, aligned with ``ids``) from sorted keys
    ``label << label_shift | float sort key << value_shift | ...``."""
    n = len(ids)
    if keys.size == 0:
        return
    lab_s = (keys >> np.uint64(label_shift)).astype(np.int64)
    val_s = _from_sort_keys(keys >> np.uint64(value_shift)).astype(np.float64)
    start = np.flatnonzero(np.r_[True, lab_s[1:] != lab_s[:-1]])
    count = np.diff(np.r_[start, lab_s.size])
    uniq = lab_s[start]
    sums = np.add.reduceat(val_s, start)
    last = start + count - 1
    pos = np.searchsorted(ids, uniq)
    ok = (pos < n) & (ids[np.minimum(pos, n - 1)] == uniq)
    pos = pos[ok]
    out["mean"][pos] = (sums / count)[ok]
    out["max"][pos] = val_s[last][ok]
    for name, q in _PERCENTILES.items():
        # nearest-rank percentile inside each sorted group
        k = start + np.ceil(q / 100.0 * count).astype(np.int64) - 1
        k = np.clip(k, start, last)
        out[name][pos] = val_s[k][ok]


def measure_cells(
    nuclei: NDArray[np.integer],
    stain_od: NDArray[np.floating],
    *,
    stain_names: Sequence[str],
    mpp: float,
    cytoplasm_um: float = 5.0,
    perinuclear_um: float | None = None,
    origin_um: tuple[float, float] = (0.0, 0.0),
    compartments: dict[str, NDArray[np.int32]] | None = None,
    cell_ids: NDArray[np.integer] | Sequence[int] | None = None,
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
    perinuclear_um : perinuclear ring width (default half of ``cytoplasm_um``).
    origin_um : (x, y) position in µm of pixel (0, 0) in slide coordinates, added to centroids.
    compartments : precomputed output of :func:`cell_compartments` (computed when omitted).
    cell_ids : measure only these nuclei (a tile's owned ones; the rows of the others would be
        dropped); all nuclei still stop each other's rings, so their values are those of a call
        without ``cell_ids``. Default: every nucleus.

    Returns
    -------
    DataFrame, one row per nucleus, sorted by ``cell_id``, with ``x_um``, ``y_um`` (nucleus centroid),
    ``nucleus_area_um2``, ``nucleus_perimeter_um``, ``nucleus_eccentricity``, ``nucleus_solidity``,
    ``cell_area_um2``, ``perinuclear_area_um2`` and ``{stain}_od_{statistic}_{compartment}`` for every
    statistic in :data:`STATISTICS` and compartment in :data:`COMPARTMENTS` (OD units).
    """
    nuclei = np.asarray(nuclei, dtype=np.int32)
    if stain_od.shape[:2] != nuclei.shape:
        raise ValueError(
            f"stain_od shape {stain_od.shape[:2]} differs from labels shape {nuclei.shape}"
        )
    if stain_od.shape[-1] != len(stain_names):
        raise ValueError(f"{len(stain_names)} stain names for {stain_od.shape[-1]} stain channels")
    nested = compartments is None  # ours: the rings are nested regions of the cell
    comps = compartments or cell_compartments(
        nuclei, mpp=mpp, cytoplasm_um=cytoplasm_um, perinuclear_um=perinuclear_um
    )
    measured = comps
    shape_labels = nuclei
    lut: NDArray[np.int32] | None = None
    if cell_ids is not None:
        # the other labels to 0 after the rings were grown (they still bounded them)
        top = max(int(v.max(initial=0)) for v in (nuclei, *comps.values()))
        lut = np.zeros(top + 1, np.int32)
        chosen = np.asarray(cell_ids, dtype=np.int64)
        chosen = chosen[(chosen > 0) & (chosen <= top)]
        lut[chosen] = chosen
        shape_labels = lut[nuclei]
        measured = {"cell": lut[comps["cell"]]} if nested else {k: lut[v] for k, v in comps.items()}
    props = shape_table(shape_labels)  # regionprops_table's values, without its per-nucleus loop
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
    peri_area = np.bincount(comps["perinuclear"].ravel(), minlength=int(ids.max(initial=0)) + 1)
    df["perinuclear_area_um2"] = peri_area[ids] * mpp**2 if ids.size else np.zeros(0)
    columns: dict[str, NDArray[np.float64]] = {}
    channels = [np.asarray(stain_od[..., s], dtype=np.float32) for s in range(len(stain_names))]
    per_comp = None
    if nested:
        # 0 nucleus, 1 perinuclear ring, 2 the rest of the cytoplasm ring (the perinuclear ring
        # lies inside the cytoplasm ring)
        region = (comps["cytoplasm"] > 0).view(np.uint8) * np.uint8(2) - (
            comps["perinuclear"] > 0
        ).view(np.uint8)
        per_comp = _nested_stats(measured["cell"], region, channels, ids)
    if per_comp is None:  # given compartments (or labels too large for the one-sort key)
        if lut is not None and nested:
            measured = {k: lut[v] for k, v in comps.items()}
        per_comp = {comp: _group_stats(measured[comp], channels, ids) for comp in COMPARTMENTS}
    for s, name in enumerate(stain_names):
        for comp in COMPARTMENTS:
            for stat, values in per_comp[comp][s].items():
                columns[f"{name}_od_{stat}_{comp}"] = values
    return pd.concat([df, pd.DataFrame(columns, index=df.index)], axis=1)
