"""The PT2E quantization flow (torch.export + prepare_pt2e / convert_pt2e), the successor of
the FX flow in mobileast.quantize, tried on a preset: what works here, what fails, and how
it compares with the FX int8 model.

Steps, each printed as OK with its figures or FAILED with the error's first line:
1. the PT2E API: `torch.ao.quantization.quantize_pt2e` if this torch still has it, else
   torchao's (`torchao.quantization.pt2e`, a separate package) if importable; with
   neither the script says so and stops (exit status 0: nothing to measure);
2. torch.export of the float deploy form (mobileast.models.mobileast.deploy_form);
3. prepare_pt2e with the X86InductorQuantizer (int8 static, per-channel weights),
   calibration on the pipeline's calibration crops, convert_pt2e;
4. the converted model run eagerly: latency per clip at batch 1 and 64 next to the FX
   int8 model and the float deploy form (one thread, medians of interleaved rounds, as
   benchmarks/bench_inference.py), and top-1 agreement with the float model on evaluate
   clips;
5. with `--compile`: torch.compile (inductor) of the converted model, with and without
   `freezing` (the setting under which inductor lowers it to int8 kernels): compile time
   and latency, or the error.

The preset gets BatchNorm statistics of the calibration crops (untrained otherwise), as in
bench_inference; the models/student.pt of the pipeline is used when it is that preset.

    python benchmarks/bench_pt2e.py [--preset sub2] [--compile] [--repeats 7] [--rounds 3]
"""
from __future__ import annotations

import argparse
import importlib
import time
import traceback
import warnings
from typing import Any, Callable

import torch
from torch import nn

from _common import setup
from bench_inference import latencies, traced, with_bn_statistics
from mobileast.data.crops import evaluate_clips
from mobileast.deploy import feature_args, frontend_for, load_checkpoint_model
from mobileast.models import build_preset
from mobileast.models.mobileast import PRESETS, MobileASTConfig, deploy_form
from mobileast.quantize import calibration_batches, quantize_model

PT2E_MODULES = {  # where the PT2E API and the x86 quantizer live, in the order tried
    "torch.ao": ("torch.ao.quantization.quantize_pt2e", "torch.ao.quantization.quantizer.x86_inductor_quantizer"),
    "torchao": ("torchao.quantization.pt2e.quantize_pt2e", "torchao.quantization.pt2e.quantizer.x86_inductor_quantizer"),
}


def pt2e_api() -> tuple[str, Any, Any] | None:
    """(where, quantize_pt2e module, x86_inductor_quantizer module) of the first PT2E API found."""
    for where, (flow, quantizer) in PT2E_MODULES.items():
        try:
            return where, importlib.import_module(flow), importlib.import_module(quantizer)
        except ImportError as error:
            print(f"  {where}: not available ({error})")
    return None


def step(name: str, fn: Callable[[], Any]) -> Any:
    """Run one step, print OK (with its seconds) or FAILED with the error; None on failure."""
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = fn()
    except Exception as error:  # a failing step is a finding, not a crash
        print(f"FAILED  {name}: {_reason(error)}")
        return None
    print(f"OK      {name} ({time.perf_counter() - start:.1f} s)")
    return result


def _reason(error: BaseException) -> str:
    """The error's root cause and the line that raised it (torch.compile wraps the backend's
    error, often an assertion without a message)."""
    while (inner := getattr(error, "inner_exception", None) or error.__cause__) is not None:
        error = inner
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    frames = traceback.extract_tb(error.__traceback__)
    where = f" at {frames[-1].filename.split('site-packages/')[-1]}:{frames[-1].lineno} ({frames[-1].line})" if frames else ""
    return f"{type(error).__name__}: {message}{where}"[:400]


def student(preset: str, bench, calib: list[torch.Tensor]) -> tuple[nn.Module, str]:
    trained = bench.root / "models/student.pt"
    if trained.is_file():
        model, meta = load_checkpoint_model(trained)
        if MobileASTConfig(**meta["config"]) == PRESETS[preset]:
            return model, "trained"
    return with_bn_statistics(build_preset(preset), calib), "BN statistics only"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="sub2", choices=sorted(PRESETS))
    parser.add_argument("--compile", action="store_true", help="also torch.compile the PT2E model (minutes)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    bench = setup(threads=1)
    params = bench.params
    print(f"torch {torch.__version__}; {bench.load_note()}")
    api = pt2e_api()
    if api is None:
        print("SKIPPED the PT2E flow: this torch has no torch.ao.quantization.quantize_pt2e (moved to torchao) and "
              "torchao is not installed (pip install torchao)")
        return
    where, flow, x86 = api
    print(f"OK      PT2E API from {where}")
    quant, features = params["quant"], params["features"]
    calib = list(calibration_batches(bench.store, bench.resampled, features, int(quant["calib_batches"]),
                                     int(quant["batch_size"]), params["logits"]["hop_s"], params["seed"]))
    model, weights = student(args.preset, bench, calib)
    print(f"        {args.preset} ({weights})")
    clips = evaluate_clips(bench.resampled, int(feature_args(features)["sample_rate"]), "features.sample_rate")
    frontend = frontend_for({"features": features})
    with torch.no_grad():
        logmels = [frontend(batch.wave) for _, batch in zip(range(4), clips.batches(64))]
    deployed = deploy_form(model)
    batch = torch.export.Dim("batch", min=1, max=1024)
    exported = step("torch.export of the deploy form",
                    lambda: torch.export.export(deployed, (calib[0],), dynamic_shapes=({0: batch},)).module())
    if exported is None:
        return

    def quantize_pt2e() -> nn.Module:
        quantizer = x86.X86InductorQuantizer().set_global(x86.get_default_x86_inductor_quantization_config())
        prepared = flow.prepare_pt2e(exported, quantizer)
        with torch.no_grad():
            for x in calib:
                prepared(x)
        return flow.convert_pt2e(prepared)

    pt2e = step("prepare_pt2e (X86InductorQuantizer), calibration, convert_pt2e", quantize_pt2e)
    if pt2e is None:
        return
    runtimes = {"float (deploy form)": deployed, "FX int8 (mobileast.quantize)": traced(
        quantize_model(model, calib, dynamic_modules=list(quant["dynamic_modules"])), (1, 256, 64)),
        "PT2E int8, eager": pt2e}
    if args.compile:
        for freezing in (True, False):
            def compiled(freezing: bool = freezing) -> Callable:
                torch._inductor.config.freezing = freezing
                fn = torch.compile(pt2e)
                with torch.no_grad():
                    fn(calib[0][:1]), fn(calib[0])
                return fn
            fn = step(f"torch.compile (inductor, freezing={freezing}) of the PT2E model, first calls", compiled)
            if fn is not None:
                runtimes[f"PT2E int8, inductor freezing={freezing}"] = fn
    times = latencies(runtimes, args.repeats, args.rounds)
    with torch.no_grad():
        reference = torch.cat([deployed(x).argmax(1) for x in logmels])
        agree = {name: (torch.cat([fn(x).argmax(1) for x in logmels]) == reference).double().mean().item()
                 for name, fn in runtimes.items()}
    print(f"\nlatency per 1 s clip (ms), 1 thread; top-1 agreement with float on {len(reference)} evaluate clips\n")
    print("| runtime | b1 ms | b64 ms | top-1 vs float |")
    print("|---|---:|---:|---:|")
    for name, t in times.items():
        print(f"| {name} | {1e3 * t[1]:.2f} | {1e3 * t[64]:.2f} | {agree[name]:.3f} |")
    print(f"\n{bench.load_note()}")


if __name__ == "__main__":
    main()
