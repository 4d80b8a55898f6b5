"""MLflow store resolution (also from DVC's experiment copies), tags and params."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mobileast import tracking

LOGGING_SCRIPT = """
import sys
from mobileast import tracking
with tracking.start_run("student_train", {"dkd": {"alpha": 5.0, "T": 4}, "seed": 0}):
    tracking.log_metrics({"val_accuracy": 0.5}, step=1)
    tracking.log_artifact(sys.argv[0])
"""


@pytest.fixture
def project(tmp_path):
    """A project root with a queued (`exps/tmpq`) and a --temp (`exps/standalone/tmpt`) copy."""
    root = tmp_path / "project"
    copies = [root / ".dvc" / "tmp" / "exps" / "tmpq", root / ".dvc" / "tmp" / "exps" / "standalone" / "tmpt"]
    for directory in (root, *copies):
        (directory / "stages").mkdir(parents=True)
        (directory / "dvc.yaml").write_text("stages: {}\n")
    return root, copies


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without tracking/DVC/torchrun variables, plus `extra`."""
    drop = {"MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "RANK"}
    return {k: v for k, v in os.environ.items() if k not in drop} | extra


def log_from(*jobs: tuple[Path, dict[str, str]]) -> None:
    """Run the logging script in each (directory, env) at the same time, as `dvc queue start -j 2` does."""
    procs = []
    for directory, env in jobs:
        script = directory / "stages" / "log.py"
        script.write_text(LOGGING_SCRIPT)
        procs.append(subprocess.Popen([sys.executable, str(script)], cwd=directory, env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    for proc in procs:
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr[-3000:]
        assert "INFO" not in stderr, stderr  # mlflow's and alembic's chatter stays out of stage logs


def runs_in(uri: str):
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(tracking.EXPERIMENT)
    return client, client.search_runs([experiment.experiment_id]) if experiment else []


def test_store_root_of_dvc_experiment_copies(project, monkeypatch):
    root, copies = project
    monkeypatch.delenv("DVC_ROOT", raising=False)
    for directory in (root, *copies, copies[0] / "stages"):
        assert tracking.store_root(directory) == root.resolve()
    monkeypatch.setenv("DVC_ROOT", str(root))
    assert tracking.store_root(copies[0]) == root.resolve()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri(copies[1]) == f"sqlite:///{root.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql://team/mlflow")
    assert tracking.tracking_uri(copies[1]) == "postgresql://team/mlflow"


def test_runs_from_queued_and_temp_copies_land_in_the_root_store(project):
    root, (queued, temp) = project
    log_from((queued, clean_env(DVC_EXP_NAME="exp-queued", DVC_EXP_BASELINE_REV="abc123")),
             (temp, clean_env(DVC_EXP_NAME="exp-temp", DVC_ROOT=str(root))))  # DVC sets DVC_ROOT like this
    assert (root / "mlflow.db").is_file()
    assert not any((copy / name).exists() for copy in (queued, temp) for name in ("mlflow.db", "mlruns"))
    client, runs = runs_in(f"sqlite:///{root}/mlflow.db")
    by_name = {run.data.tags["dvc_experiment"]: run for run in runs}
    assert set(by_name) == {"exp-queued", "exp-temp"}
    run = by_name["exp-queued"]
    assert run.data.tags["stage"] == "student_train" and run.data.tags["git_revision"] == "abc123"
    assert run.info.run_name == "exp-queued/student_train" and run.info.status == "FINISHED"
    assert run.data.params == {"dkd.alpha": "5.0", "dkd.T": "4", "seed": "0"}
    assert run.data.metrics == {"val_accuracy": 0.5}
    assert run.info.artifact_uri.startswith((root / "mlartifacts").as_uri())
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["log.py"]


def test_tracking_uri_overrides_the_root_store(project, tmp_path):
    root, (queued, _) = project
    uri = f"sqlite:///{tmp_path / 'team' / 'mlflow.db'}"
    log_from((queued, clean_env(MLFLOW_TRACKING_URI=uri)))
    assert not (root / "mlflow.db").exists()
    _, runs = runs_in(uri)
    assert [run.data.tags["dvc_experiment"] for run in runs] == ["workspace"]


def test_non_main_ranks_do_not_log(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    with tracking.start_run("teacher_train", {"seed": 0}) as run:
        tracking.log_metrics({"loss": 1.0}, step=0)  # a no-op: no active run
    assert run is None
