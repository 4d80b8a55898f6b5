"""Throughput of the teacher-logits dump (stage teacher_logits) on the train crop grid.

Runs the dump's own code path, `mobileast.teachers.ensemble_logits` (which calls
`mobileast.inference.predict`: frontend + teacher, eval mode, no_grad), over the first
`--batches` batches of `RecordingCrops(...).grid_batches(batch_size)` of the train
recordings, with the teachers the stage uses (models/teacher.pt plus params.yaml
`teacher.ensemble`). Without models/teacher.pt it uses an untrained `teacher_cnn` preset
(same cost as a trained one). Loading alone (the same batches, no model) is timed in
alternation with the dump, so machine noise hits both alike; figures are medians.

    python benchmarks/bench_logits.py [--batch-size 64] [--batches 40] [--repeats 3] [--threads N]
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import time
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

from _common import setup
from mobileast.data.crops import Batch, RecordingCrops, train_crops
from mobileast.deploy import frontend_for
from mobileast.models import build_preset
from mobileast.teachers import ensemble_logits, load_teachers

TEACHER = Path("models/teacher.pt")


def teachers(root: Path, params: dict, device: torch.device) -> tuple[list[tuple[nn.Module, nn.Module]], str]:
    """(classifier, frontend) pairs as dump_teacher_logits loads them, and a description."""
    checkpoints = [root / TEACHER, *(root / p for p in params["teacher"]["ensemble"])]
    if checkpoints[0].is_file():
        names = ", ".join(str(p.relative_to(root)) for p in checkpoints)
        return load_teachers(checkpoints, device), f"{len(checkpoints)} checkpoint(s): {names}"
    model = build_preset("teacher_cnn").to(device).eval()
    frontend = frontend_for({"features": dict(params["features"]), "input": "logmel"}).to(device)
    return [(model, frontend)], f"untrained teacher_cnn preset ({TEACHER} not found; same cost as a trained one)"


def bounded(crops: RecordingCrops, batch_size: int, n_batches: int) -> Callable[[], Iterator[Batch]]:
    """The first n_batches of the grid, as the dump's batches_fn."""
    return lambda: itertools.islice(crops.grid_batches(batch_size), n_batches)


def time_dump(teacher_list, batches_fn, device: torch.device) -> float:
    """Seconds of ensemble_logits over the batches (what the stage runs per fold)."""
    start = time.perf_counter()
    ensemble_logits(teacher_list, batches_fn, device)
    return time.perf_counter() - start


def time_loading(batches_fn, passes: int) -> float:
    """Seconds to load the same batches `passes` times (once per teacher, as the dump does)."""
    start = time.perf_counter()
    for _ in range(passes):
        for _batch in batches_fn():
            pass
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=None, help="default: params.yaml logits.batch_size")
    parser.add_argument("--batches", type=int, default=40, help="grid batches per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="alternating dump / loading rounds")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, one per core)")
    args = parser.parse_args()
    bench = setup(args.threads)
    root, params, store = bench.root, bench.params, bench.store
    batch_size = args.batch_size or int(params["logits"]["batch_size"])
    sample_rate = int(params["data"]["sample_rate"])
    crops = train_crops(store, bench.resampled, sample_rate, params["logits"]["hop_s"], "logits.hop_s",
                        "data.sample_rate")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    teacher_list, described = teachers(root, params, device)
    n_batches = min(args.batches, -(-crops.n_rows // batch_size))
    batches_fn = bounded(crops, batch_size, n_batches)
    n_crops = sum(len(b) for b in batches_fn())  # also warms the page cache

    ensemble_logits(teacher_list, lambda: itertools.islice(batches_fn(), 2), device)  # warm-up
    dump, load = [], []
    for _ in range(args.repeats):
        dump.append(time_dump(teacher_list, batches_fn, device))
        load.append(time_loading(batches_fn, len(teacher_list)))
    dump_s, load_s = statistics.median(dump), statistics.median(load)
    compute_s = dump_s - load_s
    crops_per_s = n_crops / dump_s

    print(f"teacher: {described}")
    print(f"device {device}, {torch.get_num_threads()} threads; {n_crops} of {crops.n_rows} train grid crops "
          f"({n_batches} batches of {batch_size}); median of {args.repeats} alternating rounds; "
          f"{bench.load_note()}")
    print("| measure | value |")
    print("|---|---:|")
    print(f"| dump time (s) | {dump_s:.2f} |")
    print(f"| crops/s (dump) | {crops_per_s:.1f} |")
    print(f"| loading alone (s) | {load_s:.4f} |")
    print(f"| loading share | {100 * load_s / dump_s:.2f} % |")
    print(f"| compute share (frontend + teacher) | {100 * compute_s / dump_s:.2f} % |")
    print(f"| loading crops/s (alone) | {n_crops * len(teacher_list) / load_s:.0f} |")
    print(f"| est. full train grid ({crops.n_rows} crops) | {crops.n_rows / crops_per_s:.0f} s |")
    print(f"per-round dump s: {', '.join(f'{t:.2f}' for t in dump)}; "
          f"loading s: {', '.join(f'{t:.4f}' for t in load)}")


if __name__ == "__main__":
    main()
