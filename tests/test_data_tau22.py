"""TAU22 reader: every kind of bad input fails before any work, naming the files and the count."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from mobileast.data import tau22
from mobileast.data.tau22 import DatasetError


def read(root: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(root / name, sep="\t", dtype=str, keep_default_na=False)


def write(table: pd.DataFrame, root: Path, name: str) -> None:
    table.to_csv(root / name, sep="\t", index=False)


def load(root: Path, on_bad_file: str = "error") -> tau22.Dataset:
    return tau22.load_dataset(root, 1, on_bad_file)


def first_train_file(root: Path) -> str:
    return read(root, "evaluation_setup/fold1_train.csv").filename[0]


def edit_meta(root: Path, name: str, column: str, value: str) -> None:
    meta = read(root, "meta.csv")
    meta.loc[meta.filename == name, column] = value
    write(meta, root, "meta.csv")


def test_valid_dataset_loads_in_canonical_order(tiny_dataset):
    dataset = load(tiny_dataset)
    clips = dataset.clips
    assert dataset.skipped == [] and len(clips) == len(read(tiny_dataset, "meta.csv"))
    assert list(clips.fold.unique()) == ["train", "evaluate"]
    assert clips.groupby("fold", sort=False).filename.apply(lambda s: s.is_monotonic_increasing).all()
    assert (clips.samplerate == 44100).all() and (clips.frames == 44100).all()


@pytest.mark.parametrize("column, value, message", [
    ("scene_label", "tram", "scene_label that disagrees with the file name"),
    ("source_label", "c", "source_label (device) that disagrees with the file name"),
    ("scene_label", "beach", "unknown scene_label"),
    ("identifier", "oslo-1", "identifier that is not <city>-<location>"),
])
def test_meta_disagreeing_with_file_name(tiny_dataset, column, value, message):
    name = first_train_file(tiny_dataset)
    edit_meta(tiny_dataset, name, column, value)
    with pytest.raises(DatasetError, match=re.escape(message)) as error:
        tau22.read_clips(tiny_dataset)
    assert "1 rows of meta.csv" in str(error.value) and name in str(error.value) and repr(value) in str(error.value)


def test_duplicate_rows(tiny_dataset):
    meta = read(tiny_dataset, "meta.csv")
    write(pd.concat([meta, meta.iloc[[3, 5]]]), tiny_dataset, "meta.csv")
    with pytest.raises(DatasetError, match="4 rows of meta.csv repeat a filename") as error:
        tau22.read_clips(tiny_dataset)
    assert meta.filename[3] in str(error.value)


def test_malformed_name_and_slice(tiny_dataset):
    meta = read(tiny_dataset, "meta.csv")
    meta.loc[0, "filename"] = "audio/not-a-tau-name.wav"
    meta.loc[1, "filename"] = meta.filename[1].replace("-0-", "-12-").replace("-1-", "-12-")
    write(meta, tiny_dataset, "meta.csv")
    with pytest.raises(DatasetError) as error:
        tau22.read_clips(tiny_dataset)
    assert "audio/not-a-tau-name.wav" in str(error.value) and "slice index outside 0..9" in str(error.value)


def test_fold_files_naming_files_absent_from_meta(tiny_dataset):
    folds = read(tiny_dataset, "evaluation_setup/fold1_evaluate.csv")
    extra = pd.DataFrame({"filename": ["audio/bus-oslo-1-2-3-a.wav", "audio/bus-oslo-1-2-4-a.wav"],
                          "scene_label": ["bus", "bus"]})
    write(pd.concat([folds, extra]), tiny_dataset, "evaluation_setup/fold1_evaluate.csv")
    with pytest.raises(DatasetError, match="2 files in evaluation_setup/fold1_evaluate.csv are absent from meta.csv") as error:
        tau22.read_clips(tiny_dataset)
    assert "audio/bus-oslo-1-2-3-a.wav, audio/bus-oslo-1-2-4-a.wav" in str(error.value)


def test_fold_problems_label_overlap_and_repeats(tiny_dataset):
    train = read(tiny_dataset, "evaluation_setup/fold1_train.csv")
    evaluate = read(tiny_dataset, "evaluation_setup/fold1_evaluate.csv")
    train.loc[0, "scene_label"] = "park" if train.scene_label[0] != "park" else "bus"
    write(pd.concat([train, evaluate.iloc[:1]]), tiny_dataset, "evaluation_setup/fold1_train.csv")
    with pytest.raises(DatasetError) as error:
        tau22.read_clips(tiny_dataset)
    message = str(error.value)
    assert "1 rows of evaluation_setup/fold1_train.csv have a scene_label that disagrees with meta.csv" in message
    assert f"1 files are in both fold1_train.csv and fold1_evaluate.csv: {evaluate.filename[0]}" in message


def test_all_problems_reported_at_once_with_a_short_list(tiny_dataset):
    meta = read(tiny_dataset, "meta.csv")
    meta["source_label"] = "c"
    write(meta, tiny_dataset, "meta.csv")
    with pytest.raises(DatasetError) as error:
        tau22.read_clips(tiny_dataset)
    assert f"{(meta.filename.str[-6:] != '-c.wav').sum()} rows of meta.csv have a source_label" in str(error.value)
    assert "more)" in str(error.value)


def test_missing_metadata_file(tiny_dataset):
    (tiny_dataset / "evaluation_setup" / "fold1_train.csv").unlink()
    with pytest.raises(DatasetError, match="fold1_train.csv: file not found"):
        tau22.read_clips(tiny_dataset)


def bad_audio(root: Path) -> dict[str, str]:
    """Break three train files in different ways; return {filename: expected reason}."""
    train = read(root, "evaluation_setup/fold1_train.csv").filename
    (root / train[0]).unlink()
    (root / train[1]).write_bytes(b"RIFF-not-really-a-wav")
    sf.write(root / train[2], np.zeros(30000), 44100, subtype="PCM_16")
    return {train[0]: "file not found", train[1]: "unreadable", train[2]: "duration 0.680 s"}


def test_bad_audio_stops_with_error(tiny_dataset):
    bad = bad_audio(tiny_dataset)
    with pytest.raises(DatasetError, match="3 bad audio files") as error:
        load(tiny_dataset)
    for name, reason in bad.items():
        assert f"{name} ({reason}" in str(error.value)


def test_bad_audio_skipped_and_listed(tiny_dataset):
    bad = bad_audio(tiny_dataset)
    dataset = load(tiny_dataset, on_bad_file="skip")
    assert [item["filename"] for item in dataset.skipped] == sorted(bad)
    assert all(item["reason"].startswith(bad[item["filename"]]) and item["fold"] == "train" for item in dataset.skipped)
    assert not set(bad) & set(dataset.clips.filename)


def test_unsupported_sample_format(write_dataset):
    root = write_dataset({"audio/bus-lyon-1-1-0-a.wav": (np.zeros(44100), 44100, "ULAW"),
                          "audio/bus-lyon-1-2-0-a.wav": (np.zeros(44100), 44100, "PCM_16")})
    with pytest.raises(DatasetError, match=r"audio/bus-lyon-1-1-0-a.wav \(unsupported sample format ULAW"):
        load(root)


def test_on_bad_file_must_be_known(tiny_dataset):
    bad_audio(tiny_dataset)
    with pytest.raises(ValueError, match="data.on_bad_file must be one of error, skip"):
        load(tiny_dataset, on_bad_file="ignore")


def test_a_fold_whose_every_file_is_skipped_stops_naming_the_fold(write_dataset):
    """on_bad_file: skip must not leave a fold empty (the later stages would fail, confusingly)."""
    root = write_dataset({"audio/bus-lyon-1-1-0-a.wav": (np.zeros(44100), 44100, "PCM_16"),
                          "audio/bus-lyon-1-2-0-a.wav": (np.zeros(20000), 44100, "PCM_16")})
    with pytest.raises(DatasetError, match=r"every file of the evaluate fold \(evaluation_setup/fold1_evaluate.csv\) "
                                           r"is bad, so data.on_bad_file: skip leaves it empty; 1 bad audio files: "
                                           r"audio/bus-lyon-1-2-0-a.wav \(duration 0.454 s"):
        load(root, on_bad_file="skip")
