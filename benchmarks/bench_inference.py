"""CPU inference latency per 1 s clip of the student presets (float, BN folded).

Times the classifier only (input: a 1 x 256 x 64 log-mel batch; the frontend is not
included) at batch 1 and batch 64; each figure is the median over repeated runs
divided by the batch size.

    python benchmarks/bench_inference.py [--presets sub1 sub2] [--repeats 7]
"""
import argparse
import statistics
import time

import torch
from torch import nn

from mobileast.models import build_preset
from mobileast.models.mobileast import PRESETS, fold_bn

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


def float_latencies(preset: str, repeats: int) -> dict[int, float]:
    """{batch size: seconds per clip} of the float model of `preset`."""
    model = float_model(preset)
    return {batch: latency_per_clip(model, batch, repeats) for batch in BATCHES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=sorted(PRESETS), choices=sorted(PRESETS))
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print(f"float CPU latency per 1 s clip, median of {args.repeats} runs, {torch.get_num_threads()} threads")
    print(f"| preset | {' | '.join(f'batch {b} (ms/clip)' for b in BATCHES)} |")
    print(f"|---|{'---:|' * len(BATCHES)}")
    for preset in args.presets:
        latencies = float_latencies(preset, args.repeats)
        print(f"| {preset} | {' | '.join(f'{1e3 * latencies[b]:.2f}' for b in BATCHES)} |")


if __name__ == "__main__":
    main()
