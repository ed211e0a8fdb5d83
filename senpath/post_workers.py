"""Post-processing of tiles in worker processes, results in order (issue 18).

With the nucleus CNN on a GPU, the network outruns one core's watershed, deconvolution and
measurement (~5 MP/s a core here) many times over, so the tile engine
(:func:`senpath.tile_engine.analyze_tiles`, ``post_workers``) hands each tile's network maps to
worker processes. This module holds what that needs and nothing of the tiles themselves:

- how many workers (:func:`post_workers_on`, :func:`post_workers_for`; ``SENPATH_POST_WORKERS``);
- the process pools, spawned once per process and size and kept for its next slides;
- :func:`in_order`: a function of each item in the workers, up to twice as many items as workers
  at once, the results yielded in the items' order, the workers' warnings given again here; when
  the workers cannot start or die, the rest is done here (one warning, nothing lost).

Processes, not threads: the post-processing holds the GIL too often for threads to scale (2
threads: 1.26x the speed for 1.5x the CPU time, measured on 16 tiles). Spawned, not forked: the
parent holds threads and maybe CUDA, which a fork does not copy safely.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

_Item = TypeVar("_Item")
_Out = TypeVar("_Out")

__all__ = [
    "MAX_AUTO_POST_WORKERS",
    "POST_WORKERS_ENV",
    "in_order",
    "post_workers_for",
    "post_workers_on",
]

#: Environment variable that sets the number of post-processing workers (0 or more).
POST_WORKERS_ENV = "SENPATH_POST_WORKERS"
#: Most post-processing worker processes chosen automatically (each holds a tile or two, ~0.2 GB).
MAX_AUTO_POST_WORKERS = 8


def post_workers_for(segmenter: Any) -> int:
    """:func:`post_workers_on` the device ``segmenter``'s network runs on (``"cpu"`` when it
    has none)."""
    device = getattr(getattr(segmenter, "network", None), "device", None)
    return post_workers_on(str(getattr(device, "type", "cpu")))


def post_workers_on(device: str) -> int:
    """Post-processing worker processes for a slide whose network runs on ``device`` (a torch
    device type): ``$SENPATH_POST_WORKERS`` when set, else on a GPU one per core but two (the
    thread feeding the network, the analysing thread), at most :data:`MAX_AUTO_POST_WORKERS`,
    else 0.

    On a CPU the network's threads already hold the cores (0: no workers); a GPU runs it far
    faster than one core post-processes its maps (``benchmarks/bench_post_workers.py``). Inside
    a daemonic process (a dask worker), which may not start processes, 0.

    Raises
    ------
    ValueError
        When ``$SENPATH_POST_WORKERS`` is not a whole number >= 0.
    """
    import multiprocessing
    import os

    text = os.environ.get(POST_WORKERS_ENV, "").strip()
    if text:
        if not (text.isascii() and text.isdigit()):
            raise ValueError(
                f"{POST_WORKERS_ENV}={text!r} is not a number of worker processes: give 0 "
                "(post-process in the analysing thread) or more"
            )
        return int(text)
    if device == "cpu" or multiprocessing.current_process().daemon:
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(0, min((cores or 1) - 2, MAX_AUTO_POST_WORKERS))


def _relaying_warnings(
    work: Callable[[_Item], _Out], item: _Item
) -> tuple[_Out, list[tuple[str, type[Warning]]]]:
    """``work(item)`` in a worker process, with the warnings it gave (a tile's nucleus cut by the
    halo, ...), for the caller to give again: a worker's own would reach only its stderr, not
    the caller's filters or ``catch_warnings``."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = work(item)
    return out, [(str(w.message), w.category) for w in caught]


def _worker_start() -> None:
    """A post-processing process: OpenCV on one thread (the processes are the parallelism)."""
    import cv2

    cv2.setNumThreads(1)


#: The pools of this process by size, started once and kept for its next slides.
_POOLS: dict[int, Any] = {}
_POOLS_LOCK = threading.Lock()  # slides analysed in several threads share the pools


def _pool(workers: int) -> Any:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with _POOLS_LOCK:
        pool = _POOLS.get(workers)
        if pool is None:
            pool = ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_worker_start,
            )  # fmt: skip
            _POOLS[workers] = pool
        return pool


def in_order(work: Callable[[_Item], _Out], items: Iterator[_Item], workers: int) -> Iterator[_Out]:
    """``work(item)`` of each item in ``workers`` processes, the results in the items' order.

    Parameters
    ----------
    work : a module-level function (it is pickled by reference to the workers).
    items : pulled one at a time, up to ``2 * workers`` ahead of the result yielded; closed
        when this generator is (a cancelled slide).
    workers : worker processes (>= 1).

    Yields
    ------
    ``work(item)`` per item, in order. An error ``work`` raises for an item is raised here, for
    it. Workers that cannot start or die leave the rest to this thread (one warning).
    """
    import warnings
    from collections import deque
    from concurrent.futures import Future
    from concurrent.futures.process import BrokenProcessPool

    pending: deque[tuple[_Item, Future[Any] | None]] = deque()
    pool: Any = None

    def give_up(exc: BaseException) -> None:
        nonlocal pool
        warnings.warn(
            f"post-processing worker processes stopped ({type(exc).__name__}: {exc}); the "
            "remaining tiles are post-processed in the analysing thread, with the same results "
            f"(set {POST_WORKERS_ENV}=0 to skip the workers)",
            RuntimeWarning,
            stacklevel=3,
        )
        with _POOLS_LOCK:
            abandoned = _POOLS.pop(workers, None)
        if abandoned is not None:
            abandoned.shutdown(wait=False, cancel_futures=True)
        pool = False

    def submit(item: _Item) -> Future[Any] | None:
        nonlocal pool
        if pool is False:
            return None
        try:
            pool = pool or _pool(workers)
            return pool.submit(_relaying_warnings, work, item)  # type: ignore[no-any-return]
        except (BrokenProcessPool, OSError, RuntimeError, AssertionError) as exc:
            give_up(exc)
            return None

    def finish(item: _Item, future: Future[Any] | None) -> _Out:
        if future is not None:
            try:
                out, relayed = future.result()  # an error of work(item) is raised here
            except BrokenProcessPool as exc:
                if pool is not False:
                    give_up(exc)
            else:
                for message, category in relayed:
                    warnings.warn(message, category, stacklevel=3)
                return out  # type: ignore[no-any-return]
        return work(item)

    try:
        for item in items:
            pending.append((item, submit(item)))
            while pending and (len(pending) >= 2 * workers or _done(pending[0][1])):
                yield finish(*pending.popleft())
        while pending:
            yield finish(*pending.popleft())
    finally:
        for _, future in pending:
            if future is not None:
                future.cancel()
        close = getattr(items, "close", None)
        if close is not None:
            close()  # the network's worker thread: drop what has not started


def _done(future: Any) -> bool:
    return future is None or bool(future.done())
