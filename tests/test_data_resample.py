"""Stage `resample`: signal fidelity, input formats, store layout, bad files, atomic output."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import resample_poly

from mobileast.files import atomic_output
from mobileast.data import reassemble, resample, tau22
from mobileast.data.audio import load_mono, to_int16
from mobileast.data.resample import build_store
from mobileast.data.store import read_index
from mobileast.data.tau22 import DatasetError

RATE = 32000


def sine(freq: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    return amplitude * np.sin(2 * np.pi * freq * np.arange(rate) / rate)


def stored(out: Path, filename: str) -> np.ndarray:
    """A clip of the store as float, found through index.csv."""
    index = read_index(out)
    row = index[index.filename == filename].iloc[0]
    return np.load(out / f"{row.fold}.npy")[row.offset:row.offset + row.length] / 32768


def digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def build(root: Path, out: Path, workers: int = 1, on_bad_file: str = "error") -> dict:
    return build_store(root, out, sample_rate=RATE, workers=workers, on_bad_file=on_bad_file)


def test_sine_keeps_frequency_and_rms(write_dataset, tmp_path):
    name = "audio/bus-lyon-1-1-0-a.wav"
    root = write_dataset({name: (sine(1000, 44100), 44100, "PCM_16"),
                          "audio/bus-lyon-1-2-0-a.wav": (sine(300, 44100), 44100, "PCM_16")})
    build(root, tmp_path / "out")
    y = stored(tmp_path / "out", name)
    assert len(y) == RATE
    assert np.argmax(np.abs(np.fft.rfft(y))) * RATE / len(y) == 1000
    core = y[1000:-1000]  # the edges carry the filter's start and end transients
    assert np.sqrt(np.mean(core ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=1e-3)


def test_agrees_with_resample_poly(write_dataset, tmp_path):
    rng = np.random.default_rng(0)
    t = np.arange(44100) / 44100
    signal = sum(0.12 * np.sin(2 * np.pi * f * t + p) for f, p in zip(rng.uniform(50, 12000, 6), rng.uniform(0, 6, 6)))
    name = "audio/park-lyon-1-1-0-a.wav"
    root = write_dataset({name: (signal, 44100, "PCM_24"),
                          "audio/park-lyon-1-2-0-a.wav": (signal, 44100, "PCM_24")})
    build(root, tmp_path / "out")
    reference = resample_poly(sf.read(root / name)[0], 320, 441)
    ours = stored(tmp_path / "out", name)
    assert np.abs(ours - reference)[500:-500].max() < 2e-3
    assert np.corrcoef(ours, reference)[0, 1] > 0.9999


def test_24_bit_stereo_and_other_rates(write_dataset, tmp_path):
    files = {
        "audio/tram-lyon-1-1-0-a.wav": (sine(1000, 44100), 44100, "PCM_24"),
        "audio/tram-lyon-1-2-0-a.wav": (np.stack([sine(1000, 44100), -0.5 * sine(1000, 44100)], 1), 44100, "PCM_16"),
        "audio/tram-lyon-1-3-0-a.wav": (sine(1000, 48000), 48000, "PCM_16"),
        "audio/tram-lyon-1-4-0-a.wav": (sine(1000, 22050), 22050, "PCM_16"),
    }
    root = write_dataset(files)
    report = build(root, tmp_path / "out")
    assert report["downmixed"] == {"count": 1, "files": ["audio/tram-lyon-1-2-0-a.wav"]}
    assert report["other_rates"]["rates"] == {"22050": 1, "48000": 1}
    amplitudes = {name: np.abs(stored(tmp_path / "out", name)[1000:-1000]).max() for name in files}
    assert list(amplitudes.values()) == pytest.approx([0.5, 0.125, 0.5, 0.5], abs=2e-3)


def test_store_layout_and_parallel_equals_serial(tiny_dataset, tmp_path):
    report = build(tiny_dataset, tmp_path / "serial", workers=1)
    build(tiny_dataset, tmp_path / "parallel", workers=2)
    assert digest(tmp_path / "serial") == digest(tmp_path / "parallel")
    index, clips = read_index(tmp_path / "serial"), tau22.read_clips(tiny_dataset)
    assert list(index.columns) == resample.INDEX_COLUMNS
    assert index.filename.tolist() == clips.filename.tolist()
    evaluate, train = index[index.fold == "evaluate"], index[index.fold == "train"]
    assert (evaluate.offset.to_numpy() == np.arange(len(evaluate)) * RATE).all()  # clip by clip
    np.testing.assert_array_equal(train.offset.to_numpy() // RATE, reassemble.plan_slots(train))  # by recording
    assert (index.length == RATE).all()
    slots = reassemble.plan_slots(train)
    assert np.load(tmp_path / "serial" / "train.npy").shape == ((slots.max() + 1) * RATE,)
    assert len(set(slots)) == len(train) and slots.max() + 1 > len(train)  # the tiny set misses slices
    for fold, rows in (("train", train), ("evaluate", evaluate)):
        assert report["folds"][fold]["clips"] == len(rows)
        name = rows.filename.iloc[5]
        expected = to_int16(load_mono(str(tiny_dataset / name), RATE)) / 32768
        np.testing.assert_array_equal(stored(tmp_path / "serial", name), expected)


def fail_on(monkeypatch: pytest.MonkeyPatch, bad_name: str) -> None:
    """Make decoding `bad_name` fail although its header was fine."""
    def load_mono(path: str, sample_rate: int) -> np.ndarray:
        if path.endswith(bad_name):
            raise RuntimeError("Error reading: corrupt data chunk")
        return original(path, sample_rate)

    original = resample.load_mono
    monkeypatch.setattr(resample, "load_mono", load_mono)


def test_unreadable_content_found_while_resampling(tiny_dataset, tmp_path, monkeypatch):
    clips = tau22.read_clips(tiny_dataset)
    bad = clips.filename[clips.fold == "evaluate"].iloc[2]
    fail_on(monkeypatch, bad)
    with pytest.raises(DatasetError, match=f"1 bad audio files.*{bad} \\(unreadable: Error reading"):
        build(tiny_dataset, tmp_path / "error")
    report = build(tiny_dataset, tmp_path / "skip", on_bad_file="skip")
    assert report["skipped"] == [{"filename": bad, "fold": "evaluate", "reason": "unreadable: Error reading: corrupt data chunk"}]
    index = read_index(tmp_path / "skip")
    assert index.filename.tolist() == [name for name in clips.filename if name != bad]
    assert report["folds"]["evaluate"]["clips"] == (clips.fold == "evaluate").sum() - 1
    evaluate = clips[clips.fold == "evaluate"].filename  # the bad clip's row stays zero, out of the index
    expected = [np.zeros(RATE, np.int16) if name == bad else to_int16(load_mono(str(tiny_dataset / name), RATE))
                for name in evaluate]
    np.testing.assert_array_equal(np.load(tmp_path / "skip" / "evaluate.npy"), np.concatenate(expected))


def test_interrupted_write_leaves_no_partial_output(tiny_dataset, tmp_path, monkeypatch):
    out = tmp_path / "resampled"
    with atomic_output(out) as tmp:
        build(tiny_dataset, tmp)
    before = digest(out)
    calls = []

    def power_cut(task):
        calls.append(task)
        if len(calls) == 3:
            raise KeyboardInterrupt  # anything that stops the stage midway
        return original(task)

    original = resample._resample_task
    monkeypatch.setattr(resample, "_resample_task", power_cut)
    for target in (out, tmp_path / "new"):
        calls.clear()
        with pytest.raises(KeyboardInterrupt), atomic_output(target) as tmp:
            build(tiny_dataset, tmp)
    assert digest(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset", "resampled"]


def test_a_float_wav_with_nan_samples_is_a_bad_file(write_dataset, tmp_path):
    """Not silence in the store: the stage stops naming it, or skips and lists it."""
    poisoned = sine(440, 44100)
    poisoned[[100, 200]] = np.nan, np.inf
    bad = "audio/bus-lyon-1-3-0-a.wav"
    root = write_dataset({"audio/bus-lyon-1-1-0-a.wav": (sine(300, 44100), 44100, "FLOAT"),
                          "audio/bus-lyon-1-2-0-a.wav": (sine(500, 44100), 44100, "FLOAT"),
                          bad: (poisoned, 44100, "FLOAT"),
                          "audio/bus-lyon-1-4-0-a.wav": (sine(700, 44100), 44100, "FLOAT")})
    assert np.isnan(sf.read(root / bad)[0][100])  # the WAV really holds a NaN
    reason = "2 non-finite samples (NaN or inf), the first at 0.0023 s"
    with pytest.raises(DatasetError, match=rf"1 bad audio files.*: {bad} \({re.escape(reason)}\)"):
        build(root, tmp_path / "error")
    report = build(root, tmp_path / "skip", on_bad_file="skip")
    assert report["skipped"] == [{"filename": bad, "fold": "train", "reason": reason}]
    assert bad not in read_index(tmp_path / "skip").filename.tolist()


def test_a_fold_left_empty_by_decoding_errors_stops_the_stage(write_dataset, tmp_path):
    silent = np.zeros(44100)
    silent[5] = np.nan
    root = write_dataset({"audio/bus-lyon-1-1-0-a.wav": (sine(300, 44100), 44100, "FLOAT"),
                          "audio/bus-lyon-1-2-0-a.wav": (silent, 44100, "FLOAT")})
    with pytest.raises(DatasetError, match=r"every file of the evaluate fold .* 1 bad audio files: "
                                           r"audio/bus-lyon-1-2-0-a.wav \(1 non-finite samples"):
        build(root, tmp_path / "out", on_bad_file="skip")
