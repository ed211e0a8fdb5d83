"""Score nucleus segmentation against instance annotations (F1 at IoU 0.5, AJI, PQ).

Metrics come from the field's reference implementations: ``stardist.matching`` (F1, precision,
recall and panoptic quality at IoU 0.5) and ``cellseg_metrics.aggregated_jaccard_index`` (AJI).
Both are optional dependencies (``pip install senpath[metrics]``).

Two averages are reported, and they differ: *pooled* counts every nucleus of every image together
(large images weigh more), *mean* averages the per-image scores. AJI is only given per image and as a
mean, because the reference function scores one image at a time.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    import pandas as pd

    from senpath.segment.predict import NucleusSegmenter

#: Image suffixes :func:`evaluate_folder` reads.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


@dataclass
class Evaluation:
    """Scores of a set of images.

    Attributes
    ----------
    per_image : pandas.DataFrame
        One row per image: ``image, n_true, n_pred, tp, fp, fn, precision, recall, f1, pq, aji``.
    pooled : dict
        ``precision, recall, f1, pq`` over all nuclei of all images counted together.
    mean : dict
        Per-image scores averaged (``precision, recall, f1, pq, aji``).
    """

    per_image: pd.DataFrame
    pooled: dict[str, float] = field(default_factory=dict)
    mean: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "pooled": self.pooled,
            "mean": self.mean,
            "per_image": self.per_image.to_dict(orient="records"),
        }


def score_image(true: NDArray[np.integer], pred: NDArray[np.integer]) -> dict[str, float]:
    """Scores of one image (IoU 0.5 matching), see :class:`Evaluation`."""
    from cellseg_metrics import aggregated_jaccard_index
    from stardist.matching import matching

    if true.shape != pred.shape:
        raise ValueError(f"label images differ in shape: true {true.shape}, predicted {pred.shape}")
    true = np.asarray(true, dtype=np.int32)
    pred = np.asarray(pred, dtype=np.int32)
    m = matching(true, pred, thresh=0.5)
    return {
        "n_true": int(m.n_true),
        "n_pred": int(m.n_pred),
        "tp": int(m.tp),
        "fp": int(m.fp),
        "fn": int(m.fn),
        "precision": float(m.precision),
        "recall": float(m.recall),
        "f1": float(m.f1),
        "pq": float(m.panoptic_quality),
        "aji": float(aggregated_jaccard_index(true, pred)),
    }


def evaluate_labels(
    trues: Sequence[NDArray[np.integer]],
    preds: Sequence[NDArray[np.integer]],
    names: Sequence[str] | None = None,
) -> Evaluation:
    """Score predicted label images against annotations (pooled and per-image mean)."""
    import pandas as pd
    from stardist.matching import matching_dataset

    if len(trues) != len(preds):
        raise ValueError(f"{len(trues)} annotations but {len(preds)} predictions")
    names = list(names) if names is not None else [str(i) for i in range(len(trues))]
    rows = [{"image": n} | score_image(t, p) for n, t, p in zip(names, trues, preds, strict=True)]
    df = pd.DataFrame(rows)
    pooled_m = matching_dataset(
        [np.asarray(t, np.int32) for t in trues],
        [np.asarray(p, np.int32) for p in preds],
        thresh=0.5,
        show_progress=False,
    )
    pooled = {
        "precision": float(pooled_m.precision),
        "recall": float(pooled_m.recall),
        "f1": float(pooled_m.f1),
        "pq": float(pooled_m.panoptic_quality),
        "n_images": len(trues),
        "n_true": int(pooled_m.n_true),
    }
    mean = (
        {k: float(df[k].mean()) for k in ("precision", "recall", "f1", "pq", "aji")} if rows else {}
    )
    return Evaluation(df, pooled, mean)


def found_true_ids(
    true: NDArray[np.integer], pred: NDArray[np.integer], *, thresh: float = 0.5
) -> NDArray[np.int64]:
    """Labels of the annotated nuclei that ``pred`` finds (one-to-one matching at IoU >= ``thresh``,
    ``stardist.matching``)."""
    from stardist.matching import matching

    m = matching(np.asarray(true, np.int32), np.asarray(pred, np.int32), thresh=thresh,
                 report_matches=True)  # fmt: skip
    pairs = np.asarray(m.matched_pairs, np.int64).reshape(-1, 2)
    tps = np.asarray(m.matched_tps, np.int64)
    return np.sort(pairs[tps, 0]) if len(tps) else np.empty(0, np.int64)


def recall_by_stain(
    trues: Sequence[NDArray[np.integer]],
    preds: Sequence[NDArray[np.integer]],
    stained: Sequence[Mapping[str, NDArray[np.integer]]],
    *,
    thresh: float = 0.5,
) -> dict[str, dict[str, float]]:
    """Detection recall of stained and unstained nuclei, pooled over images.

    Parameters
    ----------
    trues, preds : sequences of (Y, X) int
        Annotated and predicted instances per image.
    stained : sequence of dict of str to int array
        Per image and chromogen, the annotated labels that carry it (see
        :attr:`senpath.segment.datasets.AnnotatedImage.stained`).
    thresh : float
        IoU a prediction needs to count as finding a nucleus.

    Returns
    -------
    dict
        Per chromogen, and ``"unstained"`` (nuclei carrying none of them): ``found``, ``total``,
        ``recall``. ``gap_<chromogen>`` entries give ``recall(unstained) - recall(chromogen)``
        in points (positive: stained nuclei are missed more often).
    """
    counts: dict[str, list[int]] = {}
    for true, pred, groups in zip(trues, preds, stained, strict=True):
        ids = np.unique(true)
        ids = ids[ids > 0]
        found = np.isin(ids, found_true_ids(true, pred, thresh=thresh))
        any_stain = np.zeros(len(ids), bool)
        for chromogen, members in groups.items():
            member = np.isin(ids, members)
            any_stain |= member
            c = counts.setdefault(chromogen, [0, 0])
            c[0] += int(found[member].sum())
            c[1] += int(member.sum())
        c = counts.setdefault("unstained", [0, 0])
        c[0] += int(found[~any_stain].sum())
        c[1] += int((~any_stain).sum())
    out: dict[str, dict[str, float]] = {
        k: {"found": f, "total": t, "recall": f / t if t else float("nan")}
        for k, (f, t) in counts.items()
    }
    for k in list(out):
        if k != "unstained":
            out[f"gap_{k}"] = {"points": 100 * (out["unstained"]["recall"] - out[k]["recall"])}
    return out


def segment_image(
    rgb: NDArray[np.uint8],
    *,
    mpp: float,
    device: str = "auto",
    model: NucleusSegmenter | None = None,
) -> NDArray[np.int32]:
    """Segment nuclei in one RGB image with the shipped model; labels on the input grid.

    Parameters
    ----------
    rgb : (Y, X, 3) uint8
    mpp : float
        Resolution of ``rgb`` (µm/px).
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
    model : NucleusSegmenter, optional
        A loaded segmenter (else the shipped one, cached per device).

    Returns
    -------
    (Y, X) int32
    """
    from senpath.segment.predict import predict_instances

    return predict_instances(rgb, mpp=mpp, model=model, device=device)


def _match_label_file(image: Path, labels_dir: Path) -> Path:
    stem = image.stem
    for candidate_stem in (stem, f"{stem}_labels", stem.removesuffix("_ihc") + "_labels"):
        for suffix in (".tif", ".tiff", ".png", ".npy"):
            p = labels_dir / f"{candidate_stem}{suffix}"
            if p.is_file() and not p.samefile(image):  # one folder for both: not the image itself
                return p
    raise FileNotFoundError(
        f"no label image for {image.name} in {labels_dir}: expected {stem}.tif/.png/.npy "
        f"(or {stem}_labels.*) with integer instance ids"
    )


def evaluate_folder(
    images_dir: str | os.PathLike[str],
    labels_dir: str | os.PathLike[str],
    *,
    mpp: float,
    device: str = "auto",
    model: NucleusSegmenter | None = None,
    pattern: str = "*",
    predict: Callable[[NDArray[np.uint8]], NDArray[np.integer]] | None = None,
) -> Evaluation:
    """Segment every image of a folder and score it against its label image.

    Parameters
    ----------
    images_dir : path-like
        RGB images (PNG, JPEG, TIFF).
    labels_dir : path-like
        Instance label images with the same stem (``.tif``, ``.png``, ``.npy``; ``<stem>_labels.*``
        is also found), 0 = background.
    mpp : float
        Resolution of the images (µm/px).
    device : str
        Device for the shipped model when ``model`` is omitted.
    model : NucleusSegmenter, optional
    pattern : str
        Glob selecting images inside ``images_dir``.
    predict : callable, optional
        Replaces the network (``rgb -> labels``), e.g. to score another method on the same data.

    Returns
    -------
    Evaluation
    """
    import cv2

    images_dir, labels_dir = Path(images_dir), Path(labels_dir)
    paths = sorted(
        p for p in images_dir.glob(pattern) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )
    if not paths:
        raise FileNotFoundError(
            f"no images ({', '.join(IMAGE_SUFFIXES)}) matching {pattern!r} in {images_dir}"
        )
    trues, preds = [], []
    for p in paths:
        bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if bgr is None:
            raise OSError(f"cannot read image {p}")
        rgb = np.asarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), np.uint8)
        trues.append(_read_label_image(_match_label_file(p, labels_dir)))
        if predict is not None:
            preds.append(np.asarray(predict(rgb)))
        else:
            preds.append(segment_image(rgb, mpp=mpp, device=device, model=model))
    return evaluate_labels(trues, preds, [p.stem for p in paths])


def _read_label_image(path: Path) -> NDArray[np.int32]:
    if path.suffix == ".npy":
        return np.load(path).astype(np.int32)
    if path.suffix in (".tif", ".tiff"):
        import tifffile

        return tifffile.imread(path).astype(np.int32)
    import cv2

    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise OSError(f"cannot read label image {path}")
    return arr.astype(np.int32)
