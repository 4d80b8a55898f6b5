"""Demo dataset generator: determinism and a valid TAU22 layout with the promised make-up."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mobileast.labels import DEVICES, SCENES, UNSEEN_DEVICES
from mobileast.data import tau22
from mobileast.data.demo import DEVICE_MODELS, DemoConfig, generate, plan


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_dataset(tmp_path, demo_source, make_demo_config):
    generate(tmp_path / "again", make_demo_config(), workers=2)
    assert digest(tmp_path / "again") == digest(demo_source)
    recordings, _ = plan(make_demo_config(seed=8))
    assert not set(recordings.segment) & set(tau22.read_clips(demo_source).segment)


def test_layout_is_valid_tau22(demo_source):
    clips = tau22.read_clips(demo_source)
    assert (demo_source / "evaluation_setup" / "fold1_test.csv").read_text().splitlines()[0] == "filename"
    assert set(clips.scene_label) == set(SCENES)
    info = sf.info(demo_source / clips.filename[0])
    assert (info.samplerate, info.channels, info.frames, info.subtype) == (44100, 1, 44100, "PCM_16")
    assert clips.slice.between(0, 9).all()


def test_folds_share_no_recording_or_location(demo_source):
    clips = tau22.read_clips(demo_source)
    key = tau22.recording_key(clips.scene_label, clips.city, clips.location, clips.segment, clips.device)
    train, evaluate = clips.fold == "train", clips.fold == "evaluate"
    assert not set(key[train]) & set(key[evaluate])
    assert not set(clips.identifier[train]) & set(clips.identifier[evaluate])
    assert not set(clips.segment[train]) & set(clips.segment[evaluate])


def test_devices_slices_and_parallel_recordings(make_demo_config):
    config = make_demo_config(train_recordings_per_class=10, parallel_devices_train=("b", "s1"),
                              parallel_fraction=0.2, eval_recordings_per_class=3,
                              eval_devices=DEVICES, eval_devices_per_recording=3,
                              cities=("lyon", "milan", "paris", "prague"))
    recordings, renderings = plan(config)
    fold = recordings.fold.to_numpy()[renderings.recording]
    train_devices = renderings.device[fold == "train"].value_counts()
    assert train_devices["a"] == 100 and train_devices["b"] == train_devices["s1"] == 20
    assert not set(UNSEEN_DEVICES) & set(renderings.device[fold == "train"])
    eval_devices = renderings.device[fold == "evaluate"].value_counts()
    assert tuple(DEVICE_MODELS) == DEVICES and set(eval_devices.index) == set(DEVICES) and eval_devices.max() - eval_devices.min() <= 1
    # Parallel renderings of one recording share its segment but not their device.
    assert not renderings.duplicated(["recording", "device"]).any()
    kept = np.stack(renderings.slices)
    assert kept.any(axis=1).all() and 0 < (~kept).sum() < kept.size * 0.25


def test_devices_differ_in_spectrum(demo_source):
    """Device renderings of one recording are distinct transfer functions of the same scene."""
    clips = tau22.read_clips(demo_source)
    pair = clips[clips.fold == "train"].groupby(["segment", "slice"]).filter(lambda g: len(g) == 2).head(2)
    a, b = (sf.read(demo_source / name)[0] for name in pair.sort_values("device").filename)
    spectra = [np.abs(np.fft.rfft(x)) for x in (a, b)]
    assert not np.allclose(a, b) and np.corrcoef(*spectra)[0, 1] > 0.3


def test_invalid_configs_are_rejected(make_demo_config):
    with pytest.raises(ValueError, match="unseen"):
        make_demo_config(parallel_devices_train=("s4",))
    with pytest.raises(ValueError, match="missing"):
        DemoConfig.from_params({"seed": 1})
