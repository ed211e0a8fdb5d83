"""Writing synthetic whole slides: the image pyramid, its nucleus labels and per-cell truth, streamed.

:func:`write_slide` renders the levels up to ``params.max_render_mpp`` directly, strip by strip, derives
the coarser ones by 2x downsampling, and writes the truth rows of level 0 as it goes; files are renamed
into place when complete.
"""

from __future__ import annotations

import math
import os
from collections import deque
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from senpath.synth._params import SynthParams, SynthSlide, _check
from senpath.synth._pyramid import _Cascade, _TiffSink
from senpath.synth._rendering import _jpeg_roundtrip, _render
from senpath.synth._truth import _truth_frame, _truth_schema

_COMPRESSIONS: dict[str, str | None] = {
    "jpeg": "jpeg",
    "deflate": "zlib",
    "zlib": "zlib",
    "lzw": "lzw",
    "zstd": "zstd",
    "none": None,
}
#: Width (px) of the strips rendered at once: wide enough to amortise per-strip work, small enough
#: to keep memory flat (~60 MB of float buffers).
_STRIP_PX = 2048


def default_n_levels(shape: tuple[int, int], tile_size: int) -> int:
    """Number of pyramid levels so that the smallest level fits in one tile."""
    return 1 + max(0, math.ceil(math.log2(max(shape) / tile_size)))


def slide_paths(path: str | os.PathLike[str]) -> tuple[Path, Path, Path]:
    """Image, labels and truth paths that :func:`write_slide` uses for ``path``.

    ``a/slide.ome.tif`` gives ``a/slide.ome.tif``, ``a/slide.labels.ome.tif``, ``a/slide.truth.parquet``.
    """
    path = Path(path)
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif", ".tiff", ".tif"):
        if name.lower().endswith(suffix):
            stem, ext = name[: -len(suffix)], name[-len(suffix) :]
            break
    else:
        raise ValueError(f"{path}: give a .tif, .tiff, .ome.tif or .ome.tiff file name")
    return path, path.with_name(f"{stem}.labels{ext}"), path.with_name(f"{stem}.truth.parquet")


def write_slide(
    path: str | os.PathLike[str],
    *,
    assay: str,
    shape: tuple[int, int],
    mpp: float = 0.5,
    seed: int = 0,
    params: SynthParams | None = None,
    tile_size: int = 256,
    compression: str = "jpeg",
    ome: bool = False,
    n_levels: int | None = None,
    write_labels: bool = True,
) -> SynthSlide:
    """Write a synthetic whole-slide image, its nucleus labels and per-cell truth, streamed.

    Every pyramid level is rendered directly at its own pixel size, strip by strip, and handed to
    ``tifffile`` tile by tile, so memory stays flat however big the slide (level 0 of a
    100k x 100k slide is never held). Files are written under temporary names and renamed when complete.

    Parameters
    ----------
    path : path-like
        Image file (``.tif``/``.tiff``; ``.ome.tif`` or ``ome=True`` for OME-TIFF). The labels go to
        ``<stem>.labels<ext>`` and the truth to ``<stem>.truth.parquet`` (see :func:`slide_paths`).
    assay : str
        One of :data:`ASSAYS`.
    shape : (2,) int
        Level-0 size (Y, X) in pixels.
    mpp : float
        Level-0 pixel size (µm); level ``k`` has ``mpp * 2**k`` and shape ``ceil(shape / 2**k)``.
        Levels up to ``params.max_render_mpp`` equal ``render_region`` at their mpp exactly (without
        JPEG); coarser ones are 2x2 area means of the level above (labels: centre samples).
    seed : int
    params : SynthParams, optional
    tile_size : int
        TIFF tile size (px), a multiple of 16.
    compression : {"jpeg", "deflate", "zlib", "lzw", "zstd", "none"}
        Image tile compression (JPEG at ``params.jpeg_quality``, YCbCr 4:2:0 like scanners). Labels are
        always deflate-compressed.
    ome : bool
        Write OME-TIFF (PhysicalSizeX/Y in µm) with the pyramid in SubIFDs. Either way the TIFF
        resolution tags hold the pixel size (centimetre unit).
    n_levels : int, optional
        Pyramid levels; default until the smallest level fits in one tile.
    write_labels : bool
        Also write the uint32 label pyramid (nucleus instances, ids = ``cell_id``).

    Returns
    -------
    SynthSlide
    """
    params = params or SynthParams()
    h, w = _check(assay, shape, mpp)
    if tile_size < 16 or tile_size % 16:
        raise ValueError(f"tile_size={tile_size}: give a multiple of 16 (TIFF tiles, JPEG blocks)")
    if compression not in _COMPRESSIONS:
        raise ValueError(f"compression={compression!r}: use one of {', '.join(_COMPRESSIONS)}")
    image_path, labels_path, truth_path = slide_paths(path)
    ome = ome or image_path.name.lower().endswith((".ome.tif", ".ome.tiff"))
    if n_levels is None:
        n_levels = default_n_levels((h, w), tile_size)
    if n_levels < 1:
        raise ValueError(f"n_levels={n_levels}: give at least 1")
    level_shapes = [(-(-h // (1 << k)), -(-w // (1 << k))) for k in range(n_levels)]
    tiff_compression = _COMPRESSIONS[compression]
    jpeg_args = None
    roundtrip = None
    if tiff_compression == "jpeg":
        jpeg_args = {"level": int(params.jpeg_quality or 95)}
    elif params.jpeg_quality is not None:
        roundtrip = params.jpeg_quality
    description = f"senpath synthetic slide; assay={assay}; seed={seed}; mpp={mpp}"

    def meta(axes: str, name: str) -> dict[str, object] | None:
        if not ome:
            return None
        return {
            "axes": axes,
            "Name": name,
            "PhysicalSizeX": mpp,
            "PhysicalSizeXUnit": "µm",
            "PhysicalSizeY": mpp,
            "PhysicalSizeYUnit": "µm",
        }

    partial = [p.with_name(p.name + ".partial") for p in (image_path, labels_path, truth_path)]
    sinks = [
        _TiffSink(
            partial[0],
            ome=ome,
            level_shapes=level_shapes,
            mpp=mpp,
            tile=tile_size,
            samples=3,
            dtype=np.uint8,
            compression=tiff_compression,
            compressionargs=jpeg_args,
            metadata=meta("YXS", f"senpath synthetic {assay}"),
            description=None if ome else description,
        )
    ]
    if write_labels:
        sinks.append(
            _TiffSink(
                partial[1],
                ome=ome,
                level_shapes=level_shapes,
                mpp=mpp,
                tile=tile_size,
                samples=1,
                dtype=np.uint32,
                compression="zlib",
                compressionargs=None,
                metadata=meta("YX", f"senpath synthetic {assay} nucleus labels"),
                description=None if ome else description + "; nucleus labels",
            )
        )
    try:
        _stream_levels(
            sinks, partial[2], assay, params, seed, mpp, level_shapes, tile_size, roundtrip
        )
    except BaseException:
        for sink in sinks:
            sink.close(abort=True)
        for p in partial:
            p.unlink(missing_ok=True)
        raise
    for sink in sinks:
        sink.close()
    os.replace(partial[0], image_path)
    if write_labels:
        os.replace(partial[1], labels_path)
    os.replace(partial[2], truth_path)
    return SynthSlide(
        image_path,
        labels_path if write_labels else None,
        truth_path,
        (h, w),
        mpp,
        assay,
        level_shapes,
    )


def _stream_levels(
    sinks: list[_TiffSink],
    truth_path: Path,
    assay: str,
    params: SynthParams,
    seed: int,
    mpp: float,
    level_shapes: list[tuple[int, int]],
    ts: int,
    roundtrip: int | None,
) -> None:
    """Render or derive every level, feed its tiles to the sinks, write truth rows from level 0.

    Levels up to the last one with pixels no coarser than ``params.max_render_mpp`` are rendered
    directly, strip by strip; coarser ones come from the streamed 2x cascade (:class:`_Cascade`).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _truth_schema(assay)
    strip_w = ts * max(1, _STRIP_PX // ts)
    direct = max(
        [k for k in range(len(level_shapes)) if mpp * (1 << k) <= params.max_render_mpp * 1.0001],
        default=0,
    )
    cascade = (
        _Cascade(level_shapes[direct + 1 :], truth_path.parent)
        if direct + 1 < len(level_shapes)
        else None
    )
    # a nucleus spans at most this many tile rows: remember the ids emitted in as many previous rows
    max_nucleus_px = 2 * 18.0 * max(1.0, math.sqrt(params.nucleus_aspect_max)) / mpp
    memory_rows = math.ceil(max_nucleus_px / ts) + 1

    def put_tiles(rgb: NDArray[np.uint8], labels: NDArray[np.int32]) -> None:
        for tx in range(0, rgb.shape[1], ts):
            tile = np.ascontiguousarray(rgb[:, tx : tx + ts])
            if roundtrip is not None:
                tile = _jpeg_roundtrip(tile, roundtrip)
            sinks[0].put(tile)
            if len(sinks) > 1:
                sinks[1].put(labels[:, tx : tx + ts].astype(np.uint32))

    try:
        with pq.ParquetWriter(truth_path, schema) as truth_writer:
            recent: deque[set[int]] = deque(maxlen=memory_rows)
            for k, (h, w) in enumerate(level_shapes):
                if k > direct:
                    assert cascade is not None
                    for rgb, labels in cascade.rows(k - direct - 1, ts):
                        put_tiles(rgb, labels)
                    continue
                level_mpp = mpp * (1 << k)
                for y0 in range(0, h, ts):
                    th = min(ts, h - y0)
                    row_frames = []
                    row_ids: set[int] = set()
                    row_parts = []
                    for x0 in range(0, w, strip_w):
                        sw = min(strip_w, w - x0)
                        rgb, labels, cells, counts = _render(
                            assay, params, seed, level_mpp, y0, x0, (th, sw)
                        )
                        put_tiles(rgb, labels)
                        if k == direct and cascade is not None:
                            row_parts.append((rgb, labels))
                        if k == 0:
                            seen = np.flatnonzero(counts > 0)
                            new = [
                                i
                                for i in seen
                                if int(cells.cell_id[i]) not in row_ids
                                and not any(int(cells.cell_id[i]) in r for r in recent)
                            ]
                            row_ids.update(int(c) for c in cells.cell_id[seen])
                            if new:
                                row_frames.append(_truth_frame(assay, cells.take(np.asarray(new))))
                    if row_parts:
                        assert cascade is not None
                        cascade.push(
                            np.concatenate([p[0] for p in row_parts], axis=1),
                            np.concatenate([p[1] for p in row_parts], axis=1),
                        )
                    if k == 0:
                        recent.append(row_ids)
                        if row_frames:
                            frame = pd.concat(row_frames, ignore_index=True)
                            truth_writer.write_table(
                                pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
                            )
                if k == direct and cascade is not None:
                    cascade.finish()
    finally:
        if cascade is not None:
            cascade.close()
