"""MLflow store resolution (also from DVC's experiment copies), tags and params, summary runs with
their logged ONNX model and datasets, and a locked store that never fails a stage."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from mobileast import tracking

LOGGING_SCRIPT = """
from mobileast import tracking
with tracking.start_run("student_train", {"dkd": {"alpha": 5.0, "T": 4}, "seed": 0}):
    tracking.log_metrics({"val_accuracy": 0.5}, step=1)
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


META = {"features": {"sample_rate": 8000, "n_mels": 8, "hop_length": 100}, "classes": ["x", "y"]}


def tiny_onnx(path, weight_scale: float = 1.0):
    """A linear classifier over (batch, 1, 8, 80) inputs as an ONNX file with the deployed meta."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.full((8 * 80, 2), weight_scale, np.float32), "w")
    bias = numpy_helper.from_array(np.array([1.0, -1.0], np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["flat"]), helper.make_node("Gemm", ["flat", "w", "b"], ["logits"])],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 8, 80])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])], [weight, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    prop = model.metadata_props.add()
    prop.key, prop.value = "meta.json", json.dumps(META)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


DATASETS = (tracking.DataInput("demo/teacher_train", "1" * 32, "data/demo", "teacher_train"),
            tracking.DataInput("demo/student_train", "2" * 32, "data/demo", "student_train"))


def tiny_summary(tmp_path, alpha):
    model = tiny_onnx(tmp_path / f"int8-{alpha}.onnx", alpha)
    return tracking.ExperimentSummary({"dkd": {"alpha": alpha}}, {"student_int8.accuracy": 0.5},
                                      [(model, "model")], model=model, datasets=DATASETS)


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
    assert [a.path for a in client.list_artifacts(first.run_id, "model")] == ["model/int8-1.onnx"]


def test_summary_run_links_its_onnx_model_and_the_training_data(store, tmp_path):
    """As the MLflow UI's Model and Dataset columns read them: the logged model (onnx flavour, no
    pickle) of the run, loadable by `models:/<id>` and runnable with onnxruntime, and the datasets."""
    import mlflow.onnx
    import numpy as np
    import onnxruntime
    from mlflow import MlflowClient

    result = tracking.sync_summary(tiny_summary(tmp_path, 1), "key1")
    client = MlflowClient(store)
    experiment_id = client.get_experiment_by_name(tracking.EXPERIMENT).experiment_id
    [logged] = client.search_logged_models([experiment_id])
    assert (logged.model_id, logged.source_run_id, logged.name) == (result.model_id, result.run_id, "student_int8")
    run = client.get_run(result.run_id)
    assert [output.model_id for output in run.outputs.model_outputs] == [result.model_id]
    info = mlflow.models.get_model_info(f"models:/{result.model_id}")
    assert set(info.flavors) == {"onnx", "python_function"} and info.metadata == {"meta.json": META}
    assert [tuple(spec.shape) for spec in info.signature.inputs.inputs] == [(-1, 1, 8, 80)]
    assert not any(path.suffix in (".pkl", ".pickle") for path in
                   Path(mlflow.artifacts.download_artifacts(f"models:/{result.model_id}")).rglob("*"))
    proto = mlflow.onnx.load_model(f"models:/{result.model_id}")
    session = onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    [logits] = session.run(None, {"x": np.zeros((1, 1, 8, 80), np.float32)})
    np.testing.assert_allclose(logits, [[1.0, -1.0]])  # the bias: the model logged is the file's

    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert sorted(inputs) == ["demo/student_train", "demo/teacher_train"]
    teacher = inputs["demo/teacher_train"]
    assert teacher.dataset.digest == "1" * 32 and json.loads(teacher.dataset.source) == {"uri": "data/demo"}
    assert {tag.key: tag.value for tag in teacher.tags} == {"mlflow.data.context": "training", "stage": "teacher_train",
                                                            "split": "train"}


def test_sync_summary_registers_the_model_with_the_experiments_alias(store, tmp_path, monkeypatch):
    import mlflow.onnx
    import onnx.numpy_helper
    from mlflow import MlflowClient

    result = tracking.sync_summary(tiny_summary(tmp_path, 1), "key1", register_as="student-int8")
    assert result.model_version == "1"
    client = MlflowClient(store)
    version = client.get_model_version("student-int8", "1")
    assert version.tags == {"student_int8.accuracy": "0.5"} and version.aliases == ["workspace"]
    assert version.source == f"models:/{result.model_id}" and version.current_stage == "None"
    monkeypatch.setenv("DVC_EXP_NAME", "exp-a")
    tracking.sync_summary(tiny_summary(tmp_path, 5), "key2", register_as="student-int8")
    assert str(client.get_model_version_by_alias("student-int8", "exp-a").version) == "2"
    proto = mlflow.onnx.load_model("models:/student-int8@workspace")
    assert all(tensor.data_location == onnx.TensorProto.DEFAULT for tensor in proto.graph.initializer)  # one file
    assert onnx.numpy_helper.to_array(proto.graph.initializer[0])[0, 0] == 1.0  # workspace's model: alpha 1


def test_model_alias_is_one_mlflow_accepts():
    assert tracking.model_alias("workspace") == "workspace" and tracking.model_alias("exp-a1b2c") == "exp-a1b2c"
    assert tracking.model_alias("my exp/1.5") == "my-exp-1-5"
    assert tracking.model_alias("latest") == "dvc-latest" and tracking.model_alias("v2") == "dvc-v2"


@pytest.mark.parametrize("failure", [RuntimeError("registry unavailable"), KeyboardInterrupt()])
def test_a_summary_run_that_failed_midway_is_replaced_by_the_next_sync(store, tmp_path, monkeypatch, failure):
    """A sync that dies after the run was created (registry error, Ctrl-C) leaves no summary that
    counts: the next sync of the same state logs a complete one and deletes the broken one."""
    from mlflow import MlflowClient

    def fail(*args, **kwargs):
        raise failure

    with monkeypatch.context() as patch:
        patch.setattr(tracking, "_log_onnx", fail)
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
    assert [a.path for a in client.list_artifacts(result.run_id, "model")] == ["model/int8-1.onnx"]
    assert client.get_model_version("student-int8", "1").run_id == result.run_id
    assert client.get_run(broken.info.run_id).info.lifecycle_stage == "deleted"
    assert not tracking.sync_summary(tiny_summary(tmp_path, 1), "key1").created


def test_training_data_fingerprints_the_stores_each_training_stage_read():
    import hashlib

    from mobileast.summary import training_data

    def dep(path, md5):
        return {"path": path, "hash": "md5", "md5": md5}

    lock = {"stages": {
        "teacher_train": {"deps": [dep("src/mobileast/training/engine.py", "c1"), dep("data/resampled", "r.dir"),
                                   dep("data/recordings", "a.dir")]},
        "student_train": {"deps": [dep("data/recordings", "a.dir"), dep("data/resampled", "r.dir"),
                                   dep("data/teacher_logits", "l.dir"), dep("stages/student_train.py", "c2")]}}}
    params = {"data": {"source": "tau22", "root": "/data/TAU", "split": 100}, "teacher": {"split": 100}}
    teacher, student = training_data(params, lock)
    assert (teacher.name, teacher.source, teacher.stage, teacher.split) == ("tau22/teacher_train", "/data/TAU",
                                                                            "teacher_train", "train split 100")
    assert teacher.digest == hashlib.md5(b"train split 100\ndata/recordings a.dir\ndata/resampled r.dir").hexdigest()
    assert student.name == "tau22/student_train" and student.digest != teacher.digest
    params["data"]["split"] = 25  # the student's split is part of its data, not the teacher's
    assert training_data(params, lock)[0] == teacher
    assert training_data(params, lock)[1].digest != student.digest and training_data(params, lock)[1].split == (
        "train split 25")
    params["data"]["split"] = 100
    lock["stages"]["teacher_train"]["deps"][0]["md5"] = "code changed"  # code is not data
    assert training_data(params, lock)[0] == teacher
    lock["stages"]["teacher_train"]["deps"][1]["md5"] = "other.dir"
    assert training_data(params, lock)[0].digest != teacher.digest
    with pytest.raises(ValueError, match="dvc.lock: stage student_train lists no data"):
        training_data(params, {"stages": {"teacher_train": lock["stages"]["teacher_train"]}})


@pytest.fixture
def locked(store):
    """Hold sqlite's exclusive lock on the store while in the `with` block (another writer mid-commit)."""
    import sqlite3

    @contextmanager
    def hold():
        connection = sqlite3.connect(store.removeprefix("sqlite:///"), isolation_level=None)
        connection.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            connection.execute("ROLLBACK")
            connection.close()

    return hold


def test_a_locked_store_costs_a_stage_one_warning_and_a_bounded_wait(store, locked, monkeypatch, capsys):
    from mlflow import MlflowClient

    patience = tracking.EPOCH_LOG_SECONDS
    monkeypatch.setattr(tracking, "EPOCH_LOG_SECONDS", 0.5)
    with tracking.start_run("student_train", {"seed": 0}) as run:
        tracking.log_metrics({"val_accuracy": 0.1}, step=1)
        with locked():
            start = time.monotonic()
            for epoch in (2, 3, 4):
                tracking.log_metrics({"val_accuracy": epoch / 10}, step=epoch)
            waited = time.monotonic() - start
        # the store answers again: the stage's usual patience, so that on a busy machine the
        # write queued behind the abandoned ones still lands
        monkeypatch.setattr(tracking, "EPOCH_LOG_SECONDS", patience)
        tracking.log_metrics({"val_accuracy": 0.5}, step=5)
    assert waited < 3 * 0.5 + 1.0  # each call gave up after EPOCH_LOG_SECONDS, training went on
    assert capsys.readouterr().err.count("tracking: warning: cannot log metrics") == 1
    client = MlflowClient(store)
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")]
    assert steps[0] == 1 and steps[-1] == 5  # before and after the lock; those during it landed or were dropped


def test_runs_are_ended_by_id_so_a_retry_after_a_lock_error_ends_them(store, monkeypatch):
    """mlflow.end_run forgets the active run before writing its status: retrying it after a lock
    error would leave the run RUNNING. tracking.end_run retries the write by id."""
    import mlflow
    from mlflow import MlflowClient

    real = MlflowClient.set_terminated
    calls = []

    def locked_once(self, run_id, status=None, end_time=None):
        calls.append(status)
        if len(calls) == 1:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return real(self, run_id, status, end_time)

    monkeypatch.setattr(MlflowClient, "set_terminated", locked_once)
    with pytest.raises(ValueError, match="diverged"):
        with tracking.start_run("student_train", {"seed": 0}) as run:
            raise ValueError("diverged")
    assert calls[:2] == ["FAILED", "FAILED"] and mlflow.active_run() is None
    assert MlflowClient(store).get_run(run.info.run_id).info.status == "FAILED"


def test_a_store_that_cannot_end_a_stage_run_warns_and_the_stage_succeeds(store, monkeypatch, capsys):
    import mlflow
    from mlflow import MlflowClient

    def unreachable(self, run_id, status=None, end_time=None):
        raise RuntimeError("connection refused")

    with monkeypatch.context() as patch:
        patch.setattr(MlflowClient, "set_terminated", unreachable)
        with tracking.start_run("evaluate", {"seed": 0}) as run:
            pass
    assert "cannot end MLflow run" in capsys.readouterr().err and mlflow.active_run() is None
    with pytest.raises(RuntimeError, match="connection refused"):  # a summary run's logging is strict
        with monkeypatch.context() as patch:
            patch.setattr(MlflowClient, "set_terminated", unreachable)
            with tracking.start_run("summary", {"seed": 0}, strict=True):
                pass
    assert MlflowClient(store).get_run(run.info.run_id).info.status == "RUNNING"
