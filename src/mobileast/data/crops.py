"""Batches of 1 s waveforms read straight from the large int16 stores.

`RecordingCrops` draws training crops of the 10 s recordings on the same grid of
offsets as the teacher-logit dump (`crop_grid`), so a crop's `row` is the row of its
teacher logits. `ClipSource` walks the resampled 1 s clips, e.g. of the evaluate fold.
Both gather a batch with one slice per crop from a memory map: no per-clip files, no
worker processes (a batch of 32 crops takes well under a millisecond).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from mobileast.config import SCENES
from mobileast.data.reassemble import read_recordings
from mobileast.data.resample import read_index


def parse_slices(slices_present: str | Sequence[int]) -> np.ndarray:
    """'0,1,2,4' (as in recordings.csv) or a sequence of ints -> int64 array."""
    if isinstance(slices_present, str):
        slices_present = [int(s) for s in slices_present.split(",") if s.strip()]
    return np.asarray(slices_present, dtype=np.int64)


def crop_grid(slices_present: str | Sequence[int], clip_samples: int, crop_samples: int,
              hop_samples: int) -> np.ndarray:
    """Start samples of every crop on the hop grid lying entirely inside present slices.

    Slice k of a recording covers [k * clip_samples, (k + 1) * clip_samples); the
    recording ends with its last present slice, and missing slices are zero-filled
    gaps that no crop may touch. Teacher logits and student crops share this grid.
    """
    if min(clip_samples, crop_samples, hop_samples) <= 0:
        raise ValueError("clip, crop and hop lengths must be positive")
    slices = parse_slices(slices_present)
    if slices.size == 0:
        return np.zeros(0, dtype=np.int64)
    present = np.zeros(slices.max() + 1, dtype=bool)
    present[slices] = True
    starts = np.arange(0, present.size * clip_samples - crop_samples + 1, hop_samples, dtype=np.int64)
    first, last = starts // clip_samples, (starts + crop_samples - 1) // clip_samples
    missing_before = np.concatenate([[0], np.cumsum(~present)])  # missing slices in [0, k)
    return starts[missing_before[last + 1] == missing_before[first]]


@dataclass
class Batch:
    """Waveforms (B, samples) float32 in [-1, 1], class indices (B,) and rows (B,).

    `row` indexes the fold's teacher-logits array: for recording crops
    row_offsets[recording] + grid index, for clips the clip's position in the fold.
    """

    wave: torch.Tensor
    label: torch.Tensor
    row: torch.Tensor

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.wave.to(device), self.label.to(device), self.row.to(device))

    def __len__(self) -> int:
        return len(self.label)


def _gather(audio: np.ndarray, starts: np.ndarray, length: int) -> torch.Tensor:
    """Rows audio[s : s + length] of an int16 memmap as float32 / 32768, shape (B, length)."""
    wave = np.stack([audio[s:s + length] for s in starts.tolist()]) if len(starts) else \
        np.zeros((0, length), dtype=np.int16)
    return torch.from_numpy(wave).float().div_(32768.0)


def _labels(scene_labels: pd.Series) -> np.ndarray:
    """Scene names -> class index (position in SCENES)."""
    unknown = set(scene_labels) - set(SCENES)
    if unknown:
        raise ValueError(f"unknown scene labels: {sorted(unknown)}")
    return np.array(scene_labels.map({s: i for i, s in enumerate(SCENES)}), dtype=np.int64)


class RecordingCrops:
    """Crops of one fold of the recordings store (data/recordings/).

    Every epoch draws `crops_per_recording` crops per recording, each uniformly from
    the recording's crop grid, in a shuffled order that depends only on (seed, epoch):
    a resumed run sees the same crops as an uninterrupted one, and every process of a
    distributed run agrees on the plan and takes its own share of each batch.
    """

    def __init__(self, store_dir: str | Path, fold: str, crop_samples: int, hop_samples: int,
                 crops_per_recording: int = 1, seed: int = 0):
        store_dir = Path(store_dir)
        table = read_recordings(store_dir)
        self.table = table[table["fold"] == fold].reset_index(drop=True)
        self.audio = np.load(store_dir / f"{fold}.npy", mmap_mode="r")
        self.crop_samples, self.crops_per_recording, self.seed = crop_samples, crops_per_recording, seed
        self.labels = _labels(self.table["scene_label"])
        grids = [crop_grid(s, c, crop_samples, hop_samples)
                 for s, c in zip(self.table["slices_present"], self.table["clip_samples"])]
        if any(len(g) == 0 for g in grids):
            raise ValueError(f"{store_dir}: a {fold} recording has no complete {crop_samples}-sample crop")
        self.grid_sizes = np.array([len(g) for g in grids], dtype=np.int64)
        self.row_offsets = np.concatenate([[0], np.cumsum(self.grid_sizes)])  # = teacher train_index
        self.crop_starts = np.concatenate(grids) + np.repeat(self.table["offset"].to_numpy(np.int64),
                                                             self.grid_sizes)  # by row, in the fold array

    @property
    def n_rows(self) -> int:
        """Crops on the grid over all recordings (rows of the teacher-logits array)."""
        return int(self.row_offsets[-1])

    def epoch_rows(self, epoch: int) -> np.ndarray:
        """The epoch's crops as grid rows, in training order (a function of seed and epoch)."""
        rng = np.random.default_rng([self.seed, epoch])
        recordings = np.repeat(np.arange(len(self.table)), self.crops_per_recording)
        grid_index = (rng.random(len(recordings)) * self.grid_sizes[recordings]).astype(np.int64)
        return rng.permutation(self.row_offsets[recordings] + grid_index)

    def steps_per_epoch(self, batch_size: int) -> int:
        """Full batches per epoch (the incomplete last batch is dropped)."""
        return len(self.table) * self.crops_per_recording // batch_size

    def epoch_batches(self, epoch: int, batch_size: int, rank: int = 0,
                      world_size: int = 1) -> Iterator[Batch]:
        """This process's part of each full batch of the epoch: batch_size // world_size crops."""
        if batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} not divisible by {world_size} processes")
        local = batch_size // world_size
        plan = self.epoch_rows(epoch)[:self.steps_per_epoch(batch_size) * batch_size]
        for rows in plan.reshape(-1, world_size, local)[:, rank]:
            yield self.load(rows)

    def grid_batches(self, batch_size: int) -> Iterator[Batch]:
        """Every crop of the grid in row order (for dumping teacher logits)."""
        for begin in range(0, self.n_rows, batch_size):
            yield self.load(np.arange(begin, min(begin + batch_size, self.n_rows)))

    def recording_of(self, rows: np.ndarray) -> np.ndarray:
        """Recording index (position in the fold's table) of grid rows."""
        return np.searchsorted(self.row_offsets, rows, side="right") - 1

    def load(self, rows: np.ndarray) -> Batch:
        """The crops at the given grid rows."""
        rows = np.asarray(rows, dtype=np.int64)
        return Batch(_gather(self.audio, self.crop_starts[rows], self.crop_samples),
                     torch.from_numpy(self.labels[self.recording_of(rows)]), torch.from_numpy(rows))


class ClipSource:
    """The 1 s clips of one fold of the resampled store (data/resampled/), in array order."""

    def __init__(self, store_dir: str | Path, fold: str):
        store_dir = Path(store_dir)
        table = read_index(store_dir)
        self.table = table[table["fold"] == fold].reset_index(drop=True)
        lengths = self.table["length"].unique()
        if len(lengths) > 1:
            raise ValueError(f"{store_dir}: {fold} clips differ in length: {sorted(lengths)}")
        self.clip_samples = int(lengths[0]) if len(lengths) else 0
        self.audio = np.load(store_dir / f"{fold}.npy", mmap_mode="r")
        self.offsets = self.table["offset"].to_numpy(np.int64)
        self.labels = _labels(self.table["scene_label"])

    def __len__(self) -> int:
        return len(self.table)

    def batches(self, batch_size: int) -> Iterator[Batch]:
        """All clips in order, in batches of up to batch_size."""
        for begin in range(0, len(self), batch_size):
            rows = np.arange(begin, min(begin + batch_size, len(self)))
            yield Batch(_gather(self.audio, self.offsets[rows], self.clip_samples),
                        torch.from_numpy(self.labels[rows]), torch.from_numpy(rows))
