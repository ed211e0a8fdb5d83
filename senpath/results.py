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
    regions.geojson   the slide's regions (QuPath annotations), when given (see senpath.region_store)
    cell_regions.parquet  per cell_id its region; joined onto the cells when read
    density.ome.zarr/, hotspots.json   density maps and hot-spots written by `senpath spatial`
                      (derived from the cells, not in the manifest; see senpath.spatial)

Every file is written to a temporary name in the same folder and renamed into place, so an interrupted
run never leaves a half-written file under a final name; a store without ``manifest.json`` is redone,
and so is one whose files do not match the sha256 its manifest lists (:func:`store_problems`). A
temporary name carries its writer's pid and host (``.<name>.<random>.<pid>@<host>.tmp``), so a later
writer removes only the temporaries of writers that are gone (:func:`remove_stale_temps`), never
those of another process that is writing now.

This module is the bottom of the results side: it reads and writes the store's files and imports no
other part of senpath but the typed provenance. :func:`read_results` gives a store as the pipeline
wrote it; :func:`senpath.load_results` (in :mod:`senpath.corrections`) gives it with a reviewer's
corrections replayed.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import math
import os
import re
import socket
import tempfile
import threading
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
#: A slide's regions (QuPath GeoJSON) and its cells' regions (see senpath.region_store).
REGIONS = "regions.geojson"
CELL_REGIONS = "cell_regions.parquet"
#: The identifier columns that open every ``cells.parquet`` (strings), so cells read across slides
#: (``duckdb``, ``polars``, :func:`cells_dataset`) say where they come from.
CELL_ID_COLUMNS = ("slide_id", "patient_id", "assay")
#: Bump when the store's layout changes incompatibly (old stores are then recomputed on resume).
#: 2: the label image (labels.ome.zarr) is part of the store and cell_id equals its label ids.
STORE_VERSION = 2
#: What a slide id may hold: it names the slide's folder under ``out`` (one rule for the sample
#: sheet, the CLI and the API, so no id reaches outside ``out``).
SLIDE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


def slide_id_problem(slide_id: str) -> str | None:
    """Why ``slide_id`` cannot name a store folder (``None``: it can)."""
    if not isinstance(slide_id, str) or not SLIDE_ID_PATTERN.match(slide_id):
        return (
            f"slide_id {slide_id!r} may only use letters, digits, '.', '_', '+', '-' and must "
            "start with a letter or digit (it names the slide's results folder)"
        )
    return None


def store_folder(out: str | Path, slide_id: str) -> Path:
    """The store of ``slide_id`` under the results root ``out`` (``<out>/<slide_id>``).

    Raises
    ------
    ValueError
        When ``slide_id`` is not a plain folder name (``../x``, ``a/b``, empty), which would
        place the store outside ``out``.
    """
    folder = Path(out) / slide_id
    if (
        not slide_id
        or slide_id in (".", "..")
        or Path(slide_id).name != slide_id
        or "\\" in slide_id
        or "\0" in slide_id
    ):
        raise ValueError(
            f"slide_id {slide_id!r} is not a folder name: it would put the results outside {out}; "
            "give a slide_id of letters, digits, '.', '_', '+', '-'"
        )
    return folder


class OutputFolderError(ValueError):
    """A results folder that cannot be used: a file, under a file, or not writable."""


def prepare_results_root(out: str | Path) -> Path:
    """Create the results root ``out`` if needed and check that this user can write in it.

    Raises
    ------
    OutputFolderError
        One line naming the folder and the fix: ``out`` is a file, lies under a file, or cannot
        be created or written.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputFolderError(
            f"results folder {out}: is a file, not a folder: give a folder for the results (it is created "
            "if missing)"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (NotADirectoryError, FileExistsError):
        blocker = next((p for p in [out, *out.parents] if p.exists() and not p.is_dir()), out)
        raise OutputFolderError(
            f"results folder {out}: cannot be created because {blocker} is a file: give a folder path"
        ) from None
    except OSError as exc:
        raise OutputFolderError(
            f"results folder {out}: cannot create the folder ({exc.strerror or exc}): choose a folder you "
            "can write to"
        ) from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".senpath-write-check.", dir=out)
    except OSError as exc:
        raise OutputFolderError(
            f"results folder {out}: cannot write in this folder ({exc.strerror or exc}): choose a folder "
            "you can write to, or ask for write permission"
        ) from None
    os.close(fd)
    os.unlink(probe)
    return out


# ------------------------------------------------------------------------------ temporary files

#: Temporaries this process is writing now (a temporary of this pid not in here is stale).
_LIVE_TEMPS: set[str] = set()
_LIVE_LOCK = threading.Lock()


def temp_tag() -> str:
    """The part of a temporary name that says who writes it: ``<pid>@<host>``."""
    return f"{os.getpid()}@{socket.gethostname()}"


def register_temp(path: Path, live: bool) -> None:
    """Mark a temporary of this process as being written (``live``) or done with."""
    with _LIVE_LOCK:
        (_LIVE_TEMPS.add if live else _LIVE_TEMPS.discard)(str(path))


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (someone else's counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    except OSError:
        return False
    return True


def temp_is_stale(path: Path, prefix: str) -> bool:
    """Whether the temporary ``path`` (named ``<prefix><random>.<pid>@<host>.tmp``) is provably
    left by a writer that is gone: its process is dead on this host, or it is this process's and
    not being written. A temporary of another host, or with no writer in its name, is kept."""
    core = path.name[len(prefix) : -len(".tmp")]
    _, _, tag = core.partition(".")
    pid_text, at, host = tag.partition("@")
    if not at or not pid_text.isdigit() or host != socket.gethostname():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        with _LIVE_LOCK:
            return str(path) not in _LIVE_TEMPS
    return not pid_alive(pid)


def remove_stale_temps(folder: str | Path, name: str) -> list[Path]:
    """Remove the stale temporaries of ``<folder>/<name>`` (files or folders) left by writers that
    were killed; returns what was removed. Those of live writers are left alone."""
    import shutil

    prefix = f".{name}."
    removed = []
    for tmp in Path(folder).glob(f"{glob.escape(prefix)}*.tmp"):
        if temp_is_stale(tmp, prefix):
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


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

    Temporaries of ``path`` left by a writer that was killed (a dead pid on this host) are removed
    first; those of a live writer are not.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent, path.name)
    fd, name = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=f".{temp_tag()}.tmp", dir=path.parent
    )
    os.close(fd)
    tmp = Path(name)
    register_temp(tmp, True)
    give_default_mode(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        register_temp(tmp, False)


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

    @property
    def section(self) -> str | None:
        """The sample sheet's ``section`` of the slide (serial sections), or ``None``."""
        value = self.manifest.get("section")
        return str(value) if value else None


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
    if (extra or {}).get("regions"):  # a store's regions count only when its manifest has them
        files.update({name: sha256_file(folder / name) for name in (REGIONS, CELL_REGIONS)})
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


def record_section(folder: str | Path, section: str | None) -> bool:
    """Record the sample sheet's ``section`` in a committed store's manifest; ``True`` if changed.

    A descriptive field beside ``patient_id``, not part of the store's ``identity``: stores written
    before keep theirs, and naming a section re-analyses nothing. No section (``None`` or empty)
    leaves a recorded one as it is, as a slide re-run without a sample sheet keeps its regions.
    """
    manifest = read_manifest(folder)
    if not section or manifest is None or manifest.get("section") == section:
        return False
    atomic_write_json(Path(folder) / MANIFEST, {**manifest, "section": section})
    return True


def read_manifest(folder: str | Path) -> dict[str, Any] | None:
    """The manifest of a store, or ``None`` when it is missing or unreadable (store incomplete)."""
    path = Path(folder) / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


class IncompleteStoreError(FileNotFoundError):
    """A results store that is not complete: no manifest, or files that do not match it."""


#: Files whose sha256 must equal the manifest's. ``corrections.jsonl`` is not among them: it is an
#: append-only log that grows with every edit between two saves (its first entry names the
#: analysis it corrects, see :mod:`senpath.corrections`).
_HASHED = (CELLS, SUMMARY, PROVENANCE, QC_OVERLAY, QC_HISTOGRAMS, REGIONS, CELL_REGIONS)


def store_problems(folder: str | Path, manifest: Mapping[str, Any] | None = None) -> list[str]:
    """Why the store in ``folder`` is not complete, one short phrase each (``[]``: it is).

    A store is complete when its manifest is readable and of this store version, every file it
    lists is there with the sha256 it lists, and its label image has every level it declares. The
    label image's fingerprint is not compared when the store has a corrections log: a nucleus edit
    changes the labels before the review saves (the log holds the regions before and after).
    """
    folder = Path(folder)
    manifest = read_manifest(folder) if manifest is None else manifest
    if manifest is None:
        return [f"no readable {MANIFEST}"]
    if manifest.get("store_version") != STORE_VERSION:
        return [f"written by another store version ({manifest.get('store_version')})"]
    problems = []
    files: Mapping[str, Any] = manifest.get("files") or {}
    for name in (CELLS, SUMMARY, PROVENANCE):
        if name not in files:
            problems.append(f"{MANIFEST} lists no {name}")
    for name, digest in files.items():
        path = folder / name
        if name == CORRECTIONS:  # moved aside or grown since: the log vouches for itself
            continue
        if not path.exists():
            problems.append(f"{name} is missing")
        elif name in _HASHED:
            try:
                same = sha256_file(path) == digest
            except OSError as exc:
                problems.append(f"{name} cannot be read ({exc.strerror or exc})")
                continue
            if not same:
                problems.append(f"{name} does not match {MANIFEST}")
        elif name == LABELS:
            structure = _label_problems(path)
            problems.extend(structure)
            if not structure and not (folder / CORRECTIONS).exists():
                if labels_digest(path) != digest:
                    problems.append(f"{LABELS} does not match {MANIFEST}")
    return problems


def _label_problems(path: Path) -> list[str]:
    """Structure of a label pyramid (its metadata and every declared level), without its chunks."""
    try:
        attrs = json.loads((path / ".zattrs").read_text(encoding="utf-8"))
        levels = [str(d["path"]) for d in attrs["multiscales"][0]["datasets"]]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return [f"{LABELS} has no readable multiscales metadata"]
    missing = [lv for lv in levels if not (path / lv / ".zarray").is_file()]
    if not levels or missing:
        return [f"{LABELS} lacks level(s) {', '.join(missing) or '0'}"]
    return []


def is_complete(folder: str | Path, identity: Mapping[str, Any] | None = None) -> bool:
    """Whether ``folder`` holds a committed store whose files match its manifest (and, if given,
    for the same inputs and settings)."""
    manifest = read_manifest(folder)
    if manifest is None or store_problems(folder, manifest):
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


def with_cell_regions(cells: pd.DataFrame, folder: str | Path) -> pd.DataFrame:
    """``cells`` with the store's ``region``, ``regions`` and ``region_excluded`` columns joined
    by ``cell_id``; ``excluded`` is set for cells in exclusion regions (see senpath.regions)."""
    table = pd.read_parquet(Path(folder) / CELL_REGIONS)
    out = cells.merge(table, on="cell_id", how="left", validate="one_to_one")
    out["region_excluded"] = out["region_excluded"].astype("boolean").fillna(False).astype(bool)
    out["excluded"] = out["region_excluded"].to_numpy(dtype=bool)
    return out


def read_results(folder: str | Path) -> SlideResults:
    """One slide's committed store as the pipeline wrote it (no corrections applied).

    ``summary`` is the pipeline's summary even when a review has rewritten ``summary.json``
    (see :func:`uncorrected_summary`). :func:`senpath.load_results` replays the corrections.

    Raises
    ------
    IncompleteStoreError
        (a :class:`FileNotFoundError`) When ``folder`` has no manifest (never run, or interrupted
        before it was committed) or its files do not match the manifest (changed after it was
        committed: an interrupted run or save); :func:`store_problems` says which.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    problems = store_problems(folder, manifest)
    if manifest is None or problems:
        raise IncompleteStoreError(
            f"{folder} is not a complete senpath results store ({'; '.join(problems)}): "
            "run `senpath run` again to redo it"
        )
    cells = pd.read_parquet(folder / CELLS)
    if CELL_REGIONS in manifest.get("files", {}):
        cells = with_cell_regions(cells, folder)
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
