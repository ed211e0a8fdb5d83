"""Real annotated nucleus sets: loading, resampling to the network's resolution, targets, splits.

Every annotated image (MoNuSeg and CoNSeP H&E, DeepLIIF Ki67 IHC) is resampled to the network's
0.5 µm/px (:data:`NETWORK_MPP`); :func:`instance_targets` gives the foreground and distance targets
the network is trained on.

Splits (fixed, see :data:`MONUSEG_VALIDATION`, :data:`KI67_VALIDATION`): three MoNuSeg images, the
whole CoNSeP test split and two Ki67 tiles are never trained on.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

#: Physical resolution the network works at (µm/px).
NETWORK_MPP = 0.5
#: MoNuSeg and the DeepLIIF Ki67 tiles are 40x scans.
MONUSEG_MPP = 0.25
KI67_MPP = 0.25
#: The re-packed CoNSeP patches carry no scale. Their median nucleus diameter is 16.6 px against
#: 24.3 px for MoNuSeg at 0.25 µm/px, so about 0.37 µm/px; we use 0.38 (colorectal nuclei run large).
CONSEP_MPP = 0.38

#: MoNuSeg images held out for validation (lung, kidney, breast); never trained on.
MONUSEG_VALIDATION: tuple[str, ...] = (
    "TCGA-21-5786-01Z-00-DX1",
    "TCGA-B0-5698-01Z-00-DX1",
    "TCGA-E2-A1B5-01Z-00-DX1",
)
#: Ki67 IHC tiles held out for validation; the other four are trained on.
KI67_VALIDATION: tuple[str, ...] = ("Lung1", "6_2")


@dataclass
class AnnotatedImage:
    """One annotated image resampled to :data:`NETWORK_MPP`.

    Attributes
    ----------
    name : str
        Source and file stem, e.g. ``"monuseg/TCGA-21-5784-01Z-00-DX1"``.
    kind : str
        ``"he"`` (H&E source, re-rendered by recipe) or ``"ihc"`` (hematoxylin + DAB source).
    rgb : (Y, X, 3) uint8
    labels : (Y, X) int32
        Nucleus instances, 0 = background.
    mpp : float
        Resolution of ``rgb`` and ``labels`` (µm/px).
    """

    name: str
    kind: str
    rgb: NDArray[np.uint8]
    labels: NDArray[np.int32]
    mpp: float


# --------------------------------------------------------------------------- resampling


def resample_rgb(rgb: NDArray[np.uint8], shape: tuple[int, int]) -> NDArray[np.uint8]:
    """Resize an RGB image to ``shape`` (area averaging when shrinking, bilinear otherwise)."""
    import cv2

    if rgb.shape[:2] == tuple(shape):
        return rgb
    shrink = shape[0] < rgb.shape[0]
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return np.asarray(cv2.resize(rgb, (shape[1], shape[0]), interpolation=interp), np.uint8)


def resample_labels(labels: NDArray[np.integer], shape: tuple[int, int]) -> NDArray[np.int32]:
    """Nearest-neighbour resize of a label image to ``shape`` (pixel centres aligned)."""
    if labels.shape == tuple(shape):
        return labels.astype(np.int32, copy=False)
    ys = ((np.arange(shape[0]) + 0.5) * labels.shape[0] / shape[0]).astype(np.int64)
    xs = ((np.arange(shape[1]) + 0.5) * labels.shape[1] / shape[1]).astype(np.int64)
    ys = np.clip(ys, 0, labels.shape[0] - 1)
    xs = np.clip(xs, 0, labels.shape[1] - 1)
    return labels[ys[:, None], xs[None, :]].astype(np.int32)


def shape_at_mpp(shape: Sequence[int], mpp: float, target_mpp: float) -> tuple[int, int]:
    """Pixel shape ``(Y, X)`` of an image of ``shape`` at ``mpp`` once resampled to ``target_mpp``."""
    f = mpp / target_mpp
    return max(1, round(shape[0] * f)), max(1, round(shape[1] * f))


# --------------------------------------------------------------------------- targets


def instance_targets(
    labels: NDArray[np.integer],
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Foreground and normalised distance-to-boundary targets from an instance label image.

    Parameters
    ----------
    labels : (Y, X) int
        Nucleus instances, 0 = background.

    Returns
    -------
    foreground : (Y, X) float32
        1 inside nuclei, 0 elsewhere.
    distance : (Y, X) float32
        Euclidean distance to the nucleus edge divided by its maximum inside that nucleus (so every
        nucleus peaks at 1), 0 outside nuclei. Touching nuclei are separated because the distance is
        computed per instance.
    """
    from scipy import ndimage as ndi

    labels = np.asarray(labels)
    distance = np.zeros(labels.shape, np.float32)
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        sl = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in sl)
        mask = labels[sl] == i
        d = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
        m = d.max()
        if m > 0:
            distance[sl][mask] = (d[mask] / m).astype(np.float32)
    return (labels > 0).astype(np.float32), distance


def cell_regions(labels: NDArray[np.integer], *, mpp: float, cytoplasm_um: float = 3.0):
    """Cell label image: nuclei grown by ``cytoplasm_um`` µm without merging (cytoplasm proxy)."""
    from skimage.segmentation import expand_labels

    return expand_labels(labels, distance=cytoplasm_um / mpp).astype(np.int32)


# --------------------------------------------------------------------------- loading


def _read_rgb(path: Path) -> NDArray[np.uint8]:
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise OSError(f"cannot read image {path}")
    return np.asarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), np.uint8)


def _read_labels(path: Path) -> NDArray[np.int32]:
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        return tifffile.imread(path).astype(np.int32)
    import cv2

    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise OSError(f"cannot read label image {path}")
    return arr.astype(np.int32)


def _to_network(name: str, kind: str, rgb, labels, mpp: float) -> AnnotatedImage:
    shape = shape_at_mpp(rgb.shape, mpp, NETWORK_MPP)
    return AnnotatedImage(
        name, kind, resample_rgb(rgb, shape), resample_labels(labels, shape), NETWORK_MPP
    )


def load_monuseg(root: Path, *, split: str, native: bool = False) -> list[AnnotatedImage]:
    """MoNuSeg images (``split`` = ``"train"`` or ``"validation"``), resampled unless ``native``."""
    out = []
    folder = Path(root) / "monuseg_train"
    for img_path in sorted((folder / "images").glob("*.png")):
        held_out = img_path.stem in MONUSEG_VALIDATION
        if held_out != (split == "validation"):
            continue
        rgb = _read_rgb(img_path)
        labels = _read_labels(folder / "labels" / f"{img_path.stem}.tif")
        name = f"monuseg/{img_path.stem}"
        if native:
            out.append(AnnotatedImage(name, "he", rgb, labels, MONUSEG_MPP))
        else:
            out.append(_to_network(name, "he", rgb, labels, MONUSEG_MPP))
    return out


def load_consep(
    root: Path, *, split: str, limit: int | None = None, native: bool = False
) -> list[AnnotatedImage]:
    """CoNSeP patches of ``split`` (``"train"`` or ``"test"``); ``limit`` keeps an even subsample."""
    folder = Path(root) / "consep" / split
    paths = sorted((folder / "images").glob("*.jpg"))
    if limit is not None and limit < len(paths):
        paths = [paths[i] for i in np.linspace(0, len(paths) - 1, limit).round().astype(int)]
    out = []
    for img_path in paths:
        rgb = _read_rgb(img_path)
        labels = _read_labels(folder / "labels" / f"{img_path.stem}.png")
        name = f"consep_{split}/{img_path.stem}"
        if native:
            out.append(AnnotatedImage(name, "he", rgb, labels, CONSEP_MPP))
        else:
            out.append(_to_network(name, "he", rgb, labels, CONSEP_MPP))
    return out


def load_ki67(root: Path, *, split: str, native: bool = False) -> list[AnnotatedImage]:
    """DeepLIIF Ki67 IHC tiles (``split`` = ``"train"`` or ``"validation"``)."""
    folder = Path(root) / "ki67_ihc_tiles"
    out = []
    for img_path in sorted(folder.glob("*_ihc.png")):
        stem = img_path.name[: -len("_ihc.png")]
        if (stem in KI67_VALIDATION) != (split == "validation"):
            continue
        rgb = _read_rgb(img_path)
        labels = _read_labels(folder / f"{stem}_labels.tif")
        name = f"ki67/{stem}"
        if native:
            out.append(AnnotatedImage(name, "ihc", rgb, labels, KI67_MPP))
        else:
            out.append(_to_network(name, "ihc", rgb, labels, KI67_MPP))
    return out


def ki67_positive_ids(root: Path, stem: str) -> dict[int, int]:
    """Ki67 positivity per instance id of tile ``stem`` (1 = positive)."""
    path = Path(root) / "ki67_ihc_tiles" / f"{stem}_positive.json"
    return {int(k): int(v) for k, v in json.loads(path.read_text()).items()}
