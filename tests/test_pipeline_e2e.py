"""The whole pipeline as a user runs it, in a fresh copy of this checkout.

One copy of the working tree (tracked and untracked-but-not-ignored files, committed in
a new git repository, no DVC cache, no MLflow store) with the `tau22-sub1` profile
applied (`python -m mobileast profile tau22-sub1 --apply`) and tiny sizes and one epoch
set on top, reading a tiny generated dataset in TAU22 layout (`data.source: tau22`) that
has missing slices and one 48 kHz stereo file. Then, in order: `dvc repro` (all stages), `dvc repro` again
(nothing but `track`, no new MLflow run), `dvc exp run -S dkd.alpha=5` (student_train
and later only), then, with dkd.alpha back at 1, `dvc repro --dry` (student_train would
be restored from DVC's run cache), checking DVC's and MLflow's views after each step.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from mobileast.data.audio import resample
from mobileast.data.demo import generate
from mobileast.profiles import yaml_value

REPO = Path(__file__).resolve().parents[1]
TINY = {  # dotted key -> value, over the tau22-sub1 profile: one epoch, tiny models, DKD alpha 1 for the baseline
    "data.workers": 1, "dkd.alpha": 1,
    "teacher.cnn.custom": {"stem_channels": 8, "channels": [8, 16]},
    "teacher.train.epochs": 1, "teacher.train.batch_size": 8, "teacher.train.crops_per_recording": 1,
    "logits.batch_size": 64,
    "student.custom": {"stem_channels": 8, "c1": 8, "c2": 8, "c3": 8, "c_out": 16, "d_local": 8, "d_mlp": 16,
                       "depth": 1},
    "train.epochs": 1, "train.batch_size": 8,
    "quant.calib_batches": 2, "quant.batch_size": 8,
    "evaluate.batch_size": 64,
}
ALL_STAGES = {"demo_data", "resample", "reassemble", "teacher_train", "teacher_logits", "student_train",
              "quantize", "export", "complexity", "evaluate", "track"}


def copy_checkout(target: Path) -> None:
    """The working tree as a fresh clone would have it after committing it."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def tiny_tau22_dataset(root: Path) -> Path:
    """A tiny dataset in TAU22 layout (missing slices included) with one 48 kHz stereo clip."""
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import tiny_demo_config

    generate(root, tiny_demo_config(), workers=1)
    clip = sorted((root / "audio").glob("*-a.wav"))[0]
    audio, rate = sf.read(clip, dtype="float32")
    stereo = np.stack([resample(audio, rate, 48000), 0.5 * resample(audio, rate, 48000)], axis=1)
    sf.write(clip, stereo, 48000, subtype="PCM_24")
    return root


def environment() -> dict[str, str]:
    """A fresh shell: the venv not activated (not on PATH), no tracking or DVC variables."""
    drop = {"MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "RANK", "PYTHONPATH",
            "VIRTUAL_ENV"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p != venv_bin)
    return env


class Project:
    """The copied checkout and the commands run in it."""

    def __init__(self, root: Path):
        self.root = root

    def run(self, *args: str, timeout: int = 300) -> str:
        proc = subprocess.run(args, cwd=self.root, env=environment(), capture_output=True, text=True,
                              timeout=timeout)
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"{' '.join(args)} failed:\n{output[-4000:]}"
        return output

    def dvc(self, *args: str) -> str:
        """`.venv/bin/dvc ...` as the README says to run it without activating the venv."""
        return self.run(str(self.root / ".venv" / "bin" / "dvc"), *args)

    def summary_runs(self) -> list:
        from mlflow import MlflowClient

        client = MlflowClient(f"sqlite:///{self.root / 'mlflow.db'}")
        experiment = client.get_experiment_by_name("mobileast")
        return client, client.search_runs([experiment.experiment_id], max_results=1000)


def ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def restored(output: str) -> set[str]:
    return set(re.findall(r"Stage '([^']+)' is cached - skipping run", output))


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Project:
    base = tmp_path_factory.mktemp("e2e")
    dataset = tiny_tau22_dataset(base / "tau22")
    root = base / "checkout"
    copy_checkout(root)
    (root / ".venv").symlink_to(Path(sys.prefix))  # what `make` creates in a fresh clone
    project = Project(root)
    sets = [f"--set={key}={yaml_value(value)}" for key, value in {**TINY, "data.root": str(dataset)}.items()]
    # `.venv/bin/python -m mobileast` through the stages' launcher, which puts this copy's src/ first: the
    # venv may be installed from another checkout
    project.run(str(root / "stages/python"), "-m", "mobileast", "profile", "tau22-sub1", "--apply", *sets)
    for command in (["git", "init", "-q"], ["git", "add", "-A"],
                    ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"]):
        project.run(*command)
    return project


@pytest.fixture(scope="module")
def baseline(project) -> tuple[str, str]:
    return project.dvc("repro"), project.dvc("repro")


@pytest.fixture(scope="module")
def experiment(project, baseline) -> str:
    return project.dvc("exp", "run", "-n", "alpha5", "-S", "dkd.alpha=5")


@pytest.fixture(scope="module")
def back_to_alpha1(project, experiment) -> str:
    """`dvc repro --dry` with the baseline's dkd.alpha back in params.yaml: what DVC would do
    (a real `dvc exp run -S dkd.alpha=1` restores the same stages; the closing note of the
    change that made the run cache work shows one)."""
    params = project.root / "params.yaml"
    text = params.read_text()
    assert re.search(r"(?m)^  alpha: 5\b", text)
    params.write_text(re.sub(r"(?m)^  alpha: 5\b", "  alpha: 1", text))
    return project.dvc("repro", "--dry")


def test_repro_runs_every_stage_and_a_second_repro_only_track(project, baseline):
    first, second = baseline
    assert ran(first) == ALL_STAGES
    assert ran(second) == {"track"} and "already in the store" in second
    report = json.loads((project.root / "data/resampled/report.json").read_text())
    assert report["downmixed"]["count"] == 1 and report["other_rates"]["rates"] == {"48000": 1}
    assert json.loads((project.root / "data/recordings/report.json").read_text())["incomplete"]
    assert sorted(p.name for p in (project.root / "data/recordings").iterdir()) == ["recordings.csv", "report.json"]
    params = yaml.safe_load((project.root / "params.yaml").read_text())
    assert params["student"]["preset"] == "sub1" and params["dkd"]["beta"] == 10 and params["train"]["epochs"] == 1
    _, runs = project.summary_runs()
    assert [r.data.params["dkd.alpha"] for r in runs if r.data.tags.get("summary") == "true"] == ["1"]


def test_experiment_reruns_student_train_and_later_only(experiment):
    assert ran(experiment) == {"student_train", "quantize", "export", "complexity", "evaluate", "track"}


def exp_show_rows(project: Project) -> dict[str, dict]:
    """`dvc exp show --json` as {name (or rev): data}: the workspace, the baseline, its experiments."""
    rows = {}
    for row in json.loads(project.dvc("exp", "show", "--json")):
        rows[row.get("name") or row["rev"]] = row["data"]
        for experiment in row.get("experiments") or []:
            for rev in experiment["revs"]:
                rows[rev.get("name") or rev["rev"]] = rev["data"]
    return rows


def test_dvc_exp_show_lists_baseline_and_experiment(project, experiment):
    rows = exp_show_rows(project)
    assert {"workspace", "alpha5"} <= set(rows)
    assert rows["alpha5"]["params"]["params.yaml"]["data"]["dkd"]["alpha"] == 5
    metrics = rows["alpha5"]["metrics"]["reports/metrics.json"]["data"]
    assert set(metrics["student_int8"]["per_device_accuracy"]) == {"a", "s4"}  # the tiny evaluate fold's
    assert rows["alpha5"]["metrics"]["reports/complexity.json"]["data"]["param_memory_pass"] is True


def test_mlflow_has_one_summary_run_per_experiment_with_models_and_nested_stages(project, experiment):
    client, runs = project.summary_runs()
    summaries = {r.data.tags["dvc_experiment"]: r for r in runs if r.data.tags.get("summary") == "true"}
    assert set(summaries) == {"workspace", "alpha5"}
    assert {name: r.data.params["dkd.alpha"] for name, r in summaries.items()} == {"workspace": "1", "alpha5": "5"}
    for run in summaries.values():
        assert {"student_float.accuracy", "student_int8.per_device_accuracy.s4", "complexity.macs_dcase",
                "quantize.top1_agreement", "student_int8_onnx.accuracy", "onnx.top1_agreement"} <= set(run.data.metrics)
        assert {a.path for a in client.list_artifacts(run.info.run_id, "model")} == {
            "model/student.pt", "model/student_int8.pt", "model/student_int8.onnx"}
    stages = [r for r in runs if r.data.tags.get("summary") != "true"]
    assert {r.data.tags["stage"] for r in stages if r.data.tags["dvc_experiment"] == "alpha5"} == {
        "student_train", "quantize", "evaluate"}  # the stages that log a run (export and complexity do not)
    for run in stages:
        assert run.data.tags["mlflow.parentRunId"] == summaries[run.data.tags["dvc_experiment"]].info.run_id


def test_dvc_plots_show_renders(project, experiment):
    output = project.dvc("plots", "show")
    assert "could not find" not in output and (project.root / "dvc_plots/index.html").is_file()


def test_run_cache_restores_a_params_set_already_trained(project, back_to_alpha1):
    assert "student_train" in restored(back_to_alpha1)
