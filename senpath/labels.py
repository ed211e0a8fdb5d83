"""The slide's nucleus label image: written tile by tile, stored as a multiscale OME-Zarr.

Layout of ``<slide folder>/labels.ome.zarr`` (OME-NGFF 0.4, Zarr format 2, ``/`` chunk separator,
which is what ome-zarr-py / napari-ome-zarr read)::

    .zattrs        {"multiscales": [...], "image-label": {...}}
    0/             (Y, X) int32 at the analysis resolution, chunks 1024 x 1024; value = ``cell_id``
    1/, 2/, ...    each the previous level taken every 2nd pixel (nearest), until it fits one chunk

Level ``k`` pixel ``(i, j)`` is level-0 pixel ``(i * 2**k, j * 2**k)``, so the NGFF ``scale`` of level
``k`` is ``analysis_mpp * 2**k`` µm with no translation. Label ids equal the per-cell table's ``cell_id``.

The array is written under a temporary name in the slide folder while tiles are pasted, and
:meth:`LabelStore.commit` renames it to ``labels.ome.zarr``; a store's manifest is written after that.
The temporary name carries the writer's pid and host: a new store removes the temporaries of writers
that are gone, never another live process's (see :func:`senpath.results.remove_stale_temps`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from senpath.results import LABELS, register_temp, remove_stale_temps, temp_tag
from senpath.tiling import Instance, paste

#: Chunk side of every level (px).
CHUNK = 1024
#: Chunks :class:`ChunkCache` holds by default: a tile's 3 x 3 and the 3 its right neighbour adds.
CACHE_CHUNKS = 12
_TMP_PREFIX = f".{LABELS}."
_TMP_SUFFIX = ".tmp"


def _compressor() -> Any:
    import numcodecs

    return numcodecs.Blosc(cname="zstd", clevel=5, shuffle=numcodecs.Blosc.BITSHUFFLE)


class LabelStore:
    """Label image of one slide, pasted tile by tile into a chunked zarr array on disk.

    Parameters
    ----------
    folder : the slide's results folder (created if missing).
    shape : (Y, X) px of the label image at the analysis resolution.
    mpp : analysis pixel size in µm/px.
    chunk : chunk side in px.

    Notes
    -----
    Ids are assigned 1, 2, ... in paste order with :func:`senpath.tiling.paste` (first writer wins),
    so pasting tiles in grid order gives the same ids as the pipeline's cell table. Not thread-safe.
    """

    def __init__(
        self, folder: str | Path, shape: tuple[int, int], *, mpp: float, chunk: int = CHUNK
    ) -> None:
        import zarr

        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.folder, LABELS)  # of killed writers only: never a live one's
        self.shape = (int(shape[0]), int(shape[1]))
        self.mpp = float(mpp)
        self.chunk = int(chunk)
        self.tmp = Path(
            tempfile.mkdtemp(
                prefix=_TMP_PREFIX, suffix=f".{temp_tag()}{_TMP_SUFFIX}", dir=self.folder
            )
        )
        register_temp(self.tmp, True)
        # abandoned without commit or abort (an error between them): removed when collected
        self._finalizer = weakref.finalize(self, _discard_tmp, self.tmp)
        self._group = zarr.open_group(str(self.tmp), mode="w", zarr_format=2)
        self.level0 = self._create_level(0, self.shape)
        self._pasting = ChunkCache(self.level0)  # what add_instances reads and writes
        self.next_id = 1

    def _create_level(self, level: int, shape: tuple[int, int]) -> Any:
        return self._group.create_array(
            str(level),
            shape=shape,
            chunks=(min(self.chunk, max(1, shape[0])), min(self.chunk, max(1, shape[1]))),
            dtype="int32",
            fill_value=0,
            compressors=_compressor(),
            chunk_key_encoding={"name": "v2", "separator": "/"},
        )

    @property
    def count(self) -> int:
        """Number of ids assigned so far."""
        return self.next_id - 1

    def add_instances(self, instances: Sequence[Instance]) -> NDArray[np.int64]:
        """Paste instances in order; returns the id each got (0: all its pixels were taken).

        One read and one write of the instances' union box, whatever their number, with the
        package's one paste rule (:func:`senpath.tiling.paste`, first writer wins), through a
        few chunks held in memory (:class:`ChunkCache`); :meth:`commit` writes them out.
        """
        ids = paste(self._pasting, instances, next_id=self.next_id)
        self.next_id += int(np.count_nonzero(ids))
        return ids

    def flush(self) -> None:
        """Write the chunks :meth:`add_instances` holds in memory into the temporary array
        (``level0``), which is current after this (:meth:`commit` does it first)."""
        self._pasting.flush()

    def commit(self, *, min_side: int | None = None) -> Path:
        """Build the downsampled levels, write the NGFF metadata and rename into ``labels.ome.zarr``.

        Levels are added until the largest side is at most ``min_side`` px (default: one chunk).
        Returns the final path. Replaces an existing ``labels.ome.zarr``.
        """
        min_side = self.chunk if min_side is None else int(min_side)
        self.flush()
        levels = [self.level0]
        while max(levels[-1].shape) > min_side:
            prev = levels[-1]
            shape = ((prev.shape[0] + 1) // 2, (prev.shape[1] + 1) // 2)
            level = self._create_level(len(levels), shape)
            _downsample_into(prev, level, self.chunk)
            levels.append(level)
        self._group.attrs.update(ngff_metadata(len(levels), self.mpp))
        final = self.folder / LABELS
        if final.exists():
            old = self.folder / f"{_TMP_PREFIX}old{_TMP_SUFFIX}"
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
            os.replace(self.tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp, final)
        self._finalizer()
        return final

    def abort(self) -> None:
        """Remove the temporary array (after a failure)."""
        self._finalizer()


class ChunkCache:
    """A zarr array read and written through a few of its chunks held decoded in memory.

    Pasting a tile writes its core's chunk and slivers of its eight neighbours (the nuclei that
    cross the core's edge): written through, each of those nine chunks is read, decoded, merged
    and compressed again, tile after tile (~50 ms a tile here, zstd level 5). Here a chunk is
    compressed when it leaves the cache (least recently used first) or at :meth:`flush`. Tiles
    pasted in grid order use their left neighbour's chunks again, so with room for
    :data:`CACHE_CHUNKS` chunks each one is written about once per row of tiles that touches it
    (three), not nine times. Memory: ``capacity`` chunks (48 MB at 1024² int32).

    Parameters
    ----------
    array : a 2-D chunked array (zarr), read and written with ``array[y0:y1, x0:x1]``.
    capacity : chunks held at most between two calls (a call may touch more; they are written
        out after it).

    Notes
    -----
    Not thread-safe. What was written is in ``array`` only after :meth:`flush`.
    """

    def __init__(self, array: Any, capacity: int = CACHE_CHUNKS) -> None:
        from collections import OrderedDict

        self.array = array
        self.shape = tuple(int(n) for n in array.shape)
        self.chunks = tuple(int(n) for n in array.chunks)
        self.capacity = max(1, int(capacity))
        self._held: OrderedDict[tuple[int, int], NDArray[Any]] = OrderedDict()
        self._dirty: set[tuple[int, int]] = set()

    def _box(self, key: tuple[int, int]) -> tuple[slice, slice]:
        (cy, cx), (hy, hx) = key, self.chunks
        return (
            slice(cy * hy, min((cy + 1) * hy, self.shape[0])),
            slice(cx * hx, min((cx + 1) * hx, self.shape[1])),
        )

    def _bounds(self, key: Any) -> tuple[int, int, int, int]:
        """``(y0, y1, x0, x1)`` of a 2-D box ``[y0:y1, x0:x1]`` (step 1), clipped to the array."""
        if not (
            isinstance(key, tuple) and len(key) == 2 and all(isinstance(k, slice) for k in key)
        ):
            raise TypeError(f"ChunkCache takes [y0:y1, x0:x1] boxes, got {key!r}")
        (y0, y1, sy), (x0, x1, sx) = (k.indices(n) for k, n in zip(key, self.shape, strict=True))
        if (sy, sx) != (1, 1):
            raise TypeError(f"ChunkCache takes boxes with step 1, got {key!r}")
        return y0, max(y0, y1), x0, max(x0, x1)

    def _parts(
        self, y0: int, y1: int, x0: int, x1: int
    ) -> Iterator[tuple[tuple[int, int], NDArray[Any], tuple[slice, slice], tuple[slice, slice]]]:
        """(chunk index, the chunk held, its part, the same part of the box's block) for each
        chunk the box meets."""
        if y1 <= y0 or x1 <= x0:
            return
        hy, hx = self.chunks
        for cy in range(y0 // hy, (y1 - 1) // hy + 1):
            for cx in range(x0 // hx, (x1 - 1) // hx + 1):
                index = (cy, cx)
                held = self._held.get(index)
                if held is None:  # decoded once (the fill value where never written)
                    held = self._held[index] = np.array(self.array[self._box(index)])
                else:
                    self._held.move_to_end(index)
                ay, ax = max(y0, cy * hy), max(x0, cx * hx)
                by, bx = min(y1, (cy + 1) * hy), min(x1, (cx + 1) * hx)
                part = (slice(ay - cy * hy, by - cy * hy), slice(ax - cx * hx, bx - cx * hx))
                yield index, held, part, (slice(ay - y0, by - y0), slice(ax - x0, bx - x0))

    def __getitem__(self, key: Any) -> NDArray[Any]:
        y0, y1, x0, x1 = self._bounds(key)
        out = np.empty((y1 - y0, x1 - x0), dtype=self.array.dtype)  # the chunks tile the box
        for _, held, part, block in self._parts(y0, y1, x0, x1):
            out[block] = held[part]
        self._trim()
        return out

    def __setitem__(self, key: Any, value: Any) -> None:
        value = np.asarray(value)
        for index, held, part, block in self._parts(*self._bounds(key)):
            held[part] = value if value.ndim == 0 else value[block]
            self._dirty.add(index)
        self._trim()

    def _trim(self) -> None:
        while len(self._held) > self.capacity:
            key, held = self._held.popitem(last=False)
            self._write(key, held)

    def _write(self, key: tuple[int, int], held: NDArray[Any]) -> None:
        if key in self._dirty:
            self.array[self._box(key)] = held  # a whole chunk: compressed once, nothing read
            self._dirty.discard(key)

    def flush(self) -> None:
        """Write every changed chunk held (they stay held)."""
        for key, held in self._held.items():
            self._write(key, held)


def _discard_tmp(tmp: Path) -> None:
    shutil.rmtree(tmp, ignore_errors=True)
    register_temp(tmp, False)


def _downsample_into(src: Any, dst: Any, chunk: int) -> None:
    """``dst = src[::2, ::2]``, one ``dst`` chunk at a time (reads at most 2x2 source chunks)."""
    for y0 in range(0, dst.shape[0], chunk):
        for x0 in range(0, dst.shape[1], chunk):
            y1, x1 = min(y0 + chunk, dst.shape[0]), min(x0 + chunk, dst.shape[1])
            block = np.asarray(src[2 * y0 : 2 * y1 : 2, 2 * x0 : 2 * x1 : 2])
            if block.any():  # chunks left at the fill value are not written (sparse slides)
                dst[y0:y1, x0:x1] = block


def ngff_metadata(n_levels: int, mpp: float) -> dict[str, Any]:
    """OME-NGFF 0.4 ``multiscales`` + ``image-label`` attributes for a (y, x) label pyramid."""
    return {
        "multiscales": [
            {
                "version": "0.4",
                "name": "nuclei",
                "axes": [
                    {"name": "y", "type": "space", "unit": "micrometer"},
                    {"name": "x", "type": "space", "unit": "micrometer"},
                ],
                "datasets": [
                    {
                        "path": str(k),
                        "coordinateTransformations": [
                            {"type": "scale", "scale": [mpp * 2**k, mpp * 2**k]}
                        ],
                    }
                    for k in range(n_levels)
                ],
                "type": "nearest",
                "metadata": {"method": "numpy strided slicing [::2, ::2]", "ids": "cell_id"},
            }
        ],
        "image-label": {"version": "0.4"},
    }


def load_labels(store_folder: str | Path, level: int = 0) -> Any:
    """The label image of a slide store as a lazy dask array (values = ``cell_id``, 0 = none).

    Parameters
    ----------
    store_folder : a slide's results folder (or the ``labels.ome.zarr`` folder itself).
    level : pyramid level; level ``k`` has pixel size ``label_mpp(store_folder, k)`` µm.

    Returns
    -------
    (Y, X) int32 dask array.
    """
    import dask.array as da
    import zarr

    path = _labels_path(store_folder)
    group = zarr.open_group(str(path), mode="r")
    multiscales: Any = group.attrs["multiscales"]
    n = len(multiscales[0]["datasets"])
    if not 0 <= level < n:
        raise ValueError(f"{path} has levels 0-{n - 1}; got level={level}")
    return da.from_zarr(group[str(level)])


def label_mpp(store_folder: str | Path, level: int = 0) -> float:
    """Pixel size in µm of a label pyramid level (from its NGFF scale)."""
    path = _labels_path(store_folder)
    attrs = json.loads((path / ".zattrs").read_text(encoding="utf-8"))
    dataset = attrs["multiscales"][0]["datasets"][level]
    return float(dataset["coordinateTransformations"][0]["scale"][-1])


def _labels_path(store_folder: str | Path) -> Path:
    path = Path(store_folder)
    if path.name != LABELS:
        path = path / LABELS
    if not (path / ".zattrs").is_file():
        raise FileNotFoundError(
            f"{path} holds no label image: the store was written before labels were stored, "
            "or is incomplete; run `senpath run --force` on the slide"
        )
    return path
