"""Crop grid and the batch sources over the int16 stores."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mobileast.labels import DEVICES, SCENES
from mobileast.data.crops import ClipSource, RecordingCrops, crop_grid


def reference_grid(slices_present, clip, crop, hop):
    """Slow obvious crop grid: test every hop position sample by sample."""
    if not slices_present:
        return np.zeros(0, dtype=np.int64)
    valid = np.zeros((max(slices_present) + 1) * clip, dtype=bool)
    for k in slices_present:
        valid[k * clip:(k + 1) * clip] = True
    return np.array([s for s in range(0, len(valid) - crop + 1, hop) if valid[s:s + crop].all()], dtype=np.int64)


def make_recordings_store(root: Path, slices: dict[str, list[list[int]]], clip_samples: int,
                          seed: int = 0, devices: tuple[str, ...] = ("a",)) -> Path:
    """A tiny recordings store: per fold a list of recordings given by their present slices.

    Recording i has scene SCENES[i % 10] and device devices[i % len(devices)]; its audio is a sine whose frequency depends on
    the scene plus noise (learnable), missing slices zero-filled as in the real store.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for fold, recordings in slices.items():
        arrays, offset = [], 0
        for i, present in enumerate(recordings):
            length = (max(present) + 1) * clip_samples
            t = np.arange(length)
            audio = 0.3 * np.sin(2 * np.pi * (0.01 + 0.02 * (i % 10)) * t) + 0.05 * rng.standard_normal(length)
            audio = (audio * 32767).astype(np.int16)
            for k in set(range(max(present) + 1)) - set(present):
                audio[k * clip_samples:(k + 1) * clip_samples] = 0
            arrays.append(audio)
            rows.append({"recording": f"{SCENES[i % 10]}-x-{i}-{fold}", "scene_label": SCENES[i % 10],
                         "device": devices[i % len(devices)], "fold": fold, "n_slices": len(present),
                         "slices_present": ",".join(map(str, present)),
                         "complete": len(present) == max(present) + 1, "offset": offset, "length": length,
                         "clip_samples": clip_samples})
            offset += length
        np.save(root / f"{fold}.npy", np.concatenate(arrays))
    pd.DataFrame(rows).to_csv(root / "recordings.csv", index=False)
    return root


def make_clip_store(root: Path, fold: str, clips: np.ndarray, scenes: list[str],
                    devices: list[str] | str = "a") -> Path:
    """A tiny resampled store: int16 clips (n, samples) of one fold with their scenes and devices."""
    n, length = clips.shape
    pd.DataFrame({"filename": [f"{s}-{i}.wav" for i, s in enumerate(scenes)], "scene_label": scenes,
                  "slice": 0, "device": devices, "fold": fold, "offset": np.arange(n) * length, "length": length}
                 ).to_csv(root / "index.csv", index=False)
    np.save(root / f"{fold}.npy", clips.reshape(-1))
    return root


def test_complete_ten_second_recording_gives_37_crops_at_quarter_second_hop():
    grid = crop_grid(list(range(10)), 32000, 32000, 8000)
    np.testing.assert_array_equal(grid, np.arange(0, 288001, 8000))
    assert grid.dtype == np.int64 and len(grid) == 37


def test_missing_slice_excludes_exactly_the_crops_touching_it():
    grid = crop_grid("0,1,2,3,5,6,7,8,9", 32000, 32000, 8000)
    touching = set(range(3 * 32000 + 8000, 5 * 32000, 8000))  # 104000 .. 152000
    assert {96000, 160000} <= set(grid.tolist()) and not touching & set(grid.tolist())
    assert len(grid) == 37 - len(touching)


@pytest.mark.parametrize("present,clip,crop,hop", [
    ([0, 1, 2, 4, 5], 100, 100, 25), ([1, 2, 3], 100, 100, 25), ([0, 2, 4, 6], 100, 100, 30),
    ([0, 1, 3, 4, 5, 9], 100, 150, 20), ([7], 100, 100, 7), ([0, 1, 2], 100, 250, 10),
    ([0, 2], 100, 150, 10), ([3], 100, 101, 10), ([], 100, 100, 25),
])
def test_crop_grid_equals_sample_by_sample_reference(present, clip, crop, hop):
    np.testing.assert_array_equal(crop_grid(present, clip, crop, hop), reference_grid(present, clip, crop, hop))
    np.testing.assert_array_equal(crop_grid(",".join(map(str, present)), clip, crop, hop),
                                  reference_grid(present, clip, crop, hop))


@pytest.fixture
def store(tmp_path):
    return make_recordings_store(tmp_path, {"train": [[0, 1, 2, 3], [0, 2, 3], [1, 2], [0, 1, 2, 3, 4]],
                                            "evaluate": [[0, 1]]}, clip_samples=100, devices=("a", "b", "s1"))


def test_crops_hold_the_grid_audio_labels_and_rows(store):
    crops = RecordingCrops(store, "train", crop_samples=100, hop_samples=25, crops_per_recording=3, seed=5)
    table = pd.read_csv(store / "recordings.csv", dtype={"slices_present": str})
    table = table[table.fold == "train"].reset_index(drop=True)
    audio = np.load(store / "train.npy")
    grids = [reference_grid(list(map(int, s.split(","))), 100, 100, 25) for s in table.slices_present]
    np.testing.assert_array_equal(crops.row_offsets, np.cumsum([0] + [len(g) for g in grids]))
    batch = crops.load(np.arange(crops.n_rows))
    rows = [(r, j) for r, g in enumerate(grids) for j in range(len(g))]
    expected = np.stack([audio[table.offset[r] + grids[r][j]:][:100] for r, j in rows]) / 32768
    torch.testing.assert_close(batch.wave, torch.from_numpy(expected).float(), rtol=0, atol=0)
    assert batch.label.tolist() == [SCENES.index(table.scene_label[r]) for r, _ in rows]
    assert batch.row.tolist() == list(range(crops.n_rows))
    assert batch.device.tolist() == [DEVICES.index(table.device[r]) for r, _ in rows]  # for augment.dir
    assert set(table.device) == {"a", "b", "s1"}
    assert torch.equal(torch.cat([b.wave for b in crops.grid_batches(4)]), batch.wave)


def test_epoch_plan_depends_only_on_seed_and_epoch(store):
    def crops(seed):
        return RecordingCrops(store, "train", 100, 25, crops_per_recording=3, seed=seed)
    a, b = crops(5), crops(5)
    np.testing.assert_array_equal(a.epoch_rows(2), b.epoch_rows(2))
    assert not np.array_equal(a.epoch_rows(2), a.epoch_rows(3))
    assert not np.array_equal(a.epoch_rows(2), crops(6).epoch_rows(2))
    counts = np.bincount(a.recording_of(a.epoch_rows(2)), minlength=4)
    np.testing.assert_array_equal(counts, [3, 3, 3, 3])


def test_ranks_split_each_full_batch(store):
    crops = RecordingCrops(store, "train", 100, 25, crops_per_recording=3, seed=1)
    assert crops.steps_per_epoch(4) == 3  # 12 crops
    whole = [b.row for b in crops.epoch_batches(7, batch_size=4)]
    shards = [list(crops.epoch_batches(7, 4, rank, 2)) for rank in (0, 1)]
    assert [len(b) for b in shards[0] + shards[1]] == [2] * 6
    for step, rows in enumerate(whole):
        assert torch.equal(torch.cat([shards[0][step].row, shards[1][step].row]), rows)
    with pytest.raises(ValueError):
        next(crops.epoch_batches(0, 5, 0, 2))


def test_clip_source_reads_clips_in_order(tmp_path):
    audio = np.arange(-600, 600, dtype=np.int16)
    source = ClipSource(make_clip_store(tmp_path, "evaluate", audio.reshape(6, 200), ["bus", "park", "tram"] * 2,
                                        ["a", "b", "c", "s4", "s5", "s6"]), "evaluate")
    batches = list(source.batches(4))
    assert [len(b) for b in batches] == [4, 2]
    wave = torch.cat([b.wave for b in batches])
    torch.testing.assert_close(wave, torch.from_numpy(audio.reshape(6, 200) / 32768).float(), rtol=0, atol=0)
    assert torch.cat([b.label for b in batches]).tolist() == [SCENES.index(s) for s in ["bus", "park", "tram"] * 2]
    assert torch.cat([b.device for b in batches]).tolist() == [0, 1, 2, 6, 7, 8]  # DEVICES a, b, c, s4, s5, s6
