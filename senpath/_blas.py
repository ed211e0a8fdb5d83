"""numpy's BLAS on one thread while senpath projects pixels onto stain vectors.

Every BLAS product senpath makes on pixels is tall and thin (``(N, 3) @ (3, S)``): threading it
gains nothing, and on a machine whose cores are busy (the CNN running in the tile pipeline's worker
thread, other processes) OpenBLAS's threads wait for each other: a 1.25 MP tile's deconvolution
took 0.27 s with its default threads on a loaded 2-core machine and 0.004 s on one thread, with
the same bits (``tests/test_stain_speed.py`` compares with the unlimited product). The limit is set
through ``threadpoolctl`` (the library scikit-learn uses for this) and restored when the last
caller leaves, so concurrent callers (dask threads, the pipeline) never restore it under each other.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

_lock = threading.Lock()
_depth = 0
_limiter: Any = None


@contextlib.contextmanager
def serial_blas() -> Iterator[None]:
    """Run the block with numpy's BLAS limited to one thread (other thread pools untouched)."""
    global _depth, _limiter
    with _lock:
        if _depth == 0:
            from threadpoolctl import threadpool_limits

            # looks up the BLAS libraries loaded now (numpy's, scipy's, OpenCV's; ~1 ms)
            _limiter = threadpool_limits(limits=1, user_api="blas")
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _limiter.restore_original_limits()
                _limiter = None
