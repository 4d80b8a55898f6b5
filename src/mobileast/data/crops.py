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

from mobileast.errors import ParamsError

from mobileast.labels import DEVICES, SCENES
from mobileast.data.store import FULL_SPLIT, read_index, read_recordings, split_recordings


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
    """Waveforms (B, samples) float32 in [-1, 1], class indices (B,), rows (B,) and, for
    clips of the dataset, their recording devices (B,) as indices into
    mobileast.labels.DEVICES (None for audio of unknown device, e.g. `predict`'s files).

    `row` indexes the fold's teacher-logits array: for recording crops
    row_offsets[recording] + grid index, for clips the clip's position in the fold.
    """

    wave: torch.Tensor
    label: torch.Tensor
    row: torch.Tensor
    device: torch.Tensor | None = None

    def _map(self, fn) -> Batch:
        return Batch(fn(self.wave), fn(self.label), fn(self.row), None if self.device is None else fn(self.device))

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Batch:
        """A copy in page-locked memory, for non-blocking copies to a GPU."""
        return self._map(torch.Tensor.pin_memory)

    def __len__(self) -> int:
        return len(self.label)


def _gather(audio: np.ndarray, starts: np.ndarray, length: int) -> torch.Tensor:
    """Rows audio[s : s + length] of an int16 memmap as float32 / 32768, shape (B, length)."""
    wave = np.stack([audio[s:s + length] for s in starts.tolist()]) if len(starts) else \
        np.zeros((0, length), dtype=np.int16)
    return torch.from_numpy(wave).float().div_(32768.0)


def _indices(values: pd.Series, names: Sequence[str], what: str) -> np.ndarray:
    """Names -> their positions in `names` (int64); an unknown name is a ValueError."""
    unknown = set(values) - set(names)
    if unknown:
        raise ValueError(f"unknown {what}: {sorted(unknown)}")
    return np.array(values.map({s: i for i, s in enumerate(names)}), dtype=np.int64)


def _labels(scene_labels: pd.Series) -> np.ndarray:
    """Scene names -> class index (position in SCENES)."""
    return _indices(scene_labels, SCENES, "scene labels")


def _devices(devices: pd.Series) -> np.ndarray:
    """Recording device names -> index (position in DEVICES)."""
    return _indices(devices, DEVICES, "devices")


class RecordingCrops:
    """Crops of the recordings of one fold: the table recordings.csv of `store_dir`
    (data/recordings/) over the array `<fold>.npy` of `audio_dir` (default: store_dir;
    in the pipeline data/resampled/, which holds the train fold in recording layout).

    Every epoch draws `crops_per_recording` crops per recording, each uniformly from
    the recording's crop grid, in a shuffled order that depends only on (seed, epoch):
    a resumed run sees the same crops as an uninterrupted one, and every process of a
    distributed run agrees on the plan and takes its own share of each batch.
    `split` (percent, data.split): only the recordings of that split of the fold, by the
    table's splits.csv (mobileast.data.splits); the full split reads all of them.
    `devices`: only the recordings of these devices (a per-device model's data); None: all.
    """

    def __init__(self, store_dir: str | Path, fold: str, crop_samples: int, hop_samples: int,
                 crops_per_recording: int = 1, seed: int = 0, audio_dir: str | Path | None = None,
                 split: int = FULL_SPLIT, devices: Sequence[str] | None = None):
        store_dir = Path(store_dir)
        table = read_recordings(store_dir)
        chosen = table["fold"] == fold
        if split != FULL_SPLIT:
            chosen &= table["recording"].isin(split_recordings(store_dir, split))
        if devices is not None:
            chosen &= table["device"].isin(list(devices))
        self.table = table[chosen].reset_index(drop=True)
        self.audio = np.load(Path(audio_dir or store_dir) / f"{fold}.npy", mmap_mode="r")
        self.crop_samples, self.crops_per_recording, self.seed = crop_samples, crops_per_recording, seed
        self.labels = _labels(self.table["scene_label"])
        self.devices = _devices(self.table["device"])
        grids = [crop_grid(s, c, crop_samples, hop_samples)
                 for s, c in zip(self.table["slices_present"], self.table["clip_samples"])]
        if any(len(g) == 0 for g in grids):
            raise ValueError(f"{store_dir}: a {fold} recording has no complete {crop_samples}-sample crop")
        self.clip_samples = int(self.table["clip_samples"].iloc[0]) if len(self.table) else 0
        self.grid_sizes = np.array([len(g) for g in grids], dtype=np.int64)
        self.row_offsets = np.concatenate([[0], np.cumsum(self.grid_sizes)])  # first grid row of each recording
        self.crop_starts = np.concatenate(grids) + np.repeat(self.table["offset"].to_numpy(np.int64),
                                                             self.grid_sizes)  # by row, in the fold array

    @property
    def n_rows(self) -> int:
        """Crops on the grid over all recordings (rows of the teacher-logits array)."""
        return int(self.row_offsets[-1])

    def grid(self) -> np.ndarray:
        """The crop grid as (n_rows, 2) int64: recording index, start sample within the recording.

        Saved beside the teacher logits (train_index.npy) so that the student can check
        that it crops exactly the audio the logits were computed on.
        """
        recordings = self.recording_of(np.arange(self.n_rows))
        within = self.crop_starts - self.table["offset"].to_numpy(np.int64)[recordings]
        return np.stack([recordings, within], axis=1)

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
        recordings = self.recording_of(rows)
        return Batch(_gather(self.audio, self.crop_starts[rows], self.crop_samples),
                     torch.from_numpy(self.labels[recordings]), torch.from_numpy(rows),
                     torch.from_numpy(self.devices[recordings]))


def hop_samples(hop_s: float, sample_rate: int, key: str) -> int:
    """A crop-grid hop in samples; params `key` must split the 1 s clip into whole hops of whole samples."""
    hop = float(hop_s) * sample_rate
    if not (hop >= 1 and abs(hop - round(hop)) < 1e-6 and sample_rate % round(hop) == 0):
        raise ParamsError(f"params.yaml: {key} = {hop_s} s must divide the 1 s clip into whole hops of whole "
                          f"samples at {sample_rate} Hz (e.g. 0.25, 0.1 or 0.05)")
    return round(hop)


def check_clip_rate(clip_samples: int, sample_rate: int, key: str, store: str | Path) -> None:
    """Stop if the store's 1 s clips are not `sample_rate` samples long (a params/store mismatch)."""
    if clip_samples != sample_rate:
        raise ParamsError(f"{key} is {sample_rate} Hz but {store} holds 1 s clips of "
                          f"{clip_samples} samples (written at data.sample_rate = {clip_samples} Hz): "
                          "set both to the same rate")


def train_crops(recordings: str | Path, resampled: str | Path, sample_rate: int, hop_s: float, key: str,
                rate_key: str, crops_per_recording: int = 1, seed: int = 0,
                split: int = FULL_SPLIT, devices: Sequence[str] | None = None) -> RecordingCrops:
    """The pipeline's 1 s crops of the train recordings of split `split` (data.split) on a
    `hop_s` grid (params `key`), checked against the stores: their clips must have
    `sample_rate` (params `rate_key`). `devices`: only those devices' recordings (RecordingCrops)."""
    crops = RecordingCrops(recordings, "train", sample_rate, hop_samples(hop_s, sample_rate, key),
                           crops_per_recording, seed, audio_dir=resampled, split=split, devices=devices)
    check_clip_rate(crops.clip_samples, sample_rate, rate_key, recordings)
    return crops


def evaluate_clips(resampled: str | Path, sample_rate: int, rate_key: str) -> ClipSource:
    """The evaluate fold's clips of the resampled store, checked to be at `sample_rate`."""
    clips = ClipSource(resampled, "evaluate")
    check_clip_rate(clips.clip_samples, sample_rate, rate_key, resampled)
    return clips


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
        self.devices = _devices(self.table["device"])

    def __len__(self) -> int:
        return len(self.table)

    def batches(self, batch_size: int, rank: int = 0, world_size: int = 1) -> Iterator[Batch]:
        """All clips in order, in batches of up to batch_size; with several processes, this
        one's share: batches rank, rank + world_size, ... (only those are read)."""
        for begin in range(rank * batch_size, len(self), world_size * batch_size):
            rows = np.arange(begin, min(begin + batch_size, len(self)))
            yield Batch(_gather(self.audio, self.offsets[rows], self.clip_samples),
                        torch.from_numpy(self.labels[rows]), torch.from_numpy(rows),
                        torch.from_numpy(self.devices[rows]))
