"""Stage `resample`: every fold clip -> int16 at data.sample_rate, one flat array per fold.

The train fold is written in the recording layout of mobileast.data.reassemble (each
clip at its recording's slot for its slice index, gaps zero), the evaluate fold clip by
clip in canonical order; `index.csv` gives every clip's offset either way. So the audio
that later stages read is stored once: `reassemble` only writes the recordings table
over train.npy.

Workers take chunks of file names (in slot order) and write one int16 block per chunk
straight into the preallocated fold .npy: no audio goes through the pool's pipes, and
memory per worker is one block (at most `Runner.chunks`' max_chunk clips), whatever the
dataset's size. Every clip is stored with exactly clip_samples (1 s); clips within
tau22.DURATION_TOLERANCE of 1 s are zero-padded or trimmed and counted in the report. A
clip that fails to decode after passing the header check is left out of the index (with
on_bad_file: skip); its slot stays zero.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mobileast.config import progress
from mobileast.data import tau22
from mobileast.data.audio import load_mono, to_int16
from mobileast.data.parallel import Runner, runner
from mobileast.data.reassemble import REASSEMBLED_FOLD, plan_slots
from mobileast.data.store import FOLDS, INDEX_FILE, allocate_store, write_rows

INDEX_COLUMNS = tau22.CLIP_COLUMNS + ["offset", "length"]
LISTED = 100  # file names listed per informational report entry (skipped files: all)


def clip_samples(sample_rate: int) -> int:
    """Samples of one 1 s clip at `sample_rate`."""
    return sample_rate * tau22.CLIP_SECONDS


def _resample_task(task: tuple[str, list[str], int, str, int, np.ndarray]) -> tuple[str, np.ndarray, list[tuple[int, str]]]:
    """Resample a chunk of files straight into their slots of a store -> (store, slots, problems).

    Writing from the worker spares sending the audio back to the parent process.
    """
    root, names, sample_rate, store, data_offset, slots = task
    block = np.zeros((len(names), clip_samples(sample_rate)), np.int16)
    problems = []
    for row, name in enumerate(names):
        path = os.path.join(root, name)
        try:
            audio = load_mono(path, sample_rate)
        except (RuntimeError, ValueError) as error:  # libsndfile/soxr: content unreadable after all
            problems.append((row, tau22.unreadable(error, path, name)))
            continue
        audio = audio[:block.shape[1]]
        to_int16(audio, out=block[row, :len(audio)])
    write_rows(Path(store), data_offset, slots, block)
    return store, slots, problems


def fold_slots(clips: pd.DataFrame, fold: str) -> np.ndarray:
    """Slot (clip-sized row of the fold array) of each clip of `fold`: recording layout for train."""
    return plan_slots(clips) if fold == REASSEMBLED_FOLD else np.arange(len(clips), dtype=np.int64)


def resample_folds(dataset: tau22.Dataset, out_dir: Path, sample_rate: int, run: Runner,
                   on_bad_file: str) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """Write `<fold>.npy` for every fold into out_dir; return (index table, skipped files).

    Files that passed the header check but fail to decode are handled per on_bad_file.
    """
    clip = clip_samples(sample_rate)
    clips = dataset.clips
    names = clips.filename.to_numpy()
    slots = np.zeros(len(clips), np.int64)
    tasks, row_of = [], {}
    for fold in FOLDS:
        store = str(out_dir / f"{fold}.npy")
        rows = np.flatnonzero(clips.fold.to_numpy() == fold)
        slots[rows] = fold_slots(clips.iloc[rows], fold)
        data_offset = allocate_store(Path(store), (int(slots[rows].max()) + 1 if len(rows) else 0) * clip)
        rows = rows[np.argsort(slots[rows], kind="stable")]
        row_of[store] = dict(zip(slots[rows].tolist(), rows.tolist()))
        tasks += [(str(dataset.root), names[rows[start:stop]].tolist(), sample_rate, store, data_offset,
                   slots[rows[start:stop]]) for start, stop in run.chunks(len(rows))]
    problems: dict[int, str] = {}
    with progress(total=len(clips), desc="resample", unit="file") as bar:
        for store, done, failed in run.imap(_resample_task, tasks):
            problems.update({row_of[store][int(done[row])]: reason for row, reason in failed})
            bar.update(len(done))
    skipped = tau22.bad_files(clips, problems, on_bad_file, dataset.root)
    keep = np.ones(len(clips), bool)
    keep[list(problems)] = False
    index = clips.loc[keep, tau22.CLIP_COLUMNS].reset_index(drop=True)
    index["offset"] = slots[keep] * clip
    index["length"] = clip
    return index, skipped


def _listed(clips: pd.DataFrame, mask: pd.Series) -> dict[str, Any]:
    """Report entry: the count and the first LISTED file names of the masked clips."""
    return {"count": int(mask.sum()), "files": clips.filename[mask].head(LISTED).tolist()}


def build_store(root: Path, out_dir: Path, *, sample_rate: int, workers: int, on_bad_file: str) -> dict[str, Any]:
    """Validate the dataset at `root` and write the resampled store into out_dir.

    Writes `train.npy`, `evaluate.npy` and `index.csv` (see the project contract) and
    returns the stage report. It is deterministic and independent of where the dataset
    lies and of the number of workers (no timings, no paths), so a rerun, a moved
    dataset or another core count leaves the output hash, and hence the later stages,
    unchanged.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    with runner(workers) as run:
        dataset = tau22.load_dataset(root, run, on_bad_file)
        index, failed = resample_folds(dataset, out_dir, sample_rate, run, on_bad_file)
    index.to_csv(out_dir / INDEX_FILE, index=False, lineterminator="\n")
    clips = dataset.clips
    return {
        "sample_rate": sample_rate,
        "clip_samples": clip_samples(sample_rate),
        "layout": {"train": "recordings (slot = recording offset + slice index)", "evaluate": "clips"},
        "folds": {fold: _fold_summary(index[index.fold == fold]) for fold in FOLDS},
        "downmixed": _listed(clips, clips.channels > 1),
        "other_rates": {**_listed(clips, clips.samplerate != tau22.SOURCE_RATE),
                        "rates": _counts(clips.samplerate[clips.samplerate != tau22.SOURCE_RATE])},
        "duration_fitted": _listed(clips, clips.frames != clips.samplerate * tau22.CLIP_SECONDS),
        "skipped": dataset.skipped + failed,
    }


def _fold_summary(index: pd.DataFrame) -> dict[str, Any]:
    return {"clips": len(index), "devices": _counts(index.device), "scenes": _counts(index.scene_label)}


def _counts(values: pd.Series) -> dict[str, int]:
    return {str(value): int(count) for value, count in values.value_counts().sort_index().items()}
