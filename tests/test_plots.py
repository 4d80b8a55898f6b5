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
from mobileast.training.checkpoint import Outputs
from mobileast.training.distributed import runtime
from mobileast.training.engine import fit
from mobileast.training.supervised import supervised_step
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
    loss = DistillLoss(method=method, alpha=1, beta=2, temperature=2, warmup_epochs=1, ce_weight=1)
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


def write_histories(stores, project: Path, method: str) -> None:
    """The student's and the teacher's history CSV (and PNG) of `method` in project/reports."""
    history = student_history(stores, project, method)
    plot_history(history, history.with_suffix(".png"), "student")
    teacher = project / "reports" / "teacher_history.csv"
    shutil.copy(history, teacher)
    pd.read_csv(teacher).drop(columns=["train_kd"]).to_csv(teacher, index=False)  # as the teacher writes it


def dvc_project(project: Path, scm: bool) -> None:
    """A DVC project in `project` with the history plots of this repository's dvc.yaml."""
    pipeline = yaml.safe_load((REPO / "dvc.yaml").read_text())
    (project / "dvc.yaml").write_text(yaml.safe_dump(
        {"plots": [p for p in pipeline["plots"] if "history" in next(iter(p))]}))
    if scm:
        subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q", *([] if scm else ["--no-scm"])], cwd=project,
                   check=True)


def dvc_plots(project: Path, *args: str) -> dict:
    """`dvc plots <args> --json`: the rendered data by plot file; fails on any error or missing file."""
    proc = subprocess.run([sys.executable, "-m", "dvc", "plots", *args, "--json"], cwd=project,
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "could not find" not in proc.stderr + proc.stdout, proc.stderr
    return json.loads(proc.stdout)["data"]


HISTORY_CURVES = (("student", {"train_loss", "train_ce", "train_kd", "val_loss", "val_accuracy"}),
                  ("teacher", {"train_loss", "val_loss", "val_accuracy"}))


@pytest.mark.parametrize("method", ["dkd", "kd", "none"])
def test_dvc_plots_show_renders_every_method(stores, tmp_path, method):
    write_histories(stores, tmp_path, method)
    dvc_project(tmp_path, scm=False)
    rendered = dvc_plots(tmp_path, "show")
    for name, expected in HISTORY_CURVES:
        values = rendered[f"reports/{name}_history.csv"][0]["content"]["data"]["values"]
        assert {row["field"] for row in values} == expected  # every curve the definition names, 2 epochs each
        assert len(values) == 2 * len(expected)


def test_dvc_plots_diff_compares_a_ce_only_run_with_a_distilled_one(stores, tmp_path):
    """`dvc plots diff` (workspace against HEAD) across methods: both revisions, every curve."""
    write_histories(stores, tmp_path, "dkd")
    dvc_project(tmp_path, scm=True)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "add", "-A"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "dkd"], cwd=tmp_path, check=True)
    write_histories(stores, tmp_path, "none")
    rendered = dvc_plots(tmp_path, "diff")
    for name, expected in HISTORY_CURVES:
        values = rendered[f"reports/{name}_history.csv"][0]["content"]["data"]["values"]
        assert {(row["rev"], row["field"]) for row in values} == {
            (rev, field) for rev in ("HEAD", "workspace") for field in expected}
