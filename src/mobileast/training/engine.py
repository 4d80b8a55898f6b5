"""The training engine shared by the teacher and the student stages: `fit`.

What one batch does is the stage's `step_fn(model, batch, epoch, generator) -> (loss,
logs)`, so the teacher plugs in cross-entropy with mixup and the student augmentation,
teacher-logit lookup and DKD (mobileast.training.supervised). The step owns the frontend
(LogMel or PaSST's own) because waveform augmentations come before it and spectrogram
augmentations after it; the frontend has no trained weights, so the engine optimises and
checkpoints the classifier only. What the stage does with each epoch's row (MLflow
metrics) or checkpoint it passes as callbacks: the engine writes only its own files.

- Determinism: the data plan depends on (seed, epoch), and the global torch RNG (e.g.
  dropout) and the step's generator are reseeded from (seed, epoch, rank) at the start
  of every epoch. Runs with the same settings are identical on CPU, and a run resumed
  from the checkpoint of epoch k ends with exactly the weights of an uninterrupted run.
- Learning rate: set before every optimiser step from `Schedule.lr` at the fractional
  epoch (epoch + step / steps_per_epoch), a pure function, so it needs no saved state.
- Processes: see mobileast.training.distributed; checkpoints: mobileast.training.checkpoint.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from mobileast.data.crops import Batch, ClipSource
from mobileast.deploy import ModelMeta
from mobileast.errors import InputError
from mobileast.inference import predict, prefetch, resolve_precision
from mobileast.training.checkpoint import Checkpoints, Outputs
from mobileast.training.distributed import Runtime, gather_batches, mean_over_ranks, sync_buffers, with_sync_bn
from mobileast.training.settings import TrainSettings

PROGRESS_EVERY = 10  # steps between progress-bar loss updates (each waits for the device)


class EpochSource(Protocol):
    """Training data as the engine reads it (mobileast.data.crops.RecordingCrops)."""

    def steps_per_epoch(self, batch_size: int) -> int: ...

    def epoch_batches(self, epoch: int, batch_size: int, rank: int, world_size: int) -> Iterator[Batch]: ...


# A step's logs may be floats or 0-dim tensors; tensors are summed on the device (no sync per step).
StepFn = Callable[[nn.Module, Batch, int, torch.Generator], tuple[torch.Tensor, Mapping[str, float | torch.Tensor]]]
ValidateFn = Callable[[nn.Module], Mapping[str, float]]
# on_epoch(metrics, epoch): an epoch's history row without its `epoch` key, and the number of
# epochs completed; mobileast.tracking.log_metrics(metrics, step) has this signature.
EpochCallback = Callable[[Mapping[str, float], int], Any]
CheckpointCallback = Callable[[Path], Any]  # on_checkpoint(path): a checkpoint file was written


DIVERGED = "the run diverged: lower the learning rate or check the loss weights and the data"


class NonFiniteLoss(InputError):
    """The training loss, or the model's weights or buffers, became NaN or infinite: the run
    diverged (the learning rate, the loss weights or the data need a look); the message
    names the epoch (and the step of a loss)."""


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
        logits = gather_batches(logits, batch_size, rt)
        return {"loss": nn.functional.cross_entropy(logits, labels).item(),
                "accuracy": (logits.argmax(1) == labels).float().mean().item()}

    return validate


def fit(model: nn.Module, step_fn: StepFn, data: EpochSource, settings: TrainSettings,
        outputs: Outputs, meta: ModelMeta, rt: Runtime, *,
        validate_fn: ValidateFn | None = None, resume_key: Mapping[str, Any] | None = None,
        inputs: Sequence[Path] = (), code: Sequence[Path] = (), on_epoch: EpochCallback | None = None,
        on_checkpoint: CheckpointCallback | None = None) -> list[dict[str, float]]:
    """Train `model` for settings.epochs epochs, resuming from `outputs.resume` if it holds
    a run of the same settings, meta, resume_key, inputs and code
    (mobileast.training.checkpoint), and write `outputs.history` and `outputs.model` at the
    end; the caller deletes the resume checkpoint once its own last output is written
    (`outputs.discard_resume()`). Returns the history rows (on rank 0; the other ranks
    return the rows of a resumed run only).

    meta: the checkpoint's model description (arch, config, features, classes).
    validate_fn gets the plain classifier in eval mode under no_grad, every
    settings.validate_every epochs and after the last; its keys are logged as `val_<key>`
    (absent from the rows of the other epochs, empty cells in the CSV).
    History rows: epoch (completed), lr (at the epoch's start), train_<key> (epoch means of
    the step's loss and logs over all processes), val_<key>.
    Callbacks, on rank 0 only: on_epoch after each epoch's checkpoint and history are
    written (see EpochCallback); on_checkpoint after each resume checkpoint and the final
    model are written.
    A non-finite training loss, or weights or buffers (BatchNorm statistics) that are not
    finite after an epoch (a loss can stay finite while they overflow), raise
    NonFiniteLoss at the end of its epoch, before that epoch is checkpointed, so the
    resume checkpoint stays the last good epoch's.
    """
    steps = data.steps_per_epoch(settings.batch_size)
    if steps == 0:
        raise ValueError(f"batch_size {settings.batch_size} exceeds the crops of one epoch")
    model = with_sync_bn(model, settings.sync_bn, rt)
    model.to(rt.device)
    optimizer = settings.make_optimizer(model)
    precision = resolve_precision(settings.precision, rt.device)
    scaler = torch.amp.GradScaler(rt.device.type, enabled=precision == "fp16")
    checkpoints = Checkpoints(outputs, settings, meta, resume_key, inputs, code)
    state = checkpoints.resume(model, optimizer, scaler, rt)
    net = DistributedDataParallel(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None) \
        if rt.world_size > 1 else model
    if settings.compile:
        net = torch.compile(net)
    for epoch in range(state.epoch, settings.epochs):
        row = {"epoch": epoch + 1, "lr": settings.schedule.lr(settings.lr, epoch),
               **_train_epoch(net, optimizer, scaler, step_fn, data, settings, epoch, steps, rt, outputs.resume)}
        sync_buffers(model, rt)
        check_finite_state(model, epoch, outputs.resume)
        if validate_fn is not None and settings.validates(epoch):  # every rank validates its share
            row |= {f"val_{k}": float(v) for k, v in _validate(model, validate_fn).items()}
        if rt.is_main:
            state.record(row)
            _notify(on_checkpoint, checkpoints.save_epoch(state, model, optimizer, scaler))
            if on_epoch is not None:
                on_epoch({k: v for k, v in row.items() if k != "epoch"}, epoch + 1)
            tqdm.write(" ".join(f"{k}={v:.5g}" for k, v in row.items()))
        if rt.world_size > 1:
            dist.barrier()  # ranks leave every epoch together, after its checkpoint is written
    if rt.is_main:
        _notify(on_checkpoint, checkpoints.save_outputs(state, model, optimizer, scaler))
    return state.history


def _notify(callback: CheckpointCallback | None, path: Path | None) -> None:
    if callback is not None and path is not None:
        callback(path)


def _train_epoch(net: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, step_fn: StepFn,
                 data: EpochSource, settings: TrainSettings, epoch: int, steps: int, rt: Runtime,
                 resume: Path | None = None) -> dict[str, float]:
    """One epoch of optimiser steps; returns `train_<key>` means of the step's loss and logs.

    Nothing here waits for the device: tensor logs are summed on it, float logs on the
    host, the first step with a non-finite loss is noted on it (raised as NonFiniteLoss
    after the epoch, naming it; `resume` is named as the checkpoint kept), the next batch
    is gathered in a background thread (prefetch), and only the progress bar, when shown,
    reads the loss every PROGRESS_EVERY steps."""
    generator = _seed_epoch(settings.seed, epoch, rt)
    net.train()
    device_sums: dict[str, torch.Tensor] = {}
    host_sums: dict[str, float] = {}
    first_bad = torch.tensor(steps, device=rt.device)  # index of the first non-finite loss; steps: none
    batches = tqdm(prefetch(data.epoch_batches(epoch, settings.batch_size, rt.rank, rt.world_size), rt.device),
                   total=steps, desc=f"epoch {epoch + 1}/{settings.epochs}", leave=False,
                   disable=None if rt.is_main else True)
    for step, batch in enumerate(batches):
        loss, logs = optimizer_step(net, optimizer, step_fn, batch, settings, epoch, epoch + step / steps, generator,
                                    scaler)
        first_bad = torch.where(torch.isfinite(loss) | (first_bad < steps), first_bad, step)
        for key, value in {"loss": loss, **logs}.items():
            if isinstance(value, torch.Tensor):
                device_sums[key] = device_sums.get(key, 0.0) + value.to(torch.float64)
            else:
                host_sums[key] = host_sums.get(key, 0.0) + float(value)
        if not batches.disable and step % PROGRESS_EVERY == 0:  # the postfix waits for the device
            batches.set_postfix(loss=f"{device_sums['loss'].item() / (step + 1):.4f}", refresh=False)
    means = mean_over_ranks(device_sums, host_sums, steps, rt)
    if rt.world_size > 1:
        dist.all_reduce(first_bad, dist.ReduceOp.MIN)
    if (bad := int(first_bad)) < steps:
        raise NonFiniteLoss(f"epoch {epoch + 1}, step {bad + 1} of {steps}: the training loss is not finite "
                            f"({DIVERGED}); {_kept(epoch, resume)}")
    return {f"train_{k}": v for k, v in means.items()}


def check_finite_state(model: nn.Module, epoch: int, resume: Path | None = None) -> None:
    """Raise NonFiniteLoss naming the tensors of the model's state (weights and buffers) that
    hold NaN or infinite values after epoch `epoch` (0-based); `resume` as in _train_epoch."""
    state = {name: t for name, t in model.state_dict().items() if t.is_floating_point()}
    if not state or bool(torch.stack([torch.isfinite(t).all() for t in state.values()]).all()):
        return
    bad = [name for name, t in state.items() if not torch.isfinite(t).all()]
    raise NonFiniteLoss(f"epoch {epoch + 1}: {', '.join(bad)} of the model are not finite after the epoch "
                        f"({DIVERGED}); {_kept(epoch, resume)}")


def _kept(epoch: int, resume: Path | None) -> str:
    """What a run stopped in `epoch` (0-based) keeps."""
    return f"the checkpoint of epoch {epoch} is kept in {resume}" if resume is not None and epoch > 0 else \
        "nothing of this run was checkpointed"


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


def _seed_epoch(seed: int, epoch: int, rt: Runtime) -> torch.Generator:
    """Reseed the global torch RNG and return the step's generator, both from (seed, epoch, rank)."""
    global_seed, step_seed = np.random.SeedSequence([seed, epoch, rt.rank]).generate_state(2)
    torch.manual_seed(int(global_seed))
    return torch.Generator(device=rt.device).manual_seed(int(step_seed))


def _validate(model: nn.Module, validate_fn: ValidateFn) -> Mapping[str, float]:
    model.eval()
    with torch.no_grad():
        metrics = validate_fn(model)
    model.train()
    return metrics
