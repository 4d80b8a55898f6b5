"""CPU inference latency per 1 s clip of the student presets, float (BN folded) and int8
(FX post-training static quantization, x86), and the accuracy change from quantization.

Times the classifier only (input: a 1 x 256 x 64 log-mel batch; the frontend is not
included) at batch 1 and batch 64; each figure is the median over repeated runs
divided by the batch size. Float and int8 runs alternate, so machine noise hits both
alike; the int8/float ratio is the figure to compare across machines. The int8 models
here are calibrated on random inputs (latency does not depend on the weights); the
accuracy change uses the pipeline's trained models (models/student.pt and
models/student_int8.pt) on the evaluate fold, when they exist.

    python benchmarks/bench_inference.py [--presets sub1 sub2] [--repeats 7]
"""
import argparse
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from mobileast.models import build_preset
from mobileast.models.mobileast import PRESETS, fold_bn
from mobileast.quantize import quantize_model

INPUT_SHAPE = (1, 256, 64)
BATCHES = (1, 64)


def float_model(preset: str) -> nn.Module:
    """The deployment form of a preset: BN folded, eval mode."""
    return fold_bn(build_preset(preset))


@torch.inference_mode()
def latency_per_clip(model: nn.Module, batch: int, repeats: int, warmup: int = 2) -> float:
    """Median seconds per clip of `model` on a random batch of `batch` clips."""
    x = torch.randn(batch, *INPUT_SHAPE)
    for _ in range(warmup):
        model(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times) / batch


def int8_model(preset: str) -> nn.Module:
    """The preset quantized as the quantize stage does it, calibrated on random inputs."""
    return quantize_model(build_preset(preset).eval(), [torch.randn(8, *INPUT_SHAPE) for _ in range(2)],
                          dynamic_modules=["classifier"])


def latencies(models: dict[str, nn.Module], repeats: int, rounds: int = 3) -> dict[str, dict[int, float]]:
    """{model name: {batch size: seconds per clip}}, medians over alternating rounds."""
    runs: dict[str, dict[int, list[float]]] = {name: {b: [] for b in BATCHES} for name in models}
    for _ in range(rounds):
        for batch in BATCHES:
            for name, model in models.items():
                runs[name][batch].append(latency_per_clip(model, batch, repeats))
    return {name: {b: statistics.median(v) for b, v in by_batch.items()} for name, by_batch in runs.items()}


def quantization_accuracy_change(root: Path) -> dict[str, dict[str, float]] | None:
    """Evaluate-fold metrics of the trained float and int8 students (None if not built)."""
    models = {"float": root / "models/student.pt", "int8": root / "models/student_int8.pt"}
    if not all(path.is_file() for path in models.values()):
        return None
    from mobileast.evaluate import evaluate_models

    return evaluate_models(models, root / "data/resampled", root / "data/recordings", None, 128)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=sorted(PRESETS), choices=sorted(PRESETS))
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print(f"CPU latency per 1 s clip (ms), median of 3 alternating rounds x {args.repeats} runs, "
          f"{torch.get_num_threads()} threads")
    print("| preset | " + " | ".join(f"float b{b} | int8 b{b} | int8/float b{b}" for b in BATCHES) + " |")
    print("|---|" + "---:|" * 3 * len(BATCHES))
    for preset in args.presets:
        result = latencies({"float": float_model(preset), "int8": int8_model(preset)}, args.repeats)
        cells = [f"{1e3 * result['float'][b]:.2f} | {1e3 * result['int8'][b]:.2f} | "
                 f"{result['int8'][b] / result['float'][b]:.2f}" for b in BATCHES]
        print(f"| {preset} | " + " | ".join(cells) + " |")
    metrics = quantization_accuracy_change(Path(__file__).resolve().parents[1])
    if metrics is None:
        print("accuracy change: run `dvc repro quantize` first (needs models/student.pt and student_int8.pt)")
        return
    for key in ("accuracy", "macro_accuracy", "log_loss"):
        f, q = metrics["float"][key], metrics["int8"][key]
        print(f"{key}: float {f:.4f}, int8 {q:.4f}, change {q - f:+.4f}")


if __name__ == "__main__":
    main()
