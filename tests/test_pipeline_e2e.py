"""The whole pipeline as a user runs it, in a fresh copy of this checkout.

One copy of the files git tracks (as the next commit would hold them: an un-added file is
missing, as in a fresh clone), committed in a new git repository, no DVC cache, no MLflow
store, with the `tau22-sub1` profile applied (`python -m mobileast profile tau22-sub1
--apply`) and tiny sizes and one epoch set on top, reading a tiny generated dataset in
TAU22 layout (`data.source: tau22`) that has missing slices and one 48 kHz stereo file.
Then, in order, checking DVC's and MLflow's views after each step:
1. `dvc repro` (all stages), `dvc repro` again (nothing but `track`, no new MLflow run);
2. the MLflow store moved away, `dvc repro`: only `track` runs and logs the summary run
   the store lacks (the fresh-clone case: every output up to date, nothing to re-run);
3. `dvc exp run -S dkd.alpha=5`: student_train and later only;
4. `dvc exp run -S dkd.alpha=1`: every stage restored from DVC's run cache, none trained;
5. `dvc exp run -S device_models.enabled=true`: device_models and evaluate only, the general
   models' metrics unchanged, general versus routed accuracy in reports/device_models.json.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

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
    "evaluate.batch_size": 64, "device_models.epochs": 1,
}
ALL_STAGES = {"demo_data", "resample", "reassemble", "teacher_train", "teacher_logits", "student_train",
              "quantize", "export", "complexity", "device_models", "evaluate", "track"}


def copy_checkout(target: Path) -> None:
    """The files git tracks, with their working-tree content and git's modes, as the next
    commit would hold them: a tree written from a scratch copy of the index updated from
    the working tree (the real index and HEAD are left alone), unpacked by `git archive`."""
    scratch = target.parent / "index"
    shutil.copy(git(REPO, "rev-parse", "--path-format=absolute", "--git-path", "index").strip(), scratch)
    env = {**os.environ, "GIT_INDEX_FILE": str(scratch)}
    git(REPO, "add", "--update", env=env)
    tree = git(REPO, "write-tree", env=env).strip()
    target.mkdir()
    archive = subprocess.run(["git", "archive", tree], cwd=REPO, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)


def git(cwd: Path, *args: str, env: dict[str, str] | None = None) -> str:
    return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True).stdout


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
    drop = {"MLFLOW_TRACKING_URI", "MLFLOW_SQLALCHEMYSTORE_POOLCLASS", "DVC_ROOT", "DVC_EXP_NAME",
            "DVC_EXP_BASELINE_REV", "RANK", "PYTHONPATH", "VIRTUAL_ENV"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p != venv_bin)
    return env


@dataclass(frozen=True)
class Summary:
    """A summary run as the store holds it."""

    experiment: str
    alpha: str
    status: str
    run_id: str
    metrics: frozenset[str]
    models: frozenset[str]


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

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(f"sqlite:///{self.root / 'mlflow.db'}")

    def runs(self) -> list:
        client = self.client()
        return client.search_runs([client.get_experiment_by_name("mobileast").experiment_id], max_results=1000)

    def summaries(self) -> list[Summary]:
        """Every summary run in the store (a duplicate shows up twice), by experiment name."""
        client = self.client()
        return sorted((Summary(r.data.tags["dvc_experiment"], r.data.params["dkd.alpha"], r.info.status,
                               r.info.run_id, frozenset(r.data.metrics),
                               frozenset(a.path for a in client.list_artifacts(r.info.run_id, "model")))
                       for r in self.runs() if r.data.tags.get("summary") == "true"), key=lambda s: s.experiment)

    def md5(self, path: str) -> str:
        return hashlib.md5((self.root / path).read_bytes()).hexdigest()


def ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def restored(output: str) -> set[str]:
    return set(re.findall(r"Stage '([^']+)' is cached - skipping run, checking out outputs", output))


@dataclass(frozen=True)
class Step:
    """A command's output and the store's summary runs after it."""

    output: str
    summaries: list[Summary]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Iterator[Project]:
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
    with pytest.MonkeyPatch.context() as patch:
        # this process reads the store before and after it is moved away: a pooled sqlite
        # connection would go on reading the moved file
        patch.setenv("MLFLOW_SQLALCHEMYSTORE_POOLCLASS", "NullPool")
        yield project


@pytest.fixture(scope="module")
def baseline(project) -> tuple[Step, Step, str]:
    """`dvc repro` twice; the float student's md5."""
    first = Step(project.dvc("repro"), project.summaries())
    second = Step(project.dvc("repro"), project.summaries())
    return first, second, project.md5("models/student.pt")


@pytest.fixture(scope="module")
def fresh_store(project, baseline) -> Step:
    """`dvc repro` with the MLflow store moved away: every output is up to date."""
    away = project.root.parent / "old-store"
    away.mkdir()
    for path in [*project.root.glob("mlflow.db*"), project.root / "mlartifacts"]:
        path.rename(away / path.name)
    return Step(project.dvc("repro"), project.summaries())


@pytest.fixture(scope="module")
def experiment(project, fresh_store) -> Step:
    return Step(project.dvc("exp", "run", "-n", "alpha5", "-S", "dkd.alpha=5"), project.summaries())


@pytest.fixture(scope="module")
def back_to_alpha1(project, experiment) -> Step:
    """`dvc exp run -S dkd.alpha=1` after the alpha 5 experiment: the baseline's params again."""
    return Step(project.dvc("exp", "run", "-n", "alpha1", "-S", "dkd.alpha=1"), project.summaries())


@pytest.fixture(scope="module")
def with_device_models(project, back_to_alpha1) -> tuple[Step, bytes]:
    """`dvc exp run -S device_models.enabled=true` on the alpha 1 state; the metrics.json before it."""
    before = (project.root / "reports/metrics.json").read_bytes()
    return Step(project.dvc("exp", "run", "-n", "devices", "-S", "device_models.enabled=true"),
                project.summaries()), before


SUMMARY_METRICS = {"student_float.accuracy", "student_int8.accuracy", "student_int8.per_device_accuracy.a",
                   "student_int8.per_device_accuracy.s4", "complexity.macs_dcase", "quantize.top1_agreement",
                   "student_int8_onnx.accuracy", "onnx.top1_agreement", "device_models.enabled"}
MODELS = {"model/student.pt", "model/student_int8.pt", "model/student_int8.onnx"}


def assert_complete(summary: Summary) -> None:
    assert summary.status == "FINISHED" and SUMMARY_METRICS <= summary.metrics and summary.models == MODELS


def test_repro_runs_every_stage_and_a_second_repro_only_track(project, baseline):
    first, second, _ = baseline
    assert ran(first.output) == ALL_STAGES
    assert ran(second.output) == {"track"} and "already in the store" in second.output
    [summary] = first.summaries
    assert (summary.experiment, summary.alpha) == ("workspace", "1") and second.summaries == first.summaries
    assert_complete(summary)
    report = json.loads((project.root / "data/resampled/report.json").read_text())
    assert report["downmixed"]["count"] == 1 and report["other_rates"]["rates"] == {"48000": 1}
    recordings = json.loads((project.root / "data/recordings/report.json").read_text())
    assert recordings["incomplete"] and recordings["splits"]["source"] == "drawn"  # no split files: drawn
    assert recordings["splits"]["recordings"]["100"] == recordings["recordings"]
    assert sorted(p.name for p in (project.root / "data/recordings").iterdir()) == ["recordings.csv", "report.json",
                                                                                    "splits.csv"]
    params = yaml.safe_load((project.root / "params.yaml").read_text())
    assert params["student"]["preset"] == "sub1" and params["dkd"]["beta"] == 10 and params["train"]["epochs"] == 1


def test_dvc_exp_show_lists_baseline_and_experiment(project, experiment):
    rows = json.loads(project.dvc("exp", "show", "--json"))
    [baseline] = [row for row in rows if row["rev"] != "workspace"]
    experiments = {rev["name"]: rev["data"] for exp in baseline["experiments"] or [] for rev in exp["revs"]}
    assert set(experiments) == {"alpha5"}

    def alpha(data: dict) -> int:
        return data["params"]["params.yaml"]["data"]["dkd"]["alpha"]

    assert alpha(baseline["data"]) == 1 and alpha(experiments["alpha5"]) == 5
    metrics = experiments["alpha5"]["metrics"]["reports/metrics.json"]["data"]
    assert set(metrics["student_int8"]["per_device_accuracy"]) == {"a", "s4"}  # the tiny evaluate fold's
    assert experiments["alpha5"]["metrics"]["reports/complexity.json"]["data"]["param_memory_pass"] is True


def test_mlflow_has_one_summary_run_per_experiment_with_models_and_nested_stages(project, experiment):
    assert [(s.experiment, s.alpha) for s in experiment.summaries] == [("alpha5", "5"), ("workspace", "1")]
    for summary in experiment.summaries:
        assert_complete(summary)
    parents = {s.experiment: s.run_id for s in experiment.summaries}
    stages = [r for r in project.runs() if r.data.tags.get("summary") != "true"]
    assert sorted(r.data.tags["stage"] for r in stages if r.data.tags["dvc_experiment"] == "alpha5") == [
        "evaluate", "quantize", "student_train"]  # the stages that log a run (export and complexity do not)
    for run in stages:
        assert run.data.tags["mlflow.parentRunId"] == parents[run.data.tags["dvc_experiment"]]


def test_run_cache_restores_a_params_set_already_trained(project, baseline, back_to_alpha1):
    """Back to dkd.alpha 1: nothing trains, the float student is the baseline's, byte for byte."""
    assert restored(back_to_alpha1.output) == {"student_train", "quantize", "export", "complexity", "device_models",
                                               "evaluate"}
    assert ran(back_to_alpha1.output) == {"track"}
    assert project.md5("models/student.pt") == baseline[2]
    assert [(s.experiment, s.alpha) for s in back_to_alpha1.summaries] == [
        ("alpha1", "1"), ("alpha5", "5"), ("workspace", "1")]


def test_device_models_experiment_runs_the_stage_and_evaluate_and_reports_routed_accuracy(project, with_device_models):
    step, metrics_before = with_device_models
    assert ran(step.output) == {"device_models", "evaluate", "track"}
    assert (project.root / "reports/metrics.json").read_bytes() == metrics_before  # the general models' figures
    manifest = json.loads((project.root / "models/device/manifest.json").read_text())
    assert list(manifest["models"]) == ["a", "b"] and manifest["skipped"] == ["c", "s1", "s2", "s3"]
    report = json.loads((project.root / "reports/device_models.json").read_text())
    assert report["enabled"] is True and set(report) == {"enabled", "general", "routed", "per_device"}
    assert {d: row["model"] for d, row in report["per_device"].items()} == {"a": "a", "s4": "general"}
    assert report["per_device"]["s4"]["routed"] == report["per_device"]["s4"]["general"]
    assert report["general"]["accuracy"] == json.loads(metrics_before)["student_int8_onnx"]["accuracy"]
    [summary] = [s for s in step.summaries if s.experiment == "devices"]
    assert {"device_models.routed.accuracy", "device_models.general.accuracy"} <= summary.metrics


# The tests that read what an earlier step printed, or run one short command, come last:
# pytest-xdist hands this worker its next test file once two of its tests are left, and
# these are short, so that file does not wait behind the long steps.


def test_repro_logs_the_summary_a_store_lacks_without_rerunning_anything(fresh_store):
    """The bug this test was written for: outputs up to date, so no stage but track runs."""
    assert ran(fresh_store.output) == {"track"} and "logged" in fresh_store.output
    [summary] = fresh_store.summaries
    assert (summary.experiment, summary.alpha) == ("workspace", "1")
    assert_complete(summary)


def test_experiment_reruns_student_train_and_later_only(experiment):
    assert ran(experiment.output) == {"student_train", "quantize", "export", "complexity", "device_models",
                                      "evaluate", "track"}
    assert not restored(experiment.output)


def test_dvc_plots_show_renders(project, with_device_models):
    output = project.dvc("plots", "show")
    assert "could not find" not in output and (project.root / "dvc_plots/index.html").is_file()
