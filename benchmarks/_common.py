"""Helpers shared by the benchmark scripts (run as `python benchmarks/bench_<name>.py`)."""
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mobileast.files import project_root

from mobileast.params import load_params

RECORDINGS = Path("data/recordings")
RESAMPLED = Path("data/resampled")


@dataclass(frozen=True)
class Setup:
    """What every benchmark starts from: the project, its params, the recordings table and
    the resampled store (which holds the train recordings' audio)."""

    root: Path
    params: dict[str, Any]
    store: Path
    resampled: Path
    load_before: float  # 1-min load average when the benchmark started

    def load_note(self) -> str:
        """Machine load before and after, printed beside the figures (they depend on it)."""
        return (f"1-min load average {self.load_before:.1f} before, {os.getloadavg()[0]:.1f} after, "
                f"{os.cpu_count()} CPUs")


def setup(threads: int | None) -> Setup:
    """Set torch's thread count (if given) and load the project, or exit saying what is missing."""
    if threads:
        torch.set_num_threads(threads)
    load_before = os.getloadavg()[0]
    root = project_root()
    return Setup(root, load_params(), require_store(root), root / RESAMPLED, load_before)


def require_store(root: Path) -> Path:
    """data/recordings of the project (over data/resampled), or exit telling how to build it."""
    store = root / RECORDINGS
    if not ((store / "recordings.csv").is_file() and (root / RESAMPLED / "train.npy").is_file()):
        sys.exit(f"{store} or {root / RESAMPLED} is missing: run `dvc repro reassemble` first")
    return store
