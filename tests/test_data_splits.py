"""DCASE 2024's data-efficient splits: drawn ones nested, in proportion per scene and device,
seeded; official split files read, checked and followed by the training crops."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mobileast.data import reassemble, resample, splits
from mobileast.data.crops import RecordingCrops, train_crops
from mobileast.data.store import SPLITS, SPLITS_FILE, read_index, read_recordings, split_recordings
from mobileast.errors import InputError, ParamsError
from mobileast.files import write_json
from mobileast.labels import SCENES

RATE = 8000
SIZES = {"a": 41, "b": 7, "c": 3, "s1": 1}  # recordings per scene and device: groups large and tiny


def recordings_table(sizes: dict[str, int] = SIZES) -> pd.DataFrame:
    rows = [(f"{scene}-{device}-{i}", scene, device) for scene in SCENES for device, n in sizes.items()
            for i in range(n)]
    return pd.DataFrame(rows, columns=["recording", "scene_label", "device"])


def members(smallest: np.ndarray, split: int) -> np.ndarray:
    return np.flatnonzero(smallest <= split)


def test_drawn_splits_are_nested_prefixes_of_the_exact_size():
    table = recordings_table()
    smallest = splits.drawn_splits(table, seed=3)
    assert set(smallest) <= set(SPLITS) and (smallest <= 100).all()
    for split in SPLITS:
        assert len(members(smallest, split)) == math.ceil(len(table) * split / 100)
    for small, large in zip(SPLITS, SPLITS[1:]):
        assert set(members(smallest, small)) < set(members(smallest, large))


def test_drawn_splits_keep_every_scene_and_device_in_proportion():
    table = recordings_table()
    for seed in range(5):
        smallest = splits.drawn_splits(table, seed)
        for split in SPLITS:
            counts = table.iloc[members(smallest, split)].groupby(["scene_label", "device"]).size()
            counts = counts.reindex(pd.MultiIndex.from_product([SCENES, list(SIZES)]), fill_value=0)
            expected = np.array([SIZES[device] * split / 100 for _, device in counts.index])
            assert np.abs(counts.to_numpy() - expected).max() < 1.5, (seed, split)
    # every scene's share of a split is its share of the fold, to within a recording per device group
    scenes = table.iloc[members(splits.drawn_splits(table, 0), 25)].scene_label.value_counts()
    assert scenes.max() - scenes.min() <= len(SIZES)


def test_drawn_splits_follow_the_seed_only():
    table = recordings_table()
    first = splits.drawn_splits(table, 7)
    assert np.array_equal(first, splits.drawn_splits(table.copy(), 7))
    assert not np.array_equal(first, splits.drawn_splits(table, 8))
    # a group of one recording is in the small splits as often as its share says, over seeds
    lone = table.index[table.device == "s1"].to_numpy()
    in_ten = np.mean([(splits.drawn_splits(table, seed)[lone] <= 10).mean() for seed in range(40)])
    assert 0.04 < in_ten < 0.2


@pytest.fixture
def stores(tiny_dataset: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    """(dataset root, resampled store, recordings table) of the tiny demo dataset."""
    resampled, recordings = tmp_path / "resampled", tmp_path / "recordings"
    report = resample.build_store(tiny_dataset, resampled, sample_rate=RATE, workers=1, on_bad_file="error")
    write_json(resampled / "report.json", report)
    reassemble.build_table(resampled, recordings, RATE)
    return tiny_dataset, resampled, recordings


def clips_of(resampled: Path) -> pd.DataFrame:
    """The train clips of the store with their recording keys."""
    index = read_index(resampled)
    index = index[index.fold == "train"].reset_index(drop=True)
    index["key"] = [f"{r.scene_label}-{r.city}-{r.location}-{r.segment}-{r.device}" for r in index.itertuples()]
    return index


def write_official(folder: Path, resampled: Path, sizes: dict[int, int]) -> dict[int, list[str]]:
    """split<N>.csv listing every clip of the first sizes[N] recordings (key order); returns the keys."""
    clips = clips_of(resampled)
    keys = sorted(clips.key.unique())
    folder.mkdir(parents=True, exist_ok=True)
    chosen = {}
    for split, n in sizes.items():
        chosen[split] = keys[:n]
        names = clips.filename[clips.key.isin(keys[:n])]
        pd.DataFrame({"filename": names, "scene_label": "x"}).to_csv(folder / f"split{split}.csv", sep="\t",
                                                                      index=False)
    return chosen


def nested_sizes(n: int) -> dict[int, int]:
    return {5: 1, 10: 2, 25: 4, 50: max(5, n // 2), 100: n}


def test_official_split_files_decide_the_splits_and_the_crops_follow(stores):
    root, resampled, recordings = stores
    n = len(read_recordings(recordings))
    chosen = write_official(root / "split_setup", resampled, nested_sizes(n))
    report = splits.build_splits(resampled, recordings, splits.split_folder(root, "split_setup"), seed=0)
    assert report["source"] == "official" and set(report["files"]) == {f"split{s}.csv" for s in SPLITS}
    assert report["recordings"] == {str(split): len(keys) for split, keys in chosen.items()}
    for split, keys in chosen.items():
        assert split_recordings(recordings, split) == set(keys)
    full = train_crops(recordings, resampled, RATE, 0.25, "logits.hop_s", "features.sample_rate", 2, seed=1)
    quarter = train_crops(recordings, resampled, RATE, 0.25, "logits.hop_s", "features.sample_rate", 2, seed=1,
                          split=25)
    assert sorted(quarter.table.recording) == chosen[25]
    assert set(quarter.table.recording) < set(full.table.recording)
    # the split's crops are crops of its recordings: the same audio as the full fold's at the same starts
    full_rows = {tuple(row): i for i, row in enumerate(np.column_stack([
        full.table.recording.to_numpy()[full.recording_of(np.arange(full.n_rows))], full.grid()[:, 1]]))}
    rows = quarter.epoch_rows(0)
    batch = quarter.load(rows)
    keys = quarter.table.recording.to_numpy()[quarter.recording_of(rows)]
    same = full.load(np.array([full_rows[(k, s)] for k, s in zip(keys, quarter.grid()[rows, 1])]))
    assert np.array_equal(batch.wave.numpy(), same.wave.numpy()) and np.array_equal(batch.label, same.label)


def test_the_full_split_is_the_whole_fold_in_the_same_order(stores):
    _, resampled, recordings = stores
    splits.build_splits(resampled, recordings, resampled / "no-split-files", seed=0)
    plain = RecordingCrops(recordings, "train", RATE, 2000, 3, seed=4, audio_dir=resampled)
    full = RecordingCrops(recordings, "train", RATE, 2000, 3, seed=4, audio_dir=resampled, split=100)
    assert np.array_equal(plain.epoch_rows(2), full.epoch_rows(2)) and np.array_equal(plain.grid(), full.grid())
    drawn = pd.read_csv(recordings / SPLITS_FILE)
    assert drawn.recording.tolist() == read_recordings(recordings).recording.tolist()
    smaller = RecordingCrops(recordings, "train", RATE, 2000, 3, seed=4, audio_dir=resampled, split=50)
    assert set(smaller.table.recording) == set(drawn.recording[drawn.split <= 50]) < set(plain.table.recording)


def break_file(path: Path, edit) -> None:
    table = pd.read_csv(path, sep="\t")
    edit(table).to_csv(path, sep="\t", index=False)


@pytest.mark.parametrize("problem, edit, message", [
    ("unknown clip", lambda t: pd.concat([t, pd.DataFrame({"filename": ["audio/bus-nowhere-0-0-0-a.wav"]})]),
     r"split25\.csv: 1 files are no train clip of the dataset .*: audio/bus-nowhere-0-0-0-a\.wav"),
    ("partial recording", lambda t: t.iloc[1:], r"split25\.csv: 1 recordings are only partly listed"),
    ("no filename column", lambda t: t.rename(columns={"filename": "file"}),
     r"split25\.csv: expected a tab-separated column filename"),
    ("empty", lambda t: t.iloc[:0], r"split25\.csv lists no files"),
])
def test_a_bad_split_file_is_named(stores, problem, edit, message):
    root, resampled, recordings = stores
    write_official(root / "split_setup", resampled, nested_sizes(len(read_recordings(recordings))))
    break_file(root / "split_setup" / "split25.csv", edit)
    with pytest.raises(InputError, match=message):
        splits.build_splits(resampled, recordings, root / "split_setup", seed=0)


def test_official_splits_must_be_nested_whole_and_complete(stores):
    root, resampled, recordings = stores
    n = len(read_recordings(recordings))
    folder = root / "split_setup"
    write_official(folder, resampled, nested_sizes(n))
    clips = clips_of(resampled)
    last = sorted(clips.key.unique())[-1]
    extra = pd.DataFrame({"filename": clips.filename[clips.key == last]})
    break_file(folder / "split10.csv", lambda t: pd.concat([t, extra]))
    with pytest.raises(InputError, match=rf"split25\.csv: 1 recordings of split10\.csv are missing .*: {last}"):
        splits.build_splits(resampled, recordings, folder, seed=0)
    write_official(folder, resampled, {**nested_sizes(n), 100: n - 1})
    with pytest.raises(InputError, match=rf"split100\.csv: 1 train recordings are not listed .*: {last}"):
        splits.build_splits(resampled, recordings, folder, seed=0)
    (folder / "split50.csv").unlink()
    with pytest.raises(InputError, match=r"split_setup holds split5\.csv, split10\.csv, split25\.csv, split100\.csv "
                                         r"but not split50\.csv"):
        splits.build_splits(resampled, recordings, folder, seed=0)


def test_a_clip_left_out_by_resample_may_be_listed(stores):
    root, resampled, recordings = stores
    write_official(root / "split_setup", resampled, nested_sizes(len(read_recordings(recordings))))
    gone = "audio/bus-nowhere-0-0-0-a.wav"
    break_file(root / "split_setup" / "split100.csv", lambda t: pd.concat([t, pd.DataFrame({"filename": [gone]})]))
    write_json(resampled / "report.json", {"skipped": [{"filename": gone, "fold": "train", "reason": "unreadable"}]})
    assert splits.build_splits(resampled, recordings, root / "split_setup", seed=0)["source"] == "official"


def test_the_split_folder_lies_inside_the_dataset(tmp_path):
    assert splits.split_folder(tmp_path, "split_setup") == tmp_path / "split_setup"
    for bad in ("/elsewhere/splits", "../splits"):
        with pytest.raises(ParamsError, match="data.split_dir must be a folder inside data.root"):
            splits.split_folder(tmp_path, bad)


def test_a_split_without_its_table_is_named(tmp_path):
    with pytest.raises(InputError, match=r"splits\.csv: file not found \(re-run the reassemble stage"):
        split_recordings(tmp_path, 25)
    with pytest.raises(ValueError, match="split must be one of 5, 10, 25, 50, 100, got 30"):
        split_recordings(tmp_path, 30)
