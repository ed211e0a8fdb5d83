"""Reading and writing a region of the store's label image (``labels.ome.zarr``, level 0 and the
lower levels rebuilt over it), for nucleus edits."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from senpath.results import LABELS

# ------------------------------------------------------------------------- label image regions


def _labels_group(folder: Path, mode: Literal["r", "r+"] = "r") -> Any:
    import zarr

    return zarr.open_group(str(folder / LABELS), mode=mode)


def _n_levels(group: Any) -> int:
    return len(group.attrs["multiscales"][0]["datasets"])


def write_label_region(folder: str | Path, origin: tuple[int, int], block: NDArray[Any]) -> None:
    """Write a level-0 label region and rebuild the lower levels over it.

    Level ``k`` is level ``k - 1`` taken every 2nd pixel (see :mod:`senpath.labels`), so only the
    level-``k`` pixels that sample the region change; a level none of whose pixels sample it (and every
    level below) is left as it is.

    Parameters
    ----------
    folder : the slide's store.
    origin : (y0, x0) of the region in level-0 label pixels.
    block : (H, W) int label ids.
    """
    group = _labels_group(Path(folder), "r+")
    y0, x0 = int(origin[0]), int(origin[1])
    y1, x1 = y0 + block.shape[0], x0 + block.shape[1]
    prev = group["0"]
    prev[y0:y1, x0:x1] = np.asarray(block, dtype=np.int32)
    for k in range(1, _n_levels(group)):
        level = group[str(k)]
        ny0, nx0 = -(-y0 // 2), -(-x0 // 2)
        ny1, nx1 = min(-(-y1 // 2), level.shape[0]), min(-(-x1 // 2), level.shape[1])
        if ny1 <= ny0 or nx1 <= nx0:
            break
        level[ny0:ny1, nx0:nx1] = np.asarray(prev[2 * ny0 : 2 * ny1 : 2, 2 * nx0 : 2 * nx1 : 2])
        prev, (y0, x0, y1, x1) = level, (ny0, nx0, ny1, nx1)


def read_label_region(folder: str | Path, y0: int, x0: int, y1: int, x1: int) -> NDArray[np.int32]:
    """Level-0 labels ``[y0:y1, x0:x1]`` (clipped to the image) as an editable int32 array."""
    level0 = _labels_group(Path(folder))["0"]
    y0, x0 = max(0, int(y0)), max(0, int(x0))
    y1, x1 = min(level0.shape[0], int(y1)), min(level0.shape[1], int(x1))
    return np.array(level0[y0:y1, x0:x1], dtype=np.int32)
