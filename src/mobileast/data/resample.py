"""Stage `resample`: every fold clip -> int16 at data.sample_rate, one flat array per fold.

Workers take chunks of file names and write one int16 block per chunk straight into
the preallocated fold .npy: no audio goes through the pool's pipes, and there is no
per-file pandas work, so the stage costs little more than decoding and resampling.
Every clip is stored with exactly clip_samples (1 s); clips within
tau22.DURATION_TOLERANCE of 1 s are zero-padded or trimmed and counted in the report.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mobileast.data import tau22
from mobileast.data.audio import load_mono, to_int16
from mobileast.data.parallel import Runner, runner
from mobileast.data.store import FOLDS, allocate_store, copy_rows, create_store, write_rows

INDEX_FILE = "index.csv"
INDEX_COLUMNS = tau22.CLIP_COLUMNS + ["offset", "length"]
LISTED = 100  # file names listed per informational report entry (skipped files: all)


def clip_samples(sample_rate: int) -> int:
    """Samples of one 1 s clip at `sample_rate`."""
    return sample_rate * tau22.CLIP_SECONDS


def _resample_task(task: tuple[str, list[str], int, str, int, int]) -> tuple[str, int, list[tuple[int, str]]]:
    """Resample a chunk of files straight into rows of a store -> (store, first row, problems).

    Writing from the worker spares sending the audio back to the parent process.
    """
    root, names, sample_rate, store, data_offset, first_row = task
    block = np.zeros((len(names), clip_samples(sample_rate)), np.int16)
    problems = []
    for row, name in enumerate(names):
        try:
            audio = load_mono(os.path.join(root, name), sample_rate)
        except (RuntimeError, ValueError) as error:  # libsndfile/soxr: content unreadable after all
            problems.append((row, f"unreadable: {error}"))
            continue
        audio = audio[:block.shape[1]]
        to_int16(audio, out=block[row, :len(audio)])
    write_rows(Path(store), data_offset, first_row, block)
    return store, first_row, problems


def resample_folds(dataset: tau22.Dataset, out_dir: Path, sample_rate: int, run: Runner,
                   on_bad_file: str) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """Write `<fold>.npy` for every fold into out_dir; return (index table, skipped files).

    Files that passed the header check but fail to decode are handled per on_bad_file.
    """
    clip = clip_samples(sample_rate)
    clips = dataset.clips
    names = clips.filename.to_numpy()
    rows, tasks = {}, []
    for fold in FOLDS:
        store = str(out_dir / f"{fold}.npy")
        rows[store] = np.flatnonzero(clips.fold.to_numpy() == fold)
        data_offset = allocate_store(Path(store), len(rows[store]) * clip)
        tasks += [(str(dataset.root), names[rows[store][start:stop]].tolist(), sample_rate, store, data_offset, start)
                  for start, stop in run.chunks(len(rows[store]))]
    problems: dict[int, str] = {}
    for store, first_row, failed in run.imap(_resample_task, tasks):
        problems.update({int(rows[store][first_row + row]): reason for row, reason in failed})
    skipped = tau22.bad_files(clips, problems, on_bad_file, dataset.root)
    keep = np.ones(len(clips), bool)
    keep[list(problems)] = False
    for store, fold_rows in rows.items():
        if not keep[fold_rows].all():
            _keep_rows(Path(store), np.flatnonzero(keep[fold_rows]), clip)
    index = clips.loc[keep, tau22.CLIP_COLUMNS].reset_index(drop=True)
    index["offset"] = index.groupby("fold").cumcount() * clip
    index["length"] = clip
    return index, skipped


def _keep_rows(path: Path, keep: np.ndarray, clip: int) -> None:
    """Rewrite the store at `path` with only the clips at rows `keep`."""
    compact = path.with_name(f"compact-{path.name}")
    source = np.load(path, mmap_mode="r").reshape(-1, clip)
    target = create_store(compact, len(keep) * clip)
    copy_rows(source, keep, target.reshape(-1, clip), np.arange(len(keep)))
    target.flush()
    del source, target
    os.replace(compact, path)


def _listed(clips: pd.DataFrame, mask: pd.Series) -> dict[str, Any]:
    """Report entry: the count and the first LISTED file names of the masked clips."""
    return {"count": int(mask.sum()), "files": clips.filename[mask].head(LISTED).tolist()}


def build_store(root: Path, out_dir: Path, *, sample_rate: int, workers: int, on_bad_file: str) -> dict[str, Any]:
    """Validate the dataset at `root` and write the resampled store into out_dir.

    Writes `train.npy`, `evaluate.npy` and `index.csv` (see the project contract) and
    returns the stage report (deterministic: no timings, so an identical rerun leaves
    the output hash, and hence later stages, unchanged).
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


def read_index(store_dir: Path) -> pd.DataFrame:
    """The index.csv of a resampled store (text columns as str, positions as int)."""
    index = pd.read_csv(Path(store_dir) / INDEX_FILE, dtype=str, keep_default_na=False)
    return index.astype({"slice": int, "offset": np.int64, "length": np.int64})
