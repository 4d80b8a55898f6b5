"""Inference latency of the students on this CPU: torch float, torch int8, ONNX Runtime float
and ONNX Runtime int8, at batch 1 and 64, against the machine's GEMM floor.

For each preset sub1..sub4, one run measures, interleaved (every round times every
runtime at every batch size in turn, so machine noise hits all alike; medians over
rounds of `--repeats` calls), the latency per 1 s clip of the classifier (input: the
1 x 256 x 64 log-mel; the frontend is not timed):
- torch float: the float deployment form (BN folded, attention as one
  scaled_dot_product_attention), traced and `torch.jit.optimize_for_inference`d: the
  fastest torch float form measured;
- torch int8: the int8 TorchScript model as the quantize stage saves it;
- ORT float / ORT int8: the ONNX models of mobileast.export, in onnxruntime;
all on one thread (a fair per-core figure; a shared machine's second core makes
multi-thread timings erratic). It prints the ratios to torch float and each runtime's
top-1 agreement with torch float on the evaluate clips. The preset the pipeline trained
(models/student.pt) uses its trained weights and its deployed models; the others get
their BatchNorm statistics from the training crops (untrained weights otherwise, so
agreement there says how the conversion behaves, not how a trained model would).

The floor: the time `macs_full` multiply-accumulates take at this core's measured
float32 GEMM throughput (torch.mm of 1024 x 1024 matrices, one thread).

    python benchmarks/bench_inference.py [--presets sub1 sub2] [--repeats 7] [--rounds 3]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from _common import setup
from mobileast.complexity import complexity_report
from mobileast.data.crops import evaluate_clips
from mobileast.deploy import OnnxModel, feature_args, frontend_for, load_checkpoint_model, load_deployed, load_onnx
from mobileast.export import export_float
from mobileast.models import build_preset, model_spec
from mobileast.models.mobileast import PRESETS, MobileASTConfig, deploy_form
from mobileast.onnx_quantize import quantize_onnx
from mobileast.quantize import calibration_batches, quant_engine, quantize_model

BATCHES = (1, 64)
RUNTIMES = ("torch float", "torch int8", "ORT float", "ORT int8")


def traced(model: nn.Module, shape: tuple[int, ...]) -> torch.jit.ScriptModule:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.trace(model.eval(), torch.randn(2, *shape))


def gemm_macs_per_second(size: int = 1024, repeats: int = 10) -> float:
    """Single-thread float32 GEMM throughput (multiply-accumulates per second), median of runs."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - start)
    return size ** 3 / statistics.median(times)


def with_bn_statistics(model: nn.Module, batches: list[torch.Tensor]) -> nn.Module:
    """BatchNorm running statistics of `batches` (cumulative), as an untrained stand-in for training."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None
    model.train()
    with torch.no_grad():
        for x in batches:
            model(x)
    return model.eval()


def runtimes(preset: str, bench, calib: list[torch.Tensor], scratch: Path) -> tuple[dict[str, Callable], str, nn.Module]:
    """The four runtimes of a preset: trained if the pipeline trained it, else with BN statistics."""
    root = bench.root
    trained = root / "models/student.pt"
    shape = (1, 256, 64)
    if trained.is_file():
        model, meta = load_checkpoint_model(trained)
        if MobileASTConfig(**meta["config"]) == PRESETS[preset] \
                and all((root / f"models/student_int8.{s}").is_file() for s in ("pt", "onnx")):
            onnx_float = scratch / f"{preset}-float.onnx"
            export_float(model, meta, onnx_float)
            return ({"torch float": _torch_float(model, shape), "torch int8": load_deployed(root / "models/student_int8.pt")[0],
                     "ORT float": OnnxModel(onnx_float, threads=1),
                     "ORT int8": load_onnx(root / "models/student_int8.onnx", threads=1)[0]}, "trained", model)
    torch.manual_seed(0)  # the same untrained weights in every run
    model = with_bn_statistics(build_preset(preset), calib)
    arch, config = model_spec(model)
    meta = {"features": {}, "classes": [], "arch": arch, "config": config}
    onnx_float, onnx_int8 = scratch / f"{preset}-float.onnx", scratch / f"{preset}-int8.onnx"
    export_float(model, meta, onnx_float)
    quantize_onnx(onnx_float, onnx_int8, calib, quant_engine())
    int8 = traced(quantize_model(model, calib, dynamic_modules=["classifier"]), shape)
    return ({"torch float": _torch_float(model, shape), "torch int8": int8, "ORT float": OnnxModel(onnx_float, threads=1),
             "ORT int8": OnnxModel(onnx_int8, threads=1)}, "BN statistics only", model)


def _torch_float(model: nn.Module, shape: tuple[int, ...]) -> torch.jit.ScriptModule:
    return torch.jit.optimize_for_inference(traced(deploy_form(model), shape))


@torch.inference_mode()
def latencies(models: dict[str, Callable], repeats: int, rounds: int) -> dict[str, dict[int, float]]:
    """{runtime: {batch: seconds per clip}}: medians over interleaved rounds."""
    inputs = {b: torch.randn(b, 1, 256, 64) for b in BATCHES}
    for model in models.values():
        for x in inputs.values():
            model(x), model(x)  # warm-up (TorchScript optimises on its first calls)
    runs: dict[str, dict[int, list[float]]] = {name: {b: [] for b in BATCHES} for name in models}
    for _ in range(rounds):
        for batch, x in inputs.items():
            for name, model in models.items():
                times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    model(x)
                    times.append(time.perf_counter() - start)
                runs[name][batch].append(statistics.median(times) / batch)
    return {name: {b: statistics.median(v) for b, v in by.items()} for name, by in runs.items()}


@torch.inference_mode()
def agreements(models: dict[str, Callable], logmels: list[torch.Tensor]) -> dict[str, float]:
    top = {name: torch.cat([model(x).argmax(1) for x in logmels]) for name, model in models.items()}
    return {name: (labels == top["torch float"]).double().mean().item() for name, labels in top.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=sorted(PRESETS), choices=sorted(PRESETS))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    bench = setup(threads=1)
    params = bench.params
    features = params["features"]
    quant = params["quant"]
    calib = list(calibration_batches(bench.store, bench.resampled, features, int(quant["calib_batches"]),
                                     int(quant["batch_size"]), params["logits"]["hop_s"], params["seed"]))
    clips = evaluate_clips(bench.resampled, int(feature_args(features)["sample_rate"]), "features.sample_rate")
    frontend = frontend_for({"features": features})
    with torch.no_grad():
        logmels = [frontend(batch.wave) for batch in clips.batches(64)]
    floor_rate = gemm_macs_per_second()
    print(f"latency per 1 s clip (ms), 1 thread, medians of {args.rounds} interleaved rounds x {args.repeats} calls; "
          f"top-1 agreement with torch float on {len(clips)} evaluate clips; {bench.load_note()}")
    print(f"single-core float32 GEMM: {floor_rate / 1e9:.1f} GMAC/s (torch.mm 1024 x 1024)\n")
    print("| preset | weights | runtime | b1 ms | b1 / torch float | b64 ms | b64 / torch float | top-1 vs torch float |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    floors = []
    with tempfile.TemporaryDirectory() as scratch:
        for preset in args.presets:
            models, weights, model = runtimes(preset, bench, calib, Path(scratch))
            times = latencies(models, args.repeats, args.rounds)
            agree = agreements(models, logmels)
            base = times["torch float"]
            for name in RUNTIMES:
                t = times[name]
                print(f"| {preset} | {weights} | {name} | {1e3 * t[1]:.2f} | {t[1] / base[1]:.2f} | {1e3 * t[64]:.2f} | "
                      f"{t[64] / base[64]:.2f} | {agree[name]:.3f} |")
            macs = complexity_report(model)["macs_full"]
            fastest = min(RUNTIMES, key=lambda n: times[n][1])
            floors.append((preset, macs, macs / floor_rate, fastest, times[fastest][1]))
    print("\n| preset | macs_full | GEMM floor ms | fastest at batch 1 | ms | x floor |")
    print("|---|---:|---:|---|---:|---:|")
    for preset, macs, floor, fastest, t in floors:
        print(f"| {preset} | {macs / 1e6:.1f} M | {1e3 * floor:.2f} | {fastest} | {1e3 * t:.2f} | {t / floor:.2f} |")
    print(f"\n{bench.load_note()}")


if __name__ == "__main__":
    main()
