"""Two registration methods for a pair of section pictures, each giving an affine map in µm.

Both return a ``(3, 3)`` matrix ``M`` that maps a point of the *moving* section, ``(x_um, y_um, 1)``
in its slide coordinates, onto the *reference* section's coordinates: ``p_ref = M @ p_moving``.

- :func:`register_simpleitk` (the default, chosen by ``benchmarks/bench_registration.py``):
  SimpleITK's multi-resolution registration with Mattes mutual information (stain differences are
  a non-linear intensity change), started from the centres of mass and a sweep of rotation angles
  (serial sections are laid on the glass at any angle), rigid then affine.
- :func:`register_phase_ecc`: scikit-image phase correlation (rotation from the log-polar Fourier
  magnitude, then translation) refined by OpenCV's enhanced correlation coefficient (ECC) maximiser.
  Independent of the first method (other metric, optimiser and start), so where the two disagree
  the registration is unsure (see :mod:`senpath.registration._quality`).

A method that cannot align the pair raises :class:`RegistrationError`.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np
from numpy.typing import ArrayLike, NDArray

from senpath.registration._image import SectionImage

#: Rotation angles (degrees) tried to start the SimpleITK optimiser.
SWEEP_DEG = tuple(range(0, 360, 15))


class RegistrationError(RuntimeError):
    """A registration method could not align two sections."""


def apply_affine(
    matrix: NDArray[Any], x_um: ArrayLike, y_um: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Map points ``(x_um, y_um)`` (shape ``(N,)`` each) by the ``(3, 3)`` affine ``matrix``."""
    x = np.asarray(x_um, dtype=np.float64)
    y = np.asarray(y_um, dtype=np.float64)
    return (
        matrix[0, 0] * x + matrix[0, 1] * y + matrix[0, 2],
        matrix[1, 0] * x + matrix[1, 1] * y + matrix[1, 2],
    )


def pixel_to_um(mpp: float) -> NDArray[np.float64]:
    """``(3, 3)`` map from pixel index ``(column, row)`` to slide µm (pixel centres)."""
    return np.array([[mpp, 0.0, 0.5 * mpp], [0.0, mpp, 0.5 * mpp], [0.0, 0.0, 1.0]])


def _centre_of_mass_um(image: SectionImage) -> tuple[float, float]:
    weights = image.od.astype(np.float64)
    total = weights.sum()
    if total <= 0:
        raise RegistrationError(f"{image.name or 'section'}: no tissue to register")
    rows, cols = np.indices(weights.shape)
    return (
        float((cols * weights).sum() / total + 0.5) * image.mpp,
        float((rows * weights).sum() / total + 0.5) * image.mpp,
    )


# --- SimpleITK -----------------------------------------------------------------------------------


def _sitk_image(image: SectionImage):  # type: ignore[no-untyped-def]
    import SimpleITK as sitk

    out = sitk.GetImageFromArray(image.od.astype(np.float32))
    out.SetSpacing((image.mpp, image.mpp))
    out.SetOrigin((0.5 * image.mpp, 0.5 * image.mpp))
    return out


def _sitk_method(iterations: int, seed: int, shrink: tuple[int, ...]):  # type: ignore[no-untyped-def]
    import SimpleITK as sitk

    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.5, seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-4, numberOfIterations=iterations, relaxationFactor=0.6
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(shrink))
    method.SetSmoothingSigmasPerLevel([max(0, s - 1) for s in shrink])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    return method


def _sitk_to_matrix(transform) -> NDArray[np.float64]:  # type: ignore[no-untyped-def]
    """SimpleITK maps reference (fixed) points to moving ones; return the moving-to-reference map."""
    a = np.asarray(transform.GetMatrix(), dtype=np.float64).reshape(2, 2)
    c = np.asarray(transform.GetCenter(), dtype=np.float64)
    t = np.asarray(transform.GetTranslation(), dtype=np.float64)
    forward = np.eye(3)
    forward[:2, :2] = a
    forward[:2, 2] = t + c - a @ c
    return np.asarray(np.linalg.inv(forward), dtype=np.float64)


def register_simpleitk(
    reference: SectionImage,
    moving: SectionImage,
    *,
    model: str = "affine",
    seed: int = 1,
    sweep_deg: tuple[int, ...] = SWEEP_DEG,
) -> NDArray[np.float64]:
    """Register ``moving`` onto ``reference`` with SimpleITK (Mattes mutual information).

    Parameters
    ----------
    reference, moving : SectionImage
        The two sections' pictures (any pixel sizes: SimpleITK works in µm).
    model : {"rigid", "affine"}
        Rigid (rotation + translation) or affine (also scale and shear: sections shrink and
        stretch differently when cut and mounted).
    seed : int
        Seed of the metric's random sampling (the result is deterministic for a seed).
    sweep_deg : tuple of int
        Start angles tried; the one with the best metric at a coarse scale starts the optimiser.

    Returns
    -------
    (3, 3) float64 ndarray
        Moving µm to reference µm.
    """
    import SimpleITK as sitk

    if model not in ("rigid", "affine"):
        raise ValueError(f"model={model!r}: use 'rigid' or 'affine'")
    fixed = _sitk_image(reference)
    mov = _sitk_image(moving)
    ref_c = _centre_of_mass_um(reference)
    mov_c = _centre_of_mass_um(moving)
    shift = (mov_c[0] - ref_c[0], mov_c[1] - ref_c[1])

    # coarse sweep of start angles: the metric at 4x shrink, no optimisation
    coarse = _sitk_method(0, seed, (1,))
    small_f = sitk.Shrink(sitk.SmoothingRecursiveGaussian(fixed, 2 * reference.mpp), [4, 4])
    small_m = sitk.Shrink(sitk.SmoothingRecursiveGaussian(mov, 2 * moving.mpp), [4, 4])
    best: tuple[float, float] | None = None
    for angle in sweep_deg:
        start = sitk.Euler2DTransform(ref_c, math.radians(angle), shift)
        coarse.SetInitialTransform(start, inPlace=False)
        try:
            value = coarse.MetricEvaluate(small_f, small_m)
        except RuntimeError:
            continue  # too little overlap at this angle
        if best is None or value < best[0]:
            best = (value, float(angle))
    if best is None:
        raise RegistrationError(f"{moving.name} to {reference.name}: no start angle overlaps")

    rigid = sitk.Euler2DTransform(ref_c, math.radians(best[1]), shift)
    method = _sitk_method(300, seed, (4, 2, 1))
    method.SetInitialTransform(rigid, inPlace=True)
    try:
        method.Execute(fixed, mov)
        if model == "rigid":
            return _sitk_to_matrix(rigid)
        affine = sitk.AffineTransform(2)
        affine.SetCenter(rigid.GetCenter())
        affine.SetMatrix(rigid.GetMatrix())
        affine.SetTranslation(rigid.GetTranslation())
        method = _sitk_method(300, seed, (2, 1))
        method.SetInitialTransform(affine, inPlace=True)
        method.Execute(fixed, mov)
    except RuntimeError as err:  # e.g. "All samples map outside moving image buffer"
        raise RegistrationError(
            f"{moving.name} to {reference.name}: {err}".splitlines()[0]
        ) from None
    return _sitk_to_matrix(affine)


# --- scikit-image phase correlation + OpenCV ECC ------------------------------------------------


def _common_canvas(
    a: NDArray[np.float32], b: NDArray[np.float32]
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    h = max(a.shape[0], b.shape[0])
    w = max(a.shape[1], b.shape[1])
    out = []
    for image in (a, b):
        canvas = np.zeros((h, w), dtype=np.float32)
        canvas[: image.shape[0], : image.shape[1]] = image
        out.append(canvas)
    return out[0], out[1]


def _rotation_candidates(ref: NDArray[np.float32], mov: NDArray[np.float32]) -> list[float]:
    """Rotation (degrees, counter-clockwise in image display) of ``mov`` relative to ``ref``,
    from the phase correlation of their polar Fourier magnitudes; candidates of both signs, 180° apart."""
    from skimage.filters import difference_of_gaussians, window
    from skimage.registration import phase_cross_correlation
    from skimage.transform import warp_polar

    size = max(ref.shape)
    spectra = []
    for image in (ref, mov):
        filtered = difference_of_gaussians(image, 1, 8) * window("hann", image.shape)
        spectrum = np.abs(np.fft.fftshift(np.fft.fft2(filtered)))
        spectra.append(warp_polar(spectrum, radius=size // 4, output_shape=(360, size // 4)))
    # the magnitude spectrum is symmetric: use its upper half (angles 0-180)
    shift, _, _ = phase_cross_correlation(spectra[0][:180], spectra[1][:180], normalization=None)
    # the sign convention of the polar axis is not worth trusting: the caller scores all four
    angle = float(shift[0])
    return [angle, -angle, angle + 180.0, 180.0 - angle]


def _ncc(a: NDArray[np.float32], b: NDArray[np.float32]) -> float:
    mask = (a > 0) | (b > 0)
    if mask.sum() < 10:
        return -1.0
    x = a[mask] - a[mask].mean()
    y = b[mask] - b[mask].mean()
    denom = math.sqrt(float((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / denom) if denom > 0 else -1.0


def register_phase_ecc(
    reference: SectionImage, moving: SectionImage, *, model: str = "affine"
) -> NDArray[np.float64]:
    """Register ``moving`` onto ``reference`` by phase correlation and ECC (scikit-image, OpenCV).

    Parameters
    ----------
    reference, moving : SectionImage
        The two sections' pictures; ``moving`` is resampled to the reference's pixel size.
    model : {"rigid", "affine"}
        ECC's motion model: Euclidean (rigid) or affine.

    Returns
    -------
    (3, 3) float64 ndarray
        Moving µm to reference µm.
    """
    from skimage.registration import phase_cross_correlation

    if model not in ("rigid", "affine"):
        raise ValueError(f"model={model!r}: use 'rigid' or 'affine'")
    mpp = reference.mpp
    mov_od = moving.od
    if abs(moving.mpp - mpp) > 1e-6 * mpp:
        scale = moving.mpp / mpp
        size = (max(1, round(mov_od.shape[1] * scale)), max(1, round(mov_od.shape[0] * scale)))
        mov_od = np.asarray(cv2.resize(mov_od, size, interpolation=cv2.INTER_AREA), np.float32)
    # a canvas with room to turn: the sections sit ``pad`` px in from its top-left corner
    pad = int(math.ceil(0.25 * max(*reference.od.shape, *mov_od.shape)))
    ref, mov = _common_canvas(reference.od, mov_od)
    ref = np.pad(ref, pad)
    mov = np.pad(mov, pad)
    h, w = ref.shape

    def start_for(
        angle: float, a: NDArray[np.float32], b: NDArray[np.float32]
    ) -> tuple[float, NDArray[np.float64]]:
        """NCC and moving-to-reference pixel map for a start angle (translation by phase correlation)."""
        hh, ww = a.shape
        c = ((ww - 1) / 2.0, (hh - 1) / 2.0)
        rotate = np.vstack([cv2.getRotationMatrix2D(c, -angle, 1.0), [0, 0, 1]])
        turned = np.asarray(
            cv2.warpAffine(b, rotate[:2], (ww, hh), flags=cv2.INTER_LINEAR), np.float32
        )
        shift, _, _ = phase_cross_correlation(a, turned, normalization=None, upsample_factor=4)
        move = np.array([[1, 0, shift[1]], [0, 1, shift[0]], [0, 0, 1.0]])
        mov_to_ref = move @ rotate
        aligned = np.asarray(
            cv2.warpAffine(b, mov_to_ref[:2], (ww, hh), flags=cv2.INTER_LINEAR), np.float32
        )
        return _ncc(a, aligned), mov_to_ref

    # rotation: the polar Fourier estimate and a 15° sweep, scored by NCC after phase correlation
    # on a small canvas; the best angle is then placed at full resolution
    factor = max(1, int(math.ceil(max(h, w) / 256)))
    small = (max(8, w // factor), max(8, h // factor))
    ref_s = np.asarray(cv2.resize(ref, small, interpolation=cv2.INTER_AREA), np.float32)
    mov_s = np.asarray(cv2.resize(mov, small, interpolation=cv2.INTER_AREA), np.float32)

    def score(angle: float) -> float:
        return start_for(angle, ref_s, mov_s)[0]

    angles = [*_rotation_candidates(ref_s, mov_s), *map(float, range(0, 360, 15))]
    coarse = sorted(angles, key=score, reverse=True)[:3]
    # then 2.5° steps around the three best, the winner placed at full resolution
    fine = [a + d for a in coarse for d in np.arange(-7.5, 7.6, 2.5)]
    best = max(
        (start_for(float(a), ref, mov) for a in sorted(fine, key=score, reverse=True)[:2]),
        key=lambda found: found[0],
    )

    # ECC refinement, coarse to fine; its warp maps reference pixels to moving pixels
    warp = np.linalg.inv(best[1])[:2].astype(np.float32)
    motion = cv2.MOTION_AFFINE if model == "affine" else cv2.MOTION_EUCLIDEAN
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 200, 1e-6)
    # only the reference picture counts, not the padding (a frame both canvases share would pull
    # the warp towards the identity)
    valid = np.zeros((h, w), np.uint8)
    valid[pad : pad + reference.od.shape[0], pad : pad + reference.od.shape[1]] = 1
    for factor in (4, 2, 1):
        small = (max(8, w // factor), max(8, h // factor))
        mask_s = np.asarray(cv2.resize(valid, small, interpolation=cv2.INTER_NEAREST), np.uint8)
        ref_s = np.asarray(cv2.resize(ref, small, interpolation=cv2.INTER_AREA), np.float32)
        mov_s = np.asarray(cv2.resize(mov, small, interpolation=cv2.INTER_AREA), np.float32)
        sx, sy = small[0] / w, small[1] / h
        down = np.array([[sx, 0, 0], [0, sy, 0], [0, 0, 1.0]])
        w3 = np.vstack([warp, [0, 0, 1]]).astype(np.float64)
        scaled = (down @ w3 @ np.linalg.inv(down))[:2].astype(np.float32)
        try:
            _, found = cv2.findTransformECC(ref_s, mov_s, scaled, motion, criteria, mask_s, 5)  # type: ignore[call-overload]
            scaled = np.asarray(found, dtype=np.float32)
        except cv2.error as err:
            raise RegistrationError(
                f"{moving.name} to {reference.name}: ECC did not converge ({str(err).strip().splitlines()[-1]})"
            ) from None
        s3 = np.vstack([scaled, [0, 0, 1]]).astype(np.float64)
        warp = (np.linalg.inv(down) @ s3 @ down)[:2].astype(np.float32)
    ref_to_mov_px = np.vstack([warp, [0, 0, 1]]).astype(np.float64)
    unpad = np.array([[1.0, 0.0, -pad], [0.0, 1.0, -pad], [0.0, 0.0, 1.0]])
    to_um = pixel_to_um(mpp) @ unpad
    ref_to_mov_um = to_um @ ref_to_mov_px @ np.linalg.inv(to_um)
    return np.linalg.inv(ref_to_mov_um)
