"""Training curves: `dvc plots show` renders the project's plot definitions for the history
of every distillation method (the columns the plots name exist whichever method trained)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from mobileast.augment import Augmenter
from mobileast.data.crops import RecordingCrops
from mobileast.distill import DistillLoss
from mobileast.features import LogMel
from mobileast.plots import plot_history
from mobileast.recipes import supervised_step
from mobileast.train import Outputs, fit, runtime
from test_train import CLIP, FEATURES, META, make_stores, tiny_model, train_settings

REPO = Path(__file__).resolve().parents[1]
OFF = {name: {**section, "enabled": False} for name, section in
       yaml.safe_load((REPO / "params.yaml").read_text())["augment"].items()}
AUGMENT = {**OFF, "mixup": {**OFF["mixup"], "enabled": True}}


def student_history(stores, out: Path, method: str) -> Path:
    """The history CSV of a two-epoch run of the student's training step with `method`."""
    recordings, _ = stores
    data = RecordingCrops(recordings, "train", CLIP, 200, crops_per_recording=2, seed=0)
    teacher = torch.from_numpy(np.random.default_rng(0).normal(size=(data.n_rows, 10)).astype(np.float32))
    loss = DistillLoss(method=method, alpha=1, beta=2, temperature=2, warmup_epochs=1)
    history = out / "reports" / "student_history.csv"
    with runtime(0) as rt:
        step = supervised_step(LogMel(**FEATURES).to(rt.device), Augmenter.from_params(AUGMENT, 8000), loss,
                               None if method == "none" else teacher.to(rt.device))
        fit(tiny_model(), step, data, train_settings(epochs=2), Outputs(out / "model.pt", history=history),
            META, rt, validate_fn=lambda model: {"loss": 1.0, "accuracy": 0.5})
    return history


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    return make_stores(tmp_path_factory.mktemp("stores"))


@pytest.mark.parametrize("method", ["dkd", "kd", "none"])
def test_dvc_plots_show_renders_every_method(stores, tmp_path, method):
    history = student_history(stores, tmp_path, method)
    plot_history(history, history.with_suffix(".png"), "student")
    teacher = tmp_path / "reports" / "teacher_history.csv"
    shutil.copy(history, teacher)
    pd.read_csv(teacher).drop(columns=["train_kd"]).to_csv(teacher, index=False)  # as the teacher writes it
    pipeline = yaml.safe_load((REPO / "dvc.yaml").read_text())
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(
        {"plots": [p for p in pipeline["plots"] if "history" in next(iter(p))]}))
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    proc = subprocess.run([sys.executable, "-m", "dvc", "plots", "show", "--json"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "could not find" not in proc.stderr + proc.stdout, proc.stderr
    rendered = json.loads(proc.stdout)["data"]
    for name, expected in (("student", {"train_loss", "train_ce", "train_kd", "val_loss", "val_accuracy"}),
                           ("teacher", {"train_loss", "val_loss", "val_accuracy"})):
        values = rendered[f"reports/{name}_history.csv"][0]["content"]["data"]["values"]
        assert {row["field"] for row in values} == expected  # every curve the definition names, 2 epochs each
        assert len(values) == 2 * len(expected)
