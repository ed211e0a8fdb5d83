"""senpath: per-cell senescence marker measurement in whole-slide histology images.

The public API is small; heavy modules (torch, dask distributed) are imported lazily inside
functions so ``import senpath`` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["__version__", "analyze_slide", "open_slide", "run_batch", "load_results"]

if TYPE_CHECKING:
    from senpath.corrections import load_results
    from senpath.io import open_slide
    from senpath.pipeline import analyze_slide, run_batch

_LAZY = {
    "open_slide": "senpath.io",
    "analyze_slide": "senpath.pipeline",
    "run_batch": "senpath.pipeline",
    "load_results": "senpath.corrections",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'senpath' has no attribute {name!r}")
