"""mobileast.progress: progress reporting in logs."""
from __future__ import annotations

import io
import re

from mobileast.progress import progress


class Log(io.StringIO):
    """stderr redirected to a file (a log, CI, a queued DVC experiment): no terminal."""

    def isatty(self) -> bool:
        return False


def test_progress_without_a_terminal_writes_lines_with_eta(monkeypatch):
    log = Log()
    monkeypatch.setattr("sys.stderr", log)
    assert list(progress(range(5), total=5, desc="resample", unit="file", interval=0)) == list(range(5))
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) >= 5
    assert lines[0].startswith("resample:   0%") and "0/5" in lines[0]
    assert re.search(r"resample: 100%.*5/5 \[\d\d:\d\d<\d\d:\d\d", lines[-1])  # elapsed<remaining


def test_progress_in_a_log_is_not_flooded(monkeypatch):
    log = Log()
    monkeypatch.setattr("sys.stderr", log)
    with progress(total=10_000, desc="check audio headers") as bar:
        for _ in range(10_000):
            bar.update(1)
    lines = log.getvalue().splitlines()
    assert len(lines) == 2 and "10000/10000" in lines[-1]  # start and end, nothing in between
