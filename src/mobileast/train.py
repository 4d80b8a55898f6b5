"""The training engine shared by the teacher and the student stages.

`fit` runs the epochs; what one batch does is the stage's `step_fn(model, batch, epoch,
generator) -> (loss, logs)`, so the teacher plugs in cross-entropy with mixup and the
student augmentation, teacher-logit lookup and DKD. The step owns the frontend (LogMel
or PaSST's own) because waveform augmentations come before it and spectrogram
augmentations after it; the frontend has no trained weights, so the engine optimises
and checkpoints the classifier only.

- Device: CUDA when available, else CPU. Under `torchrun --nproc_per_node N` the
  classifier is wrapped in DistributedDataParallel (nccl on GPU, gloo on CPU), every
  process takes its share of each batch (`batch_size` is the global batch), BatchNorm
  buffers are copied from rank 0 at the end of every epoch so all ranks hold the same
  state, and only rank 0 validates, logs and writes files.
- Determinism: the data plan depends on (seed, epoch), and the global torch RNG (e.g.
  dropout) and the step's generator are reseeded from (seed, epoch, rank) at the start
  of every epoch. Runs with the same settings are identical on CPU, and a run resumed
  from the checkpoint of epoch k ends with exactly the weights of an uninterrupted run;
  checkpoints therefore need no RNG state.
- Learning rate: set before every optimiser step from `Schedule.lr` at the fractional
  epoch (epoch + step / steps_per_epoch), a pure function, so it needs no saved state.
- Checkpoints: `resume` after every epoch (atomically; outside DVC's outputs; resumed only
  by a run of the same settings, params and input files), `best`
  when the selected validation metric improves, `model` once at the end, the per-epoch
  history as CSV (for DVC plots), and the history rows as MLflow metrics of the active
  run (see mobileast.tracking).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol, Sequence

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from mobileast import tracking
from mobileast.errors import ParamsError, params_errors
from mobileast.files import atomic_output
from mobileast.data.crops import Batch, ClipSource
from mobileast.inference import PRECISIONS, autocast, predict, prefetch, resolve_precision

WARMUPS = ("none", "linear", "exp")
DECAYS = ("cosine", "linear", "constant")
OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
PROGRESS_EVERY = 10  # steps between progress-bar loss updates (each waits for the device)



@dataclass(frozen=True)
class Schedule:
    """Learning-rate schedule: warm-up to the peak LR, decay to min_lr, then constant.

    warmup: none | linear (from 0) | exp (exp(-5 (1 - t)^2), t = epoch / warmup_epochs:
    the exponential ramp-up of the CP-JKU DCASE systems, from 0.7 % of the peak).
    decay, from warmup_epochs to decay_end_epoch: cosine | linear | constant (stay at
    the peak; then min_lr and decay_end_epoch are unused). E.g. the TAU22 student:
    exp over 30 epochs to 1e-3, linear to 1e-5 at epoch 400, constant to epoch 600.
    """

    warmup: str = "none"
    warmup_epochs: float = 0.0
    decay: str = "constant"
    decay_end_epoch: float = 0.0
    min_lr: float = 0.0

    def __post_init__(self) -> None:
        if self.warmup not in WARMUPS:
            raise ValueError(f"schedule.warmup must be one of {', '.join(WARMUPS)}, got {self.warmup!r}")
        if self.decay not in DECAYS:
            raise ValueError(f"schedule.decay must be one of {', '.join(DECAYS)}, got {self.decay!r}")
        if self.warmup != "none" and self.warmup_epochs <= 0:
            raise ValueError("schedule.warmup needs schedule.warmup_epochs > 0")
        if self.decay != "constant" and self.decay_end_epoch < self.warmup_length:
            raise ValueError("schedule.decay_end_epoch must not come before the end of the warm-up")

    @property
    def warmup_length(self) -> float:
        return 0.0 if self.warmup == "none" else self.warmup_epochs

    def lr(self, peak: float, epoch: float) -> float:
        """The learning rate at a fractional epoch (0 = start of training)."""
        warmup_end = self.warmup_length
        if epoch < warmup_end:
            t = epoch / warmup_end
            return peak * (t if self.warmup == "linear" else math.exp(-5.0 * (1.0 - t) ** 2))
        if self.decay == "constant":
            return peak
        if epoch >= self.decay_end_epoch:
            return self.min_lr
        t = (epoch - warmup_end) / (self.decay_end_epoch - warmup_end)
        if self.decay == "linear":
            return peak + (self.min_lr - peak) * t
        return self.min_lr + (peak - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))


@dataclass(frozen=True)
class TrainSettings:
    """What the engine reads from a params section (`teacher.train` or `train`)."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 0.0
    optimizer: str = "adam"
    schedule: Schedule = field(default_factory=Schedule)
    seed: int = 0
    validate_every: int = 1  # epochs between validations; the last epoch always validates
    precision: str = "auto"  # auto | fp32 | bf16 | fp16, see resolve_precision
    compile: bool = False  # torch.compile the network for the training steps
    sync_bn: bool = False  # SyncBatchNorm across the processes of a multi-GPU run

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.validate_every < 1:
            raise ValueError(f"epochs, batch_size and validate_every must be >= 1, got {self.epochs}, "
                             f"{self.batch_size}, {self.validate_every}")

    @classmethod
    def from_params(cls, section: Mapping[str, Any], seed: int, name: str = "train") -> TrainSettings:
        """Settings from the params section `name` (`train` or `teacher.train`, checked against
        mobileast.schema by the stage); keys the engine does not use are left to the stage.
        A bad value raises ParamsError naming the section."""
        with params_errors(f"section '{name}'"):
            return cls(epochs=int(section["epochs"]), batch_size=int(section["batch_size"]),
                       lr=float(section["lr"]), weight_decay=float(section.get("weight_decay", 0.0)),
                       optimizer=section.get("optimizer", "adam"),
                       schedule=Schedule(**section.get("schedule", {})), seed=int(seed),
                       validate_every=int(section.get("validate_every", 1)),
                       precision=str(section.get("precision", "auto")), compile=bool(section.get("compile", False)),
                       sync_bn=bool(section.get("sync_bn", False)))

    def validates(self, epoch: int) -> bool:
        """Whether the epoch with 0-based index `epoch` ends with a validation."""
        return (epoch + 1) % self.validate_every == 0 or epoch + 1 == self.epochs

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """Adam (L2 weight decay) or AdamW (decoupled weight decay)."""
        return OPTIMIZERS[self.optimizer](model.parameters(), lr=self.lr, weight_decay=self.weight_decay)


@dataclass(frozen=True)
class Runtime:
    """Where this process trains: its device, rank and the number of processes."""

    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@contextmanager
def runtime(seed: int = 0) -> Iterator[Runtime]:
    """The training runtime: CUDA if available, the process group under torchrun.

    Seeds torch with `seed` so the model built next is initialised deterministically
    (DistributedDataParallel then copies rank 0's initial weights to all ranks).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world_size > 1:
        local_rank = int(os.environ["LOCAL_RANK"])
        if cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if cuda else "gloo")
        device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
        current = Runtime(device, dist.get_rank(), world_size)
    else:
        current = Runtime(torch.device("cuda" if cuda else "cpu"))
    torch.manual_seed(seed)
    try:
        yield current
    finally:
        if world_size > 1:
            dist.destroy_process_group()


class EpochSource(Protocol):
    """Training data as the engine reads it (mobileast.data.crops.RecordingCrops)."""

    def steps_per_epoch(self, batch_size: int) -> int: ...

    def epoch_batches(self, epoch: int, batch_size: int, rank: int, world_size: int) -> Iterator[Batch]: ...


# A step's logs may be floats or 0-dim tensors; tensors are summed on the device (no sync per step).
StepFn = Callable[[nn.Module, Batch, int, torch.Generator], tuple[torch.Tensor, Mapping[str, float | torch.Tensor]]]
ValidateFn = Callable[[nn.Module], Mapping[str, float]]


@dataclass(frozen=True)
class Outputs:
    """Files `fit` writes.

    model: the final checkpoint, written once, after the last epoch (the stage's DVC output).
    resume: the checkpoint written after every epoch, from which an interrupted run resumes;
    deleted when the run completes. Keep it out of DVC's declared outputs (see
    `resume_path`): DVC's run cache, which restores a stage run before instead of training
    again, refuses stages with `persist: true` outputs.
    best: the checkpoint of the best validated epoch. history: per-epoch rows as CSV.
    """

    model: Path
    resume: Path | None = None
    best: Path | None = None
    history: Path | None = None


RESUME_DIR = Path(".resume")  # git- and DVC-ignored, at the project root


def resume_path(stage: str) -> Path:
    """Where the training stage `stage` keeps its per-epoch checkpoint (RESUME_DIR/<stage>.pt)."""
    return RESUME_DIR / f"{stage}.pt"


@dataclass
class FitResult:
    """The per-epoch history rows and the best epoch (both on rank 0 only)."""

    history: list[dict[str, float]]
    best: dict[str, float] | None  # {"epoch": ..., <metric>: ...} of the best epoch


def classification_validator(source: ClipSource, frontend: nn.Module, batch_size: int,
                             rt: Runtime | torch.device, precision: str = "fp32") -> ValidateFn:
    """validate_fn giving cross-entropy `loss` and `accuracy` over a ClipSource.

    Under torchrun every process predicts its share of the batches (batch i on rank
    i % world_size) and the logits are gathered, so all ranks validate together and
    return the metrics of the whole source."""
    rt = rt if isinstance(rt, Runtime) else Runtime(rt)
    labels = torch.from_numpy(source.labels)

    def validate(model: nn.Module) -> dict[str, float]:
        logits = predict(model, frontend, source.batches(batch_size, rt.rank, rt.world_size), rt.device, precision)
        if rt.world_size > 1:
            parts: list[Any] = [None] * rt.world_size
            dist.all_gather_object(parts, logits)
            logits = _interleave([p.split(batch_size) for p in parts])
        return {"loss": nn.functional.cross_entropy(logits, labels).item(),
                "accuracy": (logits.argmax(1) == labels).float().mean().item()}

    return validate


def _interleave(shards: Sequence[Sequence[torch.Tensor]]) -> torch.Tensor:
    """Batches of rank r hold global batches r, r + world, ...: back in global order."""
    ordered = [shards[i % len(shards)][i // len(shards)] for i in range(sum(len(s) for s in shards))]
    return torch.cat(ordered)


def fit(model: nn.Module, step_fn: StepFn, data: EpochSource, settings: TrainSettings,
        outputs: Outputs, meta: Mapping[str, Any], rt: Runtime, *,
        validate_fn: ValidateFn | None = None, select: str = "val_accuracy", mode: str = "max",
        resume_key: Mapping[str, Any] | None = None, inputs: Sequence[Path] = ()) -> FitResult:
    """Train `model` for settings.epochs epochs, resuming from `outputs.resume` if it holds
    a run of the same settings, meta, resume_key and inputs, and write `outputs.model` at the end.

    meta: the checkpoint's model description (arch, config, features, classes).
    resume_key: anything else the run depends on (e.g. the stage's params); a
    checkpoint made with another value is not resumed. inputs: the data files or
    directories the run reads (`file_identity`); a checkpoint made before one of them
    changed (an upstream stage ran again) is not resumed. validate_fn gets the plain
    classifier in eval mode under no_grad, every settings.validate_every epochs and after
    the last; its keys are logged as `val_<key>` (absent from the rows of the other
    epochs, empty cells in the CSV), and the best checkpoint is chosen among the
    validated epochs by `select` (maximised, or minimised with mode="min").
    History rows (CSV, MLflow): epoch (completed), lr (at the epoch's start), train_<key>
    (epoch means of the step's loss and logs over all processes), val_<key>.
    """
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be max or min, got {mode}")
    if outputs.best is not None and validate_fn is None:
        raise ValueError("a best checkpoint needs a validate_fn")
    steps = data.steps_per_epoch(settings.batch_size)
    if steps == 0:
        raise ValueError(f"batch_size {settings.batch_size} exceeds the crops of one epoch")
    model = _with_sync_bn(model, settings, rt)
    model.to(rt.device)
    optimizer = settings.make_optimizer(model)
    precision = resolve_precision(settings.precision, rt.device)
    scaler = torch.amp.GradScaler(rt.device.type, enabled=precision == "fp16")
    fingerprint = _fingerprint(settings, meta, resume_key)  # also in the final model: its content only
    identity = file_identity(inputs)  # only in the resume checkpoint (mtimes: the model stays reproducible)
    state = _resume(outputs, fingerprint, identity, settings.epochs, model, optimizer, scaler, rt)
    net = DistributedDataParallel(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None) \
        if rt.world_size > 1 else model
    if settings.compile:
        net = torch.compile(net)
    for epoch in range(state.epoch, settings.epochs):
        row = {"epoch": epoch + 1, "lr": settings.schedule.lr(settings.lr, epoch),
               **_train_epoch(net, optimizer, scaler, step_fn, data, settings, epoch, steps, rt)}
        _sync_buffers(model, rt)
        validated = validate_fn is not None and settings.validates(epoch)
        if validated:  # every rank validates its share (classification_validator)
            row |= {f"val_{k}": float(v) for k, v in _validate(model, validate_fn).items()}
        if rt.is_main:
            state.record(row, select if validated else None, mode)
            _write_epoch(outputs, state, model, optimizer, scaler, meta, fingerprint, identity, settings)
            tracking.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch + 1)
            tqdm.write(" ".join(f"{k}={v:.5g}" for k, v in row.items()))
        if rt.world_size > 1:
            dist.barrier()  # ranks leave every epoch together, after its checkpoint is written
    if rt.is_main:
        _save(outputs.model, _checkpoint(state, model, optimizer, scaler, meta, fingerprint, settings))
        if outputs.resume is not None:
            outputs.resume.unlink(missing_ok=True)
    return FitResult(state.history, state.best)


def _with_sync_bn(model: nn.Module, settings: TrainSettings, rt: Runtime) -> nn.Module:
    """The model with SyncBatchNorm layers (same parameters, buffers and state_dict keys) when
    asked for in a multi-process run; PyTorch's SyncBatchNorm needs CUDA."""
    if not settings.sync_bn or rt.world_size == 1:
        return model
    if rt.device.type != "cuda":
        raise ValueError("sync_bn needs CUDA devices (PyTorch's SyncBatchNorm does not run on the CPU); "
                         "set it to false for CPU runs")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def _train_epoch(net: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, step_fn: StepFn,
                 data: EpochSource, settings: TrainSettings, epoch: int, steps: int, rt: Runtime) -> dict[str, float]:
    """One epoch of optimiser steps; returns `train_<key>` means of the step's loss and logs.

    Nothing here waits for the device: tensor logs are summed on it, float logs on the
    host, the next batch is gathered in a background thread (prefetch), and only the
    progress bar, when shown, reads the loss every PROGRESS_EVERY steps."""
    generator = _seed_epoch(settings.seed, epoch, rt)
    net.train()
    device_sums: dict[str, torch.Tensor] = {}
    host_sums: dict[str, float] = {}
    batches = tqdm(prefetch(data.epoch_batches(epoch, settings.batch_size, rt.rank, rt.world_size), rt.device),
                   total=steps, desc=f"epoch {epoch + 1}/{settings.epochs}", leave=False,
                   disable=None if rt.is_main else True)
    for step, batch in enumerate(batches):
        loss, logs = optimizer_step(net, optimizer, step_fn, batch, settings, epoch, epoch + step / steps, generator,
                                    scaler)
        for key, value in {"loss": loss, **logs}.items():
            if isinstance(value, torch.Tensor):
                device_sums[key] = device_sums.get(key, 0.0) + value.to(torch.float64)
            else:
                host_sums[key] = host_sums.get(key, 0.0) + float(value)
        if not batches.disable and step % PROGRESS_EVERY == 0:  # the postfix waits for the device
            batches.set_postfix(loss=f"{device_sums['loss'].item() / (step + 1):.4f}", refresh=False)
    return {f"train_{k}": v for k, v in _mean_over_ranks(device_sums, host_sums, steps, rt).items()}


def optimizer_step(net: nn.Module, optimizer: torch.optim.Optimizer, step_fn: StepFn, batch: Batch,
                   settings: TrainSettings, epoch: int, progress: float, generator: torch.Generator,
                   scaler: torch.amp.GradScaler | None = None) -> tuple[torch.Tensor, Mapping[str, float | torch.Tensor]]:
    """One training step as the engine runs it: learning rate for `progress` (fractional
    epochs done), `step_fn`, backward, optimizer step (through the fp16 GradScaler when
    enabled). Returns the detached loss and the logs."""
    for group in optimizer.param_groups:
        group["lr"] = settings.schedule.lr(settings.lr, progress)
    loss, logs = step_fn(net, batch, epoch, generator)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None and scaler.is_enabled():
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return loss.detach(), logs


@dataclass
class _State:
    """Progress carried in checkpoints: completed epochs, history, best epoch."""

    epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, float] | None = None
    improved: bool = False

    def record(self, row: dict[str, float], select: str | None, mode: str) -> None:
        """Append an epoch's row; with a `select` metric, track the best epoch."""
        self.epoch, self.history = int(row["epoch"]), self.history + [row]
        self.improved = select is not None and (
            self.best is None or (row[select] > self.best[select] if mode == "max" else row[select] < self.best[select]))
        if self.improved:
            self.best = {"epoch": row["epoch"], select: row[select]}


def _fingerprint(settings: TrainSettings, meta: Mapping[str, Any], key: Mapping[str, Any]) -> str:
    text = json.dumps({"settings": asdict(settings), "meta": meta, "key": key}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def file_identity(paths: Sequence[Path]) -> dict[str, tuple[int, int]]:
    """(size, modification time in ns) of every file in `paths` (files or directories, recursively).

    A cheap identity of a run's input data, a few large files per store (hashing them would
    take minutes on TAU22). Rewriting a file with the same bytes counts as a change: the
    resumable run then starts afresh, which costs time, never correctness.
    """
    files = sorted(f for p in paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file())
    return {str(f): (stat.st_size, stat.st_mtime_ns) for f in files for stat in [f.stat()]}


def _resume(outputs: Outputs, fingerprint: str, identity: Mapping[str, Any], epochs: int, model: nn.Module,
            optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, rt: Runtime) -> _State:
    """Load the resume checkpoint of the same run into model and optimizer, else start afresh.

    A checkpoint of all epochs (the final model was not written yet) resumes with no epoch left.
    """
    if outputs.resume is None or not outputs.resume.is_file():
        return _State()
    checkpoint = torch.load(outputs.resume, map_location=rt.device)
    if checkpoint.get("fingerprint") != fingerprint or checkpoint.get("inputs") != identity \
            or checkpoint["epoch"] > epochs:
        return _State()
    model.load_state_dict(checkpoint["state_dict"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    if checkpoint.get("grad_scaler"):
        scaler.load_state_dict(checkpoint["grad_scaler"])
    best = checkpoint["best"] if outputs.best is None or outputs.best.is_file() else None
    if rt.is_main:
        tqdm.write(f"resuming from {outputs.resume} after epoch {checkpoint['epoch']}")
    return _State(checkpoint["epoch"], checkpoint["history"], best)


def _seed_epoch(seed: int, epoch: int, rt: Runtime) -> torch.Generator:
    """Reseed the global torch RNG and return the step's generator, both from (seed, epoch, rank)."""
    global_seed, step_seed = np.random.SeedSequence([seed, epoch, rt.rank]).generate_state(2)
    torch.manual_seed(int(global_seed))
    return torch.Generator(device=rt.device).manual_seed(int(step_seed))


def _mean_over_ranks(device_sums: Mapping[str, torch.Tensor], host_sums: Mapping[str, float], steps: int,
                     rt: Runtime) -> dict[str, float]:
    """Per-step means of the step logs (float64 sums on the device or the host) over the
    epoch and all processes."""
    sums = {**{k: torch.tensor(v, dtype=torch.float64, device=rt.device) for k, v in host_sums.items()},
            **device_sums}
    keys = sorted(sums)
    totals = torch.stack([sums[k] for k in keys])
    if rt.world_size > 1:
        dist.all_reduce(totals)
    return {k: v / (steps * rt.world_size) for k, v in zip(keys, totals.tolist())}


def _sync_buffers(model: nn.Module, rt: Runtime) -> None:
    """Copy rank 0's buffers (BatchNorm statistics) to all ranks; parameters already agree."""
    if rt.world_size > 1:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def _validate(model: nn.Module, validate_fn: ValidateFn) -> Mapping[str, float]:
    model.eval()
    with torch.no_grad():
        metrics = validate_fn(model)
    model.train()
    return metrics


def _checkpoint(state: _State, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                meta: Mapping[str, Any], fingerprint: str, settings: TrainSettings) -> dict[str, Any]:
    """A checkpoint in the project contract (meta keys, state_dict) with the engine's state."""
    checkpoint = {**meta, "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
                  "epoch": state.epoch, "history": state.history, "best": state.best,
                  "settings": asdict(settings), "fingerprint": fingerprint}
    if scaler.is_enabled():
        checkpoint["grad_scaler"] = scaler.state_dict()
    return checkpoint


def _save(path: Path, checkpoint: Mapping[str, Any]) -> None:
    with atomic_output(path) as tmp:
        torch.save(checkpoint, tmp)


def _write_epoch(outputs: Outputs, state: _State, model: nn.Module, optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler, meta: Mapping[str, Any], fingerprint: str,
                 identity: Mapping[str, Any], settings: TrainSettings) -> None:
    """Write the resume checkpoint (with the inputs' identity), the best one if improved, and
    the history, each atomically."""
    checkpoint = _checkpoint(state, model, optimizer, scaler, meta, fingerprint, settings)
    if outputs.resume is not None:
        _save(outputs.resume, {**checkpoint, "inputs": identity})
    if outputs.best is not None and state.improved:
        _save(outputs.best, checkpoint)
    if outputs.history is not None:
        with atomic_output(outputs.history) as tmp:
            pd.DataFrame(state.history).to_csv(tmp, index=False)
