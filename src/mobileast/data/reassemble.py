"""Stage `reassemble`: 1 s clips of the resampled store -> 10 s recordings.

Clips are grouped by recording key (file stem without the slice field) and placed by
their slice index, never by row order: slice k of a recording lies at
[offset + k * clip_samples, offset + (k + 1) * clip_samples) of its fold array. Missing
slices stay zero, the recording keeps its true length ((last present slice + 1) clips),
and it is flagged `complete=False` in recordings.csv and listed in the report, so later
stages crop only within present slices (mobileast.data.crops.crop_grid).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mobileast.data import tau22
from mobileast.data.resample import read_index
from mobileast.data.store import FOLDS, copy_rows, create_store

RECORDINGS_FILE = "recordings.csv"
RECORDING_COLUMNS = ["recording", "scene_label", "identifier", "city", "location", "device", "fold",
                     "n_slices", "slices_present", "complete", "offset", "length", "clip_samples"]


def plan_recordings(clips: pd.DataFrame, clip: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Recordings table of one fold's clips and, per clip, its slot (clip-sized row) in the fold array.

    Recordings are sorted by key; each occupies (last present slice + 1) slots.
    """
    key = tau22.recording_key(clips.scene_label, clips.city, clips.location, clips.segment, clips.device)
    groups = clips.assign(recording=key).groupby("recording", sort=True)
    recordings = groups[["scene_label", "identifier", "city", "location", "device", "fold"]].first()
    recordings["n_slices"] = groups.size()
    recordings["slices_present"] = groups.slice.agg(lambda s: ",".join(map(str, sorted(s))))
    recordings["complete"] = recordings.n_slices == tau22.SLICES_PER_RECORDING
    n_slots = groups.slice.max() + 1
    first_slot = n_slots.cumsum() - n_slots
    recordings["offset"] = first_slot * clip
    recordings["length"] = n_slots * clip
    recordings["clip_samples"] = clip
    slots = key.map(first_slot).to_numpy() + clips.slice.to_numpy()
    return recordings.reset_index()[RECORDING_COLUMNS], slots


def build_store(resampled_dir: Path, out_dir: Path, clip: int) -> dict[str, Any]:
    """Write `<fold>.npy` and recordings.csv of the recordings store into out_dir; return the report."""
    index = read_index(resampled_dir)
    if not (index.length == clip).all():
        raise ValueError(f"{resampled_dir}: every clip must have {clip} samples to be placed by slice index")
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = []
    for fold in FOLDS:
        clips = index[index.fold == fold]
        recordings, slots = plan_recordings(clips, clip)
        source = np.load(Path(resampled_dir) / f"{fold}.npy", mmap_mode="r").reshape(-1, clip)
        target = create_store(out_dir / f"{fold}.npy", int(recordings.length.sum()))
        copy_rows(source, (clips.offset // clip).to_numpy(), target.reshape(-1, clip), slots)
        target.flush()
        del source, target
        tables.append(recordings)
    recordings = pd.concat(tables, ignore_index=True)
    recordings.to_csv(out_dir / RECORDINGS_FILE, index=False, lineterminator="\n")
    return _report(recordings, clip)


def _report(recordings: pd.DataFrame, clip: int) -> dict[str, Any]:
    incomplete = recordings[~recordings.complete]
    return {
        "clip_samples": clip,
        "folds": {fold: {"recordings": int((recordings.fold == fold).sum()),
                         "incomplete": int((incomplete.fold == fold).sum()),
                         "clips": int(recordings.n_slices[recordings.fold == fold].sum())}
                  for fold in FOLDS},
        "incomplete": [{"recording": row.recording, "fold": row.fold, "missing_slices": _missing(row.slices_present)}
                       for row in incomplete.itertuples()],
    }


def _missing(slices_present: str) -> list[int]:
    present = {int(s) for s in slices_present.split(",")}
    return [s for s in range(tau22.SLICES_PER_RECORDING) if s not in present]


def read_recordings(store_dir: Path) -> pd.DataFrame:
    """The recordings.csv of a recordings store (text columns as str)."""
    table = pd.read_csv(Path(store_dir) / RECORDINGS_FILE, dtype=str, keep_default_na=False)
    table["complete"] = table.complete.map({"True": True, "False": False})
    return table.astype({"n_slices": int, "offset": np.int64, "length": np.int64, "clip_samples": int})
