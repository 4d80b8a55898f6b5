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


def test_retry_locked_retries_only_lock_errors():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return "done"

    assert tracking.retry_locked(flaky) == "done" and len(calls) == 3
    with pytest.raises(ValueError, match="other"):
        tracking.retry_locked(lambda: (_ for _ in ()).throw(ValueError("other")))
    with pytest.raises(RuntimeError, match="locked"):
        tracking.retry_locked(lambda: (_ for _ in ()).throw(RuntimeError("database is locked")), timeout=0.2)


WRITER_SCRIPT = """
import sys
from mobileast import tracking
with tracking.start_run("student_train", {"seed": int(sys.argv[1])}):
    for epoch in range(int(sys.argv[2])):
        tracking.log_metrics({"train_loss": 1.0 / (epoch + 1), "val_accuracy": epoch / 1000}, step=epoch)
"""


def test_two_queue_workers_log_epochs_to_one_sqlite_store_at_once(project):
    """As `dvc queue start -j 2`: both writers' rows all land, none fails on the locked database."""
    root, (queued, temp) = project
    epochs = 300
    procs = []
    for i, directory in enumerate((queued, temp)):
        script = directory / "stages" / "writer.py"
        script.write_text(WRITER_SCRIPT)
        env = clean_env(DVC_EXP_NAME=f"exp{i}", DVC_ROOT=str(root))
        procs.append(subprocess.Popen([sys.executable, str(script), str(i), str(epochs)], cwd=directory, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-3000:]
    client, runs = runs_in(f"sqlite:///{root}/mlflow.db")
    assert sorted(run.data.tags["dvc_experiment"] for run in runs) == ["exp0", "exp1"]
    for run in runs:
        assert run.info.status == "FINISHED"
        for key in ("train_loss", "val_accuracy"):
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == list(range(epochs))


def test_state_key_ignores_the_excluded_stage_and_sees_any_other_change():
    lock = {"schema": "2.0", "stages": {"train": {"params": {"params.yaml": {"dkd.alpha": 1}}},
                                        "track": {"deps": [{"path": "x", "md5": "1"}]}}}
    key = tracking.state_key(lock, exclude=("track",))
    assert tracking.state_key({**lock, "stages": {**lock["stages"], "track": {}}}, exclude=("track",)) == key
    changed = {"stages": {**lock["stages"], "train": {"params": {"params.yaml": {"dkd.alpha": 5}}}}}
    assert tracking.state_key(changed, exclude=("track",)) != key
    with pytest.raises(ValueError, match="no stages"):
        tracking.state_key({"stages": {"track": {}}}, exclude=("track",))


@pytest.fixture
def store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for name in ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "RANK"):
        monkeypatch.delenv(name, raising=False)
    return uri


def tiny_summary(tmp_path, alpha):
    import torch

    from mobileast.deploy import ModelMeta, save_deployed

    model = tmp_path / f"int8-{alpha}.pt"
    meta = {"features": {"sample_rate": 8000, "n_mels": 8, "hop_length": 100}, "classes": ["x", "y"]}
    save_deployed(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8 * 80, 2)), model, ModelMeta.from_dict(meta))
    return tracking.ExperimentSummary({"dkd": {"alpha": alpha}}, {"student_int8.accuracy": 0.5},
                                      [(model, "model")], model=model, model_metadata=meta)


def test_sync_summary_is_idempotent_and_nests_the_stage_runs(store, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    with tracking.start_run("student_train", {"dkd": {"alpha": 1}}):
        tracking.log_metrics({"val_accuracy": 0.4}, step=1)
    first = tracking.sync_summary(tiny_summary(tmp_path, 1), "key1")
    again = tracking.sync_summary(tiny_summary(tmp_path, 1), "key1")
    assert first.created and first.adopted == 1 and not again.created and again.run_id == first.run_id
    monkeypatch.setenv("DVC_EXP_NAME", "exp-a")  # a DVC experiment of the same state is another summary
    other = tracking.sync_summary(tiny_summary(tmp_path, 1), "key1")
    newer = tracking.sync_summary(tiny_summary(tmp_path, 5), "key2")
    assert other.created and newer.created and len({first.run_id, other.run_id, newer.run_id}) == 3
    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name(tracking.EXPERIMENT).experiment_id])
    summaries = [r for r in runs if r.data.tags.get("summary") == "true"]
    assert len(summaries) == 3 and sorted(r.info.run_name for r in summaries) == ["exp-a", "exp-a", "workspace-key1"]
    stage = next(r for r in runs if r.data.tags["stage"] == "student_train")
    assert stage.data.tags[tracking.PARENT_TAG] == first.run_id
    run = client.get_run(first.run_id)
    assert run.data.params == {"dkd.alpha": "1"} and run.data.metrics == {"student_int8.accuracy": 0.5}
    assert [a.path for a in client.list_artifacts(first.run_id, "model")] == ["model/int8-1.pt"]


def test_sync_summary_registers_the_model(store, tmp_path):
    import mlflow.pytorch
    import torch

    result = tracking.sync_summary(tiny_summary(tmp_path, 1), "key1", register_as="student-int8")
    assert result.model_version == "1"
    from mlflow import MlflowClient

    version = MlflowClient(store).get_model_version("student-int8", "1")
    assert version.tags == {"student_int8.accuracy": "0.5"}
    model = mlflow.pytorch.load_model("models:/student-int8/1")
    assert model(torch.zeros(3, 1, 8, 80)).shape == (3, 2)


@pytest.mark.parametrize("failure", [RuntimeError("registry unavailable"), KeyboardInterrupt()])
def test_a_summary_run_that_failed_midway_is_replaced_by_the_next_sync(store, tmp_path, monkeypatch, failure):
    """A sync that dies after the run was created (registry error, Ctrl-C) leaves no summary that
    counts: the next sync of the same state logs a complete one and deletes the broken one."""
    from mlflow import MlflowClient

    def fail(*args, **kwargs):
        raise failure

    with monkeypatch.context() as patch:
        patch.setattr(tracking, "_log_torchscript", fail)
        with pytest.raises(type(failure)):
            tracking.sync_summary(tiny_summary(tmp_path, 1), "key1", register_as="student-int8")
    client = MlflowClient(store)
    experiment_id = client.get_experiment_by_name(tracking.EXPERIMENT).experiment_id
    [broken] = client.search_runs([experiment_id])
    assert broken.info.status in ("FAILED", "KILLED") and broken.data.tags[tracking.STATE_TAG] == "key1"
    assert tracking.find_summary(client, experiment_id, tracking.WORKSPACE, "key1") is None

    result = tracking.sync_summary(tiny_summary(tmp_path, 1), "key1", register_as="student-int8")
    assert result.created and result.run_id != broken.info.run_id and result.model_version == "1"
    [summary] = client.search_runs([experiment_id])  # the broken run is deleted
    assert summary.info.run_id == result.run_id and summary.info.status == "FINISHED"
    assert summary.data.metrics == {"student_int8.accuracy": 0.5}
    assert [a.path for a in client.list_artifacts(result.run_id, "model")] == ["model/int8-1.pt"]
    assert client.get_model_version("student-int8", "1").run_id == result.run_id
    assert client.get_run(broken.info.run_id).info.lifecycle_stage == "deleted"
    assert not tracking.sync_summary(tiny_summary(tmp_path, 1), "key1").created
