"""1 s slices -> 10 s recordings: where each train clip goes, and the recordings table.

A recording is the group of clips with the same key (file stem without the slice field);
its slice k lies at [offset + k * clip_samples, offset + (k + 1) * clip_samples) of the
train array, placed by slice index, never by row order. Missing slices stay zero, the
recording keeps its true length ((last present slice + 1) clips), and it is flagged
`complete=False`, so later stages crop only within present slices
(mobileast.data.crops.crop_grid).

The train audio is stored once: stage `resample` writes every train clip straight to
its slot of this layout (`plan_slots`) in data/resampled/train.npy, and stage
`reassemble` writes the table of recordings over that array (`recordings_table`), with
no copy of the audio. The evaluate fold is scored clip by clip and keeps the clip layout.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mobileast.data import tau22
from mobileast.data.store import INDEX_FILE, read_index

RECORDINGS_FILE = "recordings.csv"
RECORDING_COLUMNS = ["recording", "scene_label", "identifier", "city", "location", "device", "fold",
                     "n_slices", "slices_present", "complete", "offset", "length", "clip_samples"]
REASSEMBLED_FOLD = "train"


def _keys(clips: pd.DataFrame) -> pd.Series:
    return tau22.recording_key(clips.scene_label, clips.city, clips.location, clips.segment, clips.device)


def plan_slots(clips: pd.DataFrame) -> np.ndarray:
    """Per clip of one fold, its slot (clip-sized row) in the recording layout.

    Recordings are sorted by key, each occupying (last present slice + 1) slots.
    """
    key = _keys(clips)
    n_slots = clips.groupby(key, sort=True).slice.max() + 1
    first_slot = n_slots.cumsum() - n_slots
    return key.map(first_slot).to_numpy(np.int64) + clips.slice.to_numpy(np.int64)


def recordings_table(clips: pd.DataFrame, clip: int, source: str = "the clip index") -> pd.DataFrame:
    """The recordings of one fold's clips, whose `offset` columns place them in the recording layout.

    Raises ValueError if the clips of a recording are not at the slice positions of one
    recording (a store not written by plan_slots).
    """
    key = _keys(clips)
    start = clips.offset.to_numpy(np.int64) - clips.slice.to_numpy(np.int64) * clip
    groups = clips.assign(recording=key, start=start).groupby("recording", sort=True)
    misplaced = groups.start.nunique() > 1
    if misplaced.any():
        names = misplaced.index[misplaced].tolist()
        raise ValueError(tau22.describe(f"recordings in {source} are not laid out by slice index "
                                        "(re-run the resample stage)", names))
    recordings = groups[["scene_label", "identifier", "city", "location", "device", "fold"]].first()
    recordings["n_slices"] = groups.size()
    recordings["slices_present"] = groups.slice.agg(lambda s: ",".join(map(str, sorted(s))))
    recordings["complete"] = recordings.n_slices == tau22.SLICES_PER_RECORDING
    recordings["offset"] = groups.start.first()
    recordings["length"] = (groups.slice.max() + 1) * clip
    recordings["clip_samples"] = clip
    return recordings.reset_index()[RECORDING_COLUMNS]


def build_table(resampled_dir: Path, out_dir: Path, clip: int) -> dict[str, Any]:
    """Write recordings.csv of the train recordings of a resampled store into out_dir; return the report."""
    index = read_index(resampled_dir)
    if not (index.length == clip).all():
        raise ValueError(f"{resampled_dir}: every clip must have {clip} samples to be placed by slice index")
    clips = index[index.fold == REASSEMBLED_FOLD]
    recordings = recordings_table(clips, clip, str(Path(resampled_dir) / INDEX_FILE))
    out_dir.mkdir(parents=True, exist_ok=True)
    recordings.to_csv(out_dir / RECORDINGS_FILE, index=False, lineterminator="\n")
    return _report(recordings, clip)


def _report(recordings: pd.DataFrame, clip: int) -> dict[str, Any]:
    incomplete = recordings[~recordings.complete]
    return {
        "clip_samples": clip,
        "recordings": len(recordings),
        "clips": int(recordings.n_slices.sum()),
        "stored_slots": int(recordings.length.sum() // clip),
        "incomplete": [{"recording": row.recording, "missing_slices": _missing(row.slices_present)}
                       for row in incomplete.itertuples()],
    }


def _missing(slices_present: str) -> list[int]:
    present = {int(s) for s in slices_present.split(",")}
    return [s for s in range(tau22.SLICES_PER_RECORDING) if s not in present]


def read_recordings(store_dir: Path) -> pd.DataFrame:
    """The recordings.csv of a recordings table (text columns as str)."""
    table = pd.read_csv(Path(store_dir) / RECORDINGS_FILE, dtype=str, keep_default_na=False)
    table["complete"] = table.complete.map({"True": True, "False": False})
    return table.astype({"n_slices": int, "offset": np.int64, "length": np.int64, "clip_samples": int})
