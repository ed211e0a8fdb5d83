"""Register two sections and say where the registration can be trusted.

:func:`register_sections` runs the primary method (SimpleITK, affine) and an independent check
(phase correlation + ECC), then measures on a grid in µm over the reference section:

- the *local shift*: in a window of ``window_um`` around each grid cell, the shift of the aligned
  moving picture (within a few pixels) that maximises the local normalised cross-correlation (NCC)
  with the reference. Where the alignment is right the best shift is ~0; where the section tore,
  folded or stretched the best shift is not; where there is no texture to tell, the NCC peak is
  low. It depends on no absolute NCC level, which varies with stains and pixel size;
- the disagreement (µm) between where the two methods put the grid cell;
- whether the moving section covers it at all.

A grid cell on the reference tissue is *unsure* when its local shift exceeds
``max_local_shift_um``, its NCC peak is below :data:`MIN_PEAK_NCC`, the methods disagree by more
than ``max_disagreement_um`` or the moving section does not cover it. The whole registration
*fails* (``ok`` False: its cells are not used) when the aligned pictures hardly correlate overall,
the methods disagree, or most of the tissue is unsure. The mean and 95th percentile of the
disagreement over the tissue are the residual estimate stored in provenance.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from senpath.registration._image import SectionImage
from senpath.registration._methods import (
    RegistrationError,
    apply_affine,
    pixel_to_um,
    register_phase_ecc,
    register_simpleitk,
)

#: Grid cells whose best local shift is larger than this (µm) are unsure.
MAX_LOCAL_SHIFT_UM = 25.0
#: Grid cells whose best local NCC is below this have no texture to confirm the alignment.
MIN_PEAK_NCC = 0.15
#: Grid cells where the two methods disagree by more than this (µm) are unsure.
MAX_DISAGREEMENT_UM = 50.0
#: The registration fails when the aligned pictures' NCC over the tissue and its rim is below this
#: (aligned pairs: 0.3 for all-tissue fields at 2 µm/px to 0.9; unrelated sections: about 0.1).
MIN_GLOBAL_NCC = 0.2
#: A method whose aligned NCC is this much lower than the other's counts as the failed one.
NCC_MARGIN = 0.02
#: ... or when more than this share of the reference tissue is unsure.
MAX_UNSURE_SHARE = 0.5


@dataclass(frozen=True)
class QualityGrid:
    """Registration quality per grid cell over the reference section.

    Grid cell ``(row, col)`` covers ``[col g, (col + 1) g) x [row g, (row + 1) g)`` µm of the
    reference section's coordinates, ``g = grid_um``; every array is ``(rows, cols)``.

    Attributes
    ----------
    grid_um : float
    ncc : float32 ndarray
        Local NCC after alignment (NaN off tissue).
    local_shift_um : float32 ndarray
        Length of the shift of the aligned moving picture that maximises the local NCC (NaN off
        tissue).
    disagreement_um : float32 ndarray
        Distance between the two methods' positions (NaN where the check failed).
    tissue : bool ndarray
        The reference section has tissue in the grid cell.
    covered : bool ndarray
        The moving section's image covers the grid cell.
    unsure : bool ndarray
        Tissue where the registration is unsure (see the module).
    """

    grid_um: float
    ncc: NDArray[np.float32]
    local_shift_um: NDArray[np.float32]
    disagreement_um: NDArray[np.float32]
    tissue: NDArray[np.bool_]
    covered: NDArray[np.bool_]
    unsure: NDArray[np.bool_]


@dataclass(frozen=True)
class SectionRegistration:
    """The registration of a moving section onto a reference section.

    Attributes
    ----------
    reference, moving : str
        Their names (slide ids).
    matrix : (3, 3) float64 ndarray
        Moving µm to reference µm (the primary method's).
    check_matrix : (3, 3) float64 ndarray or None
        The independent check's (None when it failed).
    method, check_method : str
    ncc : float
        NCC of the aligned pictures over the reference tissue.
    residual_um : dict
        ``mean`` and ``p95`` of the methods' disagreement over the reference tissue (µm): the
        residual estimate (NaN when the check failed).
    quality : QualityGrid
    ok : bool
        False: the registration failed and must not be used.
    problems : list of str
        Why it failed or what is doubtful.
    seconds : float
    mpp : float
        Pixel size (µm/px) of the pictures it was computed on.
    """

    reference: str
    moving: str
    matrix: NDArray[np.float64]
    check_matrix: NDArray[np.float64] | None
    method: str
    check_method: str
    ncc: float
    residual_um: dict[str, float]
    quality: QualityGrid
    ok: bool
    problems: list[str] = field(default_factory=list)
    residual_definition: str = ""
    seconds: float = 0.0
    mpp: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record (without the grids)."""
        q = self.quality
        return {
            "reference": self.reference,
            "moving": self.moving,
            "moving_to_reference_um": self.matrix.tolist(),
            "check_moving_to_reference_um": None
            if self.check_matrix is None
            else self.check_matrix.tolist(),
            "method": self.method,
            "check_method": self.check_method,
            "picture_mpp": self.mpp,
            "ncc": self.ncc,
            "residual_um": self.residual_um,
            "residual_definition": self.residual_definition,
            "grid_um": q.grid_um,
            "tissue_grid_cells": int(q.tissue.sum()),
            "unsure_grid_cells": int(q.unsure.sum()),
            "ok": self.ok,
            "problems": list(self.problems),
            "seconds": round(self.seconds, 3),
        }


def warp_to_reference(
    moving: NDArray[np.float32],
    matrix: NDArray[np.float64],
    *,
    moving_mpp: float,
    reference_mpp: float,
    shape: tuple[int, int],
) -> NDArray[np.float32]:
    """Resample a moving picture into the reference picture's pixel grid (0 outside)."""
    ref_px_to_mov_px = (
        np.linalg.inv(pixel_to_um(moving_mpp)) @ np.linalg.inv(matrix) @ pixel_to_um(reference_mpp)
    )
    warped = cv2.warpAffine(
        moving.astype(np.float32),
        ref_px_to_mov_px[:2],
        (shape[1], shape[0]),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0.0,
    )
    return np.asarray(warped, dtype=np.float32)


def local_ncc(
    a: NDArray[np.float32], b: NDArray[np.float32], window_px: int
) -> NDArray[np.float32]:
    """NCC of ``a`` and ``b`` in a ``window_px`` square around every pixel (NaN where flat)."""
    k = (max(3, window_px), max(3, window_px))
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    mean_a = cv2.boxFilter(a64, -1, k)
    mean_b = cv2.boxFilter(b64, -1, k)
    cov = cv2.boxFilter(a64 * b64, -1, k) - mean_a * mean_b
    var_a = cv2.boxFilter(a64 * a64, -1, k) - mean_a**2
    var_b = cv2.boxFilter(b64 * b64, -1, k) - mean_b**2
    denom = np.sqrt(np.clip(var_a, 0, None) * np.clip(var_b, 0, None))
    with np.errstate(invalid="ignore", divide="ignore"):
        ncc = np.where(denom > 1e-6, cov / denom, np.nan)
    return ncc.astype(np.float32)


def _best_local_shift(
    reference: NDArray[np.float32], warped: NDArray[np.float32], window_px: int, radius: int
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per pixel, the highest local NCC over shifts of ``warped`` by up to ``radius`` px and the
    length (px) of the shift that gives it."""
    peak = np.full(reference.shape, -np.inf)
    best = np.zeros(reference.shape)
    h, w = reference.shape
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if dx * dx + dy * dy > radius * radius:
                continue
            shift = np.array([[1, 0, dx], [0, 1, dy]], dtype=np.float32)
            moved = cv2.warpAffine(warped, shift, (w, h), borderMode=cv2.BORDER_CONSTANT)
            ncc = np.nan_to_num(
                local_ncc(reference, np.asarray(moved, np.float32), window_px), nan=-1
            )
            better = ncc > peak
            peak[better] = ncc[better]
            best[better] = np.hypot(dx, dy)
    return peak, best


def _ncc(a: NDArray[np.float32], b: NDArray[np.float32], mask: NDArray[np.bool_]) -> float:
    if mask.sum() < 10:
        return float("nan")
    x = a[mask].astype(np.float64) - a[mask].mean()
    y = b[mask].astype(np.float64) - b[mask].mean()
    denom = float(np.sqrt((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / denom) if denom > 0 else float("nan")


def grid_shape(extent_um: tuple[float, float], grid_um: float) -> tuple[int, int]:
    """(rows, cols) of a ``grid_um`` grid over a section of ``extent_um`` (height, width) µm."""
    return (
        max(1, int(np.ceil(extent_um[0] / grid_um))),
        max(1, int(np.ceil(extent_um[1] / grid_um))),
    )


def register_sections(
    reference: SectionImage,
    moving: SectionImage,
    *,
    model: str = "affine",
    grid_um: float = 100.0,
    window_um: float = 400.0,
    max_local_shift_um: float = MAX_LOCAL_SHIFT_UM,
    max_disagreement_um: float = MAX_DISAGREEMENT_UM,
) -> SectionRegistration:
    """Register ``moving`` onto ``reference`` and grade it per grid cell.

    Parameters
    ----------
    reference, moving : SectionImage
        Low-resolution pictures of the two sections (:func:`section_image`).
    model : {"rigid", "affine"}
    grid_um : float
        Grid cell size (µm) of the quality grid (the co-localisation map's grid).
    window_um : float
        Window (µm) of the local NCC; a few hundred µm hold enough texture at 8 µm/px.
    max_local_shift_um, max_disagreement_um : float
        Thresholds of an unsure grid cell.

    Returns
    -------
    SectionRegistration
        ``ok`` is False when the primary method failed or the result does not hold up; its
        ``problems`` say why. Never raises for a pair that cannot be registered.
    """
    if not grid_um > 0 or not window_um > 0:
        raise ValueError(f"grid_um={grid_um}, window_um={window_um}: give positive sizes in µm")
    start = time.perf_counter()
    problems: list[str] = []
    shape = reference.od.shape
    rows, cols = grid_shape(reference.extent_um, grid_um)
    try:
        matrix = register_simpleitk(reference, moving, model=model)
    except RegistrationError as err:
        problems.append(f"SimpleITK: {err}")
        matrix = np.eye(3)
    primary_failed = bool(problems)
    try:
        check: NDArray[np.float64] | None = register_phase_ecc(reference, moving, model=model)
    except RegistrationError as err:
        problems.append(f"check: {err}")
        check = None

    # over the tissue and the glass around it: the outline is the pair's strongest shared feature
    near_tissue = cv2.dilate(
        reference.tissue.astype(np.uint8), np.ones((5, 5), np.uint8), iterations=2
    ).astype(bool)

    def aligned(m: NDArray[np.float64]) -> tuple[NDArray[np.float32], NDArray[np.bool_], float]:
        moved = warp_to_reference(
            moving.od, m, moving_mpp=moving.mpp, reference_mpp=reference.mpp, shape=shape
        )
        ones = np.ones_like(moving.od)
        cover = (
            warp_to_reference(
                ones, m, moving_mpp=moving.mpp, reference_mpp=reference.mpp, shape=shape
            )
            > 0.5
        )
        return moved, cover, _ncc(reference.od, moved, near_tissue & cover)

    # grid cell centres in the reference's µm and their pixels in the picture
    cy = (np.arange(rows) + 0.5) * grid_um
    cx = (np.arange(cols) + 0.5) * grid_um
    gx, gy = np.meshgrid(cx, cy)
    tissue = _grid_any(reference.tissue, reference.mpp, grid_um, (rows, cols))

    def disagreement_of(a: NDArray[np.float64], b: NDArray[np.float64]) -> NDArray[np.float32]:
        mx, my = apply_affine(np.linalg.inv(a), gx.ravel(), gy.ravel())
        bx, by = apply_affine(b, mx, my)
        return np.hypot(bx - gx.ravel(), by - gy.ravel()).reshape(rows, cols).astype(np.float32)

    method = f"simpleitk-{model}"
    check_method = f"phase-correlation+ecc-{model}"
    check_used = check is not None and not primary_failed
    warped, covered_px, global_ncc = aligned(matrix)
    if check is not None and not primary_failed and tissue.any():
        if not np.percentile(disagreement_of(matrix, check)[tissue], 95) <= max_disagreement_um:
            # the two disagree: the one whose alignment correlates clearly better is kept, the
            # other counts as failed (the local shifts then give the residual estimate)
            check_warped, check_covered, check_ncc = aligned(check)
            if check_ncc < global_ncc - NCC_MARGIN:
                check_used = False
                problems.append(
                    f"the check method ({check_method}) found a worse alignment (NCC "
                    f"{check_ncc:.2f} < {global_ncc:.2f}): residual from local shifts only"
                )
            elif check_ncc > global_ncc + NCC_MARGIN:
                check_used = False
                problems.append(
                    f"{method} found a worse alignment than {check_method} (NCC {global_ncc:.2f} "
                    f"< {check_ncc:.2f}): the latter is used, residual from local shifts only"
                )
                matrix, check = check, matrix
                method, check_method = check_method, method
                warped, covered_px, global_ncc = check_warped, check_covered, check_ncc

    window_px = int(round(window_um / reference.mpp))
    ncc_map = local_ncc(reference.od, warped, window_px)
    # search twice the tolerated shift, at least 3 px
    radius = max(3, int(np.ceil(2 * max_local_shift_um / reference.mpp)))
    peak_ncc, best_shift_px = _best_local_shift(reference.od, warped, window_px, radius)
    pi = np.clip((gy / reference.mpp).astype(int), 0, shape[0] - 1)
    pj = np.clip((gx / reference.mpp).astype(int), 0, shape[1] - 1)
    covered = covered_px[pi, pj]
    ncc_grid = np.where(tissue, ncc_map[pi, pj], np.nan).astype(np.float32)
    shift_grid = np.where(tissue, best_shift_px[pi, pj] * reference.mpp, np.nan).astype(np.float32)
    peak_grid = np.where(tissue, peak_ncc[pi, pj], np.nan)
    if check is not None and check_used:
        disagreement = disagreement_of(matrix, check)
    else:
        disagreement = np.full((rows, cols), np.nan, dtype=np.float32)
    with np.errstate(invalid="ignore"):
        unsure = tissue & (
            ~covered
            | ~(shift_grid <= max_local_shift_um)
            | ~(peak_grid >= MIN_PEAK_NCC)
            | (~(disagreement <= max_disagreement_um) if check_used else False)
        )
    # the residual estimate: the methods' disagreement, or the local shifts when one failed
    # (local shifts: over the grid cells they confirm; where the tissue has no texture the best
    # shift is noise, and those grid cells are unsure anyway)
    basis = disagreement[tissue] if check_used else shift_grid[tissue & ~unsure]
    basis = basis[np.isfinite(basis)]
    residual = {
        "mean": float(basis.mean()) if basis.size else float("nan"),
        "p95": float(np.percentile(basis, 95)) if basis.size else float("nan"),
    }
    residual_definition = (
        "disagreement between the two methods over the reference tissue"
        if check_used
        else "best local shift over the tissue's confirmed grid cells, in whole picture pixels "
        "(one method failed)"
    )
    unsure_share = float(unsure.sum() / max(1, tissue.sum()))
    if not primary_failed:
        if not global_ncc >= MIN_GLOBAL_NCC:
            problems.append(
                f"the aligned sections hardly correlate (NCC {global_ncc:.2f} < {MIN_GLOBAL_NCC})"
            )
        if check_used and not residual["p95"] <= max_disagreement_um:
            problems.append(
                f"the two methods disagree by up to {residual['p95']:.0f} µm (95th percentile; "
                f"limit {max_disagreement_um:.0f} µm)"
            )
        if unsure_share > MAX_UNSURE_SHARE:
            problems.append(f"{unsure_share:.0%} of the tissue is unsure")
    ok = not primary_failed and bool(
        global_ncc >= MIN_GLOBAL_NCC
        and (residual["p95"] <= max_disagreement_um or not check_used)
        and unsure_share <= MAX_UNSURE_SHARE
    )
    if not ok:
        unsure = tissue.copy()
    return SectionRegistration(
        reference=reference.name,
        moving=moving.name,
        matrix=matrix,
        check_matrix=check,
        method=method,
        check_method=check_method,
        ncc=global_ncc,
        residual_um=residual,
        residual_definition=residual_definition,
        quality=QualityGrid(grid_um, ncc_grid, shift_grid, disagreement, tissue, covered, unsure),
        ok=ok,
        problems=problems,
        seconds=time.perf_counter() - start,
        mpp=reference.mpp,
    )


def _grid_any(
    mask: NDArray[np.bool_], mpp: float, grid_um: float, shape: tuple[int, int]
) -> NDArray[np.bool_]:
    """Grid cells holding at least a quarter of tissue pixels."""
    rows, cols = np.indices(mask.shape)
    gi = np.minimum(((rows + 0.5) * mpp / grid_um).astype(int), shape[0] - 1)
    gj = np.minimum(((cols + 0.5) * mpp / grid_um).astype(int), shape[1] - 1)
    total = np.zeros(shape)
    hits = np.zeros(shape)
    np.add.at(total, (gi, gj), 1)
    np.add.at(hits, (gi, gj), mask)
    return (hits >= 0.25 * np.maximum(total, 1)) & (total > 0)
