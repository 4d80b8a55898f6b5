"""Shared fixtures: tiny datasets in the TAU22 development layout, written to tmp_path."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from mobileast.data import tau22
from mobileast.data.demo import DemoConfig, generate

TINY_DEMO = dict(
    seed=7, cities=("lyon", "milan"), locations_per_city=2, train_recordings_per_class=1,
    parallel_devices_train=("b",), parallel_fraction=0.5, eval_recordings_per_class=1,
    eval_devices=("a", "s4"), eval_devices_per_recording=1, missing_slice_fraction=0.1,
    location_spread_db=3.0,
)


def tiny_demo_config(**overrides) -> DemoConfig:
    """A demo config of about 200 clips (one train and one evaluate recording per scene)."""
    return DemoConfig(**{**TINY_DEMO, **overrides})


@pytest.fixture
def make_demo_config() -> Callable[..., DemoConfig]:
    """tiny_demo_config, for tests that vary the tiny demo."""
    return tiny_demo_config


@pytest.fixture(scope="session")
def demo_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny demo dataset, generated once per test session (read-only: copy before changing)."""
    root = tmp_path_factory.mktemp("demo") / "dataset"
    generate(root, tiny_demo_config(), workers=1)
    return root


@pytest.fixture
def tiny_dataset(tmp_path: Path, demo_source: Path) -> Path:
    """A private copy of the tiny demo dataset that a test may modify."""
    return Path(shutil.copytree(demo_source, tmp_path / "dataset"))


@pytest.fixture
def write_dataset(tmp_path: Path) -> Callable[..., Path]:
    """Factory writing a dataset in TAU22 layout from given signals.

    write_dataset({filename: (audio float (n,) or (n, channels), rate, subtype)},
    folds={filename: "train" | "evaluate"}) -> root. Without `folds`, files alternate
    between train and evaluate (both folds must list files).
    """
    def write(clips: dict[str, tuple[np.ndarray, int, str]], folds: dict[str, str] | None = None) -> Path:
        root = tmp_path / "custom"
        (root / "audio").mkdir(parents=True)
        rows = []
        for i, (name, (audio, rate, subtype)) in enumerate(clips.items()):
            sf.write(root / name, audio, rate, subtype=subtype)
            fields = pd.Series([name]).str.extract(tau22.NAME_PATTERN).iloc[0]
            rows.append((name, fields.scene, f"{fields.city}-{fields.location}", fields.device,
                         folds[name] if folds else tau22.FOLDS[i % 2]))
        tau22.write_metadata(root, pd.DataFrame(rows, columns=["filename", "scene_label", "identifier", "device", "fold"]))
        return root

    return write


# The files `make test` starts first, in this order (the others follow in collection order):
# the end-to-end chain, whose steps wait for each other, then the longest of the rest (as
# measured when this list was written), so that no long file is left to start last.
FIRST = ("test_pipeline_e2e.py", "test_faults.py", "test_tracking.py", "test_device_models.py", "test_train.py",
         "test_export.py", "test_submit.py", "test_precision.py", "test_plots.py", "test_data_stages.py",
         "test_launch.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Collect the files of FIRST first. `make test` runs a worker per CPU, each file on one
    worker, handed out in collection order (pytest-xdist, --dist loadfile): one worker takes
    the end-to-end file while the others share the rest, longest first, so the run takes
    about as long as that file."""
    items.sort(key=lambda item: FIRST.index(item.path.name) if item.path.name in FIRST else len(FIRST))
