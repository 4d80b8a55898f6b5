"""Flat int16 audio stores (one 1-D .npy per fold), their tables (the clip index of a
resampled store, the recordings table over its train audio and its data-efficient splits)
and the JSON stage reports.

What the training stages read of the data: it imports nothing of the dataset validator
(mobileast.data.tau22), so a change there re-runs no training stage."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from pandas.api.types import union_categoricals

from mobileast.errors import InputError

FOLDS = ("train", "evaluate")
INDEX_FILE = "index.csv"  # the clip index of a resampled store
RECORDINGS_FILE = "recordings.csv"  # the recordings table (mobileast.data.reassemble)
SPLITS_FILE = "splits.csv"  # beside it: each train recording's smallest split (mobileast.data.splits)
SPLITS = (5, 10, 25, 50, 100)  # data.split: percent of the train fold, DCASE 2024's data-efficient splits
FULL_SPLIT = 100  # the whole train fold
INDEX_NUMBERS = {"slice": int, "offset": np.int64, "length": np.int64}
CHUNK_ROWS = 2000  # rows of a table parsed at a time: bounds the parser's transient memory


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


def compact(table: pd.DataFrame, numbers: Mapping[str, Any] = {}, text: Sequence[str] = ("filename",)) -> pd.DataFrame:
    """`table` (of object columns) with the `numbers` columns as those dtypes, the `text` columns
    kept as Python strings and every other column categorical (a few bytes per row)."""
    return table.astype({column: numbers.get(column, object if column in text else "category") for column in table})


def concat_compact(parts: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate frames of the same columns, uniting categorical columns (sorted categories)."""
    parts = list(parts)
    if len(parts) == 1:
        return parts[0]
    columns = {}
    for column in parts[0]:
        pieces = [part[column] for part in parts]
        columns[column] = pd.Series(union_categoricals(pieces, sort_categories=True)) \
            if isinstance(pieces[0].dtype, pd.CategoricalDtype) else pd.concat(pieces, ignore_index=True)
    return pd.DataFrame(columns)


def read_table(path: Path, numbers: Mapping[str, Any] = {}, sep: str = ",") -> pd.DataFrame:
    """A CSV table made `compact`, read CHUNK_ROWS rows at a time, so that reading the 230,350
    rows of TAU22's metadata needs a few tens of MB, not the hundreds that Python strings take."""
    with pd.read_csv(path, sep=sep, dtype=object, keep_default_na=False, chunksize=CHUNK_ROWS) as reader:
        parts = [compact(chunk, numbers) for chunk in reader]
    if not parts:  # header only
        return compact(pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False), numbers)
    return concat_compact(parts)


def read_index(store_dir: Path) -> pd.DataFrame:
    """The index.csv of a resampled store (filename as str, positions as int, the other text columns categorical)."""
    return read_table(Path(store_dir) / INDEX_FILE, INDEX_NUMBERS)


def read_recordings(store_dir: Path) -> pd.DataFrame:
    """The recordings.csv of a recordings table (text columns as str)."""
    table = pd.read_csv(Path(store_dir) / RECORDINGS_FILE, dtype=str, keep_default_na=False)
    table["complete"] = table.complete.map({"True": True, "False": False})
    return table.astype({"n_slices": int, "offset": np.int64, "length": np.int64, "clip_samples": int})


def split_recordings(store_dir: Path, split: int) -> set[str]:
    """The train recordings of split `split` (percent, one of SPLITS) by the splits.csv of a
    recordings table: those whose smallest split is at most `split` (the splits are nested)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(map(str, SPLITS))}, got {split!r}")
    path = Path(store_dir) / SPLITS_FILE
    if not path.is_file():
        raise InputError(f"{path}: file not found (re-run the reassemble stage: dvc repro reassemble)")
    table = pd.read_csv(path, dtype={"recording": str, "split": int}, keep_default_na=False)
    return set(table.recording[table.split <= split])


def read_report(path: Path) -> dict[str, Any]:
    """Read a stage report (written by mobileast.files.write_json)."""
    return json.loads(Path(path).read_text())
