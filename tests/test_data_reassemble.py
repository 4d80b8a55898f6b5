"""Train clips placed by recording key and slice index (resample), the recordings table over
them (reassemble): gaps zero-filled and flagged, independent of the metadata's row order."""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from mobileast.data import reassemble, resample, tau22
from mobileast.data.store import read_index, read_recordings

CLIP = 4  # samples per clip: the placement logic does not care about the clip size
SEGMENTS = {"11": ("bus", list(range(10))),        # complete
            "12": ("bus", [0, 1, 3, 4, 5, 6, 7, 8, 9]),  # a gap
            "13": ("park", [0, 1, 2, 3, 4, 5, 6, 7])}    # the last two missing


def clips_table(order: np.ndarray) -> pd.DataFrame:
    rows = pd.DataFrame([(scene, segment, slice_) for segment, (scene, slices) in SEGMENTS.items() for slice_ in slices],
                        columns=["scene_label", "segment", "slice"]).iloc[order].reset_index(drop=True)
    rows = rows.assign(city="lyon", location="7", device="a", identifier="lyon-7", fold="train")
    rows["filename"] = [tau22.clip_filename(r.scene_label, r.city, r.location, r.segment, r.slice, r.device)
                        for r in rows.itertuples()]
    return rows


def reference_slots(clips: pd.DataFrame) -> np.ndarray:
    """Slow obvious layout: recordings in key order, each (last slice + 1) slots long."""
    starts, position = {}, 0
    for segment in sorted(SEGMENTS):
        starts[segment] = position
        position += max(SEGMENTS[segment][1]) + 1
    return np.array([starts[r.segment] + r.slice for r in clips.itertuples()])


@pytest.mark.parametrize("seed", [None, 0, 1])
def test_slots_by_slice_index_whatever_the_row_order(seed):
    n = sum(len(s) for _, s in SEGMENTS.values())
    clips = clips_table(np.arange(n) if seed is None else np.random.default_rng(seed).permutation(n))
    slots = reassemble.plan_slots(clips)
    np.testing.assert_array_equal(slots, reference_slots(clips))
    table = reassemble.recordings_table(clips.assign(offset=slots * CLIP), CLIP)
    assert list(table.columns) == reassemble.RECORDING_COLUMNS
    assert table.recording.tolist() == ["bus-lyon-7-11-a", "bus-lyon-7-12-a", "park-lyon-7-13-a"]
    assert table.offset.tolist() == [0, 10 * CLIP, 20 * CLIP] and table.length.tolist() == [10 * CLIP, 10 * CLIP, 8 * CLIP]
    assert table.complete.tolist() == [True, False, False] and table.n_slices.tolist() == [10, 9, 8]
    assert table.slices_present[1] == "0,1,3,4,5,6,7,8,9"


def test_a_store_not_laid_out_by_recording_is_refused():
    clips = clips_table(np.arange(27))
    with pytest.raises(ValueError, match="not laid out by slice index"):
        reassemble.recordings_table(clips.assign(offset=np.arange(27)[::-1] * CLIP), CLIP)


def test_recordings_over_the_resampled_train_audio(tiny_dataset, tmp_path):
    """Every present slice of a recording is its clip's audio; missing slices are zeros."""
    resample.build_store(tiny_dataset, tmp_path / "resampled", sample_rate=8000, workers=1, on_bad_file="error")
    report = reassemble.build_table(tmp_path / "resampled", tmp_path / "recordings", 8000)
    table = read_recordings(tmp_path / "recordings")
    audio = np.load(tmp_path / "resampled" / "train.npy")
    index = read_index(tmp_path / "resampled")
    assert audio.size == table.length.sum()  # the train audio is stored once, gaps included, nothing else
    for row in table.itertuples():
        present = [int(s) for s in row.slices_present.split(",")]
        for slice_ in range(row.length // 8000):
            samples = audio[row.offset + slice_ * 8000:row.offset + (slice_ + 1) * 8000]
            if slice_ in present:
                name = tau22.clip_filename(*row.recording.rsplit("-", 1)[0].split("-"), slice_, row.device)
                clip = index[index.filename == name].iloc[0]
                np.testing.assert_array_equal(samples, audio[clip.offset:clip.offset + 8000])
            else:
                assert not samples.any()
    assert report["recordings"] == len(table) and report["clips"] == (index.fold == "train").sum()
    assert [r["recording"] for r in report["incomplete"]] == table.recording[~table.complete].tolist()


def test_shuffled_metadata_of_a_dataset_gives_the_same_stores(tiny_dataset, tmp_path):
    def build(name: str) -> dict[str, str]:
        resample.build_store(tiny_dataset, tmp_path / f"{name}-clips", sample_rate=8000, workers=1, on_bad_file="error")
        reassemble.build_table(tmp_path / f"{name}-clips", tmp_path / name, 8000)
        files = [*(tmp_path / f"{name}-clips").iterdir(), *(tmp_path / name).iterdir()]
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}

    before = build("before")
    for name in ("meta.csv", "evaluation_setup/fold1_train.csv", "evaluation_setup/fold1_evaluate.csv"):
        table = pd.read_csv(tiny_dataset / name, sep="\t")
        table.sample(frac=1, random_state=1).to_csv(tiny_dataset / name, sep="\t", index=False)
    assert build("after") == before
    recordings = read_recordings(tmp_path / "after")
    assert (~recordings.complete).any() and (recordings.length == recordings.slices_present.str.split(",").map(
        lambda s: int(s[-1]) + 1) * 8000).all()
