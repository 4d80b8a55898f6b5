"""Helpers shared by the benchmark scripts (run as `python benchmarks/bench_<name>.py`)."""
import sys
from pathlib import Path

RECORDINGS = Path("data/recordings")


def require_store(root: Path) -> Path:
    """data/recordings of the project, or exit telling how to build it."""
    store = root / RECORDINGS
    if not ((store / "recordings.csv").is_file() and (store / "train.npy").is_file()):
        sys.exit(f"{store} is missing: run `dvc repro reassemble` first")
    return store
