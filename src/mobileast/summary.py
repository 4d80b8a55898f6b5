"""The experiment summary that the `track` stage keeps in MLflow (see mobileast.tracking).

One summary run per DVC experiment state carries:
- params: the whole params.yaml, flattened (`dkd.alpha`);
- metrics: reports/metrics.json (float student, int8 student, teacher: accuracy, macro
  accuracy, log loss, seen/unseen and per-device accuracy), the complexity headline
  (`complexity.*`), the int8-vs-float agreement of the quantize stage (`quantize.*`) and
  the ONNX int8 model's agreement with the torch one (`onnx.*`), and the general versus
  routed accuracy of the per-device models (`device_models.*`, only `enabled` 0 when off);
- artifacts: the int8 TorchScript and ONNX models and the float checkpoint under `model/`, the
  reports (results, complexity, confusion matrices, training curves) under `reports/`;
- the int8 ONNX model as an MLflow logged model `student_int8` (onnx flavour,
  `mlflow.onnx.load_model("models:/<model id>")`, run with onnxruntime) with the deployed
  model's meta (features, classes, architecture) in its MLmodel metadata; with
  `tracking.register_model: true` also registered in the model registry as a new version
  of `tracking.model_name`, aliased with the DVC experiment's name;
- datasets: the data each training stage read (`<data.source>/<stage>`, source `data.root`,
  split train), its digest a hash of the data stores' hashes in the stage's dvc.lock entry.
"""
from __future__ import annotations

import hashlib
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
    device_models: Path = Path("reports/device_models.json")
    reports: tuple[Path, ...] = tuple(Path("reports") / name for name in (
        "results.md", "complexity.md", "complexity_details.json", "confusion_student_float.png",
        "confusion_student_int8.png", "confusion_student_int8_onnx.png", "confusion_teacher.png", "student_history.csv", "student_history.png",
        "teacher_history.csv", "teacher_history.png", "teacher_metrics.json"))


def _numbers(flat: Mapping[str, Any]) -> dict[str, float]:
    """The numeric entries of a flat dict as floats (booleans as 0/1), for MLflow metrics."""
    return {k: float(v) for k, v in flat.items() if isinstance(v, (int, float)) and v is not None}


# training stage -> the params key of the data-efficient split it trains on
TRAINING_STAGES = {"teacher_train": ("teacher", "split"), "student_train": ("data", "split")}
DATA_DIR = "data/"  # the stores a stage reads are its dependencies under data/


def training_data(params: Mapping[str, Any], lock: Mapping[str, Any]) -> list[tracking.DataInput]:
    """The data each training stage read, from its dvc.lock entry: the hashes DVC recorded for
    its dependencies under data/ (recordings, resampled clips, teacher logits) and the split of
    the train fold it trained on (data.split / teacher.split) make the digest."""
    data = params["data"]
    inputs = []
    for stage, (section, key) in TRAINING_STAGES.items():
        split = f"train split {params[section][key]}"
        deps = lock.get("stages", {}).get(stage, {}).get("deps", [])
        stores = sorted(f"{dep['path']} {dep['md5']}" for dep in deps if dep["path"].startswith(DATA_DIR))
        if not stores:
            raise ValueError(f"dvc.lock: stage {stage} lists no data dependencies (run the pipeline: dvc repro)")
        inputs.append(tracking.DataInput(name=f"{data['source']}/{stage}",
                                         digest=hashlib.md5("\n".join([split, *stores]).encode()).hexdigest(),
                                         source=str(data["root"]), stage=stage, split=split))
    return inputs


def experiment_summary(params: Mapping[str, Any], lock: Mapping[str, Any],
                       files: PipelineFiles = PipelineFiles()) -> tracking.ExperimentSummary:
    """The summary of the pipeline's current outputs (`lock`: dvc.lock as read); a missing
    output is an error naming it."""
    missing = [str(p) for p in (files.int8_model, files.onnx_model, files.float_model, files.metrics,
                                files.complexity, files.quantize, files.export, files.device_models, *files.reports)
               if not p.is_file()]
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
    metrics |= _numbers(flatten({"device_models": json.loads(files.device_models.read_text())}))
    artifacts = [(files.int8_model, "model"), (files.onnx_model, "model"), (files.float_model, "model"),
                 (files.export, "reports"), *((p, "reports") for p in files.reports)]
    return tracking.ExperimentSummary(params, metrics, artifacts, model=files.onnx_model,
                                      model_name="student_int8", datasets=training_data(params, lock))


def sync(params: Mapping[str, Any], files: PipelineFiles = PipelineFiles()) -> tracking.SyncResult:
    """Stage track: log the summary run of the current dvc.lock state unless the store has it."""
    lock = yaml.safe_load(files.lock.read_text()) if files.lock.is_file() else {}
    key = tracking.state_key(lock, exclude=("track",))
    settings = params["tracking"]
    return tracking.sync_summary(experiment_summary(params, lock, files), key,
                                 register_as=settings["model_name"] if settings["register_model"] else None)
