"""How many worker processes a stage uses, and running jobs on them."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, wait
from contextlib import contextmanager
from typing import TypeVar

from stages.common.errors import StageError

J = TypeVar("J")
R = TypeVar("R")

MAX_PER_CORE = 8


def worker_count(requested: int, jobs: int | None = None, key: str = "workers") -> int:
    """Processes to use: `requested`, or one per core available when 0; never more than `jobs`.

    `key` is the params key, for the error. A pool larger than the work only costs memory (100,000
    asked for once started 5,459 processes before memory ran out), so it is capped at `jobs`, and
    more than `MAX_PER_CORE` processes per core is refused as a typo.
    """
    cores = len(os.sched_getaffinity(0))
    if isinstance(requested, bool) or not 0 <= requested <= MAX_PER_CORE * cores:
        raise StageError(
            f"params.yaml: {key}",
            f"must be 0 (one per core) to {MAX_PER_CORE * cores} ({MAX_PER_CORE} per core), "
            f"got {requested}",
        )
    count = requested or cores
    return max(1, min(count, jobs)) if jobs is not None else count


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
