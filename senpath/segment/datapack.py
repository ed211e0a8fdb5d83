"""The training data in one file, to train where ``../shared/data`` is not: a lent GPU machine.

``python -m senpath.segment.datapack --out .gpu_pack/pack.npz`` reads the real data (default:
``../shared/data`` beside the repo) as :func:`senpath.segment.train` would and writes, at the
network's 0.5 µm/px:

- the training images of every source (``training_sources`` with the generated regions), RGB as
  JPEG quality 95 (the crops already pass through JPEG at 40-95 in training, ``rerender.degrade``),
  labels as 16-bit PNG;
- the images ``train.py`` validates on (MoNuSeg and Ki67 held out, the first CoNSeP test patches),
  RGB as PNG, lossless.

About 20 MB instead of ~95 MB of source folders: with the repo it fits the 64 MiB a device call
carries (``models/gpu_train.sh``). ``senpath.segment.train --data-pack FILE`` trains from it;
the run records the file's sha256. An ``.npz`` of byte arrays and a JSON index: nothing is
unpickled when it is read.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from senpath.segment.datasets import AnnotatedImage
from senpath.segment.weights import sha256_file

#: Format version written in the index; :func:`read_pack` refuses others.
PACK_VERSION = 1
#: JPEG quality of the training images' RGB (colour at full resolution, 4:4:4: nuclear edges
#: keep their hue).
JPEG_QUALITY = 95


def _encode(image: np.ndarray, ext: str, params: Sequence[int] = ()) -> np.ndarray:
    import cv2

    ok, buf = cv2.imencode(ext, image, list(params))
    if not ok:
        raise ValueError(f"could not encode an image of shape {image.shape} as {ext}")
    return np.asarray(buf, np.uint8).ravel()


def _decode(buf: np.ndarray, flags: int) -> np.ndarray:
    import cv2

    out = cv2.imdecode(np.asarray(buf, np.uint8), flags)
    if out is None:
        raise ValueError("a pack entry does not decode")
    return np.asarray(out)


def _renumbered(
    labels: np.ndarray, stained: Mapping[str, np.ndarray]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Labels numbered 1..N, and the stained nuclei's ids mapped along (ids absent from the
    image are dropped)."""
    from skimage.segmentation import relabel_sequential

    out, forward, _ = relabel_sequential(labels)
    mapped = {}
    for k, ids in stained.items():
        ids = np.asarray(ids, np.int64)
        ids = ids[np.isin(ids, np.unique(labels))]
        mapped[k] = np.asarray(forward[ids], np.int64)
    return out, mapped


def write_pack(
    path: str | os.PathLike[str],
    train: Mapping[str, Sequence[AnnotatedImage]],
    validation: Mapping[str, Sequence[AnnotatedImage]],
) -> str:
    """Write training and validation images to ``path`` (atomically); returns its sha256.

    Training RGB is stored as JPEG (:data:`JPEG_QUALITY`), validation RGB as PNG; labels as
    16-bit PNG, renumbered 1..N where their ids run higher (an image with more nuclei is refused).
    """
    import cv2

    arrays: dict[str, np.ndarray] = {}
    index: dict[str, Any] = {"version": PACK_VERSION, "train": {}, "validation": {}}
    n = 0
    for part, groups in (("train", train), ("validation", validation)):
        lossless = part == "validation"
        for source, images in groups.items():
            entries = []
            for im in images:
                labels, stained = im.labels, im.stained
                if int(labels.max(initial=0)) > 65535:  # generated regions keep slide-wide ids
                    labels, stained = _renumbered(labels, stained)
                    if int(labels.max(initial=0)) > 65535:
                        raise ValueError(f"{im.name}: over 65,535 nuclei do not fit a 16-bit PNG")
                bgr = np.ascontiguousarray(im.rgb[..., ::-1])
                if lossless:
                    arrays[f"rgb{n}"] = _encode(bgr, ".png", (cv2.IMWRITE_PNG_COMPRESSION, 9))
                else:
                    arrays[f"rgb{n}"] = _encode(
                        bgr, ".jpg", (cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY)
                    )
                arrays[f"lab{n}"] = _encode(labels.astype(np.uint16), ".png")
                entries.append(
                    {
                        "key": n,
                        "name": im.name,
                        "kind": im.kind,
                        "mpp": float(im.mpp),
                        "stained": {k: np.asarray(v).tolist() for k, v in stained.items()},
                    }
                )
                n += 1
            index[part][source] = entries
    arrays["index"] = np.frombuffer(json.dumps(index).encode(), np.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)  # type: ignore[arg-type]
    os.replace(tmp, path)
    return sha256_file(path)


def read_pack(
    path: str | os.PathLike[str],
) -> tuple[dict[str, list[AnnotatedImage]], dict[str, list[AnnotatedImage]]]:
    """``(train, validation)`` images per source, as :func:`write_pack` stored them."""
    import cv2

    with np.load(path, allow_pickle=False) as z:
        try:
            index = json.loads(bytes(z["index"]).decode())
        except KeyError:
            raise ValueError(f"{path}: not a senpath data pack (no index)") from None
        if index.get("version") != PACK_VERSION:
            raise ValueError(
                f"{path}: data pack version {index.get('version')!r}, this senpath reads "
                f"{PACK_VERSION}: write it again with python -m senpath.segment.datapack"
            )
        parts = []
        for part in ("train", "validation"):
            groups: dict[str, list[AnnotatedImage]] = {}
            for source, entries in index[part].items():
                images = []
                for e in entries:
                    rgb = _decode(z[f"rgb{e['key']}"], cv2.IMREAD_COLOR)[..., ::-1]
                    labels = _decode(z[f"lab{e['key']}"], cv2.IMREAD_UNCHANGED).astype(np.int32)
                    stained = {k: np.asarray(v, np.int64) for k, v in e["stained"].items()}
                    images.append(
                        AnnotatedImage(
                            e["name"],
                            e["kind"],
                            np.ascontiguousarray(rgb),
                            labels,
                            e["mpp"],
                            stained,
                        )  # fmt: skip
                    )
                groups[source] = images
            parts.append(groups)
    return parts[0], parts[1]


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m senpath.segment.datapack``."""
    from senpath.segment import data as D

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="the pack to write (.npz)")
    p.add_argument("--data-root", type=Path, default=D.DEFAULT_DATA_ROOT)
    p.add_argument("--consep-validation", type=int, default=24, help="CoNSeP test patches packed")
    args = p.parse_args(argv)
    if not args.data_root.is_dir():
        p.error(f"{args.data_root} is not a folder: give --data-root (the project's shared data)")
    train = D.training_sources(args.data_root, synthetic=True)
    validation = D.training_validation_images(args.data_root, args.consep_validation)
    sha = write_pack(args.out, train, validation)
    size = args.out.stat().st_size / 1e6
    print(f"wrote {args.out} ({size:.1f} MB, sha256 {sha[:12]}…)")
    for part, groups in (("train", train), ("validation", validation)):
        print(f"  {part}: " + ", ".join(f"{k} {len(v)}" for k, v in groups.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
