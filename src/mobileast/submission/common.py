"""What the submission formats of every year share (mobileast.submission)."""
from __future__ import annotations

import csv
import re
import sys
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
import yaml

from mobileast.complexity import complexity_report, onnx_param_memory_bytes, onnx_param_nonzero, param_nonzero
from mobileast.deploy import ModelMeta, frontend_for, input_shape, load_model_any
from mobileast.errors import InputError
from mobileast.files import atomic_output
from mobileast.labels import DEVICES, SCENES
from mobileast.metrics import accuracy, device_order, log_loss, softmax
from mobileast.models.mobileast import fold_bn
from mobileast.predict import predict_file

FILL_IN = "FILL IN"
# <Lastname>_<INST>_task1_<index 1-4>: the DCASE submission label (file and package names)
LABEL_PATTERN = re.compile(r"[A-Za-z0-9]+_[A-Za-z0-9]+_task1_[1-4]")
PASST_AUDIOSET = {"name": "AudioSet", "url": "https://research.google.com/audioset/",
                  "total_audio_length": FILL_IN}


def check_label(label: str) -> str:
    """`label` if it is a DCASE submission label, else an InputError saying the rule."""
    if not LABEL_PATTERN.fullmatch(label):
        raise InputError(f"--label {label!r} is not a DCASE submission label: it must read "
                         "<Lastname>_<INST>_task1_<1-4>, letters and digits between the underscores "
                         "(e.g. Doe_TAU_task1_1), nothing else")
    return label


def check_batch_size(batch_size: int) -> int:
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    return batch_size


class Model(NamedTuple):
    """A loaded model file: int8 TorchScript, int8 ONNX or a float checkpoint."""

    path: Path
    module: Any
    meta: ModelMeta


def load(path: Path) -> Model:
    """The model at `path`; its classes must be the challenge's."""
    module, meta = load_model_any(path)
    if list(meta.classes) != list(SCENES):
        raise InputError(f"{path}: classes {meta.classes} are not the challenge's {list(SCENES)}")
    return Model(Path(path), module, meta)


def audio_files(audio_dir: Path) -> list[Path]:
    files = sorted(p for p in audio_dir.rglob("*") if p.is_file() and p.suffix.lower() == ".wav")
    if not files:
        raise InputError(f"{audio_dir}: no WAV files found")
    return files


def classify(model: Model, audio_dir: Path, batch_size: int) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """(rows, bad files) of every WAV file under `audio_dir` (mobileast.predict): a row has
    `filename` (relative to the parent of `audio_dir`, `audio/<name>.wav` for a TAU-style
    folder), `label` and `probabilities`; a file that cannot be read is named on stderr and
    listed in bad files with the reason."""
    frontend = frontend_for(model.meta)
    rows, bad = [], []
    for path in audio_files(audio_dir):
        name = path.relative_to(audio_dir.parent).as_posix()
        try:
            result = predict_file(path, model.module, frontend, model.meta, batch_size)
        except (FileNotFoundError, ValueError) as error:
            reason = str(error)
            bad.append({"filename": name, "reason": reason})
            print(f"error: {reason}", file=sys.stderr)
            continue
        rows.append({"filename": name, "label": result["label"], "probabilities": result["probabilities"]})
    return rows, bad


def write_output(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """The system output: tab-separated `filename`, `scene_label`, then one probability column
    per class in the official order."""
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(["filename", "scene_label", *SCENES])
        for row in rows:
            writer.writerow([row["filename"], row["label"], *(f"{row['probabilities'][c]:.6f}" for c in SCENES)])


def write_bad_files(bad: Sequence[Mapping[str, str]], path: Path) -> None:
    """The files that could not be classified (or no file when there are none)."""
    if bad:
        with atomic_output(path) as tmp:
            tmp.write_text("filename\treason\n" + "".join(f"{b['filename']}\t{b['reason']}\n" for b in bad))
    else:
        path.unlink(missing_ok=True)


def model_complexity(model: Model) -> dict[str, Any]:
    """Complexity figures of a deployed or float model, counted on its float architecture
    (from meta arch/config), the memory as the file stores its parameters."""
    from mobileast.models import build_model

    path, meta = model.path, model.meta
    if meta.config is None:
        raise InputError(f"{path}: its meta has no architecture config to count MACs on")
    float_model = build_model(meta.arch, meta.config).eval()
    shape = (1, *input_shape(meta))
    report = complexity_report(float_model, shape, stored=None if meta.is_onnx or not meta.quantized else model.module)
    memory = onnx_param_memory_bytes(path) if meta.is_onnx else report["param_memory_bytes"]
    if not meta.quantized:
        memory = report["param_memory_bytes_int8_estimate"]
    limit = report["limits"]["param_memory_bytes"]
    # a float checkpoint in its deployment form (BN folded), as its parameters are counted
    nonzero = (onnx_param_nonzero(path) if meta.is_onnx
               else param_nonzero(model.module if meta.quantized else fold_bn(model.module)))
    return {"model": str(path), "params": report["params"], "params_nonzero": nonzero, "macs": report["macs_dcase"],
            "macs_convention": "DCASE (torchinfo total mult-adds, as nessi)", "macs_full": report["macs_full"],
            "param_memory_bytes": memory,
            "param_memory_of": "as stored" if meta.quantized else "int8 estimate of the float model",
            "limits": report["limits"],
            "pass": {"param_memory": memory <= limit, "macs": report["macs_dcase"] <= report["limits"]["macs"]}}


def system_complexity(complexity: Mapping[str, Any]) -> dict[str, Any]:
    """meta.yaml `system.complexity`: `total_model_size` is the parameter memory in bytes
    (each parameter at its stored width, the DCASE definition), `memory_use` the same."""
    return {"total_model_size": complexity["param_memory_bytes"], "total_parameters": complexity["params"],
            "total_parameters_non_zero": complexity["params_nonzero"], "memory_use": complexity["param_memory_bytes"],
            "macs": complexity["macs"]}


def _enabled(augment: Mapping[str, Any]) -> str:
    names = [name for name, section in augment.items() if isinstance(section, Mapping) and section.get("enabled")]
    return ", ".join(names) or "none"


def teacher_params(meta: ModelMeta, params: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """The teacher section of the params the model was trained with, else of `params`."""
    for source in (meta.params, params):
        if source and "teacher" in source:
            return source["teacher"]
    return None


def external_datasets(meta: ModelMeta, params: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """`system.external_datasets`: AudioSet when the distillation teacher is the
    AudioSet-pretrained PaSST, else none."""
    trained = meta.params or params
    distilled = bool(trained) and trained.get("distill", {}).get("method", "none") != "none"
    teacher = teacher_params(meta, params)
    return [dict(PASST_AUDIOSET)] if distilled and teacher and teacher.get("arch") == "passt" else []


def system_description(meta: ModelMeta, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """`system.description`, filled with what the model carries (features, architecture,
    quantization, and for a student of this pipeline the params it was trained with: meta
    "params") and, for what it does not (the teacher; everything for a model without
    params), with the project's `params`."""
    features = meta.features
    trained = meta.params or params
    calibration = meta.calibration
    method = ("MobileAST_Light (MobileViTv3 blocks in a MobileNetV2-style CNN)"
              if meta.arch == "mobileast" else meta.arch or FILL_IN)
    quantization = "none (float32)"
    if meta.quantized:
        quantization = (f"int8 post-training static quantization ({meta.quant_engine or meta.runtime}"
                        + (f", calibrated on {calibration['batches']} x {calibration['batch_size']} training crops)"
                           if calibration else ")"))
    description: dict[str, Any] = {
        "input_sampling_rate": f"{meta.sample_rate / 1000:g}kHz",
        "acoustic_features": f"log-mel energies ({features.get('n_mels')} bands, window {features.get('win_length')}, "
                             f"hop {features.get('hop_length')} samples)" if not meta.takes_waveform else "raw waveform",
        "embeddings": "none",
        "data_augmentation": _enabled(trained["augment"]) if trained else FILL_IN,
        "machine_learning_method": method,
        "ensemble_method_subsystem_count": 1,
        "decision_making": "mean of the 1 s clips' class probabilities per file",
        "external_data_usage": "none",
        "complexity_management": FILL_IN,
        "quantization": quantization,
        "knowledge_distillation": FILL_IN,
        "framework": "pytorch" + (", onnxruntime" if meta.is_onnx else ""),
    }
    if trained:
        description["knowledge_distillation"] = "none" if trained["distill"]["method"] == "none" else (
            f"{trained['distill']['method'].upper()} (alpha {trained['dkd']['alpha']}, beta {trained['dkd']['beta']}, "
            f"T {trained['dkd']['T']})")
    teacher = teacher_params(meta, params)
    if teacher and description["knowledge_distillation"] not in ("none", FILL_IN):
        description["knowledge_distillation"] += f" from a {teacher['arch']} teacher" + (
            f" ensemble of {1 + len(teacher['ensemble'])}" if teacher.get("ensemble") else "")
        if teacher["arch"] == "passt":
            description["external_data_usage"] = "AudioSet-pretrained PaSST teacher (kkoutini/PaSST checkpoint)"
    distilled = description["knowledge_distillation"] not in ("none", FILL_IN)
    description["complexity_management"] = "; ".join(
        (["int8 post-training quantization"] if meta.quantized else [])
        + (["knowledge distillation into a small student"] if distilled else [])) or "none"
    description["pipeline"] = " > ".join(
        [description["acoustic_features"].split(" (")[0], method.split(" (")[0]]
        + (["knowledge distillation"] if distilled else [])
        + (["int8 quantization"] if meta.quantized else []) + ["mean of clip probabilities"])
    return description


def submission_block(label: str) -> dict[str, Any]:
    """`submission`: the label, and what only the authors know."""
    return {"label": label, "name": FILL_IN, "abbreviation": FILL_IN,
            "authors": [{"lastname": FILL_IN, "firstname": FILL_IN, "email": FILL_IN, "corresponding": True,
                         "affiliation": {"institution": FILL_IN, "location": FILL_IN}}]}


def pipeline_params(meta: ModelMeta, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """The DVC params of the run: those the model was trained with, else params.yaml's."""
    trained = meta.params or params
    if not trained:
        return {}
    return {"pipeline_params": trained,
            "pipeline_params_source": "the model (the params of its training stage)" if meta.params
            else "params.yaml (the model carries no params)"}


def results_block(logits: np.ndarray, labels: np.ndarray, devices: Sequence[str]) -> dict[str, Any]:
    """`results.development_dataset` of clip logits (n, classes) with their true class
    indices and devices: `overall`, `class_wise` (every challenge class) and `device_wise`
    (every TAU22 device and any other of the fold), each with accuracy (%) and log loss;
    a class or device without clips says FILL IN."""
    labels, devices = np.asarray(labels, dtype=np.int64), np.asarray(devices, dtype=str)
    probs = softmax(logits)
    pred = probs.argmax(axis=1)

    def figures(mask: np.ndarray) -> dict[str, Any]:
        if not mask.any():
            return {"accuracy": FILL_IN, "logloss": FILL_IN}
        return {"accuracy": round(100 * accuracy(labels[mask], pred[mask]), 2),
                "logloss": round(log_loss(labels[mask], probs[mask]), 4)}

    return {"overall": figures(np.ones(len(labels), bool)),
            "class_wise": {c: figures(labels == i) for i, c in enumerate(SCENES)},
            "device_wise": {d: figures(devices == d) for d in device_order([*DEVICES, *devices])}}


def unknown_results() -> dict[str, Any]:
    """`results.development_dataset` without an evaluate fold to compute it on: FILL IN."""
    return results_block(np.zeros((0, len(SCENES))), np.zeros(0), [])


def development_results(model: Model, store: Path | None, batch_size: int) -> dict[str, Any]:
    """`results.development_dataset` of `model` on the evaluate fold of the pipeline's
    resampled store (`store`, e.g. data/resampled; the fold the evaluate stage reports),
    run as the evaluate stage runs it (mobileast.evaluate.fold_logits); FILL IN without a store."""
    from mobileast.data.crops import ClipSource, check_clip_rate
    from mobileast.evaluate import fold_logits

    if store is None or not (store / "index.csv").is_file():
        return unknown_results()
    clips = ClipSource(store, "evaluate")
    if not len(clips):
        return unknown_results()
    check_clip_rate(clips.clip_samples, model.meta.sample_rate, f"the sample rate of {model.path}", store)
    logits = fold_logits(model.module, model.meta, clips, batch_size, "fp32", f"development results {model.path.name}")
    return results_block(logits.numpy(), clips.labels, clips.table["device"].to_numpy())


def write_meta(path: Path, header: str, meta: Mapping[str, Any]) -> None:
    """meta.yaml: `header` as comment lines, then `meta` in its key order."""
    with atomic_output(path) as tmp:
        tmp.write_text("".join(f"# {line}\n" for line in header.splitlines())
                       + yaml.safe_dump(dict(meta), sort_keys=False, width=100))
