"""Student training throughput and the overhead of the data pipeline around the model.

Times two kinds of optimiser step on the student (params.yaml `student`, `train`):
  full:       what the engine's epoch loop does per batch (mobileast.training.engine._train_epoch):
              next batch of train_crops.epoch_batches, then mobileast.training.engine.optimizer_step
              (LR from the schedule, the real mobileast.training.supervised.supervised_step: waveform
              augmentation -> LogMel -> spectrogram augmentation -> student -> DKD loss with
              the teacher-logit lookup, backward, optimizer step);
  model-only: the same model, optimizer and loss on pre-made batches: log-mels computed
              beforehand (on the device), fixed teacher logits and, when mixup is on, a fixed
              mix (so the loss has the same two-source form), through the same optimizer_step.
Each timed step ends with loss.item(), so the device has finished it.
The two alternate for `--rounds` rounds of `--steps` steps each (order swapped every round),
so load from other processes hits both alike; figures are medians over the rounds. The
overhead is full / model-only - 1 (target <= 10 %); where it goes is measured inside the
full steps by timing the batch fetch and wrapping the frontend and the augmenter that
supervised_step calls (the wrappers only add clock reads). The CPU seconds per step (this
process, all threads) are printed too, and the load average: on a machine whose cores are
shared, torch's OpenMP threads wait on each other at every parallel op, which inflates the
many small ops of the pipeline far more than the model's large ones (compare --threads 1).

Teacher logits: data/teacher_logits/train.npy, or random logits of the grid's shape if it
is missing or does not match the crop grid of logits.hop_s.

    python benchmarks/bench_train.py [--preset sub1] [--batch-size 32] [--steps 4] [--rounds 5] [--threads N]
"""
from __future__ import annotations

import argparse
import copy
import itertools
import os
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from _common import setup
from mobileast.augment import Augmenter, sample_beta
from mobileast.labels import SCENES
from mobileast.data.crops import Batch, RecordingCrops, train_crops
from mobileast.deploy import frontend_for
from mobileast.distill import DistillLoss
from mobileast.models import build_student
from mobileast.models.mobileast import PRESETS
from mobileast.training.engine import optimizer_step
from mobileast.training.settings import TrainSettings
from mobileast.training.supervised import supervised_step

LOGITS = Path("data/teacher_logits/train.npy")
PARTS = ("load", "wave_aug", "frontend", "spec_aug")


class TimedFrontend(nn.Module):
    """The frontend, adding its wall time to spent["frontend"]."""

    def __init__(self, frontend: nn.Module, spent: dict[str, float]):
        super().__init__()
        self.frontend, self.spent = frontend, spent

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        out = self.frontend(wave)
        self.spent["frontend"] += time.perf_counter() - start
        return out


class TimedAugmenter:
    """The Augmenter's wave() and spec(), adding their wall time to spent["wave_aug"/"spec_aug"]."""

    def __init__(self, augmenter: Augmenter, spent: dict[str, float]):
        self.augmenter, self.spent = augmenter, spent

    def wave(self, x, gen):
        start = time.perf_counter()
        out = self.augmenter.wave(x, gen)
        self.spent["wave_aug"] += time.perf_counter() - start
        return out

    def spec(self, x, gen, mix=None):
        start = time.perf_counter()
        out = self.augmenter.spec(x, gen, mix)
        self.spent["spec_aug"] += time.perf_counter() - start
        return out


def teacher_logits(root: Path, n_rows: int, seed: int) -> tuple[torch.Tensor, str]:
    """The dumped train logits, or random ones of shape (n_rows, classes)."""
    path = root / LOGITS
    if path.is_file():
        logits = np.load(path)
        if len(logits) == n_rows:
            return torch.from_numpy(logits), str(LOGITS)
        note = f"random ({LOGITS} has {len(logits)} rows, the grid {n_rows})"
    else:
        note = f"random ({LOGITS} not found)"
    return torch.randn(n_rows, len(SCENES), generator=torch.Generator().manual_seed(seed)), note


def endless_batches(data: RecordingCrops, batch_size: int) -> Iterator[Batch]:
    """epoch_batches of epoch 0, 1, 2, ... one after the other."""
    for epoch in itertools.count():
        yield from data.epoch_batches(epoch, batch_size)


def full_stepper(net: nn.Module, settings: TrainSettings, data: RecordingCrops, step_fn, device: torch.device,
                 gen: torch.Generator, spent: dict[str, float]) -> Callable[[int], None]:
    """One engine step per call: fetch the batch, supervised_step, backward, optimizer step."""
    optimizer = settings.make_optimizer(net)
    batches = endless_batches(data, settings.batch_size)
    steps = data.steps_per_epoch(settings.batch_size)

    def step(i: int) -> None:
        start = time.perf_counter()
        batch = next(batches).to(device)
        spent["load"] += time.perf_counter() - start
        loss, _ = optimizer_step(net, optimizer, step_fn, batch, settings, 0, i / steps, gen)
        loss.item()  # wait for the device, so the step's time is all counted

    return step


def premade_batches(data: RecordingCrops, settings: TrainSettings, frontend: nn.Module, logits: torch.Tensor,
                    augment: dict[str, Any], count: int, device: torch.device, seed: int) -> list[tuple]:
    """(log-mel, label, teacher logits, mixed-partner args) on the device, computed once."""
    gen = torch.Generator().manual_seed(seed)
    mixup = augment["mixup"]
    made = []
    with torch.no_grad():
        for batch in itertools.islice(endless_batches(data, settings.batch_size), count):
            batch = batch.to(device)
            spec, z_t = frontend(batch.wave), logits[batch.row]
            mixed: tuple = ()
            if mixup["enabled"]:
                perm = torch.randperm(len(batch), generator=gen).to(device)
                mixed = (z_t[perm], batch.label[perm], sample_beta(mixup["alpha"], len(batch), gen).to(device))
            made.append((spec, batch.label, z_t, mixed))
    return made


def model_only_stepper(net: nn.Module, settings: TrainSettings, loss_fn: DistillLoss, batches: list[tuple],
                       steps: int) -> Callable[[int], None]:
    """Forward, the same loss on fixed inputs/logits, backward, optimizer step."""
    optimizer = settings.make_optimizer(net)

    def premade_step(net: nn.Module, made: tuple, epoch: int, gen: torch.Generator):
        spec, label, z_t, mixed = made
        return loss_fn(net(spec), z_t, label, *mixed, epoch=1)

    def step(i: int) -> None:
        loss, _ = optimizer_step(net, optimizer, premade_step, batches[i % len(batches)], settings, 0, i / steps, None)
        loss.item()  # wait for the device, as in the full step

    return step


def cpu_seconds() -> float:
    """User + system CPU seconds of this process (all threads)."""
    times = os.times()
    return times.user + times.system


def time_steps(step: Callable[[int], None], first: int, count: int) -> tuple[float, float]:
    """(wall, CPU) seconds per step, means over `count` calls."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    for i in range(first, first + count):
        step(i)
    return (time.perf_counter() - wall) / count, (cpu_seconds() - cpu) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS) + ["custom"], default=None,
                        help="default: params.yaml student.preset (with student.custom)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: params.yaml train.batch_size")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per kind per round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps of each kind first")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, one per core)")
    args = parser.parse_args()
    bench = setup(args.threads)
    root, params, store = bench.root, bench.params, bench.store
    seed = int(params["seed"])

    student = dict(params["student"])
    if args.preset and args.preset != student["preset"]:
        student = {"preset": args.preset, "custom": student.get("custom") if args.preset == "custom" else {}}
    section = dict(params["train"])
    if args.batch_size:
        section["batch_size"] = args.batch_size
    settings = TrainSettings.from_params(section, seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    features = dict(params["features"])
    sample_rate = int(features["sample_rate"])
    data = train_crops(store, bench.resampled, sample_rate, params["logits"]["hop_s"], "logits.hop_s",
                       "features.sample_rate", int(section["crops_per_recording"]), seed)
    logits, logits_note = teacher_logits(root, data.n_rows, seed)
    logits = logits.to(device)
    loss_fn = DistillLoss.from_params(params)
    frontend = frontend_for({"features": features, "input": "logmel"}).to(device)
    augmenter = Augmenter.from_params(params["augment"], sample_rate)

    torch.manual_seed(seed)
    net_full = build_student(student, features).to(device).train()
    net_model = copy.deepcopy(net_full)
    spent: dict[str, float] = defaultdict(float)
    step_fn = supervised_step(TimedFrontend(frontend, spent), TimedAugmenter(augmenter, spent), loss_fn,
                              None if loss_fn.method == "none" else logits)
    gen = torch.Generator(device=device).manual_seed(seed)
    steps_per_epoch = data.steps_per_epoch(settings.batch_size)
    full = full_stepper(net_full, settings, data, step_fn, device, gen, spent)
    premade = premade_batches(data, settings, frontend, logits, params["augment"], min(args.steps, steps_per_epoch),
                              device, seed)
    model_only = model_only_stepper(net_model, settings, loss_fn, premade, steps_per_epoch)

    time_steps(full, 0, args.warmup)
    time_steps(model_only, 0, args.warmup)
    rounds: dict[str, list[float]] = {k: [] for k in ("full", "model", "full_cpu", "model_cpu", *PARTS)}
    for r in range(args.rounds):
        first = args.warmup + r * args.steps
        order = ("full", "model") if r % 2 == 0 else ("model", "full")
        for kind in order:
            spent.clear()
            wall, cpu = time_steps(full if kind == "full" else model_only, first, args.steps)
            rounds[kind].append(wall)
            rounds[f"{kind}_cpu"].append(cpu)
            if kind == "full":
                for part in PARTS:
                    rounds[part].append(spent[part] / args.steps)

    med = {k: statistics.median(v) for k, v in rounds.items()}
    ratios = [f / m for f, m in zip(rounds["full"], rounds["model"])]
    overhead = med["full"] / med["model"] - 1
    bs = settings.batch_size
    enabled = [name for name, cfg in params["augment"].items() if cfg["enabled"]]
    print(f"student {student['preset']}, batch {bs}, device {device}, {torch.get_num_threads()} threads; "
          f"distill {loss_fn.method}; augment: {', '.join(enabled) or 'none'}; teacher logits: {logits_note}")
    print(f"medians of {args.rounds} alternating rounds x {args.steps} steps (after {args.warmup} warm-up steps each); "
          f"{bench.load_note()}")
    print("| step | ms/step | samples/s | CPU ms/step |")
    print("|---|---:|---:|---:|")
    print(f"| full (engine step, supervised_step) | {1e3 * med['full']:.1f} | {bs / med['full']:.1f} | "
          f"{1e3 * med['full_cpu']:.0f} |")
    print(f"| model-only (pre-made log-mels) | {1e3 * med['model']:.1f} | {bs / med['model']:.1f} | "
          f"{1e3 * med['model_cpu']:.0f} |")
    verdict = "holds" if overhead <= 0.10 else "MISSED"
    print(f"overhead full / model-only - 1: {100 * overhead:.1f} % (target <= 10 %: {verdict}); "
          f"per-round ratios {', '.join(f'{x:.3f}' for x in ratios)}; "
          f"CPU-time ratio - 1: {100 * (med['full_cpu'] / med['model_cpu'] - 1):.1f} %")
    print("where the full step's extra time goes (median ms/step, % of the model-only step):")
    print("| part | ms/step | % of model-only |")
    print("|---|---:|---:|")
    labels = {"load": "loading (epoch_batches + .to(device))", "wave_aug": "waveform augmentation",
              "frontend": "frontend (LogMel)", "spec_aug": "spectrogram augmentation"}
    for part in PARTS:
        print(f"| {labels[part]} | {1e3 * med[part]:.2f} | {100 * med[part] / med['model']:.1f} % |")
    pipeline = sum(med[p] for p in PARTS)
    rest = med["full"] - med["model"] - pipeline
    print(f"| sum of the above | {1e3 * pipeline:.2f} | {100 * pipeline / med['model']:.1f} % |")
    print(f"| rest (full - model-only - sum: logit lookup, model ops slowed in the full step) | {1e3 * rest:.2f} | "
          f"{100 * rest / med['model']:.1f} % |")


if __name__ == "__main__":
    main()
