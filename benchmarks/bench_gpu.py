"""Training throughput of the GPU path, its input-pipeline overhead, the logit-dump rate,
and the projected wall time of the TAU22 recipes on this device (CUDA if present, else CPU).

For the student (profile tau22-sub2 by default: preset, DKD, mixup, MixStyle) and the PaSST
teacher (profile tau22-passt: full-size PaSST, patchout, mixup; random weights, same cost
as the AudioSet checkpoint), at each precision (fp32, bf16):
  full step:       what the engine's epoch loop does (mobileast.training.engine._train_epoch):
                   batches of RecordingCrops.epoch_batches from a memory-mapped store,
                   gathered and pinned one ahead in a background thread (inference.prefetch),
                   then optimizer_step with the real supervised_step (augmentation, frontend,
                   model under autocast, fp32 loss, backward, optimizer step);
  model-only step: the same optimizer_step on the same batches already on the device.
Samples/s are batch_size x steps over the wall time of a block of steps ended by one
device sync (the engine itself never waits per step). Full and model-only blocks
alternate for --rounds rounds; figures are medians. Overhead = full / model-only - 1
(target <= 5 % on a GPU). `--compile` adds torch.compile rows for the student.
Dump: predict() (eval, no_grad, autocast) crops/s of each model at logits.batch_size.

The store is synthetic (TAU22 layout: 10 s recordings of 1 s slices at 32 kHz, int16, in
a temporary directory), so the benchmark needs no dataset. The projection multiplies the
measured rates by the TAU22 sizes (13,962 train recordings, 29,680 evaluate clips) and
the recipes of the profiles (epochs, crops per recording, validate_every, logits.hop_s).

    python benchmarks/bench_gpu.py [--steps N] [--rounds N] [--batch-size N] [--passt-batch-size N]
                                   [--student-profile tau22-sub2] [--compile] [--threads N]
"""
from __future__ import annotations

import argparse
import itertools
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import torch
from torch import nn

from mobileast.augment import Augmenter
from mobileast.labels import SCENES
from mobileast.params import load_params
from mobileast.data.crops import Batch, RecordingCrops, hop_samples
from mobileast.distill import DistillLoss
from mobileast.features import LogMel
from mobileast.models import build_student
from mobileast.models.passt import PaSST, PaSSTConfig
from mobileast.profiles import apply, load_profile, profiles_dir
from mobileast.inference import predict, prefetch, resolve_precision
from mobileast.training.engine import optimizer_step
from mobileast.training.schedule import Schedule
from mobileast.training.settings import TrainSettings
from mobileast.training.supervised import supervised_step

TAU22_TRAIN_RECORDINGS = 13_962  # 139,620 train-fold 1 s clips
TAU22_EVALUATE_CLIPS = 29_680
RATE = 32_000
SLICES = 10


def make_store(root: Path, recordings: int, seed: int = 0) -> Path:
    """A recordings store (recordings.csv + train.npy) of noise-like 10 s recordings."""
    rng = np.random.default_rng(seed)
    length = SLICES * RATE
    audio = np.lib.format.open_memmap(root / "train.npy", "w+", np.int16, (recordings * length,))
    for i in range(recordings):
        audio[i * length:(i + 1) * length] = (3000 * rng.standard_normal(length)).astype(np.int16)
    audio.flush()
    pd.DataFrame([{"recording": f"{SCENES[i % 10]}-bench-{i}-a", "scene_label": SCENES[i % 10], "device": "a",
                   "fold": "train", "n_slices": SLICES, "slices_present": ",".join(map(str, range(SLICES))),
                   "complete": True, "offset": i * length, "length": length, "clip_samples": RATE}
                  for i in range(recordings)]).to_csv(root / "recordings.csv", index=False)
    return root


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def endless(data: RecordingCrops, batch_size: int) -> Iterator[Batch]:
    for epoch in itertools.count():
        yield from data.epoch_batches(epoch, batch_size)


class Subject:
    """One model with its frontend, augmentation and loss as its training stage builds them."""

    def __init__(self, name: str, make: Callable[[], tuple[nn.Module, nn.Module]], augment: dict[str, Any],
                 loss_fn: DistillLoss, batch_size: int):
        self.name, self.make, self.augment, self.loss_fn, self.batch_size = name, make, augment, loss_fn, batch_size


def time_training(subject: Subject, precision: str, compiled: bool, data: RecordingCrops, device: torch.device,
                  steps: int, rounds: int) -> dict[str, float]:
    """Median samples/s of full and model-only steps, alternating blocks of `steps`."""
    torch.manual_seed(0)
    model, frontend = subject.make()
    model, frontend = model.to(device).train(), frontend.to(device)
    net = torch.compile(model) if compiled else model
    logits = torch.randn(data.n_rows, len(SCENES), device=device)
    step_fn = supervised_step(frontend, Augmenter.from_params(subject.augment, RATE), subject.loss_fn,
                              logits if subject.loss_fn.method != "none" else None, precision=precision)
    settings = TrainSettings(epochs=1, batch_size=subject.batch_size, lr=1e-4, optimizer="adam",
                             precision=precision, schedule=Schedule(warmup="none", decay="constant"))
    optimizer = settings.make_optimizer(model)
    generator = torch.Generator(device=device).manual_seed(0)
    stream = prefetch(endless(data, subject.batch_size), device)
    resident = [b.to(device) for b in itertools.islice(endless(data, subject.batch_size), steps)]

    def block(batches) -> float:
        sync(device)
        start = time.perf_counter()
        for i, batch in zip(range(steps), batches):
            optimizer_step(net, optimizer, step_fn, batch, settings, 0, i / steps, generator)
        sync(device)
        return subject.batch_size * steps / (time.perf_counter() - start)

    block(iter(resident))  # warm-up (and compilation)
    block(stream)
    full, model_only = [], []
    for r in range(rounds):
        for kind in (("full", "model") if r % 2 == 0 else ("model", "full")):
            (full if kind == "full" else model_only).append(block(stream if kind == "full" else iter(resident)))
    return {"full": statistics.median(full), "model": statistics.median(model_only)}


def time_dump(subject: Subject, precision: str, data: RecordingCrops, device: torch.device, batch_size: int,
              batches: int) -> float:
    """Crops/s of predict() over the grid (the logit dump and the validation path)."""
    torch.manual_seed(0)
    model, frontend = subject.make()
    model, frontend = model.to(device).eval(), frontend.to(device)
    predict(model, frontend, itertools.islice(data.grid_batches(batch_size), 1), device, precision)  # warm-up
    sync(device)
    start = time.perf_counter()
    out = predict(model, frontend, itertools.islice(data.grid_batches(batch_size), batches), device, precision)
    return len(out) / (time.perf_counter() - start)


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def main() -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10 if cuda else 2, help="steps per timed block")
    parser.add_argument("--rounds", type=int, default=5 if cuda else 2)
    parser.add_argument("--batch-size", type=int, default=None, help="student (default: the profile's on a GPU, 32 on CPU)")
    parser.add_argument("--passt-batch-size", type=int, default=None, help="default: the profile's on a GPU, 4 on CPU")
    parser.add_argument("--dump-batches", type=int, default=20 if cuda else 2)
    parser.add_argument("--student-profile", default="tau22-sub2")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--compile", action="store_true", help="also time the torch.compile'd student")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if cuda else "cpu")
    base = load_params()
    directory = profiles_dir()
    student_params = apply(base, load_profile(args.student_profile, directory).overrides)
    teacher_params = apply(base, load_profile("tau22-passt", directory).overrides)
    student_batch = args.batch_size or (int(student_params["train"]["batch_size"]) if cuda else 32)
    passt_batch = args.passt_batch_size or (int(teacher_params["teacher"]["train"]["batch_size"]) if cuda else 4)
    features = student_params["features"]
    passt_cfg = {k: teacher_params["teacher"]["passt"][k]
                 for k in ("fstride", "tstride", "patchout_f", "patchout_t", "specaug_freq", "specaug_time")}
    subjects = [
        Subject(f"student {student_params['student']['preset']}",
                lambda: (build_student(student_params["student"], features), LogMel(**features)),
                student_params["augment"], DistillLoss.from_params(student_params), student_batch),
        Subject("PaSST", lambda: (PaSST(PaSSTConfig(**passt_cfg)), nn.Identity()),
                teacher_params["teacher"]["augment"], DistillLoss.cross_entropy(), passt_batch),
    ]
    precisions = args.precisions.split(",")
    name = torch.cuda.get_device_name(device) if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; torch {torch.__version__}; steps/block {args.steps}, rounds {args.rounds}")

    recordings = 2 * max(student_batch, passt_batch)  # one crop per recording and epoch: two batches per epoch
    rates: dict[tuple[str, str], dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = make_store(Path(tmp), recordings)
        print(f"store: {recordings} synthetic 10 s recordings in a memory-mapped store ({tmp})\n")
        print(f"{'model':<14} {'precision':<10} {'batch':>5} {'full samples/s':>15} {'model-only':>11} {'overhead':>9}")
        for subject in subjects:
            data = RecordingCrops(store, "train", RATE, hop_samples(0.05, RATE, "teacher.train.crop_hop_s"), 1, 0)
            rows = [(p, False) for p in precisions] + ([(p, True) for p in precisions] if args.compile and
                                                       subject.name.startswith("student") else [])
            for precision, compiled in rows:
                if precision == "bf16" and cuda and not torch.cuda.is_bf16_supported(including_emulation=False):
                    continue
                rate = time_training(subject, precision, compiled, data, device, args.steps, args.rounds)
                label = precision + (" compiled" if compiled else "")
                rates[(subject.name, label)] = rate
                print(f"{subject.name:<14} {label:<10} {subject.batch_size:>5} {rate['full']:>15.1f} "
                      f"{rate['model']:>11.1f} {rate['model'] / rate['full'] - 1:>+9.1%}")
        print()
        logits_batch = int(base["logits"]["batch_size"])
        dump: dict[tuple[str, str], float] = {}
        grid = RecordingCrops(store, "train", RATE, hop_samples(float(base["logits"]["hop_s"]), RATE, "logits.hop_s"),
                              1, 0)
        for subject in subjects:
            for precision in precisions:
                dump[(subject.name, precision)] = time_dump(subject, precision, grid, device, logits_batch,
                                                            args.dump_batches)
                print(f"dump {subject.name:<14} {precision:<5} {dump[(subject.name, precision)]:>9.1f} crops/s")

    auto = resolve_precision("auto", device)
    best = auto if auto in precisions else precisions[0]
    print(f"\nprojected TAU22 wall time on this device at {best}" + (" (what precision 'auto' takes here):" if best == auto else ":"))
    grid_crops = TAU22_TRAIN_RECORDINGS * (round((SLICES - 1) / float(base["logits"]["hop_s"])) + 1)
    for subject, params, section in ((subjects[1], teacher_params, teacher_params["teacher"]["train"]),
                                     (subjects[0], student_params, student_params["train"])):
        epochs, every = int(section["epochs"]), int(section["validate_every"])
        crops = TAU22_TRAIN_RECORDINGS * int(section["crops_per_recording"])
        train_s = epochs * crops / rates[(subject.name, best)]["full"]
        validations = len(range(every - 1, epochs, every)) + (epochs % every != 0)
        validate_s = validations * TAU22_EVALUATE_CLIPS / dump[(subject.name, best)]
        print(f"  {subject.name}: {epochs} epochs x {crops:,} crops -> {hours(train_s)} training + "
              f"{validations} validations of {TAU22_EVALUATE_CLIPS:,} clips -> {hours(validate_s)}")
    dump_s = (grid_crops + TAU22_EVALUATE_CLIPS) / dump[(subjects[1].name, best)]
    print(f"  logit dump (PaSST): {grid_crops:,} train crops (hop {base['logits']['hop_s']} s) + "
          f"{TAU22_EVALUATE_CLIPS:,} evaluate clips -> {hours(dump_s)}")
    print(f"\n1-min load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
