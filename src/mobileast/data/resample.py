"""Stage `resample`: every fold clip -> int16 at data.sample_rate, one flat array per fold.

The train fold is written in the recording layout of mobileast.data.reassemble (each
clip at its recording's slot for its slice index, gaps zero), the evaluate fold clip by
clip in canonical order; `index.csv` gives every clip's offset either way. So the audio
that later stages read is stored once: `reassemble` only writes the recordings table
over train.npy.

Workers get the file names (as one bytes array, in slot order) and the slots once, take
index ranges into them as tasks, and write one int16 block per chunk straight into the
preallocated fold .npy: no audio goes through the pool's pipes, no per-file Python object
is held, and memory per worker is one block (at most `Runner.chunks`' max_chunk clips).
Every clip is stored with exactly clip_samples (1 s); clips within
tau22.DURATION_TOLERANCE of 1 s are zero-padded or trimmed and counted in the report. A
clip that fails to decode after passing the header check, or holds NaN or infinite
samples (a float WAV), is left out of the index (with on_bad_file: skip); its slot stays
zero.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mobileast.progress import progress
from mobileast.data import tau22
from mobileast.data.audio import NonFiniteAudio, load_mono, to_int16
from mobileast.data.parallel import runner, shared
from mobileast.data.reassemble import REASSEMBLED_FOLD, plan_slots
from mobileast.data.store import FOLDS, INDEX_FILE, allocate_store, write_rows

INDEX_COLUMNS = tau22.CLIP_COLUMNS + ["offset", "length"]
LISTED = 100  # file names listed per informational report entry (skipped files: all)


def clip_samples(sample_rate: int) -> int:
    """Samples of one 1 s clip at `sample_rate`."""
    return sample_rate * tau22.CLIP_SECONDS


def _resample_task(task: tuple[str, int, int, int]) -> tuple[int, int, list[tuple[int, str]]]:
    """Resample the shared files [start, stop) straight into their slots of a store -> (start, stop, problems).

    Writing from the worker spares sending the audio back to the parent process.
    """
    store, data_offset, start, stop = task
    root, names, slots, sample_rate = shared()
    block = np.zeros((stop - start, clip_samples(sample_rate)), np.int16)
    problems = []
    for row, name in enumerate(names[start:stop]):
        name = name.decode()
        path = os.path.join(root, name)
        try:
            audio = load_mono(path, sample_rate)
        except NonFiniteAudio as error:
            problems.append((start + row, str(error)))
            continue
        except (RuntimeError, ValueError) as error:  # libsndfile/soxr: content unreadable after all
            problems.append((start + row, tau22.unreadable(error, path, name)))
            continue
        audio = audio[:block.shape[1]]
        to_int16(audio, out=block[row, :len(audio)])
    write_rows(Path(store), data_offset, slots[start:stop], block)
    return start, stop, problems


def fold_slots(clips: pd.DataFrame, fold: str) -> np.ndarray:
    """Slot (clip-sized row of the fold array) of each clip of `fold`: recording layout for train."""
    return plan_slots(clips) if fold == REASSEMBLED_FOLD else np.arange(len(clips), dtype=np.int64)


def resample_folds(dataset: tau22.Dataset, out_dir: Path, sample_rate: int, workers: int,
                   on_bad_file: str) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """Write `<fold>.npy` for every fold into out_dir on `workers` processes; return (index
    table, skipped files). Files that passed the header check but fail to decode or hold
    non-finite samples are handled per on_bad_file."""
    clip = clip_samples(sample_rate)
    clips = dataset.clips
    slots = np.zeros(len(clips), np.int64)
    stores, orders = [], []
    for fold in FOLDS:
        rows = np.flatnonzero((clips.fold == fold).to_numpy())
        slots[rows] = fold_slots(clips.iloc[rows], fold)
        store = out_dir / f"{fold}.npy"
        stores.append((str(store), allocate_store(store, (int(slots[rows].max()) + 1 if len(rows) else 0) * clip)))
        orders.append(rows[np.argsort(slots[rows], kind="stable")])
    order = np.concatenate(orders)  # clip rows in the order of their slots, fold after fold
    begins = np.cumsum([0, *map(len, orders)])
    problems: dict[int, str] = {}
    work = (str(dataset.root), tau22.name_array(clips.filename.iloc[order]), slots[order], sample_rate)
    with runner(workers, shared=work) as run, progress(total=len(clips), desc="resample", unit="file") as bar:
        tasks = [(store, data_offset, begin + start, begin + stop)
                 for (store, data_offset), begin, rows in zip(stores, begins, orders)
                 for start, stop in run.chunks(len(rows))]
        for start, stop, failed in run.imap(_resample_task, tasks):
            problems.update({int(order[position]): reason for position, reason in failed})
            bar.update(stop - start)
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
    dataset = tau22.load_dataset(root, workers, on_bad_file)
    index, failed = resample_folds(dataset, out_dir, sample_rate, workers, on_bad_file)
    tau22.check_folds_left(index, dataset.skipped + failed, root)
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
    """{value: count} in value order, of the values present (a categorical also has absent ones)."""
    counts = values.value_counts()
    return {str(value): int(count) for value, count in sorted(counts[counts > 0].items())}
