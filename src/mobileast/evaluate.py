"""Evaluation reports from the metrics dicts of mobileast.metrics.evaluate_predictions.

`results` maps a model name (e.g. "student_float", "student_int8", "teacher") to its
metrics dict; all models are evaluated on the same fold. Written, each atomically:
- a small metrics JSON for DVC (`dvc metrics show/diff`, `dvc exp show`): per model
  the headline numbers only (mobileast.metrics.summary);
- per model a confusion-matrix plot data file (CSV, one row "actual,predicted" per
  clip, the input of DVC's `confusion` template) and the same matrix as a PNG;
- reports/results.md: overall, per-device (seen and unseen apart) and per-class tables.
Plots are PNGs (mobileast.plots), because `dvc plots show` renders HTML that loads its
charting library from the internet.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from torch import nn

from mobileast.files import atomic_output, write_json

from mobileast.labels import SCENES

from mobileast.progress import progress
from mobileast.data.crops import ClipSource, check_clip_rate
from mobileast.data.store import read_recordings
from mobileast.deploy import ModelMeta, frontend_for, load_model_any
from mobileast.metrics import evaluate_predictions, summary
from mobileast.plots import save_figure
from mobileast.inference import device_for, predict, resolve_precision
from mobileast.routing import device_report, read_manifest, route

Results = Mapping[str, Mapping[str, Any]]


def write_metrics(results: Results, path: str | Path) -> None:
    """The DVC metrics JSON (`summary`)."""
    write_json(path, summary(results))


def write_confusion_csv(result: Mapping[str, Any], path: str | Path) -> None:
    """Confusion matrix as DVC plot data: header "actual,predicted", one row per clip."""
    classes = result["classes"]
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["actual", "predicted"])
        for i, row in enumerate(result["confusion_matrix"]):
            for j, count in enumerate(row):
                writer.writerows([(classes[i], classes[j])] * count)


def plot_confusion(result: Mapping[str, Any], path: str | Path, title: str) -> None:
    """Confusion matrix PNG: colour = share of the true class's clips, text = clip count."""
    classes = result["classes"]
    cm = np.asarray(result["confusion_matrix"])
    shares = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    n = len(classes)
    fig = Figure(figsize=(2.5 + 0.6 * n, 2 + 0.55 * n))
    ax = fig.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="share of true class")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if shares[i, j] > 0.5 else "black")
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(f"{title}: accuracy {_pct(result['accuracy'])}, macro {_pct(result['macro_accuracy'])}")
    fig.tight_layout()
    save_figure(fig, path)


def results_markdown(results: Results, figures: Mapping[str, str] | None = None) -> str:
    """reports/results.md text: overall, per-device and per-class tables (+ figure links)."""
    names = list(results)
    first = results[names[0]]
    seen, unseen = first["seen_devices"], first["unseen_devices"]
    head = "| " + " | ".join(names) + " |"
    rule = "|---:" * len(names) + "|"

    def cells(get) -> str:
        return " | ".join(get(results[n]) for n in names)

    lines = [
        "# Evaluation results", "",
        f"Evaluate fold: {first['n_clips']} one-second clips. Devices seen in training: "
        f"{', '.join(seen) or 'none'}; unseen: {', '.join(unseen) or 'none'}. "
        "Macro accuracy is the mean of the per-class accuracies (the DCASE ranking metric); "
        "every clip is classified on its own (no averaging over its recording).", "",
        "## Overall", "",
        "| model | accuracy | macro accuracy | log loss | seen devices | unseen devices |",
        "|---|---:|---:|---:|---:|---:|",
        *(f"| {n} | {_pct(r['accuracy'])} | {_pct(r['macro_accuracy'])} | {_num(r['log_loss'])} | "
          f"{_pct(r['accuracy_seen'])} | {_pct(r['accuracy_unseen'])} |" for n, r in results.items()),
        "", "## Accuracy per device", "",
        f"| device | clips {head}", f"|---|---:{rule}",
    ]
    for label, devices, key in (("seen", seen, "accuracy_seen"), ("unseen", unseen, "accuracy_unseen")):
        if not devices:
            continue
        lines += [f"| {d} ({label}) | {first['per_device'][d]['n_clips']} | "
                  f"{cells(lambda r: _pct(r['per_device'].get(d, {}).get('accuracy')))} |" for d in devices]
        n_clips = sum(first["per_device"][d]["n_clips"] for d in devices)
        lines.append(f"| **all {label}** | {n_clips} | {cells(lambda r: _pct(r[key]))} |")
    lines += ["", "## Accuracy per class", "", f"| class | clips {head}", f"|---|---:{rule}"]
    lines += [f"| {c} | {first['per_class'][c]['n_clips']} | "
              f"{cells(lambda r: _pct(r['per_class'][c]['accuracy']))} |" for c in first["classes"]]
    if figures:
        lines += ["", "## Confusion matrices", ""]
        lines += [f"![{name}]({target})" for name, target in figures.items()]
    return "\n".join(lines) + "\n"


def write_reports(results: Results, reports_dir: str | Path, metrics_path: str | Path) -> dict[str, Path]:
    """Write every evaluation output; returns {name: path} of what was written.

    Files: `metrics_path`; in `reports_dir`: confusion_<model>.csv (DVC plot data),
    confusion_<model>.png and results.md. The metrics file comes last: a new one means
    that every other output was written (it is what DVC and users read as done).
    """
    reports_dir = Path(reports_dir)
    written = {"metrics": Path(metrics_path)}
    for name, result in results.items():
        written[f"confusion_{name}_csv"] = reports_dir / f"confusion_{name}.csv"
        written[f"confusion_{name}_png"] = reports_dir / f"confusion_{name}.png"
        write_confusion_csv(result, written[f"confusion_{name}_csv"])
        plot_confusion(result, written[f"confusion_{name}_png"], name)
    written["results_md"] = reports_dir / "results.md"
    figures = {name: f"confusion_{name}.png" for name in results}
    with atomic_output(written["results_md"]) as tmp:
        tmp.write_text(results_markdown(results, figures))
    write_metrics(results, metrics_path)
    return written


def evaluate_models(models: Mapping[str, Path], resampled: Path, recordings: Path,
                    teacher_logits: Path | None, batch_size: int, precision: str = "auto") -> dict[str, dict[str, Any]]:
    """Stage evaluate: metrics of every model (deployed TorchScript or training checkpoint)
    on the evaluate fold's 1 s clips, plus the teacher from its dumped evaluate logits.

    Devices absent from the train fold count as unseen. Quantized and ONNX models run on
    the CPU (PyTorch's int8 kernels are CPU-only; onnxruntime's CPU provider); float
    models on the GPU when there is one.
    """
    clips = ClipSource(resampled, "evaluate")
    train_devices = sorted(set(read_recordings(recordings)["device"]))
    devices = clips.table["device"].to_numpy()

    def metrics(logits: np.ndarray) -> dict[str, Any]:
        return evaluate_predictions(logits, clips.labels, devices, train_devices, list(SCENES))

    results = {}
    for name, path in models.items():
        model, meta = load_model_any(path)
        if list(meta.classes) != list(SCENES):
            raise ValueError(f"{path}: classes {meta.classes} differ from {list(SCENES)}")
        check_clip_rate(clips.clip_samples, meta.sample_rate, f"the sample rate of {path}", resampled)
        results[name] = metrics(fold_logits(model, meta, clips, batch_size, precision, f"evaluate {name}").numpy())
    if teacher_logits is not None:
        results["teacher"] = metrics(np.load(teacher_logits))
    return results


def evaluate_routed(device_dir: Path, general: Path, resampled: Path, recordings: Path,
                    batch_size: int) -> dict[str, Any]:
    """reports/device_models.json: general versus routed predictions (mobileast.routing) on
    the evaluate fold, when the manifest in `device_dir` lists per-device models; else
    {"enabled": false}, and no model is run.

    Both sides are the deployed int8 ONNX models (the general one: `general`): the files a
    submission ships, so the comparison is the one a participant's routing would show."""
    manifest = read_manifest(device_dir)
    if not manifest["models"]:
        return {"enabled": False}
    clips = ClipSource(resampled, "evaluate")
    train_devices = sorted(set(read_recordings(recordings)["device"]))
    devices = clips.table["device"].to_numpy()

    def logits(path: Path) -> np.ndarray:
        model, meta = load_model_any(path)
        if list(meta.classes) != list(SCENES):
            raise ValueError(f"{path}: classes {meta.classes} differ from {list(SCENES)}")
        check_clip_rate(clips.clip_samples, meta.sample_rate, f"the sample rate of {path}", resampled)
        return fold_logits(model, meta, clips, batch_size, desc=f"evaluate {path.name}").numpy()

    base = logits(general)
    routed = route(base, {d: logits(files["onnx"]) for d, files in manifest["models"].items()}, devices)
    results = {name: evaluate_predictions(values, clips.labels, devices, train_devices, list(SCENES))
               for name, values in (("general", base), ("routed", routed))}
    return device_report(results["general"], results["routed"], list(manifest["models"]))


def fold_logits(model: nn.Module, meta: ModelMeta, clips: ClipSource, batch_size: int,
                precision: str = "auto", desc: str = "evaluate") -> torch.Tensor:
    """Logits (clips, classes) of a model on a fold's clips, in order (mobileast.inference):
    where `device_for(meta)` puts it, float models under `precision` (evaluate.precision)."""
    device = device_for(meta)
    batches = progress(clips.batches(batch_size), total=-(-len(clips) // batch_size), desc=desc, unit="batch")
    return predict(model.to(device), frontend_for(meta).to(device), batches, device,
                   resolve_precision(precision, device, "evaluate.precision"))


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def main(argv: list[str] | None = None) -> int:
    """`python -m mobileast evaluate --model M [--model M2 ...]`: metrics on the evaluate fold."""
    import argparse
    import json
    import sys

    from mobileast.errors import InputError
    from mobileast.data import RECORDINGS_DIR, RESAMPLED_DIR

    parser = argparse.ArgumentParser(
        prog="python -m mobileast evaluate", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Accuracy, macro class accuracy and log loss (also per device, seen and unseen) of\n"
                    "models on the evaluate fold of the pipeline's resampled store. A model is an int8\n"
                    "TorchScript file, an ONNX file (run with onnxruntime) or a training checkpoint.",
        epilog="example:\n"
               "  python -m mobileast evaluate --model models/student_int8.onnx --model models/student_int8.pt")
    parser.add_argument("--model", action="append", required=True, type=Path, help="a model file; repeatable")
    parser.add_argument("--resampled", type=Path, default=RESAMPLED_DIR, help=f"default {RESAMPLED_DIR}")
    parser.add_argument("--recordings", type=Path, default=RECORDINGS_DIR, help=f"default {RECORDINGS_DIR}")
    parser.add_argument("--batch-size", type=int, default=128, help="clips per model call (default 128)")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    args = parser.parse_args(argv)
    try:
        results = evaluate_models({str(m): m for m in args.model}, args.resampled, args.recordings, None,
                                  args.batch_size)
    except (InputError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    figures = summary(results)
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        for name, metrics in figures.items():
            print(f"{name}: " + ", ".join(f"{k}={v}" for k, v in metrics.items() if k != "per_device_accuracy")
                  + "; per device: " + ", ".join(f"{d} {v:.3f}" for d, v in metrics.get("per_device_accuracy", {}).items()))
    return 0
