"""Registration of a paired nuclear fluorescence frame (DAPI/Hoechst) to its brightfield photo.

A similarity transform: shift, rotation and scale (another camera, a turned adaptor). The shift
comes from phase correlation (``skimage.registration.phase_cross_correlation``), rotation and scale
from the phase correlation of log-polar Fourier magnitudes (a sweep of start turns where that
misses), and SimpleITK refines the similarity (correlation metric, three resolutions). The channels
matched are the fluorescence itself and the nucleus-scale blobs of the brightfield's neutral OD
(:func:`senpath.segment.whole_cell.nucleus_blobs`). Used by :mod:`senpath.segment.paired_nuclei`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi

from senpath.segment.whole_cell import nucleus_blobs


class RegistrationError(ValueError):
    """The nuclear image does not register to the brightfield image (one line saying why)."""


@dataclass(frozen=True)
class Registration:
    """The similarity transform (shift, rotation, scale) that maps the nuclear image onto the
    brightfield grid.

    A point ``q`` of the nuclear image (y, x µm: pixel index times mpp) lies at
    ``c + scale * R(rotation_deg) (q - c) + shift_um`` in the brightfield image, ``c`` the frame's
    centre, ``R(a) = [[cos a, -sin a], [sin a, cos a]]`` on (y, x) vectors (counter-clockwise as
    displayed, y down).

    Attributes
    ----------
    shift_um : (dy, dx) µm; with no rotation or scale, a nucleus at (y, x) in the nuclear image lies
        at (y + dy, x + dx) in the brightfield.
    correlation : Pearson r of the two registration channels after alignment (1: identical).
    residual : phase-correlation error of ``skimage`` for the initial translation (normalised RMS
        error, 0-1; lower is better).
    rotation_deg : degrees the nuclear image is turned by to lie on the brightfield.
    scale : factor it is magnified by (1: same pixel size).
    centre_um : (y, x) µm, the centre ``c`` of the rotation and scale.
    """

    shift_um: tuple[float, float]
    correlation: float
    residual: float
    rotation_deg: float = 0.0
    scale: float = 1.0
    centre_um: tuple[float, float] = (0.0, 0.0)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready record (for the provenance)."""
        return {
            "method": "phase correlation, then similarity (SimpleITK, correlation metric)",
            "shift_um": [round(v, 3) for v in self.shift_um],
            "rotation_deg": round(self.rotation_deg, 3),
            "scale": round(self.scale, 5),
            "centre_um": [round(v, 3) for v in self.centre_um],
            "correlation": round(self.correlation, 4),
            "residual": round(self.residual, 4),
        }

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> Registration:
        """The registration of a :meth:`to_dict` record (a translation-only one from before 0.1)."""
        shift = record["shift_um"]
        centre = record.get("centre_um", (0.0, 0.0))
        return cls(
            (float(shift[0]), float(shift[1])),
            float(record.get("correlation", float("nan"))),
            float(record.get("residual", float("nan"))),
            float(record.get("rotation_deg", 0.0)),
            float(record.get("scale", 1.0)),
            (float(centre[0]), float(centre[1])),
        )

    def points_to_brightfield(self, points_um: NDArray[np.floating]) -> NDArray[np.float64]:
        """(N, 2) (y, x) µm of the nuclear image mapped onto the brightfield (same units)."""
        c = np.asarray(self.centre_um, float)
        p = np.asarray(points_um, float).reshape(-1, 2)
        return c + (p - c) @ _turn(self.rotation_deg, self.scale).T + np.asarray(self.shift_um)


def _turn(rotation_deg: float, scale: float) -> NDArray[np.float64]:
    """``scale * R(rotation_deg)`` on (y, x) vectors."""
    a = math.radians(rotation_deg)
    return scale * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])


def _normalised(image: NDArray[np.floating]) -> NDArray[np.float32]:
    img = np.asarray(image, np.float32)
    return (img - img.mean()) / max(float(img.std()), 1e-9)


#: Start turns (degrees) tried when neither the translation nor the log-polar estimate registers well
#: (the optimiser converges from within about 4 degrees), and the correlation below which they are.
SWEEP_DEG = (-10.0, -5.0, 5.0, 10.0)
SWEEP_BELOW_CORRELATION = 0.4
#: How much better (Pearson r) the similarity must correlate than the shift alone to be kept.
MIN_SIMILARITY_GAIN = 0.02


def _rotation_scale(
    fixed: NDArray[np.float32], moving: NDArray[np.float32], *, mpp: float
) -> tuple[float, float]:
    """Rotation (degrees) and scale of ``moving``'s content relative to ``fixed``'s, from the phase
    correlation of their log-polar Fourier magnitudes (translation does not change a magnitude; see
    scikit-image's "Using Polar and Log-Polar Transformations for Registration")."""
    from numpy.fft import fft2, fftshift
    from skimage.filters import difference_of_gaussians, window
    from skimage.registration import phase_cross_correlation
    from skimage.transform import warp_polar

    spectra = []
    for img in (fixed, moving):
        # nucleus-scale band (2-12 µm): the lattice of nuclei, not noise or illumination
        band = difference_of_gaussians(img, 2.0 / mpp, 12.0 / mpp) * window("hann", img.shape)
        spectra.append(np.abs(fftshift(fft2(band))))
    radius = min(fixed.shape) // 4
    polar = [
        warp_polar(x, radius=radius, output_shape=(360, 360), scaling="log", order=1)[:180]
        for x in spectra
    ]
    shift, _, _ = phase_cross_correlation(
        polar[0], polar[1], upsample_factor=20, normalization=None
    )
    return float(shift[0]), float(np.exp(shift[1] * np.log(radius) / 360.0))


def _similarity(
    fixed: NDArray[np.float32],
    moving: NDArray[np.float32],
    *,
    mpp: float,
    start: Registration,
) -> Registration:
    """A similarity fit of ``moving`` (nuclear) onto ``fixed`` (brightfield blobs) by SimpleITK
    (correlation metric, three resolutions), from ``start``; raises :class:`RegistrationError`
    when it fails."""
    import SimpleITK as sitk

    def image(a: NDArray[np.float32]) -> Any:
        out = sitk.GetImageFromArray(np.ascontiguousarray(a, np.float32))
        out.SetSpacing((mpp, mpp))
        return out

    swap = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]], float)
    # the start as SimpleITK's brightfield-to-nuclear map in (x, y): the inverse of ``start``
    forward = np.eye(3)
    forward[:2, :2] = _turn(start.rotation_deg, start.scale)
    centre = np.asarray(start.centre_um, float)
    forward[:2, 2] = centre - forward[:2, :2] @ centre + np.asarray(start.shift_um)
    to_nuclear = swap @ np.linalg.inv(forward) @ swap
    centre_xy = (float(centre[1]), float(centre[0]))
    transform = sitk.Similarity2DTransform()
    transform.SetCenter(centre_xy)
    transform.SetScale(1.0 / start.scale)
    # R(a) on (y, x) is a turn by -a on (x, y)
    transform.SetAngle(math.radians(start.rotation_deg))
    c_xy = np.asarray(centre_xy)
    translation = to_nuclear[:2, 2] + to_nuclear[:2, :2] @ c_xy - c_xy
    transform.SetTranslation((float(translation[0]), float(translation[1])))

    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsCorrelation()
    method.SetMetricSamplingStrategy(method.REGULAR)
    method.SetMetricSamplingPercentage(0.25)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-4, numberOfIterations=200, relaxationFactor=0.6
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([4, 2, 1])
    method.SetSmoothingSigmasPerLevel([2.0, 1.0, 0.0])
    method.SetInitialTransform(transform, inPlace=True)
    try:
        method.Execute(image(fixed), image(moving))
    except RuntimeError as exc:  # e.g. "All samples map outside moving image buffer"
        raise RegistrationError(str(exc).strip().splitlines()[-1]) from None
    # back to the nuclear-to-brightfield map in (y, x)
    a_xy = np.asarray(transform.GetMatrix(), float).reshape(2, 2)
    t_xy = np.asarray(transform.GetTranslation(), float)
    fit = np.eye(3)
    fit[:2, :2] = a_xy
    fit[:2, 2] = t_xy + c_xy - a_xy @ c_xy
    m_full = swap @ np.linalg.inv(fit) @ swap
    m = m_full[:2, :2]
    moved_centre = m @ centre + m_full[:2, 2]
    dy, dx = (float(v) for v in moved_centre - centre)
    return Registration(
        (dy, dx), float("nan"), start.residual,
        float(math.degrees(math.atan2(m[1, 0], m[0, 0]))),
        float(math.sqrt(abs(np.linalg.det(m)))), start.centre_um,
    )  # fmt: skip


def register_nuclear(
    nuclear: NDArray[np.number],
    rgb: NDArray[np.uint8],
    *,
    mpp: float,
    max_shift_um: float = 60.0,
    max_rotation_deg: float = 12.0,
    max_scale_change: float = 0.08,
    min_correlation: float = 0.25,
    name: str = "nuclear image",
) -> Registration:
    """Register a nuclear fluorescence image to a brightfield image of the same field (similarity:
    shift, rotation, scale).

    The translation comes first from phase correlation
    (``skimage.registration.phase_cross_correlation``); a similarity transform is then fitted with
    SimpleITK (correlation metric, three resolutions, a few start angles), and kept only when it
    correlates better than the translation alone.

    Parameters
    ----------
    nuclear : (Y, X) fluorescence intensity (any numeric type), on the brightfield's pixel grid.
    rgb : (Y, X, 3) uint8 brightfield image at ``mpp`` µm/px.
    mpp : pixel size in µm/px (both images).
    max_shift_um : a larger shift is refused (more than stage play: another field).
    max_rotation_deg, max_scale_change : a larger turn or relative change of scale is refused (the
        fit is not trusted beyond what its start angles cover).
    min_correlation : least Pearson r of the aligned channels (synthetic pairs: 0.3-0.7 when
        matched, under 0.13 when mismatched, also with the similarity's extra freedom; a wrong fit
        of a field whose brightfield channel is weak reached 0.23).
    name : how messages name the nuclear image (its path).

    Returns
    -------
    Registration

    Raises
    ------
    RegistrationError
        When the shapes differ, the transform is out of bounds or the aligned images do not
        correlate: one line naming ``name``, the figures and what to check.
    """
    from skimage.registration import phase_cross_correlation

    if nuclear.shape != rgb.shape[:2]:
        raise RegistrationError(
            f"{name}: is {nuclear.shape[1]} x {nuclear.shape[0]} px, the brightfield image "
            f"{rgb.shape[1]} x {rgb.shape[0]} px: give the nuclear frame of the same field, same "
            "camera and binning"
        )
    sigma = 1.0 / mpp
    moving = _normalised(ndi.gaussian_filter(np.asarray(nuclear, np.float32), sigma))
    fixed = _normalised(ndi.gaussian_filter(nucleus_blobs(rgb, mpp=mpp), sigma))
    shift, error, _ = phase_cross_correlation(fixed, moving, upsample_factor=10, normalization=None)
    centre = ((fixed.shape[0] - 1) / 2.0 * mpp, (fixed.shape[1] - 1) / 2.0 * mpp)
    translation = Registration(
        (float(shift[0]) * mpp, float(shift[1]) * mpp), float("nan"), float(error), 0.0, 1.0, centre
    )
    candidates = [(_aligned_correlation(moving, fixed, translation, mpp=mpp), translation)]

    def refine(turn_deg: float, scale: float) -> None:
        """Undo a turn and scale, find the shift by phase correlation, refine; keep the fit."""
        undone = Registration((0.0, 0.0), float("nan"), 0.0, turn_deg, scale, centre)
        turned = align_nuclear(moving, undone, mpp=mpp)
        s2, _, _ = phase_cross_correlation(fixed, turned, upsample_factor=10, normalization=None)
        start = Registration(
            (float(s2[0]) * mpp, float(s2[1]) * mpp), float("nan"), float(error), turn_deg, scale,
            centre,
        )  # fmt: skip
        try:
            fit = _similarity(fixed, moving, mpp=mpp, start=start)
        except RegistrationError:
            return
        candidates.append((_aligned_correlation(moving, fixed, fit, mpp=mpp), fit))

    refine(0.0, 1.0)
    # a turned or rescaled frame: its rotation and scale from the log-polar spectra first ...
    turn, scale = _rotation_scale(fixed, moving, mpp=mpp)
    if abs(turn) <= max_rotation_deg and abs(1.0 / scale - 1.0) <= max_scale_change:
        refine(-turn, 1.0 / scale)
    # ... and where that estimate misses (measured on synthetic fields: 1 in 10), a sweep of turns
    if max(c[0] for c in candidates if np.isfinite(c[0])) < SWEEP_BELOW_CORRELATION:
        for angle in SWEEP_DEG:
            refine(angle, 1.0)
    r, best = max(candidates, key=lambda c: c[0] if np.isfinite(c[0]) else -np.inf)
    # Occam: the shift alone unless the similarity correlates clearly better (on a weak channel
    # the extra freedom fits noise: a plain shift drifted 1.4 µm that way on a synthetic field)
    if best is not translation and np.isfinite(candidates[0][0]):
        if r < candidates[0][0] + MIN_SIMILARITY_GAIN:
            r, best = candidates[0]
    dy, dx = best.shift_um
    if (
        not (abs(dy) <= max_shift_um and abs(dx) <= max_shift_um)
        or not abs(best.rotation_deg) <= max_rotation_deg
        or not abs(best.scale - 1.0) <= max_scale_change
        or not r >= min_correlation
    ):
        raise RegistrationError(
            f"{name}: does not register to the brightfield image (shift {dy:+.1f}, {dx:+.1f} µm, "
            f"rotation {best.rotation_deg:+.1f}°, scale {best.scale:.3f}, correlation {r:.2f} "
            f"after alignment; needed |shift| <= {max_shift_um:g} µm, |rotation| <= "
            f"{max_rotation_deg:g}°, scale within {max_scale_change:g} of 1 and correlation >= "
            f"{min_correlation:g}): check that it is the nuclear frame of the same field"
        )
    return Registration(best.shift_um, r, float(error), best.rotation_deg, best.scale, centre)


def _aligned_correlation(
    moving: NDArray[np.float32], fixed: NDArray[np.float32], reg: Registration, *, mpp: float
) -> float:
    """Pearson r of ``moving`` aligned by ``reg`` and ``fixed``, over their overlap."""
    aligned = align_nuclear(moving, reg, mpp=mpp)
    overlap = align_nuclear(np.ones_like(moving), reg, mpp=mpp, order=0) > 0
    if overlap.sum() <= 16:
        return float("nan")
    return float(np.corrcoef(aligned[overlap], fixed[overlap])[0, 1])


def align_nuclear(
    nuclear: NDArray[np.number], registration: Registration, *, mpp: float, order: int = 1
) -> NDArray[np.float32]:
    """``nuclear`` moved onto the brightfield grid by ``registration`` (linear interpolation, 0
    outside the frame)."""
    image = np.asarray(nuclear, np.float32)
    if registration.rotation_deg == 0.0 and registration.scale == 1.0:
        dy, dx = registration.shift_um
        return ndi.shift(image, (dy / mpp, dx / mpp), order=order, mode="constant", cval=0.0)
    # brightfield pixel p shows nuclear point c + M^-1 (p - c - shift), in pixel units
    inverse = np.linalg.inv(_turn(registration.rotation_deg, registration.scale))
    centre = np.asarray(registration.centre_um, float) / mpp
    shift = np.asarray(registration.shift_um, float) / mpp
    return np.asarray(
        ndi.affine_transform(
            image, inverse, offset=centre - inverse @ (centre + shift), order=order,
            mode="constant", cval=0.0,
        ),
        np.float32,
    )  # fmt: skip
