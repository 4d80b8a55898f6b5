"""MLflow tracking of the pipeline (see docs/experiments.md).

Store: `sqlite:///<project root>/mlflow.db`, its artifacts beside it in `mlartifacts/`.
The root is that of the real repository even when DVC runs a stage in a temporary copy
(`dvc exp run --queue` / `--temp` execute in `<root>/.dvc/tmp/exps/[standalone/]tmpXXXX`,
and set DVC_ROOT to `<root>`), so every experiment lands in one store.
MLFLOW_TRACKING_URI (e.g. a team server) overrides it. Only the main process of a
distributed run logs. mlflow is imported on first use (it takes about a second).

Two kinds of runs:
- stage runs (`start_run`): one per stage execution that trains or evaluates, named
  `<experiment>/<stage>`, with the stage's params and per-epoch metrics;
- summary runs (`sync_summary`, called by the always-run `track` stage): exactly one per
  DVC experiment state, i.e. per (DVC experiment name, content of dvc.lock), with all
  params, the final metrics, the reports and the models, the int8 ONNX model as an MLflow
  logged model (Model column, `models:/<model id>`) and the data each training stage read
  as MLflow datasets (Dataset column). It is logged when the store
  lacks it, so it exists whether the stages ran, were skipped, or were restored from
  DVC's run cache, and a second `dvc repro` of the same state adds nothing. The stage
  runs of the experiment not yet grouped are nested under it (tag mlflow.parentRunId),
  so the UI shows one row per experiment with its stages under it. Only a FINISHED summary
  run counts: one that failed or was interrupted while logging is deleted and logged again
  by the next sync.

Concurrent writers (`dvc queue start -j N`) share the sqlite file: every store call
retries while sqlite reports "database is locked" (`retry_locked`). Tracking never fails a
stage run: a store that cannot be reached (start, params, per-epoch metrics, end) costs a
warning and at most `EPOCH_LOG_SECONDS` per metrics call, and the stage goes on (its
history CSV and the summary run keep everything). A summary run's logging is strict: one
that fails is not FINISHED and is logged again by the next sync. Runs are ended by id
(`MlflowClient.set_terminated`), so a retry after a lock error really ends the run.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import random
import re
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence, TypeVar

from mobileast.files import project_root

from mobileast.params import flatten

# mlflow reports usage to its servers unless told not to; this project runs offline.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

EXPERIMENT = "mobileast"
WORKSPACE = "workspace"
SUMMARY_STAGE = "summary"
PARENT_TAG = "mlflow.parentRunId"
STATE_TAG = "dvc_state"
LOCKED = "database is locked"
LOCK_RETRY_SECONDS = 120.0  # a summary run's store calls, and ending a run
EPOCH_LOG_SECONDS = 10.0  # at most this long per metrics call of a stage run, then it warns and goes on
MAX_PARAMS_PER_CALL = 100  # mlflow's limit per log_batch
T = TypeVar("T")


def store_root(cwd: str | Path | None = None) -> Path:
    """The project root that holds the default store, also from DVC's experiment copies."""
    root = Path(os.environ.get("DVC_ROOT") or project_root(cwd)).resolve()
    for dvc_dir in root.parents:
        if dvc_dir.name == ".dvc" and root.is_relative_to(dvc_dir / "tmp" / "exps"):
            return dvc_dir.parent
    return root


def tracking_uri(cwd: str | Path | None = None) -> str:
    """MLFLOW_TRACKING_URI if set, else the sqlite store at the project root."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{store_root(cwd) / 'mlflow.db'}"


def is_main_process() -> bool:
    """False in the non-zero ranks of a torchrun launch."""
    return int(os.environ.get("RANK", "0")) == 0


def experiment_name() -> str:
    """DVC's experiment name (DVC_EXP_NAME, set by `dvc exp run`), else 'workspace'."""
    return os.environ.get("DVC_EXP_NAME") or WORKSPACE


def git_revision() -> str | None:
    """The commit the run is based on: DVC's experiment baseline, else HEAD."""
    if os.environ.get("DVC_EXP_BASELINE_REV"):
        return os.environ["DVC_EXP_BASELINE_REV"]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def run_tags(stage: str) -> dict[str, str]:
    """Tags of every run: DVC experiment name ('workspace' outside `dvc exp run`), stage, git revision."""
    tags = {"dvc_experiment": experiment_name(), "stage": stage}
    revision = git_revision()
    if revision:
        tags |= {"git_revision": revision, "mlflow.source.git.commit": revision}
    return tags


def retry_locked(fn: Callable[..., T], *args: Any, timeout: float = LOCK_RETRY_SECONDS, **kwargs: Any) -> T:
    """fn(*args, **kwargs), retried with jittered backoff while the store says "database is locked".

    sqlite lets one writer at a time in; a second queue worker logging at the same moment
    gets that error once its busy timeout has passed. Any other error is raised at once.
    """
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        try:
            return fn(*args, **kwargs)
        except Exception as error:  # mlflow wraps sqlalchemy's OperationalError in its own type
            if LOCKED not in str(error) or time.monotonic() > deadline:
                raise
        time.sleep(delay * (0.5 + random.random()))
        delay = min(2 * delay, 2.0)


@contextmanager
def _sqlite_lock(uri: str, purpose: str = "create") -> Iterator[None]:
    """Serialise a check-then-write on a sqlite store between processes: first use (concurrent
    queue workers would race to create its tables), or the lookup and creation of a summary run."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(f"{db.name}.{purpose}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _mlflow() -> Any:
    import mlflow

    for logger in ("mlflow", "alembic"):
        logging.getLogger(logger).setLevel(logging.WARNING)
    # logs every store error with its traceback before raising it: a locked store would fill a
    # stage's output with tracebacks of errors that retry_locked retries and this module reports
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    return mlflow


def _experiment_id(mlflow: Any, name: str, uri: str) -> str:
    """Id of the named experiment, created if needed; a sqlite store keeps artifacts beside it
    (mlflow's default, ./mlruns of the current directory, would vanish with DVC's temp copies)."""
    with _sqlite_lock(uri):
        mlflow.set_tracking_uri(uri)
        experiment = retry_locked(mlflow.get_experiment_by_name, name)
        if experiment is not None:
            return experiment.experiment_id
        location = None
        if uri.startswith("sqlite:///"):
            location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
        return retry_locked(mlflow.create_experiment, name, artifact_location=location)


def _warn(message: str) -> None:
    print(f"tracking: warning: {message}", file=sys.stderr, flush=True)


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _log_params(mlflow: Any, params: Mapping[str, Any]) -> None:
    items = list(flatten(params).items())
    for start in range(0, len(items), MAX_PARAMS_PER_CALL):
        retry_locked(mlflow.log_params, dict(items[start:start + MAX_PARAMS_PER_CALL]))


def end_run(run_id: str, status: str, timeout: float = LOCK_RETRY_SECONDS) -> None:
    """Mark run `run_id` ended with `status`, by id, retried while the store is locked.

    (mlflow.end_run forgets the active run before it writes the status, so retrying it
    after a lock error ends nothing and leaves the run RUNNING.) Then drops the run from
    mlflow's active runs, if it is the active one.
    """
    mlflow = _mlflow()
    from mlflow import MlflowClient

    try:
        retry_locked(MlflowClient(tracking_uri()).set_terminated, run_id, status, timeout=timeout)
    finally:
        active = mlflow.active_run()
        if active is not None and active.info.run_id == run_id:
            with suppress(Exception):  # it pops the active run, then rewrites the status (written above)
                mlflow.end_run(status)


@contextmanager
def start_run(stage: str, params: Mapping[str, Any], mlflow_experiment: str = EXPERIMENT,
              tags: Mapping[str, str] | None = None, run_name: str | None = None,
              strict: bool = False) -> Iterator[Any]:
    """An MLflow run of a stage (default name `<experiment>/<stage>`) with its params
    (flattened: `dkd.alpha`) and the run tags.

    Yields the mlflow ActiveRun, or None in non-main processes of a distributed run
    (where every logging helper here does nothing). A failing stage marks the run failed.
    Not `strict` (stage runs): a store that cannot be reached to start the run, log its
    params or end it costs a warning, never the stage (it then yields None if the run could
    not be started). `strict` (summary runs): store errors are raised.
    """
    if not is_main_process():
        yield None
        return
    mlflow = _mlflow()
    try:
        experiment_id = _experiment_id(mlflow, mlflow_experiment, tracking_uri())
        run_tag = run_tags(stage) | dict(tags or {})
        run = retry_locked(mlflow.start_run, experiment_id=experiment_id,
                           run_name=run_name or f"{run_tag['dvc_experiment']}/{stage}", tags=run_tag)
    except Exception as error:
        if strict:
            raise
        _warn(f"cannot start the MLflow run of {stage} ({_first_line(error)}); the stage runs untracked")
        yield None
        return
    status = "FAILED"
    try:
        try:
            _log_params(mlflow, params)
        except Exception as error:
            if strict:
                raise
            _warn(f"cannot log the params of {stage} ({_first_line(error)})")
        yield run
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        try:
            end_run(run.info.run_id, status)
        except Exception as error:
            if strict:
                raise
            _warn(f"cannot end MLflow run {run.info.run_id} of {stage} ({_first_line(error)}); it stays RUNNING")


_metrics_writer: ThreadPoolExecutor | None = None
_warned_runs: set[str] = set()


def _write_metrics(uri: str, run_id: str, metrics: Mapping[str, float], step: int | None, deadline: float) -> None:
    """Log metrics to run `run_id` by id, retried while the store is locked until `deadline`."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    timeout = deadline - time.monotonic()
    if timeout <= 0:
        raise TimeoutError("gave up: an earlier call still held the writer")
    stamp = int(time.time() * 1000)
    rows = [Metric(key, value, stamp, step or 0) for key, value in metrics.items()]
    retry_locked(MlflowClient(uri).log_batch, run_id, metrics=rows, timeout=timeout)


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    """Log metrics to the active run, if any, waiting at most EPOCH_LOG_SECONDS.

    The write runs in one background thread (calls stay in order), so a store that is
    locked or gone cannot hold a training stage: past the deadline, or on any store error,
    the stage warns (once per run) and goes on; a write still waiting for a lock finishes or
    gives up on its own by the same deadline.
    """
    global _metrics_writer
    mlflow = _active_mlflow()
    if not mlflow:
        return
    run_id = mlflow.active_run().info.run_id
    deadline = time.monotonic() + EPOCH_LOG_SECONDS
    if _metrics_writer is None:
        _metrics_writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-metrics")
    job = _metrics_writer.submit(_write_metrics, tracking_uri(), run_id, {k: float(v) for k, v in metrics.items()},
                                 step, deadline)
    try:
        job.result(timeout=max(0.0, deadline - time.monotonic()))
    except Exception as error:
        reason = "the store did not answer in time" if isinstance(error, TimeoutError) else _first_line(error)
        if run_id not in _warned_runs:
            _warned_runs.add(run_id)
            _warn(f"cannot log metrics to MLflow run {run_id} ({reason}); the stage goes on (a training "
                  "stage's history CSV keeps every epoch; this warning is shown once per run)")


def _active_mlflow() -> Any:
    """The mlflow module if a run is active (mlflow unimported means no run was started)."""
    mlflow = sys.modules.get("mlflow")
    return mlflow if mlflow is not None and mlflow.active_run() is not None else None


# ----------------------------------------------------------------- summary runs

def state_key(lock: Mapping[str, Any], exclude: Sequence[str] = ()) -> str:
    """Hash of a dvc.lock's stages (cmd, params, deps and outs hashes), `exclude`d stages left out.

    DVC writes each stage's lock entry as soon as the stage has run or been restored, so
    a stage running last sees the state of the whole pipeline.
    """
    stages = {name: entry for name, entry in lock.get("stages", {}).items() if name not in exclude}
    if not stages:
        raise ValueError("dvc.lock has no stages: run the pipeline first")
    return hashlib.sha256(json.dumps(stages, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class DataInput:
    """The data a training stage read, logged as an MLflow dataset (the runs' Dataset column).

    name: e.g. `demo/teacher_train`; digest: a fingerprint of the stores the stage read (at
    most 36 characters, MLflow's limit); source: where the data came from (the TAU22 root,
    or the demo generator's store); stage and split: input tags.
    """

    name: str
    digest: str
    source: str
    stage: str
    split: str = "train"


@dataclass
class ExperimentSummary:
    """What a summary run carries.

    artifacts: (local file, artifact directory) pairs. model: the int8 ONNX model, logged
    as an MLflow logged model (onnx flavour) named `model_name`, its metadata_props (the
    deployed meta: features, classes, ...) in its MLmodel metadata. datasets: the data
    each training stage read.
    """

    params: Mapping[str, Any]
    metrics: Mapping[str, float]
    artifacts: Sequence[tuple[Path, str]] = ()
    model: Path | None = None
    model_name: str = "student_int8"
    datasets: Sequence[DataInput] = ()


@dataclass(frozen=True)
class SyncResult:
    run_id: str
    created: bool  # False: the store already held this state's summary run
    adopted: int  # stage runs nested under it by this call
    model_version: str | None = None  # registry version, when registered
    model_id: str | None = None  # the logged model (`models:/<model_id>`), when the summary has a model


def summary_runs(client: Any, experiment_id: str, name: str, key: str) -> list:
    """The summary runs of (experiment name, state key) in the store, complete or not."""
    return retry_locked(client.search_runs, [experiment_id],
                        filter_string=f"tags.{STATE_TAG} = '{key}' and tags.dvc_experiment = '{name}' "
                                      f"and tags.stage = '{SUMMARY_STAGE}'",
                        max_results=1000)


def find_summary(client: Any, experiment_id: str, name: str, key: str) -> Any | None:
    """The complete (FINISHED) summary run of (experiment name, state key), if the store has one.

    A summary run that failed or was interrupted while logging (registry error, Ctrl-C,
    a killed process) is not one: it may lack metrics, artifacts or the model.
    """
    return next((run for run in summary_runs(client, experiment_id, name, key)
                 if run.info.status == "FINISHED"), None)


def adopt_stage_runs(client: Any, experiment_id: str, name: str, parent_id: str) -> int:
    """Nest the experiment's ungrouped stage runs under its summary run; returns how many.

    Stage runs are logged before the state they produce is known; every stage run of the
    DVC experiment `name` that has no parent yet belongs to the state being summarised
    now (for the workspace: what ran since its previous summary).
    """
    runs = retry_locked(client.search_runs, [experiment_id], filter_string=f"tags.dvc_experiment = '{name}'",
                        max_results=10_000)
    orphans = [run for run in runs if PARENT_TAG not in run.data.tags
               and run.data.tags.get("stage") != SUMMARY_STAGE and run.info.run_id != parent_id]
    for run in orphans:
        retry_locked(client.set_tag, run.info.run_id, PARENT_TAG, parent_id)
    return len(orphans)


def sync_summary(summary: ExperimentSummary, key: str, register_as: str | None = None,
                 mlflow_experiment: str = EXPERIMENT) -> SyncResult:
    """Log the summary run of the current DVC experiment state `key` unless the store has a
    complete one; incomplete ones of this state (an earlier sync failed) are deleted first.

    register_as: also register the logged model in the model registry under this name (a
    new version, tagged with the run's headline metrics, with the alias `model_alias`).
    """
    mlflow = _mlflow()
    from mlflow import MlflowClient

    uri = tracking_uri()
    experiment_id = _experiment_id(mlflow, mlflow_experiment, uri)
    client = MlflowClient(uri)
    name = experiment_name()
    with _sqlite_lock(uri, "summary"):
        existing = find_summary(client, experiment_id, name, key)
        if existing is not None:
            return SyncResult(existing.info.run_id, False,
                              adopt_stage_runs(client, experiment_id, name, existing.info.run_id))
        for leftover in summary_runs(client, experiment_id, name, key):  # failed or interrupted: replaced
            retry_locked(client.delete_run, leftover.info.run_id)
        return _create_summary(mlflow, client, experiment_id, mlflow_experiment, name, summary, key, register_as)


def _create_summary(mlflow: Any, client: Any, experiment_id: str, mlflow_experiment: str, name: str,
                    summary: ExperimentSummary, key: str, register_as: str | None) -> SyncResult:
    run_name = name if name != WORKSPACE else f"{WORKSPACE}-{key[:7]}"
    version = model_id = None
    with start_run(SUMMARY_STAGE, summary.params, mlflow_experiment, {"summary": "true", STATE_TAG: key},
                   run_name, strict=True) as run:
        retry_locked(mlflow.log_metrics, dict(summary.metrics))
        for path, directory in summary.artifacts:
            retry_locked(mlflow.log_artifact, str(path), directory)
        if summary.datasets:
            retry_locked(_log_datasets, mlflow, summary.datasets)
        if summary.model is not None:
            info = retry_locked(_log_onnx, mlflow, summary.model, summary.model_name)
            model_id = info.model_id
            if register_as:
                version = str(retry_locked(mlflow.register_model, info.model_uri, register_as,
                                           tags=registry_tags(summary.metrics)).version)
                retry_locked(client.set_registered_model_alias, register_as, model_alias(name), version)
    adopted = adopt_stage_runs(client, experiment_id, name, run.info.run_id)
    return SyncResult(run.info.run_id, True, adopted, version, model_id)


def registry_tags(metrics: Mapping[str, float]) -> dict[str, str]:
    """The headline metrics a registered model version is tagged with (accuracies, memory)."""
    return {k: str(v) for k, v in metrics.items() if k.endswith(("accuracy", "param_memory_bytes"))}


def model_alias(experiment: str) -> str:
    """The registry alias of a DVC experiment's model (`models:/<name>@<alias>`): the experiment's
    name ('workspace' for the workspace), each character MLflow refuses in an alias replaced by
    '-', prefixed with 'dvc-' where MLflow reserves the name ('latest', 'v<number>')."""
    alias = re.sub(r"[^\w-]", "-", experiment)
    return f"dvc-{alias}" if alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias) else alias


def _log_datasets(mlflow: Any, datasets: Sequence[DataInput]) -> None:
    """Log each DataInput as an input dataset of the active run (context 'training')."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    with warnings.catch_warnings():  # a local path resolves to two equivalent artifact sources
        warnings.simplefilter("ignore", UserWarning)
        sources = [resolve_dataset_source(data.source) for data in datasets]
    mlflow.log_inputs([MetaDataset(source, name=data.name, digest=data.digest) for data, source in zip(datasets, sources)],
                      contexts=["training"] * len(datasets),
                      tags_list=[{"stage": data.stage, "split": data.split} for data in datasets])


def _log_onnx(mlflow: Any, path: Path, name: str) -> Any:
    """Log an ONNX file as an MLflow logged model of the active run (onnx flavour, one file,
    no pickle; loadable with mlflow.onnx.load_model, served on CPU by pyfunc), with the
    signature of its graph (a named dimension as -1), an all-zero input example (a named
    dimension as 1) and its metadata_props (JSON values decoded) as MLmodel metadata."""
    import mlflow.onnx
    import numpy as np
    import onnx
    import onnxruntime
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    proto = onnx.load(str(path), load_external_data=False)

    def spec(value: Any) -> TensorSpec:
        tensor = value.type.tensor_type
        return TensorSpec(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type),
                          tuple(dim.dim_value or -1 for dim in tensor.shape.dim), value.name)

    signature = ModelSignature(Schema([spec(v) for v in proto.graph.input]), Schema([spec(v) for v in proto.graph.output]))
    first = signature.inputs.inputs[0]
    example = np.zeros([max(dim, 1) for dim in first.shape], dtype=first.type)
    metadata = {prop.key: _json_or_text(prop.value) for prop in proto.metadata_props}
    return mlflow.onnx.log_model(proto, name=name, signature=signature, input_example=example, metadata=metadata,
                                 save_as_external_data=False, onnx_execution_providers=["CPUExecutionProvider"],
                                 pip_requirements=[f"onnx=={onnx.__version__}", f"onnxruntime=={onnxruntime.__version__}"])


def _json_or_text(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value
