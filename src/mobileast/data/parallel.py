"""Process-pool helper for the data stages: map a function over chunks of files."""
from __future__ import annotations

import math
import multiprocessing
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from mobileast.errors import ParamsError

MAX_CHUNK = 128  # items of one task at most
_shared: Any = None  # what runner(shared=...) gave the workers


def worker_count(workers: int) -> int:
    """`workers`, or one per usable CPU core when it is 0."""
    if workers < 0:
        raise ParamsError(f"data.workers must be >= 0 (0 = one per core), got {workers}")
    return workers or len(os.sched_getaffinity(0))


def shared() -> Any:
    """In a task: the data given to `runner(shared=...)`."""
    return _shared


def _share(data: Any) -> None:
    global _shared
    _shared = data


@dataclass(frozen=True)
class Runner:
    """`imap(fn, tasks)` yields fn(task) for every task, in completion order."""

    workers: int
    imap: Callable[[Callable[[Any], Any], Iterable[Any]], Iterator[Any]]

    def chunks(self, n_items: int, max_chunk: int = MAX_CHUNK) -> list[tuple[int, int]]:
        """[start, stop) ranges splitting n_items into about 16 chunks per worker.

        A task per chunk amortises the pool's per-task cost (pickling, queueing) over
        many files; 16 chunks per worker keep the cores evenly busy until the end.
        """
        size = max(1, min(max_chunk, math.ceil(n_items / (16 * self.workers))))
        return [(start, min(start + size, n_items)) for start in range(0, n_items, size)]


@contextmanager
def runner(workers: int, shared: Any = None) -> Iterator[Runner]:
    """A Runner on `workers` processes (0 = one per core), whose tasks see `shared` (via `shared()`).

    Large per-file data (e.g. the file names as one numpy array) goes to every worker once
    as `shared`, so tasks can be index ranges into it: no per-file Python objects are
    pickled, queued or held per task. One worker runs in this process (no pool start-up,
    easy to debug); otherwise the pool is terminated on exit, so an error stops all work
    at once.
    """
    workers = worker_count(workers)
    if workers == 1:
        _share(shared)
        try:
            yield Runner(1, map)
        finally:
            _share(None)
        return
    with multiprocessing.Pool(workers, initializer=_share, initargs=(shared,)) as pool:
        yield Runner(workers, pool.imap_unordered)
