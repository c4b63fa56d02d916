"""Decode and augment in a pool of worker processes, results back in shard order.

A GPU worker's teachers want 15–40 images/s at A = 30 views, while one thread renders about 10; the
rendering is pure (image bytes and parameters in, uint8 views out) and partly holds the GIL
(RandAugment's Python steps), so it scales with processes, not threads. Results come back in input
order, at most `depth` in flight, so output bytes and memory bounds are what they are without a pool.

Processes are started with `spawn` (a Beam worker holds threads; forking it is unsafe) once per
worker process and reused for every shard; each sets one torch thread and never loads a model.
"""

from __future__ import annotations

import atexit
import multiprocessing
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

_pools: dict[int, ProcessPoolExecutor] = {}


def _init_worker() -> None:
    import signal

    import torch

    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the job's to handle (shards/interrupt.py)


def _pool(workers: int) -> ProcessPoolExecutor:
    """This process's pool of `workers` feed processes, started on first use."""
    if workers not in _pools:
        _pools[workers] = ProcessPoolExecutor(
            max_workers=workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker
        )
    return _pools[workers]


@atexit.register
def _shutdown() -> None:
    for pool in _pools.values():
        pool.shutdown(wait=False, cancel_futures=True)
    _pools.clear()


def ordered_map(fn: Callable[[T], R], items: Iterator[T], *, workers: int, depth: int) -> Iterator[R]:
    """`fn(item)` for every item, yielded in input order.

    workers 0 runs `fn` right here; otherwise `fn` and each item must pickle, and at most `depth`
    items are submitted ahead of the one being yielded. A consumer that stops early cancels the rest.
    """
    if workers <= 0:
        yield from map(fn, items)
        return
    pool = _pool(workers)
    pending: deque[Future[R]] = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= max(1, depth):
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
