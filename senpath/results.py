"""The per-slide results store, written atomically with its manifest last.

Layout of ``<out>/<slide_id>/``::

    cells.parquet     per-cell table: the source of truth
    summary.json      per-slide marker summary (derived from cells.parquet)
    provenance.json   package version, model sha256, config, stain vectors, thresholds, device, timings
    qc_overlay.png    overview with nucleus outlines (coloured by the first marker's call) beside
                      full-resolution crops of the densest tissue (see senpath.qc_overlay)
    qc_histograms.png per marker, the histogram of the per-cell OD it is called on, with the threshold
                      (an assay without a marker: the nucleus area distribution)
    labels.ome.zarr/  nucleus label image (multiscale OME-Zarr, ids = cell_id; see senpath.labels)
    manifest.json     written last: the inputs' identity and the files' sha256; no manifest = incomplete
    corrections.jsonl a reviewer's corrections, an append-only audit log (see senpath.corrections);
                      senpath.load_results applies them by default

Every file is written to a temporary name in the same folder and renamed into place, so an interrupted
run never leaves a half-written file under a final name; a store without ``manifest.json`` is redone.

This module is the bottom of the results side: it reads and writes the store's files and imports no
other part of senpath but the typed provenance. :func:`read_results` gives a store as the pipeline
wrote it; :func:`senpath.load_results` (in :mod:`senpath.corrections`) gives it with a reviewer's
corrections replayed.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from senpath.provenance import Provenance

MANIFEST = "manifest.json"
CELLS = "cells.parquet"
SUMMARY = "summary.json"
PROVENANCE = "provenance.json"
QC_OVERLAY = "qc_overlay.png"
QC_HISTOGRAMS = "qc_histograms.png"
LABELS = "labels.ome.zarr"
CORRECTIONS = "corrections.jsonl"
#: The identifier columns that open every ``cells.parquet`` (strings), so cells read across slides
#: (``duckdb``, ``polars``, :func:`cells_dataset`) say where they come from.
CELL_ID_COLUMNS = ("slide_id", "patient_id", "assay")
#: Bump when the store's layout changes incompatibly (old stores are then recomputed on resume).
#: 2: the label image (labels.ome.zarr) is part of the store and cell_id equals its label ids.
STORE_VERSION = 2


def current_umask() -> int:
    """The process's file-mode creation mask (e.g. ``0o022``), read without changing it where the
    platform allows (``/proc/self/status`` on Linux); elsewhere it is set and restored at once."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def give_default_mode(path: str | Path, *, directory: bool = False) -> None:
    """Give a file made by :func:`tempfile.mkstemp` (mode 0600) or a folder made by
    :func:`tempfile.mkdtemp` (0700) the mode an ordinary ``open``/``mkdir`` would have given it
    (0666/0777 less the umask), so a shared results folder is readable by the group as the
    user's umask intends."""
    base = 0o777 if directory else 0o666
    os.chmod(path, base & ~current_umask())


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary file beside ``path`` to write to; on success it is fsynced and renamed onto
    ``path``, on any error (or interrupt) it is removed. A reader never sees a half-written file
    under the final name::

        with atomic_path(out / "cells.h5ad") as tmp:
            adata.write_h5ad(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    give_default_mode(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, fsync, rename)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return None if math.isnan(float(obj)) else float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot store {type(obj).__name__} in JSON")


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_nan_to_none(v) for v in obj]
    return obj


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically (NaN becomes null)."""
    text = json.dumps(_nan_to_none(obj), indent=2, sort_keys=True, default=_json_default)
    atomic_write_bytes(path, (text + "\n").encode("utf-8"))


def with_stable_cell_types(
    cells: pd.DataFrame, *, slide_id: str, patient_id: str, assay: str
) -> pd.DataFrame:
    """The per-cell table as every store writes it, whatever the assay.

    :data:`CELL_ID_COLUMNS` first (strings), then the rest with one dtype per kind of column:
    ``cell_id`` int64, ``tile_label`` int32, ``<marker>_bin`` int8, calls and flags bool,
    measurements float64. A column shared by two slides thus has the same Parquet type in both
    (an empty slide included), and a reader that unions the slides by column name
    (``duckdb``'s ``union_by_name``, :func:`cells_dataset`) only adds the columns a slide lacks.
    """
    out = cells.drop(columns=[c for c in CELL_ID_COLUMNS if c in cells.columns])
    for col in out.columns:
        if col == "cell_id":
            out[col] = out[col].astype("int64")
        elif col == "tile_label":
            out[col] = out[col].astype("int32")
        elif col.endswith("_bin"):
            out[col] = out[col].astype("int8")
        elif pd.api.types.is_bool_dtype(out[col]) or (
            out[col].dtype == object and pd.api.types.infer_dtype(out[col]) in ("boolean", "empty")
        ):  # an empty table's calls come as object columns
            out[col] = out[col].astype(bool)
        elif pd.api.types.is_numeric_dtype(out[col]):
            out[col] = out[col].astype("float64")
    ids = pd.DataFrame(
        {"slide_id": slide_id, "patient_id": patient_id, "assay": assay}, index=out.index
    ).astype(object)
    return pd.concat([ids.astype("string[pyarrow]"), out], axis=1)


def cells_dataset(root: str | Path) -> Any:
    """Every committed slide's ``cells.parquet`` under ``root`` as one :class:`pyarrow.dataset.Dataset`.

    Slides of different assays have different marker and stain columns: the dataset's schema is
    their union (:func:`pyarrow.unify_schemas`), and a slide's rows are null in the columns it
    lacks. ``cells_dataset(root).to_table().to_pandas()`` gives all cells; duckdb reads the same
    with ``read_parquet('results/*/cells.parquet', union_by_name=true)``.
    """
    import pyarrow as pa
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    files = [str(folder / CELLS) for folder in find_stores(root)]
    if not files:
        raise FileNotFoundError(f"no committed results store under {root}: run `senpath run` first")
    schema = pa.unify_schemas([pq.read_schema(f) for f in files]).remove_metadata()
    return ds.dataset(files, schema=schema, format="parquet")


def atomic_write_parquet(path: str | Path, table: pd.DataFrame) -> None:
    """Write a DataFrame to Parquet atomically."""
    buf = io.BytesIO()
    table.to_parquet(buf, index=False)
    atomic_write_bytes(path, buf.getvalue())


def sha256_file(path: str | Path, *, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's contents."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def input_identity(path: str | Path) -> dict[str, Any]:
    """What identifies an input slide for resume: resolved path, size and modification time."""
    p = Path(path)
    st = p.stat()
    return {"path": str(p.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


@dataclass
class SlideResults:
    """A complete per-slide store, loaded.

    ``corrections`` holds the entries of the store's corrections log that were applied to ``cells``,
    ``summary`` and ``provenance`` (empty when there are none or when loaded without corrections).
    """

    folder: Path
    cells: pd.DataFrame
    summary: dict[str, Any]
    provenance: Provenance
    manifest: dict[str, Any]
    corrections: list[dict[str, Any]] = field(default_factory=list)

    @property
    def slide_id(self) -> str:
        return str(self.manifest["slide_id"])

    @property
    def patient_id(self) -> str:
        """The slide's patient (the slide id when the sample sheet gave none)."""
        return str(self.manifest.get("patient_id") or self.slide_id)


def labels_digest(path: str | Path) -> str:
    """Cheap fingerprint of a label zarr: sha256 of its metadata files and its chunk listing (names,
    sizes), without reading the chunks."""
    path = Path(path)
    h = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            p = Path(root) / name
            rel = p.relative_to(path).as_posix()
            h.update(rel.encode("utf-8"))
            if name.startswith(".z"):
                h.update(p.read_bytes())
            else:
                h.update(str(p.stat().st_size).encode("ascii"))
    return h.hexdigest()


def write_manifest(
    folder: Path,
    *,
    slide_id: str,
    identity: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Commit a slide's store: hash every data file and write ``manifest.json`` last.

    ``extra`` adds descriptive fields (``patient_id``, ``assay``) to the manifest.
    """
    files = {
        name: sha256_file(folder / name)
        for name in (CELLS, SUMMARY, PROVENANCE, QC_OVERLAY, QC_HISTOGRAMS, CORRECTIONS)
        if (folder / name).is_file()
    }
    if (folder / LABELS / ".zattrs").is_file():
        # a folder of chunks: its metadata and chunk listing, not every chunk's bytes (cheap)
        files[LABELS] = labels_digest(folder / LABELS)
    atomic_write_json(
        folder / MANIFEST,
        {
            **dict(extra or {}),
            "store_version": STORE_VERSION,
            "slide_id": slide_id,
            "identity": dict(identity),
            "files": files,
        },
    )


def read_manifest(folder: str | Path) -> dict[str, Any] | None:
    """The manifest of a store, or ``None`` when it is missing or unreadable (store incomplete)."""
    path = Path(folder) / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_complete(folder: str | Path, identity: Mapping[str, Any] | None = None) -> bool:
    """Whether ``folder`` holds a committed store (and, if given, for the same inputs and settings)."""
    manifest = read_manifest(folder)
    if manifest is None or manifest.get("store_version") != STORE_VERSION:
        return False
    if any(not (Path(folder) / name).exists() for name in manifest.get("files", {})):
        return False
    return identity is None or manifest.get("identity") == _nan_to_none(
        json.loads(json.dumps(dict(identity), default=_json_default))
    )


def uncorrected_summary(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The pipeline's own summary from a ``summary.json`` a review rewrote with corrected figures
    (which keeps the pipeline's under ``uncorrected`` and describes the log under ``corrections``)."""
    out = {k: v for k, v in summary.items() if k not in ("uncorrected", "corrections")}
    out.update(summary.get("uncorrected") or {})
    return out


def read_results(folder: str | Path) -> SlideResults:
    """One slide's committed store as the pipeline wrote it (no corrections applied).

    ``summary`` is the pipeline's summary even when a review has rewritten ``summary.json``
    (see :func:`uncorrected_summary`). :func:`senpath.load_results` replays the corrections.

    Raises
    ------
    FileNotFoundError
        When ``folder`` has no manifest (never run, or interrupted before it was committed).
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None:
        raise FileNotFoundError(
            f"{folder} is not a complete senpath results store (no {MANIFEST}); run `senpath run` again"
        )
    cells = pd.read_parquet(folder / CELLS)
    summary = json.loads((folder / SUMMARY).read_text(encoding="utf-8"))
    provenance = json.loads((folder / PROVENANCE).read_text(encoding="utf-8"))
    return SlideResults(
        folder, cells, uncorrected_summary(summary), Provenance.from_dict(provenance), manifest
    )


def find_stores(root: str | Path) -> list[Path]:
    """Folders under ``root`` (one level down, or ``root`` itself) that hold a committed store."""
    root = Path(root)
    if read_manifest(root) is not None:
        return [root]
    return sorted(p for p in root.iterdir() if p.is_dir() and read_manifest(p) is not None)
