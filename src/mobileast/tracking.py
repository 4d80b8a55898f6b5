"""MLflow tracking of the pipeline's stages (SPEC section 11).

The default store is `sqlite:///<project root>/mlflow.db`, its artifacts beside it in
`mlartifacts/`. The root is that of the real repository even when DVC runs a stage in
a temporary copy (`dvc exp run --queue` / `--temp` execute in
`<root>/.dvc/tmp/exps/[standalone/]tmpXXXX`, and set DVC_ROOT to `<root>`), so every
experiment lands in one store. MLFLOW_TRACKING_URI (e.g. a team server) overrides it.
Only the main process of a distributed run logs. mlflow is imported on first use: it
takes about a second to import.
"""
from __future__ import annotations

import fcntl
import logging
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

from mobileast.config import flatten, project_root

EXPERIMENT = "mobileast"


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
    tags = {"dvc_experiment": os.environ.get("DVC_EXP_NAME", "workspace"), "stage": stage}
    revision = git_revision()
    if revision:
        tags |= {"git_revision": revision, "mlflow.source.git.commit": revision}
    return tags


@contextmanager
def _sqlite_lock(uri: str) -> Iterator[None]:
    """Serialise first use of a sqlite store: concurrent queue workers would race to create its tables."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _experiment_id(mlflow: Any, name: str, uri: str) -> str:
    """Id of the named experiment, created if needed; a sqlite store keeps artifacts beside it
    (mlflow's default, ./mlruns of the current directory, would vanish with DVC's temp copies)."""
    with _sqlite_lock(uri):
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        location = None
        if uri.startswith("sqlite:///"):
            location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
        return mlflow.create_experiment(name, artifact_location=location)


@contextmanager
def start_run(stage: str, params: Mapping[str, Any], experiment_name: str = EXPERIMENT,
              tags: Mapping[str, str] | None = None) -> Iterator[Any]:
    """An MLflow run of a stage with its params (flattened: `dkd.alpha`) and the run tags.

    Yields the mlflow ActiveRun, or None in non-main processes of a distributed run
    (where every logging helper here does nothing). A failing stage marks the run failed.
    """
    if not is_main_process():
        yield None
        return
    import mlflow

    for logger in ("mlflow", "alembic"):
        logging.getLogger(logger).setLevel(logging.WARNING)
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    experiment_id = _experiment_id(mlflow, experiment_name, uri)
    run_tag = run_tags(stage) | dict(tags or {})
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"{run_tag['dvc_experiment']}/{stage}",
                          tags=run_tag) as run:
        mlflow.log_params(flatten(params))
        yield run


def _active_mlflow() -> Any:
    """The mlflow module if a run is active (mlflow unimported means no run was started)."""
    mlflow = sys.modules.get("mlflow")
    return mlflow if mlflow is not None and mlflow.active_run() is not None else None


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    """Log metrics to the active run, if any."""
    mlflow = _active_mlflow()
    if mlflow:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    """Log a local file to the active run, if any."""
    mlflow = _active_mlflow()
    if mlflow:
        mlflow.log_artifact(str(path), artifact_path)
