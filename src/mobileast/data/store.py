"""Flat int16 audio stores (one 1-D .npy per fold) and the JSON stage reports."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

FOLDS = ("train", "evaluate")
COPY_BLOCK = 2048  # rows per block when gathering rows between memory-mapped stores


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


def create_store(path: Path, n_samples: int) -> np.ndarray:
    """A new zero-filled int16 .npy of n_samples, memory-mapped for writing."""
    offset = allocate_store(path, n_samples)
    if n_samples == 0:  # an empty file cannot be memory-mapped
        return np.zeros(0, np.int16)
    return np.memmap(path, np.int16, "r+", offset, (n_samples,))


def write_rows(path: Path, data_offset: int, first_row: int, rows: np.ndarray) -> None:
    """Write the C-contiguous int16 rows (n, row samples) into the store at `path` from row first_row on."""
    data = memoryview(rows).cast("B")
    position = data_offset + first_row * rows[0].nbytes
    with open(path, "r+b") as f:
        while data:
            written = os.pwrite(f.fileno(), data, position)
            data, position = data[written:], position + written


def copy_rows(src: np.ndarray, src_rows: np.ndarray, dst: np.ndarray, dst_rows: np.ndarray) -> None:
    """dst[dst_rows] = src[src_rows] for 2-D (rows, samples) arrays, in blocks.

    Blocks bound the memory of the fancy-indexed copy; rows are visited in source
    order so a memory-mapped source is read sequentially.
    """
    order = np.argsort(src_rows, kind="stable")
    for start in range(0, len(order), COPY_BLOCK):
        block = order[start:start + COPY_BLOCK]
        dst[dst_rows[block]] = src[src_rows[block]]


def read_report(path: Path) -> dict[str, Any]:
    """Read a stage report (written by mobileast.config.write_json)."""
    return json.loads(Path(path).read_text())
