"""Datasets and audio stores: the TAU22 layout, the demo generator and the data stages.

`data.source` selects where the dataset in TAU22 layout comes from:
- `demo`: the built-in generator writes it to `data/demo` (stage `demo_data`);
- `tau22`: `data.root` points at the unpacked TAU Urban Acoustic Scenes 2022 Mobile
  development set, which is read in place and never copied or hashed file by file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from mobileast.errors import ParamsError

SOURCES = ("demo", "tau22")
DEMO_ROOT = Path("data/demo")
RESAMPLED_DIR = Path("data/resampled")
RECORDINGS_DIR = Path("data/recordings")


def dataset_root(data_params: Mapping[str, Any], project: Path) -> Path:
    """The dataset root selected by the `data:` params, as an absolute path.

    For the demo source `data.root` must be `data/demo`, because dvc.yaml lists
    `${data.root}/meta.csv` as a dependency of `resample`: any other value would make
    DVC track files the stage does not read.
    """
    source, root = data_params["source"], Path(data_params["root"])
    if source not in SOURCES:
        raise ParamsError(f"data.source must be one of {', '.join(SOURCES)}, got {source!r}")
    if source == "demo" and root != DEMO_ROOT:
        raise ParamsError(f"data.source is demo, so data.root must be {DEMO_ROOT} (got {root}); "
                         "set data.source: tau22 to read a dataset elsewhere")
    return root if root.is_absolute() else project / root
