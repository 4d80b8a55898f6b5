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

from mobileast.errors import InputError
from mobileast.data import tau22
from mobileast.data.store import INDEX_FILE, RECORDINGS_FILE, read_index

RECORDING_COLUMNS = ["recording", "scene_label", "identifier", "city", "location", "device", "fold",
                     "n_slices", "slices_present", "complete", "offset", "length", "clip_samples"]
RECORDING_FIELDS = ["scene_label", "city", "location", "segment", "device"]  # the key, in tau22.recording_key's order
REASSEMBLED_FOLD = "train"


def _recordings(clips: pd.DataFrame) -> tuple[np.ndarray, pd.Series]:
    """Each clip's recording as its number in key order, and the keys in that order.

    Grouped by the key's fields (codes of categorical columns, no string per clip); only
    the recordings' keys are spelled out, to sort them as the file names sort."""
    group = clips.groupby(RECORDING_FIELDS, sort=False, observed=True).ngroup().to_numpy()
    first = np.unique(group, return_index=True)[1]
    fields = clips.iloc[first]
    keys = tau22.recording_key(*(fields[field] for field in RECORDING_FIELDS)).reset_index(drop=True)
    order = np.argsort(keys.to_numpy(), kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank[group], keys.iloc[order].reset_index(drop=True)


def plan_slots(clips: pd.DataFrame) -> np.ndarray:
    """Per clip of one fold, its slot (clip-sized row) in the recording layout.

    Recordings are sorted by key, each occupying (last present slice + 1) slots.
    """
    recording, keys = _recordings(clips)
    slices = clips.slice.to_numpy(np.int64)
    n_slots = np.zeros(len(keys), np.int64)
    np.maximum.at(n_slots, recording, slices + 1)
    return (np.cumsum(n_slots) - n_slots)[recording] + slices


def recordings_table(clips: pd.DataFrame, clip: int, source: str = "the clip index") -> pd.DataFrame:
    """The recordings of one fold's clips, whose `offset` columns place them in the recording layout.

    Raises InputError if the clips of a recording are not at the slice positions of one
    recording (a store not written by plan_slots).
    """
    recording, keys = _recordings(clips)
    slices = clips.slice.to_numpy(np.int64)
    by_recording = pd.DataFrame({"recording": recording, "slice": slices,
                                 "start": clips.offset.to_numpy(np.int64) - slices * clip}).groupby("recording")
    stats = by_recording.agg(first=("start", "min"), last=("start", "max"), n_slices=("slice", "size"),
                             end=("slice", "max"))
    misplaced = (stats["first"] != stats["last"]).to_numpy()
    if misplaced.any():
        raise InputError(tau22.describe(f"recordings in {source} are not laid out by slice index "
                                        "(re-run the resample stage)", keys[misplaced].tolist()))
    first_clip = np.unique(recording, return_index=True)[1]
    recordings = clips.iloc[first_clip][RECORDING_COLUMNS[1:7]].reset_index(drop=True)
    recordings.insert(0, "recording", keys)
    recordings["n_slices"] = stats.n_slices.to_numpy()
    in_order = np.lexsort((slices, recording))
    present = np.split(slices[in_order], np.cumsum(stats.n_slices.to_numpy())[:-1])
    recordings["slices_present"] = [",".join(map(str, s)) for s in present]
    recordings["complete"] = recordings.n_slices == tau22.SLICES_PER_RECORDING
    recordings["offset"] = stats["first"].to_numpy()
    recordings["length"] = (stats.end.to_numpy() + 1) * clip
    recordings["clip_samples"] = clip
    return recordings[RECORDING_COLUMNS]


def build_table(resampled_dir: Path, out_dir: Path, clip: int) -> dict[str, Any]:
    """Write recordings.csv of the train recordings of a resampled store into out_dir; return the report."""
    index = read_index(resampled_dir)
    if not (index.length == clip).all():
        raise InputError(f"{resampled_dir}: every clip must have {clip} samples to be placed by slice index")
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
