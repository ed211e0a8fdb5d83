"""napari layers of a store's spatial figures: density maps and hot-spot fields, in µm.

``senpath spatial RESULTS`` writes ``<slide>/density.ome.zarr`` and ``<slide>/hotspots.json``;
opening the results folder (or the ``density.ome.zarr`` folder itself) adds one image layer per map
(hidden, over the slide in the same µm world coordinates: scale = bin side, translate = centre of
bin (0, 0)) and a Shapes layer with each hot-spot's field (circle or square), labelled with its
target and index. ``senpath register RESULTS`` writes a patient's cross-section senescence map
(``RESULTS/_sections/<patient>/senescence_map.ome.zarr``) in its reference section's µm: opening
that section's store adds its channels the same way. Nothing is computed here: a store without
them gets no spatial layers.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from senpath_napari._layers import UNITS, LayerData

#: Colour of the hot-spot fields.
HOTSPOT_COLOUR = "cyan"


def density_layers(path: str | Path, *, maps: Any = None) -> list[LayerData]:
    """One napari image layer per density map of a store (or of a ``density.ome.zarr``, or the
    given :class:`~senpath.spatial.density.DensityMaps`)."""
    from senpath.spatial import read_density_zarr

    maps = read_density_zarr(path) if maps is None else maps
    s = maps.grid.spacing_um
    x0, y0 = maps.grid.origin_um
    slide_id = maps.attrs.get("slide_id", "")
    layers: list[LayerData] = []
    for name, data in maps.channels.items():
        if name == "n_cells":  # the count per bin is in the table; cells/mm² is its map
            continue
        percent = maps.units[name] == "%"
        finite = data[np.isfinite(data)]
        top = 100.0 if percent else float(finite.max()) if finite.size else 1.0
        kwargs = {
            "name": f"{name} ({s:g} µm)",
            "scale": (s, s),
            "translate": (y0 + s / 2, x0 + s / 2),
            "units": UNITS,
            "colormap": "viridis" if name == "cells_per_mm2" else "magma",
            "contrast_limits": (0.0, max(top, 1e-6)),
            "opacity": 0.6,
            "blending": "translucent",
            "visible": False,
            "metadata": {
                "senpath_role": "density",
                "channel": name,
                "unit": maps.units[name],
                "slide_id": slide_id,
                "grid_origin_um": (x0, y0),
                "grid_spacing_um": s,
            },
        }
        layers.append((np.asarray(data, dtype=np.float32), kwargs, "image"))
    return layers


def hotspot_layer(folder: str | Path) -> LayerData | None:
    """The store's hot-spot fields as a Shapes layer in µm (``None`` without ``hotspots.json``
    or without a hot-spot found)."""
    from senpath.spatial.slide import read_hotspots

    stored = read_hotspots(folder)
    if stored is None:
        return None
    shapes, kinds, targets, labels = [], [], [], []
    for h in stored.get("hotspots", []):
        cx, cy, r = h.get("centre_x_um"), h.get("centre_y_um"), h.get("field_radius_um")
        if not h.get("found") or None in (cx, cy, r) or not math.isfinite(float(r)):
            continue
        shapes.append(
            np.array([[cy - r, cx - r], [cy - r, cx + r], [cy + r, cx + r], [cy + r, cx - r]])
        )
        kinds.append("rectangle" if "square" in str(h.get("rule", "")) else "ellipse")
        targets.append(str(h["target"]))
        labels.append(f"{h['target']} hot-spot {float(h['index_pct']):.1f} %")
    if not shapes:
        return None
    kwargs = {
        "name": "hot-spots",
        "shape_type": kinds,
        "edge_color": HOTSPOT_COLOUR,
        "face_color": "transparent",
        "edge_width": 4.0,
        "features": {"target": targets, "label": labels},
        "text": {"string": "{label}", "color": HOTSPOT_COLOUR, "size": 10, "anchor": "upper_left"},
        "units": UNITS,
        "metadata": {"senpath_role": "hotspots", "senpath_store": str(folder)},
    }
    return (shapes, kwargs, "shapes")


def section_map_layers(folder: str | Path) -> list[LayerData]:
    """The cross-section senescence maps whose reference section is this store
    (``RESULTS/_sections/<patient>/senescence_map.ome.zarr`` written by ``senpath register``), as
    hidden image layers in the store's µm; empty when there is none."""
    from senpath.registration import read_patient_sections
    from senpath.registration._map_image import MAP_IMAGE
    from senpath.spatial import read_density_zarr

    folder = Path(folder)
    layers: list[LayerData] = []
    for section_folder, record in read_patient_sections(folder.parent):
        image = section_folder / MAP_IMAGE
        if record.get("reference") != folder.name or not (image / ".zattrs").is_file():
            continue
        maps = read_density_zarr(image)
        for data, kwargs, kind in density_layers(image, maps=maps):
            channel = kwargs["metadata"]["channel"]
            kwargs["name"] = f"{section_folder.name} sections: {kwargs['name']}"
            kwargs["metadata"].update(
                {"senpath_role": "section_map", "patient_id": section_folder.name}
            )
            if maps.units[channel] == "call":  # 0/1 calls: no and yes
                kwargs["contrast_limits"] = (0.0, 1.0)
                kwargs["colormap"] = "red" if channel == "senescence_map" else "gray"
            layers.append((data, kwargs, kind))
    return layers


def spatial_layers(folder: str | Path) -> list[LayerData]:
    """Density maps and hot-spot fields of a results store; empty when ``senpath spatial`` has
    not written them."""
    from senpath.spatial import DENSITY

    folder = Path(folder)
    layers = density_layers(folder) if (folder / DENSITY / ".zattrs").is_file() else []
    hotspots = hotspot_layer(folder)
    if hotspots is not None:
        layers.append(hotspots)
    if layers and not _current(folder):
        from napari.utils.notifications import show_warning

        show_warning(
            f"{folder.name}: the density maps and hot-spots were computed before the cells last "
            f"changed (a new run or a review): run `senpath spatial {folder.parent}` again"
        )
        for _, kwargs, _ in layers:
            kwargs["name"] += " (stale)"
    return layers


def _current(folder: Path) -> bool:
    import senpath
    from senpath.spatial.slide import is_current, read_hotspots

    return is_current(senpath.load_results(folder), read_hotspots(folder))


def read_density(path: Any) -> list[LayerData]:
    """A ``density.ome.zarr`` folder as its map layers (the first one shown)."""
    layers = density_layers(str(path[0] if isinstance(path, list | tuple) else path))
    if layers:
        layers[0][1]["visible"] = True
    return layers
