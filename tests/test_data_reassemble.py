"""Stage `reassemble`: clips placed by recording key and slice index, gaps zero-filled and flagged."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from mobileast.data import reassemble, resample, tau22
from mobileast.data.store import FOLDS

CLIP = 4  # samples per clip: the placement logic does not care about the clip size


def write_resampled(out: Path, clips: list[tuple[str, str, int, str]], order: np.ndarray) -> None:
    """A resampled store of (scene, segment, slice, fold) clips whose samples all equal
    100 * segment + slice + 1, with index rows (and array rows) in the given order."""
    out.mkdir()
    rows = pd.DataFrame([clips[i] for i in order], columns=["scene_label", "segment", "slice", "fold"])
    rows = rows.assign(city="lyon", location="7", device="a", identifier="lyon-7")
    rows["filename"] = [tau22.clip_filename(r.scene_label, r.city, r.location, r.segment, r.slice, r.device)
                        for r in rows.itertuples()]
    rows["offset"] = rows.groupby("fold").cumcount() * CLIP
    rows["length"] = CLIP
    for fold in FOLDS:
        part = rows[rows.fold == fold]
        values = 100 * part.segment.astype(int) + part.slice + 1
        np.save(out / f"{fold}.npy", np.repeat(values.to_numpy(np.int16), CLIP))
    rows[resample.INDEX_COLUMNS].to_csv(out / resample.INDEX_FILE, index=False)


def clips_of(segments: dict[str, tuple[str, str, list[int]]]) -> list[tuple[str, str, int, str]]:
    return [(scene, segment, slice_, fold) for segment, (scene, fold, slices) in segments.items() for slice_ in slices]


SEGMENTS = {"11": ("bus", "train", list(range(10))),        # complete
            "12": ("bus", "train", [0, 1, 3, 4, 5, 6, 7, 8, 9]),  # a gap
            "13": ("park", "train", [0, 1, 2, 3, 4, 5, 6, 7]),    # the last two missing
            "21": ("park", "evaluate", [2, 5])}


def test_placement_by_slice_index_whatever_the_row_order(tmp_path):
    clips = clips_of(SEGMENTS)
    stores = []
    for name, order in (("sorted", np.arange(len(clips))), ("shuffled", np.random.default_rng(0).permutation(len(clips)))):
        write_resampled(tmp_path / f"{name}-in", clips, order)
        report = reassemble.build_store(tmp_path / f"{name}-in", tmp_path / name, CLIP)
        stores.append({p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / name).iterdir()})
    assert stores[0] == stores[1]

    table = reassemble.read_recordings(tmp_path / "sorted")
    assert list(table.columns) == reassemble.RECORDING_COLUMNS
    for row in table.itertuples():
        audio = np.load(tmp_path / "sorted" / f"{row.fold}.npy")[row.offset:row.offset + row.length].reshape(-1, CLIP)
        segment = row.recording.split("-")[3]
        present = SEGMENTS[segment][2]
        assert len(audio) == max(present) + 1 and row.slices_present == ",".join(map(str, present))
        for slice_, samples in enumerate(audio):
            assert (samples == (100 * int(segment) + slice_ + 1 if slice_ in present else 0)).all()
    assert table.complete.tolist() == [True, False, False, False]
    assert table.n_slices.tolist() == [10, 9, 8, 2]
    assert report["incomplete"] == [
        {"recording": "bus-lyon-7-12-a", "fold": "train", "missing_slices": [2]},
        {"recording": "park-lyon-7-13-a", "fold": "train", "missing_slices": [8, 9]},
        {"recording": "park-lyon-7-21-a", "fold": "evaluate", "missing_slices": [0, 1, 3, 4, 6, 7, 8, 9]},
    ]
    assert report["folds"] == {"train": {"recordings": 3, "incomplete": 2, "clips": 27},
                               "evaluate": {"recordings": 1, "incomplete": 1, "clips": 2}}


def test_shuffled_metadata_of_a_dataset_gives_the_same_stores(tiny_dataset, tmp_path):
    def build(name: str) -> dict[str, str]:
        resample.build_store(tiny_dataset, tmp_path / f"{name}-clips", sample_rate=8000, workers=1, on_bad_file="error")
        reassemble.build_store(tmp_path / f"{name}-clips", tmp_path / name, 8000)
        files = [*(tmp_path / f"{name}-clips").iterdir(), *(tmp_path / name).iterdir()]
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}

    before = build("before")
    for name in ("meta.csv", "evaluation_setup/fold1_train.csv", "evaluation_setup/fold1_evaluate.csv"):
        table = pd.read_csv(tiny_dataset / name, sep="\t")
        table.sample(frac=1, random_state=1).to_csv(tiny_dataset / name, sep="\t", index=False)
    assert build("after") == before
    recordings = reassemble.read_recordings(tmp_path / "after")
    assert (~recordings.complete).any() and (recordings.length == recordings.slices_present.str.split(",").map(
        lambda s: int(s[-1]) + 1) * 8000).all()
