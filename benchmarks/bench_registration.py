"""Which registration library for serial sections? Residual error (µm) and time per method.

Cases (each: a reference section and a moving section related by a known map):

- ``synth-*``: synthetic serial sections (:func:`senpath.registration.synthetic.serial_section_pair`),
  SA-β-gal/NFR reference and Ki67 DAB/hematoxylin moving section, every stain turned 6° from the
  pipeline's vectors, the moving section resampled through a known affine (rotation, ±2-3 % scale,
  shear, shift) plus a smooth non-rigid displacement of ~10 µm; the error is measured at the truth
  cell centroids on the reference tissue.
- ``real-*``: a real image registered to a transformed, re-stained copy of itself (stains turned
  8°, 15 % paler): the Aperio H&E ``slides/CMU-1-Small-Region.svs`` and a DeepLIIF Ki67 IHC ROI
  from ``/work/shared/data`` (skipped when absent); the error is measured on a 50 µm lattice of
  points on the tissue. Real *adjacent* sections with different stains were not available.

Methods: SimpleITK (Mattes MI, rotation sweep, rigid and rigid→affine), scikit-image phase
correlation + OpenCV ECC (affine), and itk-elastix (rigid→affine, and rigid→affine→B-spline) when
installed. Run::

    PYTHONPATH=. python benchmarks/bench_registration.py [--quick]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from senpath.registration import (
    SectionImage,
    apply_affine,
    register_phase_ecc,
    register_simpleitk,
    section_image_from_rgb,
)
from senpath.registration.synthetic import (
    KnownTransform,
    affine_about,
    restain,
    serial_section_pair,
    turned_vector,
    warp_into_moving,
)
from senpath.stain import StainSet

DATA = Path("/work/shared/data")

# a method returns a function mapping reference µm points to moving µm points
RefToMoving = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def _from_matrix(matrix: np.ndarray) -> RefToMoving:
    inverse = np.linalg.inv(matrix)
    return lambda x, y: apply_affine(inverse, x, y)


def sitk_rigid(ref: SectionImage, mov: SectionImage) -> RefToMoving:
    return _from_matrix(register_simpleitk(ref, mov, model="rigid"))


def sitk_affine(ref: SectionImage, mov: SectionImage) -> RefToMoving:
    return _from_matrix(register_simpleitk(ref, mov, model="affine"))


def phase_ecc_affine(ref: SectionImage, mov: SectionImage) -> RefToMoving:
    return _from_matrix(register_phase_ecc(ref, mov, model="affine"))


def _elastix(maps: tuple[str, ...]) -> Callable[[SectionImage, SectionImage], RefToMoving]:
    def run(ref: SectionImage, mov: SectionImage) -> RefToMoving:
        import itk

        # one thread: on a shared 2-core machine ITK's thread pool thrashes
        itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(1)

        def image(pic: SectionImage):  # type: ignore[no-untyped-def]
            out = itk.GetImageFromArray(np.ascontiguousarray(pic.od, dtype=np.float32))
            out.SetSpacing([pic.mpp, pic.mpp])
            out.SetOrigin([pic.mpp / 2, pic.mpp / 2])
            return out

        fixed, moving = image(ref), image(mov)
        params = itk.ParameterObject.New()
        for name in maps:
            pmap = params.GetDefaultParameterMap(name)
            if name == "rigid":
                pmap["AutomaticTransformInitialization"] = ["true"]
                pmap["AutomaticTransformInitializationMethod"] = ["CenterOfGravity"]
            params.AddParameterMap(pmap)
        # elastix and transformix write their files (transformix: deformationField.nii) into
        # their output directory, the working directory unless told: a scratch folder instead
        with tempfile.TemporaryDirectory(prefix="senpath_elastix_") as scratch:
            _, result = itk.elastix_registration_method(
                fixed, moving, parameter_object=params, log_to_console=False,
                output_directory=scratch,
            )  # fmt: skip
            field = itk.GetArrayFromImage(
                itk.transformix_deformation_field(moving, result, output_directory=scratch)
            )

        def to_moving(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            j = np.clip((x / ref.mpp).astype(int), 0, field.shape[1] - 1)
            i = np.clip((y / ref.mpp).astype(int), 0, field.shape[0] - 1)
            return x + field[i, j, 0], y + field[i, j, 1]

        return to_moving

    return run


def methods() -> dict[str, Callable[[SectionImage, SectionImage], RefToMoving]]:
    found: dict[str, Callable[[SectionImage, SectionImage], RefToMoving]] = {
        "simpleitk rigid": sitk_rigid,
        "simpleitk affine (default)": sitk_affine,
        "skimage phase + ECC affine": phase_ecc_affine,
    }
    try:
        import itk  # noqa: F401

        found["elastix rigid+affine"] = _elastix(("rigid", "affine"))
        found["elastix rigid+affine+bspline"] = _elastix(("rigid", "affine", "bspline"))
    except ImportError:
        print("itk-elastix not installed: its rows are left out", file=sys.stderr)
    return found


def synthetic_cases(quick: bool):  # type: ignore[no-untyped-def]
    mpp, shape = 4.0, (600, 600)
    centre = (shape[1] * mpp / 2, shape[0] * mpp / 2)
    specs = [(8.0, 5), (-25.0, 11), (100.0, 13)] if not quick else [(-25.0, 11)]
    for rotation, seed in specs:
        affine = affine_about(
            centre, rotation_deg=rotation, scale=(1.03, 0.98), shear=0.02, shift_um=(150.0, -100.0)
        )
        transform = KnownTransform(affine, nonrigid_um=10.0, seed=seed)
        pair = serial_section_pair(transform=transform, shape=shape, mpp=mpp, seed=seed)
        ref = section_image_from_rgb(pair.reference_rgb, mpp=mpp, target_mpp=8.0, name="ref")
        mov = section_image_from_rgb(pair.moving_rgb, mpp=mpp, target_mpp=8.0, name="mov")
        if ref.tissue.mean() < 0.1:
            print(f"seed {seed}: {ref.tissue.mean():.0%} tissue, case left out", file=sys.stderr)
            continue
        cells = pair.reference_cells
        x, y = cells["x_um"].to_numpy(), cells["y_um"].to_numpy()
        tx, ty = transform.to_moving(x, y)
        keep = (tx >= 0) & (tx < shape[1] * mpp) & (ty >= 0) & (ty < shape[0] * mpp)
        yield f"synth rot {rotation:+.0f}°", ref, mov, x[keep], y[keep], transform


def _real_rgb(path: Path) -> tuple[np.ndarray, float] | None:
    if not path.is_file():
        return None
    if path.suffix == ".svs":
        import tifffile

        with tifffile.TiffFile(path) as tif:
            return np.asarray(tif.pages[0].asarray())[..., :3], 0.499
    import cv2

    return cv2.imread(str(path))[..., ::-1].copy(), 0.25


def real_cases(quick: bool):  # type: ignore[no-untyped-def]
    cases = [
        (DATA / "slides/CMU-1-Small-Region.svs", ("hematoxylin", "eosin")),
        (DATA / "ki67_ihc_rois/ROI_1.png", ("hematoxylin", "dab")),
    ]
    for path, stain_names in cases[:1] if quick else cases:
        loaded = _real_rgb(path)
        if loaded is None:
            print(f"{path}: not found, case left out", file=sys.stderr)
            continue
        rgb, mpp = loaded
        h, w = rgb.shape[:2]
        centre = (w * mpp / 2, h * mpp / 2)
        affine = affine_about(
            centre,
            rotation_deg=12.0,
            scale=(1.02, 0.985),
            shear=0.015,
            shift_um=(0.04 * w * mpp, -0.03 * h * mpp),
        )
        transform = KnownTransform(affine, nonrigid_um=0.004 * w * mpp, wavelength_um=0.8 * w * mpp)
        rng = np.random.default_rng(5)
        stains = StainSet.from_names(stain_names)
        new = np.asarray([turned_vector(v, 8.0, rng) for v in stains.vectors])
        restained = restain(rgb, stains=stains, new_vectors=new, i0=240.0, gain=0.85)
        moving_rgb = warp_into_moving(
            restained,
            mpp=mpp,
            origin_um=(0.0, 0.0),
            shape=(h, w),
            transform=transform,
            fill=(240.0, 240.0, 240.0),
        )
        ref = section_image_from_rgb(rgb, mpp=mpp, name=path.name)
        mov = section_image_from_rgb(moving_rgb, mpp=mpp, name=path.name + " moved")
        # landmarks: a 50 µm lattice on the reference tissue that the moving copy shows
        step = 50.0
        gx, gy = np.meshgrid(np.arange(step / 2, w * mpp, step), np.arange(step / 2, h * mpp, step))
        gx, gy = gx.ravel(), gy.ravel()
        on = ref.tissue[
            np.clip((gy / ref.mpp).astype(int), 0, ref.tissue.shape[0] - 1),
            np.clip((gx / ref.mpp).astype(int), 0, ref.tissue.shape[1] - 1),
        ]
        tx, ty = transform.to_moving(gx, gy)
        keep = on & (tx >= 0) & (tx < w * mpp) & (ty >= 0) & (ty < h * mpp)
        yield f"real {path.stem[:18]}", ref, mov, gx[keep], gy[keep], transform


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one synthetic and one real case")
    args = parser.parse_args()
    rows = []
    runners = methods()
    for case in [*synthetic_cases(args.quick), *real_cases(args.quick)]:
        name, ref, mov, x, y, transform = case
        true_x, true_y = transform.to_moving(x, y)
        for method, run in runners.items():
            start = time.perf_counter()
            try:
                to_moving = run(ref, mov)
                seconds = time.perf_counter() - start
                ex, ey = to_moving(x, y)
                error = np.hypot(ex - true_x, ey - true_y)
                rows.append(
                    (name, method, error.mean(), np.percentile(error, 95), seconds, len(x), ref.mpp)
                )
            except Exception as exc:  # a method that fails is a result too
                rows.append(
                    (name, method, math.nan, math.nan, time.perf_counter() - start, len(x), ref.mpp)
                )
                print(f"{name} / {method}: failed: {str(exc).splitlines()[0]}", file=sys.stderr)
            print(
                f"{rows[-1][0]:<24} {rows[-1][1]:<30} {rows[-1][2]:8.1f} {rows[-1][3]:8.1f} {rows[-1][4]:7.2f}",
                file=sys.stderr,
            )
    print(
        f"\n{'case':<24} {'method':<30} {'mean µm':>8} {'p95 µm':>8} {'time s':>7} {'points':>7} {'µm/px':>6}"
    )
    for name, method, mean, p95, seconds, n, mpp in rows:
        print(f"{name:<24} {method:<30} {mean:8.1f} {p95:8.1f} {seconds:7.2f} {n:7d} {mpp:6.2f}")
    print("\nper method over all cases (median of case means, worst case p95):")
    for method in runners:
        mine = [r for r in rows if r[1] == method]
        means = np.array([r[2] for r in mine])
        print(
            f"  {method:<30} median mean {np.nanmedian(means):6.1f} µm, worst p95 "
            f"{np.nanmax([r[3] for r in mine]) if not np.isnan(means).all() else math.nan:7.1f} µm, "
            f"failed {int(np.isnan(means).sum())}/{len(mine)}, median time {np.median([r[4] for r in mine]):.2f} s"
        )


if __name__ == "__main__":
    main()
