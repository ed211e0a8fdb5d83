"""Synthetic serial sections with a known transform, for tests, benchmarks and validation.

A *serial section pair* is one synthetic slide (same seed: the same tissue and cells) rendered in two
assays, like adjacent sections stained for different markers; the moving section is re-stained with
stain vectors turned away from the pipeline's references, then resampled through a known map
(affine, plus an optional smooth non-rigid displacement, as sections stretch when mounted).
:func:`restain` does the re-staining for any RGB image, so a real image can be registered to a
transformed, re-stained copy of itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np
import pandas as pd
from numpy.typing import NDArray

from senpath.registration._methods import apply_affine
from senpath.stain import StainSet, od_to_rgb, rgb_to_od, unit


def turned_vector(
    vector: NDArray[np.float64], degrees: float, rng: np.random.Generator
) -> NDArray[np.float64]:
    """``vector`` turned by ``degrees`` in a random direction, kept in the positive OD octant."""
    v = unit(list(vector))
    for _ in range(100):
        axis = rng.normal(size=3)
        axis -= axis.dot(v) * v
        axis /= np.linalg.norm(axis)
        out = math.cos(math.radians(degrees)) * v + math.sin(math.radians(degrees)) * axis
        if (out > 0.02).all():
            return unit(out.tolist())
    return v


def restain(
    rgb: NDArray[np.uint8],
    *,
    stains: StainSet,
    new_vectors: NDArray[np.float64],
    i0: float | tuple[float, float, float] = 240.0,
    gain: float = 1.0,
) -> NDArray[np.uint8]:
    """Re-stain an RGB image: deconvolve with ``stains``, recompose with ``new_vectors``.

    What the stains do not explain (noise, blur, other dyes) is kept as it was.

    Parameters
    ----------
    rgb : (Y, X, 3) uint8 ndarray
    stains : StainSet
        The stains the image was stained with (2 or 3).
    new_vectors : (S, 3) float ndarray
        The new OD vector of each stain, in the order of ``stains.names``.
    i0 : float or (3,) float
        Glass intensity.
    gain : float
        Multiplies every stain amount (a paler or darker staining run).

    Returns
    -------
    (Y, X, 3) uint8 ndarray
    """
    od = rgb_to_od(rgb, i0).reshape(-1, 3)
    amounts = od @ np.linalg.pinv(stains.vectors).astype(np.float32)
    explained = amounts @ stains.vectors.astype(np.float32)
    new = np.asarray([unit(list(v)) for v in new_vectors], dtype=np.float32)
    out = gain * (amounts @ new) + (od - explained)
    return od_to_rgb(np.maximum(out, 0.0).reshape(rgb.shape), i0)


@dataclass(frozen=True)
class KnownTransform:
    """A known map from a moving section's µm coordinates onto the reference's.

    ``p_ref = affine @ p_moving + displacement(p_moving)``, the displacement a smooth random field
    (sum of a few sine waves of ``wavelength_um``) of at most about ``nonrigid_um`` µm.
    """

    affine: NDArray[np.float64]
    nonrigid_um: float = 0.0
    wavelength_um: float = 1500.0
    seed: int = 0
    _waves: NDArray[np.float64] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        # per wave: direction angle, phase, and amplitude share for x and y displacement
        object.__setattr__(self, "_waves", rng.uniform(0, 2 * np.pi, size=(3, 4)))

    def displacement(
        self, x_um: NDArray[np.float64], y_um: NDArray[np.float64]
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        dx = np.zeros_like(np.asarray(x_um, dtype=np.float64))
        dy = np.zeros_like(dx)
        if self.nonrigid_um <= 0:
            return dx, dy
        k = 2 * np.pi / self.wavelength_um
        for direction, phase, ax, ay in self._waves:
            s = np.sin(k * (math.cos(direction) * x_um + math.sin(direction) * y_um) + phase)
            dx = dx + self.nonrigid_um / 3 * math.cos(ax) * s
            dy = dy + self.nonrigid_um / 3 * math.cos(ay) * s
        return dx, dy

    def to_reference(
        self, x_um: NDArray[np.float64], y_um: NDArray[np.float64]
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Moving µm to reference µm."""
        x, y = apply_affine(self.affine, x_um, y_um)
        dx, dy = self.displacement(
            np.asarray(x_um, dtype=np.float64), np.asarray(y_um, dtype=np.float64)
        )
        return x + dx, y + dy

    def to_moving(
        self, x_um: NDArray[np.float64], y_um: NDArray[np.float64]
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Reference µm to moving µm (fixed-point iteration; the displacement is small and smooth)."""
        inverse = np.linalg.inv(self.affine)
        x = np.asarray(x_um, dtype=np.float64)
        y = np.asarray(y_um, dtype=np.float64)
        mx, my = apply_affine(inverse, x, y)
        for _ in range(20):
            dx, dy = self.displacement(mx, my)
            mx, my = apply_affine(inverse, x - dx, y - dy)
        return mx, my


def affine_about(
    centre_um: tuple[float, float],
    *,
    rotation_deg: float = 0.0,
    scale: tuple[float, float] = (1.0, 1.0),
    shear: float = 0.0,
    shift_um: tuple[float, float] = (0.0, 0.0),
) -> NDArray[np.float64]:
    """A ``(3, 3)`` moving-to-reference affine: rotate, scale and shear about ``centre_um`` (x, y),
    then shift."""
    c, s = math.cos(math.radians(rotation_deg)), math.sin(math.radians(rotation_deg))
    linear = np.array([[c, -s], [s, c]]) @ np.array([[scale[0], shear], [0.0, scale[1]]])
    centre = np.asarray(centre_um, dtype=np.float64)
    out = np.eye(3)
    out[:2, :2] = linear
    out[:2, 2] = centre - linear @ centre + np.asarray(shift_um)
    return out


#: Where (µm) the synthetic sections sit on the synthetic slide.
_SLIDE_OFFSET_UM = 8192.0


@dataclass(frozen=True)
class SectionPair:
    """Two synthetic serial sections and the truth that relates them.

    Attributes
    ----------
    reference_rgb, moving_rgb : (Y, X, 3) uint8 ndarray
        The two sections' images at ``mpp`` µm/px; slide coordinates start at their top-left corner.
    mpp : float
    transform : KnownTransform
        Moving µm to reference µm.
    reference_cells, moving_cells : pandas.DataFrame
        Truth cells (``cell_id``, ``x_um``, ``y_um``, ``senescent``, marker columns) of each
        section, in its own coordinates; the same ``cell_id`` is the same cell.
    """

    reference_rgb: NDArray[np.uint8]
    moving_rgb: NDArray[np.uint8]
    mpp: float
    transform: KnownTransform
    reference_cells: pd.DataFrame
    moving_cells: pd.DataFrame


def warp_into_moving(
    render: NDArray[np.uint8],
    *,
    mpp: float,
    origin_um: tuple[float, float],
    shape: tuple[int, int],
    transform: KnownTransform,
    fill: tuple[float, float, float],
) -> NDArray[np.uint8]:
    """Resample an image of the reference frame (top-left pixel corner at ``origin_um`` (x, y))
    into a moving section of ``shape`` (Y, X) px through ``transform`` (linear interpolation)."""
    rows, cols = np.indices(shape, dtype=np.float64)
    rx, ry = transform.to_reference((cols + 0.5) * mpp, (rows + 0.5) * mpp)
    map_x = ((rx - origin_um[0]) / mpp - 0.5).astype(np.float32)
    map_y = ((ry - origin_um[1]) / mpp - 0.5).astype(np.float32)
    warped = cv2.remap(
        render,
        map_x,
        map_y,
        interpolation=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=tuple(float(v) for v in fill),
    )
    return np.asarray(warped, dtype=np.uint8)


def serial_section_pair(
    *,
    transform: KnownTransform,
    shape: tuple[int, int] = (512, 512),
    mpp: float = 4.0,
    seed: int = 0,
    reference_assay: str = "sabgal",
    moving_assay: str = "ki67",
    stain_turn_deg: float = 6.0,
    stain_gain: float = 1.0,
    tissue_fraction: float = 0.5,
    moving_seed: int | None = None,
) -> SectionPair:
    """Render two serial sections of one synthetic slide, the moving one re-stained and transformed.

    Parameters
    ----------
    transform : KnownTransform
        Moving µm to reference µm.
    shape : (Y, X) int
        Size of each section image in px.
    mpp : float
        Pixel size (µm/px) of both images (4 µm/px renders a 2 mm section in a couple of seconds).
    seed : int
        The slide.
    reference_assay, moving_assay : str
        Assays of the two sections (:data:`senpath.synth.ASSAYS`).
    stain_turn_deg : float
        Every stain of both sections is turned by this angle from the pipeline's reference vector
        (each in its own random direction), so neither matches the references exactly.
    stain_gain : float
        Stain amount of the moving section relative to the reference (a paler or darker run).
    tissue_fraction : float
        Share of the slide covered by tissue (its outline is what registration sees best).
    moving_seed : int, optional
        Render the moving section from another slide (an unrelated pair, which must fail).

    Returns
    -------
    SectionPair
    """
    from senpath import synth

    rng = np.random.default_rng(seed + 7919)
    params = synth.SynthParams(tissue_fraction=tissue_fraction)
    h, w = shape

    def restained(assay: str, rgb: NDArray[np.uint8], gain: float) -> NDArray[np.uint8]:
        stains = StainSet.from_names(synth.ASSAY_STAINS[assay])
        new = np.asarray([turned_vector(v, stain_turn_deg, rng) for v in stains.vectors])
        return restain(rgb, stains=stains, new_vectors=new, i0=params.background_rgb, gain=gain)

    # the sections sit away from the synthetic slide's corner (it has no negative coordinates);
    # their own coordinates start at their top-left corner
    far = _SLIDE_OFFSET_UM
    reference = synth.render_region(
        reference_assay, shape=shape, mpp=mpp, origin_um=(far, far), seed=seed, params=params
    )
    reference_rgb = restained(reference_assay, reference.rgb, 1.0)

    # the part of the reference frame the moving section shows, rendered with a margin
    corners_x = np.array([0.0, w * mpp, 0.0, w * mpp])
    corners_y = np.array([0.0, 0.0, h * mpp, h * mpp])
    rx, ry = transform.to_reference(corners_x, corners_y)
    margin = 4 * mpp + 2 * transform.nonrigid_um
    x0, y0 = (
        math.floor((rx.min() - margin) / mpp) * mpp,
        math.floor((ry.min() - margin) / mpp) * mpp,
    )
    rw = math.ceil((rx.max() + margin - x0) / mpp)
    rh = math.ceil((ry.max() + margin - y0) / mpp)
    other = synth.render_region(
        moving_assay,
        shape=(rh, rw),
        mpp=mpp,
        origin_um=(far + y0, far + x0),
        seed=seed if moving_seed is None else moving_seed,
        params=params,
    )
    render = restained(moving_assay, other.rgb, stain_gain)
    moving_rgb = warp_into_moving(
        render,
        mpp=mpp,
        origin_um=(x0, y0),
        shape=shape,
        transform=transform,
        fill=params.background_rgb,
    )
    moving_cells = other.truth.copy()
    mx, my = transform.to_moving(
        moving_cells["x_um"].to_numpy() - far, moving_cells["y_um"].to_numpy() - far
    )
    moving_cells["x_um"], moving_cells["y_um"] = mx, my
    inside = (mx >= 0) & (mx < w * mpp) & (my >= 0) & (my < h * mpp)
    return SectionPair(
        reference_rgb=reference_rgb,
        moving_rgb=moving_rgb,
        mpp=mpp,
        transform=transform,
        reference_cells=reference.truth.assign(
            x_um=reference.truth["x_um"] - far, y_um=reference.truth["y_um"] - far
        ),
        moving_cells=moving_cells[inside].reset_index(drop=True),
    )


def centroid_error_um(matrix: NDArray[np.float64], pair: SectionPair) -> NDArray[np.float64]:
    """Distance (µm) between each moving truth cell mapped by ``matrix`` and where it truly is in
    the reference frame, for the cells that lie on the reference section's tissue."""
    cells = pair.moving_cells
    mx, my = cells["x_um"].to_numpy(), cells["y_um"].to_numpy()
    tx, ty = pair.transform.to_reference(mx, my)
    ex, ey = apply_affine(matrix, mx, my)
    h, w = pair.reference_rgb.shape[:2]
    inside = (tx >= 0) & (tx < w * pair.mpp) & (ty >= 0) & (ty < h * pair.mpp)
    return np.hypot(ex - tx, ey - ty)[inside]
