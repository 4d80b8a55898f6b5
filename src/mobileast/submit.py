"""`python -m mobileast submit`: a DCASE2023 Task 1 submission package from a trained model.

    python -m mobileast submit --model models/student_int8.pt --audio-dir /data/eval/audio \
        --out submission/ [--label Lastname_INST_task1_1]

Writes into --out:
- `<label>.output.csv`: the challenge's system output, tab-separated: `filename`,
  `scene_label`, then one score column per class in the official class order (airport,
  bus, metro, metro_station, park, public_square, shopping_mall, street_pedestrian,
  street_traffic, tram), the scores being the model's class probabilities (the mean over
  a file's 1 s clips, mobileast.predict). `filename` is the file's path relative to the
  parent of --audio-dir (`audio/<name>.wav` for a TAU-style `audio/` folder).
- `<label>.complexity.json`: parameters, MACs (the DCASE convention and the full count),
  parameter memory as stored, and the verdicts against the limits.
- `<label>.meta.yaml`: the system-information skeleton of the submission, filled with
  what the pipeline knows (architecture, features, augmentation, distillation,
  quantization, complexity, the development-set results of reports/metrics.json, and the
  DVC params: those the model was trained with, which students of this pipeline carry
  in their meta, else params.yaml's, as `pipeline_params_source` says); the fields only
  the authors know say FILL IN.
- `<label>.bad_files.tsv` (only if any): every WAV file that could not be classified,
  with the reason. They are left out of the output and named on stderr, and the
  command exits with status 1, so nothing is dropped silently.

Any folder of WAV files (searched recursively), any sample rate, mono or stereo.
--model takes the int8 TorchScript model, the int8 ONNX model or a float checkpoint.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from mobileast.complexity import complexity_report, onnx_param_memory_bytes
from mobileast.errors import InputError
from mobileast.files import atomic_output, project_root, write_json
from mobileast.labels import SCENES
from mobileast.params import read_params
from mobileast.deploy import ModelMeta, frontend_for, input_shape, load_model_any
from mobileast.predict import predict_file

FILL_IN = "FILL IN"


def audio_files(audio_dir: Path) -> list[Path]:
    files = sorted(p for p in audio_dir.rglob("*") if p.is_file() and p.suffix.lower() == ".wav")
    if not files:
        raise InputError(f"{audio_dir}: no WAV files found")
    return files


def model_complexity(path: Path, model: Any, meta: ModelMeta) -> dict[str, Any]:
    """Complexity figures of a deployed or float model, counted on its float architecture
    (from meta arch/config), the memory as the file stores its parameters."""
    from mobileast.models import build_model

    if meta.config is None:
        raise InputError(f"{path}: its meta has no architecture config to count MACs on")
    float_model = build_model(meta.arch, meta.config).eval()
    shape = (1, *input_shape(meta))
    is_onnx = meta.is_onnx
    report = complexity_report(float_model, shape, stored=None if is_onnx or not meta.quantized else model)
    memory = onnx_param_memory_bytes(path) if is_onnx else report["param_memory_bytes"]
    quantized = meta.quantized
    if not quantized:
        memory = report["param_memory_bytes_int8_estimate"]
    limit = report["limits"]["param_memory_bytes"]
    return {"model": str(path), "params": report["params"], "macs": report["macs_dcase"],
            "macs_convention": "DCASE (torchinfo total mult-adds, as nessi)", "macs_full": report["macs_full"],
            "param_memory_bytes": memory,
            "param_memory_of": "as stored" if quantized else "int8 estimate of the float model",
            "limits": report["limits"],
            "pass": {"param_memory": memory <= limit, "macs": report["macs_dcase"] <= report["limits"]["macs"]}}


def write_output(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(["filename", "scene_label", *SCENES])
        for row in rows:
            writer.writerow([row["filename"], row["label"], *(f"{row['probabilities'][c]:.6f}" for c in SCENES)])


def _enabled(augment: Mapping[str, Any]) -> str:
    names = [name for name, section in augment.items() if section.get("enabled")]
    return ", ".join(names) or "none"


def metadata(label: str, meta: ModelMeta, complexity: Mapping[str, Any], params: Mapping[str, Any] | None,
             dev: Mapping[str, Any] | None) -> dict[str, Any]:
    """The system-information skeleton, filled with what the model carries (features,
    architecture, quantization, and for a student of this pipeline the params it was
    trained with: meta "params") and, for what it does not (the teacher; everything for
    a model without params), with the project's `params`."""
    features = meta.features
    trained = meta.params or params
    calibration = meta.calibration
    description: dict[str, Any] = {
        "input_sampling_rate": f"{int(features.get('sample_rate', 32000)) / 1000:g}kHz",
        "acoustic_features": f"log-mel energies ({features.get('n_mels')} bands, window {features.get('win_length')}, "
                             f"hop {features.get('hop_length')} samples)",
        "machine_learning_method": "MobileAST_Light (MobileViTv3 blocks in a MobileNetV2-style CNN)"
        if meta.arch == "mobileast" else meta.arch or FILL_IN,
        "ensemble_method_subsystem_count": 1,
        "decision_making": "mean of the 1 s clips' class probabilities per file",
        "quantization": f"int8 post-training static quantization ({meta.quant_engine or meta.runtime}"
                        + (f", calibrated on {calibration['batches']} x {calibration['batch_size']} training crops)"
                           if calibration else ")") if meta.quantized else "none (float32)",
        "external_data_usage": FILL_IN,
    }
    if trained:
        description["data_augmentation"] = _enabled(trained["augment"])
        description["knowledge_distillation"] = "none" if trained["distill"]["method"] == "none" else (
            f"{trained['distill']['method'].upper()} (alpha {trained['dkd']['alpha']}, beta {trained['dkd']['beta']}, "
            f"T {trained['dkd']['T']})")
    if params and description.get("knowledge_distillation", "none") != "none":
        teacher = params["teacher"]
        description["knowledge_distillation"] += f" from a {teacher['arch']} teacher" + (
            f" ensemble of {1 + len(teacher['ensemble'])}" if teacher["ensemble"] else "")
        if teacher["arch"] == "passt":
            description["external_data_usage"] = "AudioSet-pretrained PaSST teacher (kkoutini/PaSST checkpoint)"
    skeleton: dict[str, Any] = {
        "submission": {"label": label, "name": FILL_IN, "abbreviation": FILL_IN,
                       "authors": [{"lastname": FILL_IN, "firstname": FILL_IN, "email": FILL_IN,
                                    "corresponding": True,
                                    "affiliation": {"institution": FILL_IN, "location": FILL_IN}}]},
        "system": {"description": description,
                   "complexity": {"total_parameters": complexity["params"],
                                  "memory_use": complexity["param_memory_bytes"], "macs": complexity["macs"]},
                   "source_code": FILL_IN},
    }
    if dev:
        skeleton["results"] = {"development_dataset": {
            "overall": {"accuracy": round(100 * dev["accuracy"], 2), "logloss": dev.get("log_loss")},
            "device_wise": {d: {"accuracy": round(100 * a, 2)} for d, a in dev.get("per_device_accuracy", {}).items()}}}
    if trained:
        skeleton["pipeline_params"] = trained
        skeleton["pipeline_params_source"] = ("the model (the params of its training stage)" if meta.params
                                              else "params.yaml (the model carries no params)")
    return skeleton


def submit(model_path: Path, audio_dir: Path, out_dir: Path, label: str, params: Mapping[str, Any] | None,
           dev_metrics: Mapping[str, Any] | None, dev_model: str | None = None) -> tuple[int, list[dict[str, str]]]:
    """Write the package; returns (files classified, bad files). `dev_metrics`: the
    evaluate stage's metrics.json, of which the `dev_model` entry is reported (default:
    the entry of the model's kind, `metrics_entry`)."""
    model, meta = load_model_any(model_path)
    dev = dev_metrics.get(dev_model or metrics_entry(meta)) if dev_metrics else None
    if list(meta.classes) != list(SCENES):
        raise InputError(f"{model_path}: classes {meta.classes} are not the challenge's {list(SCENES)}")
    frontend = frontend_for(meta)
    rows, bad = [], []
    for path in audio_files(audio_dir):
        name = path.relative_to(audio_dir.parent).as_posix()
        try:
            result = predict_file(path, model, frontend, meta)
        except (FileNotFoundError, ValueError) as error:
            bad.append({"filename": name, "reason": str(error)})
            print(f"error: {error}", file=sys.stderr)
            continue
        rows.append({"filename": name, "label": result["label"], "probabilities": result["probabilities"]})
    out_dir.mkdir(parents=True, exist_ok=True)
    write_output(rows, out_dir / f"{label}.output.csv")
    complexity = model_complexity(model_path, model, meta)
    write_json(out_dir / f"{label}.complexity.json", complexity)
    with atomic_output(out_dir / f"{label}.meta.yaml") as tmp:
        tmp.write_text("# DCASE2023 Task 1 system information, written by `python -m mobileast submit` from the\n"
                       "# model and the pipeline's params. Replace every FILL IN before submitting.\n"
                       + yaml.safe_dump(metadata(label, meta, complexity, params, dev), sort_keys=False, width=100))
    bad_path = out_dir / f"{label}.bad_files.tsv"
    if bad:
        with atomic_output(bad_path) as tmp:
            tmp.write_text("filename\treason\n" + "".join(f"{b['filename']}\t{b['reason']}\n" for b in bad))
    else:
        bad_path.unlink(missing_ok=True)
    return len(rows), bad


def metrics_entry(meta: ModelMeta) -> str:
    """The reports/metrics.json entry of a model's kind, from its meta (the evaluate stage's names)."""
    if not meta.quantized:
        return "student_float"
    return "student_int8_onnx" if meta.is_onnx else "student_int8"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mobileast submit", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="A DCASE2023 Task 1 submission package from a trained model, written into --out:\n"
                    "<label>.output.csv (tab-separated filename, scene_label and one probability column\n"
                    "per class in the official order), <label>.complexity.json and <label>.meta.yaml\n"
                    "(filled with what the pipeline knows, the rest marked FILL IN). Files that cannot be\n"
                    "read are listed in <label>.bad_files.tsv and on stderr, and the exit status is 1.",
        epilog="example:\n"
               "  python -m mobileast submit --model models/student_int8.pt --audio-dir /data/eval/audio \\\n"
               "      --out submission/ --label Lastname_INST_task1_1")
    parser.add_argument("--model", required=True, type=Path, help="int8 TorchScript, int8 ONNX or a float checkpoint")
    parser.add_argument("--audio-dir", required=True, type=Path, help="folder of WAV files (searched recursively)")
    parser.add_argument("--out", required=True, type=Path, help="folder to write the package into")
    parser.add_argument("--label", default="Lastname_INST_task1_1",
                        help="submission label, <Lastname>_<INST>_task1_<n> (default: %(default)s)")
    parser.add_argument("--params", type=Path, help="params.yaml of the run (default: the project's, if any)")
    parser.add_argument("--dev-metrics", type=Path,
                        help="development-set metrics to report (default: the project's reports/metrics.json)")
    parser.add_argument("--dev-model", help="its entry to report (default: the one of --model's kind: "
                                            "student_int8, student_int8_onnx or student_float)")
    args = parser.parse_args(argv)
    try:
        root = _project()
        params_path = args.params or (root / "params.yaml" if root else None)
        params = read_params(params_path) if params_path and params_path.is_file() else None
        metrics_path = args.dev_metrics or (root / "reports/metrics.json" if root else None)
        dev_metrics = json.loads(metrics_path.read_text()) if metrics_path and metrics_path.is_file() else None
        done, bad = submit(args.model, args.audio_dir, args.out, args.label, params, dev_metrics, args.dev_model)
    except (InputError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"submit: {done} files classified into {args.out / (args.label + '.output.csv')}"
          + (f"; {len(bad)} bad files listed in {args.out / (args.label + '.bad_files.tsv')}" if bad else ""))
    return 1 if bad else 0


def _project() -> Path | None:
    try:
        return project_root()
    except FileNotFoundError:
        return None
