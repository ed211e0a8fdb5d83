"""Streamed pyramidal TIFF plumbing: a threaded tile writer per file and the 2x downsampling cascade.

:class:`_TiffSink` writes one pyramidal tiled TIFF from tiles put into a bounded queue, so one render
loop can feed the image and the labels file without holding either; :class:`_Cascade` derives the
coarse levels from the last directly rendered one through temporary files.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import cv2
import numpy as np
from numpy.typing import NDArray

_QUEUE_TILES = 32


class _Aborted(Exception):
    """Raised inside a writer thread when the producer gave up."""


class _TiffSink:
    """A thread that writes one pyramidal tiled TIFF from tiles put into a bounded queue, level by level.

    ``tifffile.TiffWriter.write`` pulls tiles from an iterator; running it in a thread lets one render
    loop feed two files (image and labels) without holding either in memory.
    """

    def __init__(
        self,
        path: Path,
        *,
        ome: bool,
        level_shapes: list[tuple[int, int]],
        mpp: float,
        tile: int,
        samples: int,
        dtype: type,
        compression: str | None,
        compressionargs: dict[str, Any] | None,
        metadata: dict[str, object] | None,
        description: str | None,
    ) -> None:
        self.path = path
        self.queue: queue.Queue[NDArray[np.generic] | None] = queue.Queue(maxsize=_QUEUE_TILES)
        self.error: BaseException | None = None
        self._args = (ome, level_shapes, mpp, tile, samples, dtype, compression, compressionargs)
        self._metadata, self._description = metadata, description
        self.thread = threading.Thread(
            target=self._run, name=f"senpath-synth-{path.name}", daemon=True
        )
        self.thread.start()

    def _run(self) -> None:
        import tifffile

        ome, level_shapes, mpp, tile, samples, dtype, compression, compressionargs = self._args
        try:
            with tifffile.TiffWriter(self.path, bigtiff=True, ome=ome) as tif:
                for k, (h, w) in enumerate(level_shapes):
                    n_tiles = math.ceil(h / tile) * math.ceil(w / tile)
                    level_mpp = mpp * (1 << k)
                    options: dict[str, Any] = {
                        "shape": (h, w, samples) if samples > 1 else (h, w),
                        "dtype": dtype,
                        "tile": (tile, tile),
                        "photometric": "rgb" if samples == 3 else "minisblack",
                        "compression": compression,
                        "compressionargs": compressionargs,
                        "resolution": (1e4 / level_mpp, 1e4 / level_mpp),
                        "resolutionunit": "CENTIMETER",
                        "software": "senpath.synth",
                    }
                    if k == 0:
                        options["subifds"] = len(level_shapes) - 1
                        options["metadata"] = self._metadata
                        if self._description is not None:
                            options["description"] = self._description
                    else:
                        options["subfiletype"] = 1
                        options["metadata"] = None
                    tif.write(data=self._tiles(n_tiles), **options)
        except BaseException as exc:  # handed to the producer, which re-raises
            self.error = exc
            while True:  # unblock a producer waiting on a full queue
                try:
                    self.queue.get_nowait()
                except queue.Empty:
                    break

    def _tiles(self, n: int) -> Iterator[NDArray[np.generic]]:
        for _ in range(n):
            item = self.queue.get()
            if item is None:
                raise _Aborted
            yield item

    def put(self, tile: NDArray[np.generic]) -> None:
        while True:
            if self.error is not None:
                raise self.error
            if not self.thread.is_alive():
                raise RuntimeError(f"the writer of {self.path} stopped before taking all tiles")
            try:
                self.queue.put(tile, timeout=0.2)
                return
            except queue.Full:
                continue

    def close(self, *, abort: bool = False) -> None:
        if abort and self.thread.is_alive():
            try:
                self.queue.put(None, timeout=5)
            except queue.Full:
                pass
        self.thread.join()
        if not abort and self.error is not None:
            raise self.error


def _halve(
    rgb: NDArray[np.uint8], labels: NDArray[np.int32]
) -> tuple[NDArray[np.uint8], NDArray[np.int32]]:
    """2x downsampling of an even number of rows: 2x2 area mean of RGB, centre sample of labels.

    An odd width is padded by repeating the last column (level shapes are ``ceil(shape / 2)``).
    """
    if rgb.shape[1] % 2:
        rgb = np.concatenate([rgb, rgb[:, -1:]], axis=1)
        labels = np.concatenate([labels, labels[:, -1:]], axis=1)
    h, w = rgb.shape[0] // 2, rgb.shape[1] // 2
    out = cast(NDArray[np.uint8], cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA))
    return out, np.ascontiguousarray(labels[1::2, 1::2])


class _Cascade:
    """Levels below the last directly rendered one, by streamed 2x downsampling into temporary files.

    Every level draws every cell once, so rendering the coarse levels directly would cost a
    near-constant per-cell time per level; instead they are derived from the last direct level
    (``params.max_render_mpp``), whose rows are pushed here as they are rendered. The coarse levels
    are written to unnamed temporary files (not memory) and read back tile row by tile row.
    """

    def __init__(self, shapes: list[tuple[int, int]], directory: Path) -> None:
        import tempfile

        self.shapes = shapes
        self.files = [
            (tempfile.TemporaryFile(dir=directory), tempfile.TemporaryFile(dir=directory))
            for _ in shapes
        ]
        self.pending: list[tuple[NDArray[np.uint8], NDArray[np.int32]] | None] = [None] * len(
            shapes
        )

    def push(self, rgb: NDArray[np.uint8], labels: NDArray[np.int32], j: int = 0) -> None:
        """Add rows of the level above level ``j`` of the cascade."""
        if j >= len(self.shapes):
            return
        held = self.pending[j]
        if held is not None:
            rgb = np.concatenate([held[0], rgb])
            labels = np.concatenate([held[1], labels])
            self.pending[j] = None
        if rgb.shape[0] % 2:
            self.pending[j] = (rgb[-1:].copy(), labels[-1:].copy())
            rgb, labels = rgb[:-1], labels[:-1]
        if rgb.shape[0]:
            self._emit(*_halve(rgb, labels), j)

    def finish(self, j: int = 0) -> None:
        """Flush a last odd row (repeated, as ``ceil`` shapes need), level after level."""
        if j >= len(self.shapes):
            return
        held = self.pending[j]
        if held is not None:
            self.pending[j] = None
            self._emit(*_halve(np.concatenate([held[0]] * 2), np.concatenate([held[1]] * 2)), j)
        self.finish(j + 1)

    def _emit(self, rgb: NDArray[np.uint8], labels: NDArray[np.int32], j: int) -> None:
        self.files[j][0].write(np.ascontiguousarray(rgb).tobytes())
        self.files[j][1].write(np.ascontiguousarray(labels).tobytes())
        self.push(rgb, labels, j + 1)

    def rows(self, j: int, ts: int) -> Iterator[tuple[NDArray[np.uint8], NDArray[np.int32]]]:
        """Tile rows (ts rows, last one shorter) of cascade level ``j``."""
        h, w = self.shapes[j]
        frgb, flab = self.files[j]
        frgb.seek(0)
        flab.seek(0)
        for y0 in range(0, h, ts):
            th = min(ts, h - y0)
            rgb = np.frombuffer(frgb.read(th * w * 3), np.uint8).reshape(th, w, 3)
            labels = np.frombuffer(flab.read(th * w * 4), np.int32).reshape(th, w)
            yield rgb, labels

    def close(self) -> None:
        for f in self.files:
            f[0].close()
            f[1].close()
