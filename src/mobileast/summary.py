"""The experiment summary that the `track` stage keeps in MLflow (see mobileast.tracking).

One summary run per DVC experiment state carries:
- params: the whole params.yaml, flattened (`dkd.alpha`);
- metrics: reports/metrics.json (float student, int8 student, teacher: accuracy, macro
  accuracy, log loss, seen/unseen and per-device accuracy), the complexity headline
  (`complexity.*`), the int8-vs-float agreement of the quantize stage (`quantize.*`) and
  the ONNX int8 model's agreement with the torch one (`onnx.*`);
- artifacts: the int8 TorchScript and ONNX models and the float checkpoint under `model/`, the
  reports (results, complexity, confusion matrices, training curves) under `reports/`;
- with `tracking.register_model: true`, also the int8 model as an MLflow model (pytorch
  flavour, `mlflow.pytorch.load_model`) `student_int8` with the deployed model's meta
  (features, classes, architecture) in its MLmodel metadata, registered in the model
  registry as a new version of `tracking.model_name`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from mobileast import tracking
from mobileast.params import flatten


@dataclass(frozen=True)
class PipelineFiles:
    """Where the pipeline's final outputs are, relative to the project root."""

    lock: Path = Path("dvc.lock")
    int8_model: Path = Path("models/student_int8.pt")
    onnx_model: Path = Path("models/student_int8.onnx")
    float_model: Path = Path("models/student.pt")
    metrics: Path = Path("reports/metrics.json")
    complexity: Path = Path("reports/complexity.json")
    quantize: Path = Path("reports/quantize.json")
    export: Path = Path("reports/export.json")
    reports: tuple[Path, ...] = tuple(Path("reports") / name for name in (
        "results.md", "complexity.md", "complexity_details.json", "confusion_student_float.png",
        "confusion_student_int8.png", "confusion_student_int8_onnx.png", "confusion_teacher.png", "student_history.csv", "student_history.png",
        "teacher_history.csv", "teacher_history.png", "teacher_metrics.json"))


def _numbers(flat: Mapping[str, Any]) -> dict[str, float]:
    """The numeric entries of a flat dict as floats (booleans as 0/1), for MLflow metrics."""
    return {k: float(v) for k, v in flat.items() if isinstance(v, (int, float)) and v is not None}


def _deployed_meta(path: Path) -> dict[str, Any]:
    """The deployed model's meta, for the registry only: loading the model costs torch's import
    (seconds on every `dvc repro`)."""
    from mobileast.deploy import load_deployed

    return load_deployed(path)[1].to_dict()


def experiment_summary(params: Mapping[str, Any], files: PipelineFiles = PipelineFiles()) -> tracking.ExperimentSummary:
    """The summary of the pipeline's current outputs; a missing output is an error naming it."""
    missing = [str(p) for p in (files.int8_model, files.onnx_model, files.float_model, files.metrics,
                                files.complexity, files.quantize, files.export, *files.reports) if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"cannot summarise the experiment: missing {', '.join(missing)} "
                                "(run the pipeline: dvc repro)")
    metrics = _numbers(flatten(json.loads(files.metrics.read_text())))
    metrics |= _numbers(flatten({"complexity": json.loads(files.complexity.read_text())}))
    quantize = json.loads(files.quantize.read_text())
    metrics |= _numbers(flatten({"quantize": {"param_memory_bytes": quantize["param_memory_bytes"],
                                              **quantize["evaluate_agreement"]}}))
    export = json.loads(files.export.read_text())
    metrics |= _numbers(flatten({"onnx": {"param_memory_bytes": export["param_memory_bytes"],
                                          **export["evaluate_agreement_with_torch_int8"]}}))
    meta = _deployed_meta(files.int8_model) if params["tracking"]["register_model"] else {}
    artifacts = [(files.int8_model, "model"), (files.onnx_model, "model"), (files.float_model, "model"),
                 (files.export, "reports"), *((p, "reports") for p in files.reports)]
    return tracking.ExperimentSummary(params, metrics, artifacts, model=files.int8_model,
                                      model_name="student_int8", model_metadata=meta)


def sync(params: Mapping[str, Any], files: PipelineFiles = PipelineFiles()) -> tracking.SyncResult:
    """Stage track: log the summary run of the current dvc.lock state unless the store has it."""
    lock = yaml.safe_load(files.lock.read_text()) if files.lock.is_file() else {}
    key = tracking.state_key(lock, exclude=("track",))
    settings = params["tracking"]
    return tracking.sync_summary(experiment_summary(params, files), key,
                                 register_as=settings["model_name"] if settings["register_model"] else None)
