"""Flat int16 audio stores (one 1-D .npy per fold) and the JSON stage reports."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

FOLDS = ("train", "evaluate")
INDEX_FILE = "index.csv"  # the clip index of a resampled store


def allocate_store(path: Path, n_samples: int) -> int:
    """Create a zero-filled int16 .npy of n_samples at `path`; return the byte offset of its data.

    The file is sized with truncate (sparse, zeros until written), so workers can
    write their rows at known offsets in any order.
    """
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": np.dtype(np.int16).str, "fortran_order": False, "shape": (n_samples,)})
        offset = f.tell()
        f.truncate(offset + n_samples * np.dtype(np.int16).itemsize)
    return offset


def write_rows(path: Path, data_offset: int, slots: np.ndarray, rows: np.ndarray) -> None:
    """Write int16 rows (n, row samples) into the store at `path`, row i at row slot slots[i].

    Consecutive slots are written with one call each, so a block of adjacent rows costs
    one write.
    """
    rows = np.ascontiguousarray(rows)
    breaks = np.flatnonzero(np.diff(slots) != 1) + 1
    with open(path, "r+b") as f:
        for run in np.split(np.arange(len(slots)), breaks):
            if not len(run):
                continue
            data = memoryview(rows[run[0]:run[-1] + 1]).cast("B")
            position = data_offset + int(slots[run[0]]) * rows[0].nbytes
            while data:
                written = os.pwrite(f.fileno(), data, position)
                data, position = data[written:], position + written


def read_index(store_dir: Path) -> pd.DataFrame:
    """The index.csv of a resampled store (text columns as str, positions as int)."""
    index = pd.read_csv(Path(store_dir) / INDEX_FILE, dtype=str, keep_default_na=False)
    return index.astype({"slice": int, "offset": np.int64, "length": np.int64})


def read_report(path: Path) -> dict[str, Any]:
    """Read a stage report (written by mobileast.config.write_json)."""
    return json.loads(Path(path).read_text())
