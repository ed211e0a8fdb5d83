"""tifffile backend: SVS, NDPI, OME-TIFF, SCN and generic tiled/pyramidal TIFF.

Each pyramid level becomes a dask array whose chunks are whole multiples of the file's tiles.
A chunk reads its tiles' compressed bytes with ``os.pread`` (no file lock, so threads decode in
parallel) and decodes them with tifffile's own per-page decoder (``TiffPage.decode``: JPEG with
JPEGTables, NDPI MCU restarts, YCbCr, LZW, deflate, JPEG 2000, ... through imagecodecs).

We do not use ``dask.array.from_zarr(zarr.open(tifffile.imread(path, aszarr=True)))`` for tiled
pages because (measured on an 8k x 8k JPEG pyramid, 2 cores) it reads at ~53 MP/s against
~300 MP/s for the raw decode: zarr 3 decodes one chunk at a time per store and the store holds a
file lock; it also cannot be pickled for a distributed cluster. The zarr route is kept as the
fallback for layouts the fast path does not cover (separate colour planes, multi-page levels).
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import xml.etree.ElementTree as ET
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from senpath.io._checks import (
    MAX_SEGMENT_BYTES,
    check_level_sizes,
    check_tiff_level,
    human_bytes,
)
from senpath.io._slide import (
    BACKGROUND,
    PixelFormat,
    Slide,
    SlideError,
    check_dimensions,
    check_mpp,
    chunk_multiple,
    missing_mpp,
    parse_float,
    plausible_mpp,
    slide_id_from_path,
)

EXTENSIONS = (".svs", ".tif", ".tiff", ".ndpi", ".scn", ".btf", ".tf8", ".tf2", ".qptiff")
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_ASSOCIATED = ("thumbnail", "label", "macro")

#: Most TIFF files kept open per process; older ones are closed (a batch opens thousands).
MAX_OPEN_FILES = 64
_cache_lock = threading.Lock()
_open_files: OrderedDict[tuple[str, int, int], tuple[Any, int]] = OrderedDict()
#: Largest dask chunk of a stripped level (bytes, RGB): a strip spans the whole width, so chunks
#: of a wide stripped image get fewer rows instead of 1,024.
STRIP_CHUNK_BYTES = 32 * 2**20
#: What tifffile logs (and otherwise skips over) when an image directory or a tag's values lie
#: past the end of the file or cannot be read: the mark of a truncated copy.
_TRUNCATION_SIGNS = (
    "invalid offset to first page",
    "invalid page offset",
    "invalid offset to page",
    "corrupted tag list",
    "invalid value offset",
)
_log = logging.getLogger(__name__)


class _TifffileLog(logging.Filter):
    """Collects tifffile's log records while a file is parsed, keeping them off the console.

    tifffile logs what it skips over in a damaged header and goes on; senpath turns the records
    that mean truncation into one error line and keeps the rest for debugging (logger
    ``senpath.io._tiff`` at DEBUG).
    """

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.messages.append(re.sub(r"^<[^>]*>\s*", "", record.getMessage()))
        return False


def _parse_tiff(path: str) -> Any:
    """``tifffile.TiffFile`` of ``path`` with its series parsed; SlideError for a truncated file."""
    import tifffile

    tifffile_logger = logging.getLogger("tifffile")
    capture = _TifffileLog()
    tifffile_logger.addFilter(capture)
    try:
        tif = tifffile.TiffFile(path, mode="r")
        try:
            _compact_tile_tables(tif)  # parses every series and level
        except BaseException:
            tif.close()
            raise
    finally:
        tifffile_logger.removeFilter(capture)
    for message in capture.messages:
        _log.debug("%s: tifffile: %s", path, message)
    signs = [
        m[m.index(sign) :]
        for m in capture.messages
        for sign in _TRUNCATION_SIGNS
        if sign in m and not re.search(r"invalid value offset [0-7]\b", m)  # a bad pointer
    ]
    if signs:
        tif.close()
        size = os.path.getsize(path)
        detail = signs[0].rstrip("')\"")
        raise SlideError(
            f"{path}: truncated or damaged: its header points past the end of the file ({size} "
            f"bytes; tifffile: {detail}); the copy is incomplete: copy or download it again."
        )
    return tif


def _open_cached(path: str) -> tuple[Any, int]:
    """Process-wide ``(TiffFile, fd)`` for ``path``, opened read-only; reopened if it changes.

    Chunk readers are pickled by path only, so each dask worker process opens a file once.
    The least recently used files beyond :data:`MAX_OPEN_FILES` are closed.
    """
    st = os.stat(path)
    key = (path, st.st_mtime_ns, st.st_size)
    with _cache_lock:
        hit = _open_files.get(key)
        if hit is not None:
            _open_files.move_to_end(key)
            return hit
        tif = _parse_tiff(path)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        hit = _open_files[key] = (tif, fd)
        stale = [k for k in _open_files if k[0] == path and k != key]
        stale += list(_open_files)[: max(0, len(_open_files) - len(stale) - MAX_OPEN_FILES)]
        for old in dict.fromkeys(stale):
            old_tif, old_fd = _open_files.pop(old)
            old_tif.close()
            os.close(old_fd)
        return hit


def _compact_tile_tables(tif: Any) -> None:
    """Hold each level's tile offsets and byte counts as 8-byte arrays, not tuples of ints.

    tifffile keeps them as tuples of Python ints (about 40 bytes per entry, twice per tile): 16 MB
    for a 100k x 100k px pyramid of 256-px tiles, against 3 MB as ``array("q")``. The array
    indexes, slices, iterates and tests empty like the tuple, so tifffile's own code still works.
    """
    from array import array

    for series in tif.series:
        for level in series.levels:
            page = level.keyframe
            for attr, codes in (("dataoffsets", (324, 273)), ("databytecounts", (325, 279))):
                values = getattr(page, attr, None)
                if not isinstance(values, tuple) or len(values) < 1024:
                    continue
                compact = array("q", values)
                setattr(page, attr, compact)
                for code in codes:  # the tag holds the same tuple
                    tag = page.tags.get(code)
                    if tag is not None and tag.value is values:
                        tag.value = compact


def _pread(fd: int, tif: Any, offset: int, count: int) -> bytes:
    if hasattr(os, "pread"):
        return os.pread(fd, count, offset)
    with tif.filehandle.lock:  # pragma: no cover - Windows has no pread
        tif.filehandle.seek(offset)
        return tif.filehandle.read(count)


class TiffLevelArray:
    """Array-like view of one TIFF page ``(Y, X, 3) uint8`` that decodes only the tiles it needs.

    It is what ``dask.array.from_array`` wraps: ``__getitem__`` takes a 2-D slice, decodes the
    tiles (or strips) under it and converts them to 8-bit RGB. Pickles as ``(path, series,
    level)``, so it can travel to dask workers.

    Parameters
    ----------
    path : str
        The TIFF file.
    series, level : int
        Indices into ``TiffFile.series`` and ``series.levels``; ``level=-1`` means the series'
        own first page (used for associated images).
    fmt : PixelFormat
        How raw samples are converted to RGB.
    """

    ndim = 3
    dtype = np.dtype(np.uint8)

    def __init__(self, path: str, series: int, level: int, fmt: PixelFormat) -> None:
        self.path, self.series, self.level, self.fmt = path, series, level, fmt
        page = self._page()
        self.shape = (int(page.imagelength), int(page.imagewidth), 3)
        if page.is_tiled:
            self.segment = (int(page.tilelength), int(page.tilewidth))
        else:
            self.segment = (max(1, min(int(page.rowsperstrip), self.shape[0])), self.shape[1])
        self.grid = (
            math.ceil(self.shape[0] / self.segment[0]),
            math.ceil(self.shape[1] / self.segment[1]),
        )
        decoded = self.segment[0] * self.segment[1] * fmt.samples * fmt.dtype.itemsize
        if decoded > MAX_SEGMENT_BYTES:  # open_tiff says so first for pyramid levels
            raise SlideError(
                f"{path}: series {series} level {level} has tiles/strips of {self.segment[1]} x "
                f"{self.segment[0]} px ({human_bytes(decoded)} decoded), more than senpath "
                f"decodes at a time ({human_bytes(MAX_SEGMENT_BYTES)})."
            )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.series, self.level, self.fmt))

    def _page(self) -> Any:
        tif, _ = _open_cached(self.path)
        series = tif.series[self.series]
        if self.level < 0:
            return series.pages[0].keyframe
        return series.levels[self.level].keyframe

    def __getitem__(self, key: tuple[slice, ...]) -> NDArray[np.uint8]:
        ys, xs = key[0], key[1]
        y0, y1, _ = ys.indices(self.shape[0])
        x0, x1, _ = xs.indices(self.shape[1])
        out = np.empty((max(0, y1 - y0), max(0, x1 - x0), 3), dtype=np.uint8)
        if out.size == 0:
            return out[:, :, key[2]] if len(key) > 2 else out
        tif, fd = _open_cached(self.path)
        page = self._page()
        th, tw = self.segment
        decode = page.decode
        for ty in range(y0 // th, (y1 - 1) // th + 1):
            for tx in range(x0 // tw, (x1 - 1) // tw + 1):
                tile = self._decode_tile(tif, fd, page, decode, ty, tx)
                ty0, tx0 = ty * th, tx * tw
                sy0, sy1 = max(y0, ty0), min(y1, ty0 + th)
                sx0, sx1 = max(x0, tx0), min(x1, tx0 + tw)
                out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = tile[
                    sy0 - ty0 : sy1 - ty0, sx0 - tx0 : sx1 - tx0
                ]
        return out[:, :, key[2]] if len(key) > 2 else out

    def _decode_tile(
        self, tif: Any, fd: int, page: Any, decode: Any, ty: int, tx: int
    ) -> NDArray[np.uint8]:
        index = ty * self.grid[1] + tx
        offset = int(page.dataoffsets[index])
        count = int(page.databytecounts[index])
        th, tw = self.segment
        if count == 0 or offset == 0:  # sparse file: an unscanned tile is background
            return np.full((th, tw, 3), BACKGROUND, dtype=np.uint8)
        where = f"level {self.level}, tile row {ty} col {tx} (byte offset {offset})"
        try:
            data = _pread(fd, tif, offset, count)
        except OSError as exc:
            raise SlideError(
                f"{self.path}: cannot read {where}: {exc}; check the file/disk."
            ) from exc
        if len(data) != count:
            raise SlideError(
                f"{self.path}: {where} is cut short ({len(data)} of {count} bytes): the file is "
                "truncated; copy or export it again."
            )
        kwargs: dict[str, Any] = {"_fullsize": True}
        if page.jpegtables is not None:
            kwargs["jpegtables"] = page.jpegtables
        if getattr(page, "jpegheader", None) is not None:
            kwargs["jpegheader"] = page.jpegheader
        try:
            decoded = decode(data, index, **kwargs)[0]
        except Exception as exc:  # imagecodecs raises its own error types per codec
            raise SlideError(
                f"{self.path}: cannot decode {where}: {exc}. The tile data are corrupt; re-export "
                "or re-scan the slide."
            ) from exc
        if decoded is None:
            return np.full((th, tw, 3), BACKGROUND, dtype=np.uint8)
        decoded = np.asarray(decoded)
        block = decoded.reshape(decoded.shape[-3:])[:th, :tw]
        return self.fmt.to_rgb8(block)


class ZarrLevelArray:
    """Fallback array-like over ``tifffile.imread(path, aszarr=True)`` for unusual layouts.

    Used for levels the tile reader does not cover (separate colour planes, one page per
    channel); axes are moved to ``(Y, X, S)``. Pickles as ``(path, series, level)``.
    """

    ndim = 3
    dtype = np.dtype(np.uint8)

    def __init__(self, path: str, series: int, level: int, fmt: PixelFormat) -> None:
        self.path, self.series, self.level, self.fmt = path, series, level, fmt
        self._zarr: Any = None
        tif, _ = _open_cached(path)
        lvl = tif.series[series].levels[level]
        self.axes, raw_shape = lvl.axes, lvl.shape
        self.order, self.index = _yxs_order(self.axes, raw_shape)
        self.shape = (raw_shape[self.axes.index("Y")], raw_shape[self.axes.index("X")], 3)
        self.segment = tuple(int(c) for c in lvl.keyframe.chunks[:2])

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.series, self.level, self.fmt))

    def __getitem__(self, key: tuple[slice, ...]) -> NDArray[np.uint8]:
        import tifffile
        import zarr

        if self._zarr is None:
            store = tifffile.imread(self.path, aszarr=True, series=self.series, level=self.level)
            self._zarr = zarr.open(store, mode="r")
        sel: list[Any] = list(self.index)
        sel[self.axes.index("Y")] = key[0]
        sel[self.axes.index("X")] = key[1]
        try:
            raw = np.asarray(self._zarr[tuple(sel)])
        except Exception as exc:
            raise SlideError(
                f"{self.path}: cannot decode level {self.level} rows {key[0]} cols {key[1]}: "
                f"{exc}. The tile data are corrupt; re-export the slide."
            ) from exc
        raw = np.transpose(raw, self.order) if raw.ndim == 3 else raw
        out = self.fmt.to_rgb8(raw)
        return out[:, :, key[2]] if len(key) > 2 else out


def _yxs_order(axes: str, shape: tuple[int, ...]) -> tuple[tuple[int, ...], list[Any]]:
    """Index (0 for extra axes) and transpose order that turn a TIFF series into (Y, X, S)."""
    index: list[Any] = []
    kept = []
    for ax, _n in zip(axes, shape, strict=True):
        if ax in "YXSC":
            index.append(slice(None))
            kept.append(ax)
        else:
            index.append(0)  # first Z/T plane of a stack
    sample_axes = [a for a in kept if a in "SC"]
    target = ["Y", "X", *sample_axes[:1]]
    order = tuple(kept.index(a) for a in target)
    return order, index


def can_open(path: Path) -> str | None:
    """Reason tifffile can read ``path`` (a TIFF-family extension with a TIFF header), else None."""
    name = path.name.lower()
    if not name.endswith(EXTENSIONS):
        return None
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError:
        return None
    if magic not in _TIFF_MAGIC:
        return None
    return f"{path.suffix} file with a TIFF header: read with tifffile (tiles decoded in parallel)"


def open_tiff(path: Path, *, mpp: tuple[float, float] | None, reason: str) -> Slide:
    """Open a TIFF-family slide; see :func:`senpath.io.open_slide`."""
    import dask.array as da

    spath = str(path)
    try:
        tif, _ = _open_cached(spath)
        series_list = list(tif.series)
    except SlideError:
        raise
    except Exception as exc:  # tifffile raises many types for damaged headers
        raise SlideError(
            f"{path}: not a readable TIFF ({exc}); the file is damaged or truncated: copy or "
            "export it again."
        ) from exc
    if not series_list:
        raise SlideError(
            f"{path}: the TIFF holds no image directory; the file is truncated or damaged: copy "
            "or export the slide again."
        )

    main = next((i for i, s in enumerate(series_list) if s.name.lower() not in _ASSOCIATED), 0)
    series = series_list[main]
    first = series.levels[0].keyframe
    samples = (
        int(first.samplesperpixel) if first.planarconfig == 1 or first.samplesperpixel == 1 else 0
    )
    if samples == 0 or series.levels[0].axes.count("C") or len(series.levels[0].pages) > 1:
        samples = _samples_from_axes(path, series.levels[0].axes, series.levels[0].shape)
    fmt = PixelFormat.check(path, samples=samples, dtype=first.dtype)

    file_size = os.path.getsize(path)
    shapes = [
        (int(lvl.keyframe.imagelength), int(lvl.keyframe.imagewidth)) for lvl in series.levels
    ]
    for shape in shapes:
        check_dimensions(path, shape)
    check_level_sizes(path, shapes)
    for li, lvl in enumerate(series.levels):
        check_tiff_level(path, li, lvl.keyframe, file_size)
    level_arrays = []
    sources = []
    for li, lvl in enumerate(series.levels):
        page = lvl.keyframe
        simple = len(lvl.pages) == 1 and (page.planarconfig == 1 or page.samplesperpixel == 1)
        reader_cls = TiffLevelArray if simple else ZarrLevelArray
        reader = reader_cls(spath, main, li, fmt)
        level_arrays.append(_to_dask(da, reader, name=f"senpath-tiff-{path.name}-{li}"))
        sources.append(reader)
    order = sorted(range(len(level_arrays)), key=lambda i: -level_arrays[i].shape[1])
    level_arrays = [level_arrays[i] for i in order]
    sources = [sources[i] for i in order]
    tile_size = tuple(int(v) for v in series.levels[0].keyframe.chunks[:2])

    vendor, meta_mpp, source, objective = _metadata(tif, first, path)
    # kept beside an explicit mpp= so that a contradiction can be told (Slide.mpp_disagreement);
    # an implausible one (72 dpi) is no calibration and is why mpp= was given
    file_mpp = meta_mpp if meta_mpp is not None and plausible_mpp(meta_mpp) else None
    file_mpp_source = source if file_mpp is not None else ""
    if mpp is not None:
        final_mpp, source = mpp, "mpp="
    elif meta_mpp is not None:
        final_mpp = check_mpp(path, meta_mpp, source=source)
    else:
        raise missing_mpp(path, source)

    associated = {}
    for si, s in enumerate(series_list):
        key = s.name.lower()
        if si != main and key in _ASSOCIATED:
            page = s.pages[0].keyframe
            try:
                check_tiff_level(path, -1, page, file_size)
                afmt = PixelFormat(samples=int(page.samplesperpixel), dtype=np.dtype(page.dtype))
                reader = TiffLevelArray(spath, si, -1, afmt)
                associated[key] = _to_dask(da, reader, name=f"senpath-assoc-{path.name}-{key}")
            except Exception:  # an odd associated image must not stop the slide from opening
                continue

    width0 = level_arrays[0].shape[1]
    return Slide(
        path=path,
        slide_id=slide_id_from_path(path),
        levels=level_arrays,
        mpp=final_mpp,
        downsamples=[width0 / a.shape[1] for a in level_arrays],
        objective_power=objective,
        vendor=vendor,
        backend="tifffile",
        backend_reason=reason,
        tile_size=(tile_size[0], tile_size[1]),
        associated=associated,
        mpp_source=source,
        sources=sources,
        file_mpp=file_mpp,
        file_mpp_source=file_mpp_source,
    )


def _to_dask(da: Any, reader: Any, *, name: str) -> Any:
    seg_rows, seg_cols = reader.segment
    cols = chunk_multiple(seg_cols) if seg_cols < reader.shape[1] else reader.shape[1]
    rows = chunk_multiple(seg_rows, target=min(1024, max(1, STRIP_CHUNK_BYTES // (3 * cols))))
    chunks = (rows, cols, 3)
    import dask.base

    token = dask.base.tokenize(
        reader.path, os.stat(reader.path).st_mtime_ns, reader.series, reader.level
    )
    return da.from_array(
        reader,
        chunks=chunks,
        asarray=False,
        fancy=False,
        lock=False,
        name=f"{name}-{token}",
        meta=np.empty((0, 0, 0), dtype=np.uint8),
    )


def _samples_from_axes(path: Path, axes: str, shape: tuple[int, ...]) -> int:
    for ax in "SC":
        if ax in axes:
            return int(shape[axes.index(ax)])
    return 1


def _metadata(
    tif: Any, page: Any, path: Path
) -> tuple[str, tuple[float, float] | None, str, float | None]:
    """Vendor, level-0 (x, y) µm/px (or None), where it came from, objective power."""
    description = page.description or ""
    objective: float | None = None
    if tif.is_svs:
        found = re.search(r"\|\s*MPP\s*=\s*([^|\r\n]*)", description)
        mag = re.search(r"\|\s*AppMag\s*=\s*([^|\r\n]*)", description)
        objective = _positive(parse_float(mag.group(1))) if mag else None
        if not found:
            return "aperio", None, "Aperio ImageDescription has no MPP field", objective
        value = parse_float(found.group(1))
        if value is None:
            detail = f"the Aperio MPP field says {found.group(1).strip()!r}, not a number"
            return "aperio", None, detail, objective
        return "aperio", (value, value), "Aperio ImageDescription MPP", objective
    if tif.is_ome:
        mpp, objective, detail = _ome_mpp(tif.ome_metadata or "")
        if mpp is not None:
            return "ome", mpp, "OME-XML PhysicalSizeX/Y", objective
        if detail:
            return "ome", None, detail, objective
        vendor = "ome"
    elif tif.is_ndpi:
        vendor = "hamamatsu"
        mag = page.tags.get(65421)  # NDPI Magnification
        objective = _positive(parse_float(mag.value)) if mag is not None else None
    elif tif.is_philips:
        vendor = "philips"
        found = re.search(
            r'DICOM_PIXEL_SPACING".*?>"?([0-9.eE+-]+)"?\s+"?([0-9.eE+-]+)', description
        )
        if found:  # millimetres per pixel (row, column)
            row, col = parse_float(found.group(1)), parse_float(found.group(2))
            if row is not None and col is not None:
                return vendor, (col * 1000, row * 1000), "Philips DICOM_PIXEL_SPACING", None
    elif tif.is_scn:
        vendor = "leica-scn"
    else:
        vendor = "generic-tiff"
    return (vendor, *_resolution_mpp(page), objective)


def _resolution_mpp(page: Any) -> tuple[tuple[float, float] | None, str]:
    """Level-0 µm/px from XResolution/YResolution when the unit is inch or centimetre."""
    unit = int(page.resolutionunit)
    try:
        xres, yres = page.resolution
    except (TypeError, ValueError):
        return None, "no resolution tags"
    per_unit_um = {2: 25400.0, 3: 10000.0}.get(unit)
    if per_unit_um is None or not xres or not yres:
        return None, "TIFF resolution tags have no physical unit"
    mpp = (per_unit_um / xres, per_unit_um / yres)
    return mpp, f"TIFF X/YResolution ({'inch' if unit == 2 else 'cm'})"


_OME_UNITS_UM = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6, "Å": 1e-4}


def _positive(value: float | None) -> float | None:
    """``value`` when it is a finite number above 0 (an objective power), else None."""
    return value if value is not None and math.isfinite(value) and value > 0 else None


def _ome_mpp(xml: str) -> tuple[tuple[float, float] | None, float | None, str]:
    """Level-0 (x, y) µm/px, objective power and, when a size is present but unusable, why."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None, None, ""
    pixels = next((el for el in root.iter() if el.tag.endswith("Pixels")), None)
    objective = None
    for el in root.iter():
        if el.tag.endswith("Objective") and el.get("NominalMagnification"):
            objective = _positive(parse_float(el.get("NominalMagnification", "")))
            break
    if pixels is None or pixels.get("PhysicalSizeX") is None:
        return None, objective, ""
    values = []
    for ax in "XY":
        raw = pixels.get(f"PhysicalSize{ax}") or pixels.get("PhysicalSizeX") or "nan"
        unit = pixels.get(f"PhysicalSize{ax}Unit", "µm")
        if unit not in _OME_UNITS_UM:
            return None, objective, ""
        value = parse_float(raw)
        if value is None:
            return None, objective, f"OME-XML PhysicalSize{ax} is {raw!r}, not a number"
        values.append(value * _OME_UNITS_UM[unit])
    return (values[0], values[1]), objective, ""
