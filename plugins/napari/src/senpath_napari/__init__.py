"""senpath-napari: open slides and senpath results in napari, review and correct cells and calls.

Contributions (``napari.yaml``): a reader for slides and results folders, sample slides, an analysis
widget (run senpath on the view, an ROI or the whole slide) and a review widget (flip calls, exclude
cells, edit nuclei, tune thresholds, step through near-threshold cells; every correction is written
to the store's audit log, see :mod:`senpath.corrections`). Uses ``qtpy`` only, never a Qt binding.
"""

__version__ = "0.1.0"
