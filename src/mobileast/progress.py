"""Progress bars for long loops, readable both on a terminal and in a log."""
from __future__ import annotations

import sys
from typing import Any, Iterable, TextIO

from tqdm import tqdm

LOG_PROGRESS_INTERVAL = 60.0  # s between progress lines when stderr is no terminal


class _Lines:
    """A stream for tqdm that writes every status as a line of its own: a log (CI, a
    queued `dvc exp run`) gets readable lines instead of carriage-return redraws."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, text: str) -> int:
        line = text.replace("\r", "").rstrip()
        if line:
            self.stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def progress(iterable: Iterable[Any] | None = None, *, interval: float = LOG_PROGRESS_INTERVAL,
             **kwargs: Any) -> tqdm:
    """A tqdm progress bar with ETA on stderr for a long loop (kwargs: tqdm's, e.g. total, desc, unit).

    On a terminal it is redrawn in place (at most once a second); otherwise it writes
    a line when the loop starts, at most every `interval` seconds, and when it ends, so
    logs show progress and ETA without being flooded.
    """
    if sys.stderr.isatty():
        return tqdm(iterable, mininterval=1, **kwargs)
    return tqdm(iterable, file=_Lines(sys.stderr), mininterval=interval, maxinterval=interval, **kwargs)
