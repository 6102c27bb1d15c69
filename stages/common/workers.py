"""How many worker processes a stage uses, and running jobs on them."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, wait
from contextlib import contextmanager
from typing import TypeVar

J = TypeVar("J")
R = TypeVar("R")


def worker_count(requested: int) -> int:
    """`requested` workers, or one per core available to this process when it is 0."""
    if requested < 0:
        raise ValueError(f"workers must be >= 0, got {requested}")
    return requested or len(os.sched_getaffinity(0))


@contextmanager
def worker_pool(size: int) -> Iterator[ProcessPoolExecutor | None]:
    """A pool of `size` processes, or None (run in this process) when one would do."""
    if size <= 1:
        yield None
        return
    with ProcessPoolExecutor(size) as pool:
        yield pool


def run_jobs(
    fn: Callable[[J], R], jobs: Iterable[J], pool: ProcessPoolExecutor | None
) -> Iterator[R]:
    """fn over jobs, results in job order, on the pool (or here); a job's exception is raised here.

    Closing the generator early (a failure, a break) cancels the jobs not started and waits for
    the running ones, so the caller can then remove what they were writing.
    """
    if pool is None:
        yield from map(fn, jobs)
        return
    futures = [pool.submit(fn, job) for job in jobs]
    try:
        for future in futures:
            yield future.result()
    finally:
        for future in futures:
            future.cancel()
        wait(futures)
