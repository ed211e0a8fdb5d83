"""Cells from a paired nuclear fluorescence image (DAPI/Hoechst) of the same field as a brightfield photo.

Many culture labs photograph each SA-beta-gal field twice: brightfield for the X-gal, fluorescence for
the nuclei. The two frames are offset by the stage or filter-cube shift, so:

1. **Register** (:func:`register_nuclear`): a similarity transform (shift, rotation, scale: another
   camera, a turned adaptor) between the nuclear image and the brightfield image, on matching
   channels: the fluorescence itself, and the nucleus-scale blobs of the brightfield's neutral OD
   (nuclei are denser than cytoplasm even unstained; see :mod:`senpath.segment.whole_cell`). The
   shift comes from phase correlation (``skimage.registration.phase_cross_correlation``), rotation
   and scale from the phase correlation of log-polar Fourier magnitudes (a sweep of start turns
   where that misses), and SimpleITK refines the similarity (correlation metric, three
   resolutions). The fit is checked: after alignment the two channels must correlate (Pearson
   ``r`` >= ``min_correlation``), the shift stay under ``max_shift_um``, the turn under
   ``max_rotation_deg`` (12°) and the scale within ``max_scale_change`` (8 %) of 1; otherwise
   :class:`RegistrationError` (a mismatched pair, another field). Measured on 10 synthetic fields
   turned 3-10° and scaled 0.95-1.05 (``benchmarks/culture_segmentation.py``): 8 registered with
   every nucleus within 0.4 µm, one with a weak brightfield channel (r 0.32) within 2.9 µm, one
   refused (r 0.12 even when aligned by the truth, as it was for a plain shift).
2. **Nuclei** (:func:`segment_nuclei_fluorescence`): the standard classical method for
   fluorescence, Gaussian smoothing, Otsu threshold, holes filled, touching nuclei split by a
   watershed of the distance transform.
3. **Cells** (:func:`grow_cells`): each nucleus grown over the brightfield cell foreground
   (:func:`senpath.segment.whole_cell.foreground_feature`), by distance, at most
   ``max_distance_um`` from its nucleus, stopped where it meets a neighbour.

X-gal is then measured per cell (:func:`paired_compartments` gives the compartments
:func:`senpath.measure.measure_cells` takes).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.filters import threshold_otsu
from skimage.morphology import remove_small_objects
from skimage.segmentation import relabel_sequential, watershed

from senpath.segment.nuclear_registration import (
    Registration,
    RegistrationError,
    align_nuclear,
    register_nuclear,
)
from senpath.segment.whole_cell import foreground_feature

__all__ = [
    "PairedNucleusSegmenter",
    "Registration",
    "RegistrationError",
    "align_nuclear",
    "grow_cells",
    "pair_nuclear_image",
    "paired_compartments",
    "register_nuclear",
    "segment_nuclei_fluorescence",
    "segment_paired",
]


def segment_nuclei_fluorescence(
    nuclear: NDArray[np.number],
    *,
    mpp: float,
    smooth_um: float = 1.0,
    min_area_um2: float = 20.0,
    split_distance_um: float = 5.0,
    threshold: float | None = None,
) -> NDArray[np.int32]:
    """Nuclei of a fluorescence image: Gaussian, Otsu threshold, distance-transform watershed.

    Parameters
    ----------
    nuclear : (Y, X) fluorescence intensity.
    mpp : pixel size in µm/px.
    smooth_um : Gaussian sigma before thresholding.
    min_area_um2 : smaller objects are dropped (µm²).
    split_distance_um : least distance between the centres of two touching nuclei.
    threshold : intensity threshold (after smoothing); ``None``: Otsu's of this image (a tile
        of a larger frame should get the frame's, from :func:`nuclear_threshold`).

    Returns
    -------
    (Y, X) int32 nucleus labels 1..N.
    """
    img = ndi.gaussian_filter(np.asarray(nuclear, np.float32), smooth_um / mpp)
    if threshold is None:
        if float(img.max() - img.min()) < 1e-6:
            return np.zeros(img.shape, np.int32)
        threshold = float(threshold_otsu(img))
    mask = ndi.binary_fill_holes(img > threshold)
    min_px = max(1, round(min_area_um2 / mpp**2))
    mask = remove_small_objects(mask, max_size=min_px - 1)
    dist = ndi.gaussian_filter(ndi.distance_transform_edt(mask), 0.5 / mpp)
    peaks = peak_local_max(
        dist, min_distance=max(1, round(split_distance_um / mpp)), labels=ndi.label(mask)[0],
        exclude_border=False,
    )  # fmt: skip
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    labels = watershed(-dist, markers, mask=mask).astype(np.int32)
    counts = np.bincount(labels.ravel())
    small = np.flatnonzero(counts < min_px)
    labels[np.isin(labels, small[small > 0])] = 0
    return relabel_sequential(labels)[0].astype(np.int32)


def nuclear_threshold(nuclear: NDArray[np.number], *, mpp: float, smooth_um: float = 1.0) -> float:
    """Otsu's threshold of a whole (smoothed) nuclear frame, for its tiles."""
    img = ndi.gaussian_filter(np.asarray(nuclear, np.float32), smooth_um / mpp)
    return float(threshold_otsu(img)) if float(img.max() - img.min()) > 1e-6 else float(img.max())


def grow_cells(
    nuclei: NDArray[np.integer],
    foreground: NDArray[np.bool_],
    *,
    mpp: float,
    max_distance_um: float = 30.0,
) -> NDArray[np.int32]:
    """Cells grown from nuclei over the brightfield cell foreground, by distance.

    Parameters
    ----------
    nuclei : (Y, X) int nucleus labels.
    foreground : (Y, X) bool brightfield cell foreground.
    mpp : pixel size in µm/px.
    max_distance_um : farthest a cell reaches from its nucleus (µm).

    Returns
    -------
    (Y, X) int32 cell labels, the ids of ``nuclei``; each cell holds its whole nucleus.
    """
    nuclei = np.asarray(nuclei, np.int32)
    distance = ndi.distance_transform_edt(nuclei == 0) * mpp
    mask = (foreground & (distance <= max_distance_um)) | (nuclei > 0)
    return watershed(distance, nuclei, mask=mask).astype(np.int32)


def segment_paired(
    rgb: NDArray[np.uint8],
    nuclear: NDArray[np.number],
    *,
    mpp: float,
    max_distance_um: float = 30.0,
    min_foreground_od: float = 0.035,
    name: str = "nuclear image",
) -> tuple[NDArray[np.int32], NDArray[np.int32], Registration]:
    """Register, segment nuclei in fluorescence and grow cells over the brightfield foreground.

    Parameters
    ----------
    rgb : (Y, X, 3) uint8 brightfield image at ``mpp`` µm/px.
    nuclear : (Y, X) nuclear fluorescence of the same field and grid (not yet aligned).
    mpp : pixel size in µm/px.
    max_distance_um : farthest a cell reaches from its nucleus (µm).
    min_foreground_od : see :func:`senpath.segment.whole_cell.segment_whole_cells`.
    name : how messages name the nuclear image.

    Returns
    -------
    (nuclei, cells, registration)
        (Y, X) int32 nucleus and cell labels sharing ids, on the brightfield grid.

    Raises
    ------
    RegistrationError
        When the nuclear image does not register (see :func:`register_nuclear`).
    """
    registration = register_nuclear(nuclear, rgb, mpp=mpp, name=name)
    aligned = align_nuclear(nuclear, registration, mpp=mpp)
    nuclei = segment_nuclei_fluorescence(aligned, mpp=mpp)
    foreground = foreground_feature(rgb, mpp=mpp, method="total_od") > min_foreground_od
    cells = grow_cells(nuclei, foreground, mpp=mpp, max_distance_um=max_distance_um)
    return nuclei, cells, registration


def paired_compartments(
    nuclei: NDArray[np.integer],
    cells: NDArray[np.integer],
    *,
    mpp: float,
    perinuclear_um: float = 2.5,
) -> dict[str, NDArray[np.int32]]:
    """The compartments :func:`senpath.measure.measure_cells` takes, from nuclei and grown cells.

    Returns
    -------
    dict of (Y, X) int32: ``nucleus``, ``cytoplasm`` (cell minus nucleus), ``cell``,
    ``perinuclear`` (cytoplasm within ``perinuclear_um`` of the nucleus), ``nucleus_perinuclear``.
    """
    nuc = np.asarray(nuclei, np.int32)
    cell = np.asarray(cells, np.int32)
    cyto = np.where(nuc == 0, cell, 0).astype(np.int32)
    near = ndi.distance_transform_edt(nuc == 0) * mpp <= perinuclear_um
    peri = np.where(near, cyto, 0).astype(np.int32)
    return {
        "nucleus": nuc,
        "cytoplasm": cyto,
        "cell": cell,
        "perinuclear": peri,
        "nucleus_perinuclear": np.where(nuc > 0, nuc, peri).astype(np.int32),
    }


def measure_paired_cells(
    compartments: dict[str, NDArray[np.int32]],
    concentrations: NDArray[np.floating],
    *,
    stain_names: Sequence[str],
    mpp: float,
    origin_um: tuple[float, float] = (0.0, 0.0),
) -> tuple[Any, Any]:
    """The per-cell table of cells grown from nuclei, and which of them are in the area range.

    :func:`senpath.measure.measure_cells` on the nuclei with :func:`paired_compartments`
    (``x_um``/``y_um``: the nucleus centroid); cells kept when their area lies in
    :data:`senpath.segment.whole_cell.CELL_AREA_RANGE_UM2`'s upper bound and their nucleus holds
    at least 20 µm².
    """
    from senpath.measure import measure_cells
    from senpath.segment.whole_cell import CELL_AREA_RANGE_UM2

    table = measure_cells(
        compartments["nucleus"], concentrations, stain_names=stain_names, mpp=mpp,
        origin_um=origin_um, compartments=compartments,
    )  # fmt: skip
    in_range = (table["nucleus_area_um2"] >= 20.0) & (
        table["cell_area_um2"] <= CELL_AREA_RANGE_UM2[1]
    )
    return table, in_range


class PairedNucleusSegmenter:
    """Cells grown from the nuclei of a paired, registered nuclear image (a segmenter whose
    objects are cells, for :mod:`senpath.tile_engine`).

    The nuclear frame is read once per process, resampled to the analysis grid and moved by the
    plan's registration; each tile's nuclei are thresholded at the whole frame's Otsu level.

    Parameters
    ----------
    path, channel : the nuclear image and its channel (see :func:`senpath.io.read_nuclear_image`).
    registration : the plan's registration record (:meth:`Registration.to_dict`).
    shape_px : (Y, X) of the analysis grid.
    mpp : the analysis pixel size (µm/px).
    max_distance_um : farthest a cell reaches from its nucleus (µm).
    """

    method = "paired_nuclei"
    objects = "cells"

    def __init__(
        self,
        path: str,
        *,
        channel: int | None,
        registration: dict[str, Any],
        shape_px: tuple[int, int],
        mpp: float,
        max_distance_um: float = 30.0,
    ) -> None:
        self.path, self.channel = path, channel
        self.registration = Registration.from_dict(registration)
        self.shape_px = (int(shape_px[0]), int(shape_px[1]))
        self.mpp, self.max_distance_um = float(mpp), max_distance_um
        self._aligned: NDArray[np.float32] | None = None
        self._threshold = 0.0

    def _frame(self) -> NDArray[np.float32]:
        if self._aligned is None:
            nuclear = load_nuclear_on_grid(self.path, channel=self.channel, shape_px=self.shape_px)
            self._aligned = align_nuclear(nuclear, self.registration, mpp=self.mpp)
            self._threshold = nuclear_threshold(self._aligned, mpp=self.mpp)
        return self._aligned

    def compartments(
        self, rgb: NDArray[np.uint8], *, mpp: float, box: Any
    ) -> dict[str, NDArray[np.int32]]:
        """Nucleus, cell and ring compartments of the tile ``box`` (analysis grid px)."""
        frame = self._frame()
        crop = frame[box.y0 : box.y1, box.x0 : box.x1]
        nuclei = segment_nuclei_fluorescence(crop, mpp=mpp, threshold=self._threshold)
        foreground = foreground_feature(rgb, mpp=mpp, method="total_od") > 0.035
        cells = grow_cells(nuclei, foreground, mpp=mpp, max_distance_um=self.max_distance_um)
        return paired_compartments(nuclei, cells, mpp=mpp)

    def segment(
        self,
        rgb: NDArray[np.uint8],
        *,
        mpp: float,
        concentrations: NDArray[np.float32] | None = None,
        box: Any = None,
    ) -> NDArray[np.int32]:
        """(Y, X) int32 cell labels of the tile ``box`` whose pixels ``rgb`` holds."""
        if box is None:
            raise ValueError("the paired-nucleus segmenter needs the tile's box (its place)")
        return self.compartments(rgb, mpp=mpp, box=box)["cell"]


def load_nuclear_on_grid(
    path: str | Path, *, channel: int | None, shape_px: tuple[int, int]
) -> NDArray[np.float32]:
    """The nuclear image read and resampled to ``shape_px`` (the brightfield's analysis grid).

    The nuclear frame covers the same field as the brightfield image, so it is resized to the
    analysis grid; a frame whose aspect ratio differs by more than 1 % is refused
    (:class:`RegistrationError`: not the same field, or cropped).
    """
    import cv2

    from senpath.io._nuclear import read_nuclear_image

    nuclear = read_nuclear_image(path, channel=channel)
    h, w = nuclear.shape
    if abs((w / h) / (shape_px[1] / shape_px[0]) - 1.0) > 0.01:
        raise RegistrationError(
            f"{path}: the nuclear image is {w} x {h} px, the brightfield image's field "
            f"{shape_px[1]} x {shape_px[0]} px at the analysis mpp: another aspect ratio, so not "
            "a frame of the same field"
        )
    if (h, w) != tuple(shape_px):
        return np.asarray(
            cv2.resize(nuclear, (shape_px[1], shape_px[0]), interpolation=cv2.INTER_AREA),
            np.float32,
        )
    return np.asarray(nuclear, np.float32)


#: Largest brightfield field registered whole (px at the analysis mpp): a camera frame, not a slide.
MAX_PAIRED_PIXELS = 64_000_000


def pair_nuclear_image(
    rgb: NDArray[np.uint8],
    path: str | Path,
    *,
    channel: int | None,
    mpp: float,
) -> dict[str, Any]:
    """Register a sample's nuclear image to its brightfield field (once per slide, in its plan).

    Parameters
    ----------
    rgb : (Y, X, 3) uint8, the whole brightfield field at the analysis mpp.
    path, channel : the nuclear image (sample sheet ``nuclear_image``, ``nuclear_channel``).
    mpp : analysis pixel size (µm/px).

    Returns
    -------
    dict
        ``path``, ``channel`` and ``registration`` (:meth:`Registration.to_dict`): what the
        segmenter needs and the provenance records.

    Raises
    ------
    RegistrationError
        One line naming the nuclear image: not the same field, too large, unreadable.
    """
    from senpath.io._nuclear import NuclearImageError

    shape_px = (int(rgb.shape[0]), int(rgb.shape[1]))
    try:
        nuclear = load_nuclear_on_grid(path, channel=channel, shape_px=shape_px)
    except NuclearImageError as exc:
        raise RegistrationError(str(exc)) from None
    registration = register_nuclear(nuclear, rgb, mpp=mpp, name=str(path))
    return {
        "path": str(Path(path).resolve()),
        "channel": channel,
        "registration": registration.to_dict(),
    }
