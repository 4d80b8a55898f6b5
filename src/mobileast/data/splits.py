"""DCASE 2024's data-efficient splits of the train fold: which 10 s recordings the 5, 10,
25, 50 and 100 % splits hold, written once by stage `reassemble` for every later stage.

Official: the task's `split5.csv` .. `split100.csv` (tab-separated, column `filename`:
the 1 s clips of the split) in the folder `data.split_dir` of the dataset. The organisers
keep a 10 s recording wholly in or out of a split, make each split a subset of the larger
ones and split 100 the whole train fold; all three are checked, so that files of another
dataset version or a damaged download stop the stage with the file named. Clips the
resample stage left out (`data.on_bad_file: skip`) may be listed.

Drawn (a dataset without split files, e.g. the demo): the recordings are grouped by
(scene, device); each group's recordings, in a random order drawn from `data.split_seed`,
take the evenly spaced positions (i + u) / n in [0, 1) (systematic sampling, one random
start u per group), all recordings sorted by position form one order, and split N is its
first ceil(N % of the recordings). So every split is a prefix of the larger ones (nested)
and holds each (scene, device) group in proportion, to within one recording.

Either way the result is `splits.csv` beside recordings.csv: each train recording and the
smallest split holding it (mobileast.data.store.split_recordings reads it).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Collection

import numpy as np
import pandas as pd

from mobileast.errors import InputError, ParamsError
from mobileast.files import file_md5
from mobileast.data import tau22
from mobileast.data.reassemble import RECORDING_FIELDS, REASSEMBLED_FOLD
from mobileast.data.store import SPLITS, SPLITS_FILE, read_index, read_recordings, read_report, read_table

STRATA = ["scene_label", "device"]  # the groups a drawn split keeps in proportion


def split_file(split: int) -> str:
    return f"split{split}.csv"


def split_folder(root: Path, split_dir: str) -> Path:
    """The folder of the official split files: params `data.split_dir`, relative to the dataset root
    (dvc.yaml tracks `${data.root}/${data.split_dir}`, which an absolute path would break)."""
    if Path(split_dir).is_absolute() or ".." in Path(split_dir).parts:
        raise ParamsError(f"data.split_dir must be a folder inside data.root, relative to it (e.g. split_setup), "
                          f"got {split_dir!r}: copy the split files there")
    return Path(root) / split_dir


def official_files(folder: Path) -> dict[int, Path]:
    """{split: path} of the official split files in `folder`; {} if it holds none of them.

    Raises InputError if it holds some but not all five."""
    files = {split: folder / split_file(split) for split in SPLITS}
    present = {split: path for split, path in files.items() if path.is_file()}
    if present and len(present) < len(files):
        missing = [split_file(split) for split in files if split not in present]
        raise InputError(f"{folder} holds {', '.join(split_file(s) for s in present)} but not "
                         f"{', '.join(missing)}: give all five DCASE 2024 split files, or none to draw the splits")
    return present


def read_split_file(path: Path) -> pd.Series:
    """The clip file names an official split file lists."""
    table = read_table(path, sep="\t")
    if "filename" not in table.columns:
        raise InputError(f"{path}: expected a tab-separated column filename "
                         f"(found {', '.join(map(str, table.columns))})")
    if table.empty:
        raise InputError(f"{path} lists no files")
    return table.filename.astype(str)


def official_splits(recordings: pd.DataFrame, clips: pd.DataFrame, files: dict[int, Path],
                    skipped: Collection[str] = ()) -> np.ndarray:
    """The smallest split of each of `recordings` (the recordings table) by the official `files`.

    `clips`: the train clips of the resampled store (filename and the recording fields);
    `skipped`: file names the resample stage left out, which a split file may list.
    Raises InputError naming the file for a name that is no train clip, a recording only
    partly listed, a split not inside the next larger one, or a split 100 short of the fold.
    """
    keys = tau22.recording_key(*(clips[field] for field in RECORDING_FIELDS)).to_numpy()
    known = pd.Index(clips.filename.astype(str))
    smallest = pd.Series(0, index=recordings.recording.to_numpy())
    previous: tuple[Path, set[str]] | None = None
    for split in sorted(files):
        path = files[split]
        names = read_split_file(path)
        unknown = names[~names.isin(known) & ~names.isin(skipped)]
        if len(unknown):
            raise InputError(f"{path}: " + tau22.describe("files are no train clip of the dataset (another "
                                                          "dataset version?)", unknown.tolist()))
        listed = pd.DataFrame({"key": keys, "listed": known.isin(names)}).groupby("key").listed.agg(["sum", "size"])
        partly = listed.index[(listed["sum"] > 0) & (listed["sum"] < listed["size"])]
        if len(partly):
            raise InputError(f"{path}: " + tau22.describe("recordings are only partly listed (a split holds a "
                                                          "10 s recording wholly or not at all)", list(partly)))
        members = set(listed.index[listed["sum"] == listed["size"]])
        if previous is not None and not previous[1] <= members:
            raise InputError(f"{path}: " + tau22.describe(f"recordings of {previous[0].name} are missing (each "
                                                          "split must hold the smaller ones)",
                                                          sorted(previous[1] - members)))
        smallest[smallest.index.isin(members) & (smallest == 0)] = split
        previous = (path, members)
    absent = smallest.index[smallest == 0]
    if len(absent):
        raise InputError(f"{files[max(files)]}: " + tau22.describe("train recordings are not listed (the "
                                                                   "largest split is the whole train fold)",
                                                                   list(absent)))
    return smallest.to_numpy()


def drawn_splits(recordings: pd.DataFrame, seed: int) -> np.ndarray:
    """The smallest split of each of `recordings` (columns scene_label and device), drawn
    as the module docstring says: nested, in proportion per (scene, device), a function of
    `seed` and of the table's rows."""
    rng = np.random.default_rng(seed)
    group = recordings.groupby(STRATA, sort=True).ngroup().to_numpy()
    position = np.empty(len(recordings))
    for g in range(group.max() + 1 if len(group) else 0):
        members = rng.permutation(np.flatnonzero(group == g))
        position[members] = (np.arange(len(members)) + rng.random()) / len(members)
    order = np.lexsort((rng.random(len(recordings)), position))  # ties (equal positions) in random order
    rank = np.empty(len(recordings), np.int64)
    rank[order] = np.arange(len(recordings))
    sizes = np.array([-(-len(recordings) * split // 100) for split in SPLITS])  # ceil, in integers
    return np.array(SPLITS)[np.searchsorted(sizes, rank, side="right")]


def build_splits(resampled_dir: Path, recordings_dir: Path, folder: Path, seed: int) -> dict[str, Any]:
    """Write splits.csv for the recordings table of `recordings_dir` (official split files
    of `folder` if it has them, else drawn with `seed`); return the report."""
    recordings = read_recordings(recordings_dir)
    files = official_files(folder)
    if files:
        index = read_index(resampled_dir)
        skipped = {item["filename"] for item in read_report(resampled_dir / "report.json")["skipped"]}
        smallest = official_splits(recordings, index[index.fold == REASSEMBLED_FOLD], files, skipped)
        source = {"source": "official", "files": {path.name: file_md5(path) for path in files.values()}}
    else:
        smallest = drawn_splits(recordings, seed)
        source = {"source": "drawn", "seed": seed}
    pd.DataFrame({"recording": recordings.recording, "split": smallest}).to_csv(
        recordings_dir / SPLITS_FILE, index=False, lineterminator="\n")
    return {**source, "recordings": {str(split): int((smallest <= split).sum()) for split in SPLITS}}
