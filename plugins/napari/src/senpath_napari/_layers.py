"""Layer data for napari: slides as multiscale RGB images in µm, cell calls as lazy label overlays.

World coordinates are µm (level-0 slide pixel size times pixel index), so a slide, its label image
(at the analysis resolution) and cell centroids line up whatever their pixel sizes.

The call overlay maps the store's multiscale nucleus labels (ids = ``cell_id``) through a lookup table
``cell_id -> class`` chunk by chunk (dask ``map_blocks``), so a slide of any size is coloured by call
without loading its labels; a new table gives a new dask graph name, so no stale chunk is reused.
An overlay value is ``class + 8 * (cell_id % 31)`` (:func:`overlay_class` reads the class back): two
touching nuclei of one class keep different values, so the overlay's outlines (``contour``) draw
each nucleus, not the outline of their union.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

#: Classes of the call overlay (label values of the overlay layer).
NEGATIVE, BIN1, BIN2, BIN3, EXCLUDED = 1, 2, 3, 4, 5
#: Calls set by hand (a flip): drawn apart from the automatic calls, so a reviewer sees what was judged.
MANUAL_NEGATIVE, MANUAL_POSITIVE = 6, 7
CLASS_NAMES = {
    NEGATIVE: "negative",
    BIN1: "1+",
    BIN2: "2+",
    BIN3: "3+",
    EXCLUDED: "excluded",
    MANUAL_NEGATIVE: "negative (by hand)",
    MANUAL_POSITIVE: "positive (by hand)",
}
#: Overlay values per class (see the module's notes): ``class + CLASS_STRIDE * (cell_id % ID_SPREAD)``.
CLASS_STRIDE, ID_SPREAD = 8, 31
#: RGBA per class: call mode (red positive, blue negative) and bin mode (yellow-orange-red).
CALL_COLOURS = {
    NEGATIVE: (0.25, 0.45, 1.0, 1.0),
    BIN1: (1.0, 0.15, 0.15, 1.0),
    BIN2: (1.0, 0.15, 0.15, 1.0),
    BIN3: (1.0, 0.15, 0.15, 1.0),
    EXCLUDED: (0.6, 0.6, 0.6, 1.0),
    MANUAL_NEGATIVE: (0.0, 0.9, 0.9, 1.0),
    MANUAL_POSITIVE: (1.0, 0.2, 1.0, 1.0),
}
BIN_COLOURS = {
    NEGATIVE: (0.25, 0.45, 1.0, 1.0),
    BIN1: (1.0, 0.9, 0.2, 1.0),
    BIN2: (1.0, 0.55, 0.0, 1.0),
    BIN3: (0.85, 0.0, 0.0, 1.0),
    EXCLUDED: (0.6, 0.6, 0.6, 1.0),
    MANUAL_NEGATIVE: (0.0, 0.9, 0.9, 1.0),
    MANUAL_POSITIVE: (1.0, 0.2, 1.0, 1.0),
}
#: Above this many cells, the centroid Points layer is left out (the label overlay scales).
MAX_POINTS = 200_000
#: Units of every layer's world coordinates (the scale bar reads them; napari's default is pixels).
UNITS = ("µm", "µm")

LayerData = tuple[Any, dict[str, Any], str]


def slide_layer(slide: Any, *, name: str | None = None) -> LayerData:
    """A slide as napari layer data: its levels (lazy dask, no pixels read), scale in µm."""
    levels = list(slide.levels)
    kwargs = {
        "name": name or slide.slide_id,
        "rgb": True,
        "multiscale": len(levels) > 1,
        "scale": (float(slide.mpp[1]), float(slide.mpp[0])),
        "contrast_limits": (0, 255),
        "units": UNITS,
        "metadata": {
            "senpath_slide": str(slide.path),
            "senpath_role": "slide",
            "mpp": tuple(float(v) for v in slide.mpp),
        },
    }
    return (levels if len(levels) > 1 else levels[0], kwargs, "image")


def call_classes(cells: pd.DataFrame, marker: str) -> np.ndarray:
    """Overlay class of each row of a per-cell table for ``marker`` (see :data:`CLASS_NAMES`)."""
    pos = cells[f"{marker}_positive"].to_numpy(dtype=bool)
    bins = np.clip(cells[f"{marker}_bin"].to_numpy(dtype=np.int64), 1, 3)
    classes = np.where(pos, bins + 1, NEGATIVE).astype(np.uint8)
    if f"{marker}_manual" in cells.columns:
        manual = cells[f"{marker}_manual"].to_numpy(dtype=bool)
        classes[manual] = np.where(pos[manual], MANUAL_POSITIVE, MANUAL_NEGATIVE)
    if "excluded" in cells.columns:
        classes[cells["excluded"].to_numpy(dtype=bool)] = EXCLUDED
    return classes


def class_lut(cells: pd.DataFrame, marker: str) -> np.ndarray:
    """``lut[cell_id] = class`` (uint8; 0 for ids without a cell)."""
    ids = cells["cell_id"].to_numpy(dtype=np.int64)
    lut = np.zeros(int(ids.max(initial=0)) + 2, dtype=np.uint8)
    lut[ids] = call_classes(cells, marker)
    return lut


def _lookup(block: np.ndarray, lut: np.ndarray) -> np.ndarray:
    b = np.asarray(block)
    classes = np.where(b < len(lut), lut[np.minimum(b, len(lut) - 1)], 0).astype(np.uint8)
    spread = (CLASS_STRIDE * (b % ID_SPREAD)).astype(np.uint8)
    return np.where(classes > 0, classes + spread, 0).astype(np.uint8)


def overlay_class(values: Any) -> Any:
    """The class (:data:`CLASS_NAMES`; 0: no cell) of call-overlay values (a scalar or an array)."""
    return np.asarray(values) % CLASS_STRIDE


def store_of(layer: Any) -> str | None:
    """The results store a layer was opened from (its ``senpath_store`` metadata), or ``None``."""
    return (getattr(layer, "metadata", None) or {}).get("senpath_store")


def label_levels(folder: str | Path, *, token: str | None = None) -> list[Any]:
    """The store's nucleus label pyramid, one lazy dask array per level.

    Each call gets dask names of its own (``token``): napari caches dask chunks by name, and a
    nucleus edit changes the label chunks on disk under the same zarr path.
    """
    import dask.array as da
    import zarr
    from senpath.labels import load_labels

    load_labels(folder, level=0)  # a clear error when the store has no label image
    group = zarr.open_group(str(Path(folder) / "labels.ome.zarr"), mode="r")
    n = len(group.attrs["multiscales"][0]["datasets"])
    token = token or uuid.uuid4().hex
    return [da.from_zarr(group[str(k)], name=f"senpath-labels-{k}-{token}") for k in range(n)]


def class_levels(folder: str | Path, lut: np.ndarray) -> list[Any]:
    """The store's label pyramid mapped through ``lut``: one lazy uint8 dask array per level."""
    token = uuid.uuid4().hex
    return [
        labels.map_blocks(_lookup, lut, dtype=np.uint8, name=f"senpath-calls-{k}-{token}")
        for k, labels in enumerate(label_levels(folder, token=token))
    ]


def class_colormap(mode: str = "call") -> Any:
    """napari colormap of the overlay classes (``mode``: ``call`` or ``bin``)."""
    from napari.utils.colormaps import DirectLabelColormap

    colours = BIN_COLOURS if mode == "bin" else CALL_COLOURS
    by_value = {
        k + CLASS_STRIDE * spread: rgba
        for k, rgba in colours.items()
        for spread in range(ID_SPREAD)
    }
    return DirectLabelColormap(
        color_dict={None: (0.0, 0.0, 0.0, 0.0), 0: (0.0, 0.0, 0.0, 0.0), **by_value}
    )


def calls_layer(
    folder: str | Path, cells: pd.DataFrame, marker: str, mode: str = "call"
) -> LayerData:
    """The call overlay of a store for one marker, as napari Labels layer data (µm scale)."""
    from senpath.labels import label_mpp

    levels = class_levels(folder, class_lut(cells, marker))
    mpp = label_mpp(folder)
    kwargs = {
        "name": f"{marker} calls",
        "multiscale": len(levels) > 1,
        "scale": (mpp, mpp),
        "units": UNITS,
        "colormap": class_colormap(mode),
        "opacity": 0.8,
        "metadata": {"senpath_store": str(folder), "senpath_role": "calls", "marker": marker},
    }
    return (levels if len(levels) > 1 else levels[0], kwargs, "labels")


def point_colours(cells: pd.DataFrame, marker: str, mode: str = "call") -> np.ndarray:
    """(N, 4) RGBA face colours of cell centroids by call."""
    colours = BIN_COLOURS if mode == "bin" else CALL_COLOURS
    table = np.array([colours.get(k, (0, 0, 0, 0)) for k in range(CLASS_STRIDE)], dtype=np.float32)
    return table[call_classes(cells, marker)]


def point_features(cells: pd.DataFrame, marker: str) -> pd.DataFrame:
    """Per-point features shown on hover: cell id, the marker's OD and call, excluded."""
    return pd.DataFrame(
        {
            "cell_id": cells["cell_id"].to_numpy(),
            f"{marker}_od": cells[f"{marker}_od"].to_numpy(),
            f"{marker}_positive": cells[f"{marker}_positive"].to_numpy(dtype=bool),
            "excluded": (
                cells["excluded"].to_numpy(dtype=bool)
                if "excluded" in cells.columns
                else np.zeros(len(cells), dtype=bool)
            ),
        }
    )


def points_layer(cells: pd.DataFrame, marker: str, folder: str | Path) -> LayerData | None:
    """Cell centroids (µm) coloured by call, or ``None`` above :data:`MAX_POINTS` cells."""
    if len(cells) > MAX_POINTS:
        return None
    coords = cells[["y_um", "x_um"]].to_numpy(dtype=np.float64)
    features = point_features(cells, marker)
    kwargs = {
        "name": "cells",
        "size": 4.0,
        "units": UNITS,
        "face_color": point_colours(cells, marker),
        "border_width": 0,
        "features": features,
        "visible": False,
        "metadata": {"senpath_store": str(folder), "senpath_role": "cells", "marker": marker},
    }
    return (coords, kwargs, "points")


def slide_missing_message(slide_id: str, path: str | Path, folder: str | Path) -> str:
    """What to tell when a store's slide is not where it was analysed, and how to point to it."""
    return (
        f"The slide of {slide_id} is not at {path} (moved since the analysis?): its cells are "
        "shown without the slide. Point to it with 'Locate slide…' in the Review widget, or "
        f"`senpath relink {folder} NEW_PATH`."
    )


def results_layers(folder: str | Path, *, marker: str | None = None) -> list[LayerData]:
    """A results store as layers: the slide (when its file is found), the call overlay and points.

    The cells are the corrected ones (``senpath.load_results`` applies the store's corrections,
    and follows a slide relinked with ``senpath relink``). A slide that is not found is left out
    with a napari warning that says how to point to it.
    """
    import senpath
    from senpath.io import open_slide

    folder = Path(folder)
    res = senpath.load_results(folder)
    markers = [m.name for m in res.provenance.markers]
    layers: list[LayerData] = []
    slide_path = Path(res.provenance.slide_path)
    if slide_path.exists():
        slide = open_slide(slide_path, mpp=res.manifest.get("identity", {}).get("mpp"))
        data, kwargs, kind = slide_layer(slide, name=res.slide_id)
        kwargs["metadata"]["senpath_store"] = str(folder)
        layers.append((data, kwargs, kind))
    else:
        from napari.utils.notifications import show_warning

        show_warning(slide_missing_message(res.slide_id, slide_path, folder))
    if not markers:  # an H&E store: nuclei only
        from senpath.labels import label_mpp

        mpp = label_mpp(folder)
        levels = label_levels(folder)
        kwargs = {
            "name": "nuclei",
            "multiscale": len(levels) > 1,
            "scale": (mpp, mpp),
            "units": UNITS,
            "metadata": {"senpath_store": str(folder), "senpath_role": "nuclei"},
        }
        layers.append((levels if len(levels) > 1 else levels[0], kwargs, "labels"))
        return layers
    marker = marker or markers[0]
    layers.append(calls_layer(folder, res.cells, marker))
    points = points_layer(res.cells, marker, folder)
    if points is not None:
        layers.append(points)
    return layers
