"""Regions widget: draw a slide's regions (tumour, stroma, an area to exclude) and save them into
its results store, which re-summarises the slide per region without analysing it again.

Regions are drawn in a Shapes layer over the slide (world coordinates in µm, as every senpath
layer); each shape's ``region`` feature is its name. *Save regions* hands the polygons to
:func:`senpath.region_store.save_drawn_regions`, which stores them as QuPath GeoJSON in level-0
pixels (``regions.geojson``), assigns every cell its region and rewrites the summary. A name among
the exclusion classes (``Exclude``, ``Necrosis``, ``Fold``, ``Pen``...) leaves its cells out of every
count.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from senpath_napari._layers import store_of

#: Name of the Shapes layer the regions are drawn in.
REGIONS_LAYER = "regions"
#: Shape types that are areas with vertices (an ellipse's data are its bounding box, not its outline).
_AREA_SHAPES = ("polygon", "rectangle")


def shapes_to_polygons(layer: Any) -> list[tuple[str, np.ndarray]]:
    """The regions of a Shapes layer as ``(name, (K, 2) (y, x) µm)`` pairs in world coordinates.

    Raises
    ------
    ValueError
        For a shape that is not an area (a line, a path, an ellipse) or has no name.
    """
    names = (
        layer.features["region"].astype(str).tolist()
        if "region" in layer.features.columns
        else [""] * len(layer.data)
    )
    scale = np.asarray(layer.scale, dtype=np.float64)[-2:]
    translate = np.asarray(layer.translate, dtype=np.float64)[-2:]
    out = []
    for i, (vertices, kind) in enumerate(zip(layer.data, layer.shape_type, strict=True)):
        if kind not in _AREA_SHAPES:
            raise ValueError(f"shape {i + 1} is a {kind}: draw regions as polygons or rectangles")
        name = names[i].strip()
        if not name or name == "nan":
            raise ValueError(f"shape {i + 1} has no region name: select it and type its name")
        yx = np.asarray(vertices, dtype=np.float64)[:, -2:] * scale + translate
        out.append((name, yx))
    return out


class RegionsWidget(QWidget):
    """Draw regions over a slide and save them into its results store."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.folder: Path | None = None
        layout = QVBoxLayout(self)
        self.store_label = QLabel("No results store: open one (File > Open, a results folder).")
        self.store_label.setWordWrap(True)
        layout.addWidget(self.store_label)
        choose = QPushButton("Choose results folder…")
        choose.clicked.connect(self._choose_store)
        layout.addWidget(choose)
        row = QHBoxLayout()
        row.addWidget(QLabel("Region name"))
        self.name_edit = QLineEdit("Tumor")
        self.name_edit.setToolTip(
            "Name of the next shapes drawn (and of the selected ones). Exclude, Necrosis, Fold, "
            "Pen: their cells are not counted."
        )
        self.name_edit.editingFinished.connect(self._name_changed)
        row.addWidget(self.name_edit)
        layout.addLayout(row)
        draw = QPushButton("Draw regions")
        draw.clicked.connect(self.regions_layer)
        layout.addWidget(draw)
        save = QPushButton("Save regions to the store")
        save.clicked.connect(self.save)
        layout.addWidget(save)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        layout.addWidget(self.status_label)
        layout.addStretch(1)
        for layer in self.viewer.layers:
            self._found(layer)
        self.viewer.layers.events.inserted.connect(lambda event: self._found(event.value))

    def _found(self, layer: Any) -> None:
        store = store_of(layer)
        if store and self.folder is None:
            self.open_store(store)

    def _choose_store(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "senpath results folder (results/<slide>)")
        if folder:
            self.open_store(folder)

    def open_store(self, folder: str | Path) -> None:
        """Use this store; its saved regions are drawn in the regions layer."""
        import senpath
        from senpath.region_store import region_text, stored_outlines_um

        self.folder = Path(folder)
        res = senpath.load_results(self.folder, corrections=False)
        self.store_label.setText(f"<b>{res.slide_id}</b> ({self.folder})")
        outlines = stored_outlines_um(res)
        if outlines:
            import pandas as pd

            layer = self.regions_layer()
            layer.data = []
            layer.add_polygons([yx for _, yx in outlines])
            layer.features = pd.DataFrame({"region": [n for n, _ in outlines]})
            layer.refresh_text()
        self.status_label.setText(region_text(res.summary))

    def regions_layer(self) -> Any:
        """The Shapes layer the regions are drawn in (added, in polygon mode, when missing)."""
        if REGIONS_LAYER in self.viewer.layers:
            return self.viewer.layers[REGIONS_LAYER]
        layer = self.viewer.add_shapes(
            name=REGIONS_LAYER,
            features={"region": np.array([], dtype=object)},
            feature_defaults={"region": self.name_edit.text().strip()},
            text={"string": "{region}", "size": 10, "color": "yellow"},
            edge_color="yellow",
            face_color=[1, 1, 0, 0.15],
            edge_width=2,
            units="µm",
        )
        layer.mode = "add_polygon"
        return layer

    def _name_changed(self) -> None:
        name = self.name_edit.text().strip()
        if REGIONS_LAYER not in self.viewer.layers or not name:
            return
        layer = self.viewer.layers[REGIONS_LAYER]
        layer.feature_defaults["region"] = name
        selected = sorted(layer.selected_data)
        if selected:  # renaming the selected shapes
            features = layer.features.copy()
            features.loc[selected, "region"] = name
            layer.features = features
            layer.refresh_text()

    def save(self) -> dict[str, Any] | None:
        """Save the drawn regions into the store; the store is re-summarised per region."""
        from senpath.region_store import region_text, save_drawn_regions

        if self.folder is None:
            self.status_label.setText("Open a results store first.")
            return None
        if REGIONS_LAYER not in self.viewer.layers or not len(
            self.viewer.layers[REGIONS_LAYER].data
        ):
            self.status_label.setText("Draw at least one region first (Draw regions).")
            return None
        try:
            polygons = shapes_to_polygons(self.viewer.layers[REGIONS_LAYER])
            record = save_drawn_regions(self.folder, polygons)
        except (ValueError, RuntimeError, OSError) as exc:  # one line, the widget stays usable
            self.status_label.setText(f"Not saved: {' '.join(str(exc).split())}")
            return None
        import senpath

        self.status_label.setText(
            "Saved. " + region_text(senpath.load_results(self.folder, corrections=False).summary)
        )
        return record
