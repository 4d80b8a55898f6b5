"""What the teacher_train and student_train stages share on top of the engine: one
training step and the set-up of a run.

- One step serves teacher and student: waveform augmentation -> frontend -> spectrogram
  augmentation -> classifier -> loss (mobileast.distill.DistillLoss; the teacher uses
  method "none", i.e. cross-entropy, mixed when mixup/CutMix mix a batch).
- The evaluate fold is the validation source (the DCASE development setup has no other
  held-out fold); it is logged per epoch for the learning curves, but the final model is
  the LAST epoch's, never one picked on that fold.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from mobileast.augment import Augmenter
from mobileast.data.crops import Batch, RecordingCrops, evaluate_clips
from mobileast.deploy import ModelMeta, frontend_for
from mobileast.distill import DistillLoss
from mobileast.errors import ParamsError, params_errors
from mobileast.inference import autocast, resolve_precision
from mobileast.training.checkpoint import Outputs
from mobileast.training.distributed import Runtime
from mobileast.training.engine import EpochCallback, StepFn, classification_validator, fit
from mobileast.training.settings import TrainSettings


def supervised_step(frontend: nn.Module, augmenter: Augmenter, loss_fn: DistillLoss,
                    teacher_logits: torch.Tensor | None = None, drop_logs: Sequence[str] = (),
                    precision: str = "fp32") -> StepFn:
    """The engine's step: augment, frontend, classify, (distillation) loss.

    teacher_logits: the whole logits array (rows = grid crops), looked up by batch.row.
    drop_logs: loss logs left out of the history (the teacher has no distillation term).
    precision (resolved, mobileast.inference.resolve_precision): the classifier runs under
    autocast of it; augmentation, frontend and the loss always in fp32.
    """
    def step(net: nn.Module, batch: Batch, epoch: int, gen: torch.Generator):
        wave, mix = augmenter.wave(batch.wave, gen, batch.device)
        spec, mix = augmenter.spec(frontend(wave), gen, mix)
        with autocast(precision, spec.device):
            logits = net(spec)
        logits = logits.float()
        z_t = None if teacher_logits is None else teacher_logits[batch.row].float()
        mixed = () if mix is None else (None if z_t is None else z_t[mix.perm], batch.label[mix.perm], mix.lam)
        loss, logs = loss_fn(logits, z_t, batch.label, *mixed, epoch=epoch + 1)
        return loss, {k: v for k, v in logs.items() if k != "loss" and k not in drop_logs}

    return step


def rate_key(meta: ModelMeta) -> str:
    """What sets a model's input sample rate, for error messages."""
    return "the PaSST teacher's input rate" if meta.takes_waveform else "features.sample_rate"


def section(params: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """The params section of a dotted key."""
    for name in key.split("."):
        params = params[name]
    return params


def train_supervised(model: nn.Module, meta: ModelMeta, prefix: str, params: Mapping[str, Any],
                     loss_fn: DistillLoss, resampled: Path, data: RecordingCrops, outputs: Outputs, rt: Runtime,
                     inputs: Sequence[Path], code: Sequence[Path] = (), teacher_logits: torch.Tensor | None = None,
                     drop_logs: Sequence[str] = (), on_epoch: EpochCallback | None = None) -> None:
    """Run the engine on the train crops `data`, validating on the evaluate clips, with the
    params sections `<prefix>train` and `<prefix>augment` ("" for the student, "teacher.");
    `inputs`: the stage's data directories and `code` its code files (a resume checkpoint
    made before either changed is not resumed); `params` (all the stage's params) is the
    resume key; on_epoch: see mobileast.training.engine.fit."""
    train = section(params, f"{prefix}train")
    settings = TrainSettings.from_params(train, params["seed"], f"{prefix}train")
    if data.steps_per_epoch(settings.batch_size) == 0:
        raise ParamsError(f"{prefix}train.batch_size {settings.batch_size} is larger than the crops of one epoch "
                          f"({len(data.table)} train recordings x {prefix}train.crops_per_recording "
                          f"{data.crops_per_recording}): lower it, or raise crops_per_recording")
    precision = resolve_precision(settings.precision, rt.device)
    sample_rate = meta.sample_rate
    with params_errors("section 'teacher.passt'" if meta.takes_waveform else "section 'features'"):
        frontend = frontend_for(meta).to(rt.device)
    with params_errors(f"section '{prefix}augment'"):
        augmenter = Augmenter.from_params(section(params, f"{prefix}augment"), sample_rate)
    step = supervised_step(frontend, augmenter, loss_fn,
                           None if teacher_logits is None else teacher_logits.to(rt.device), drop_logs, precision)
    validate = classification_validator(evaluate_clips(resampled, sample_rate, rate_key(meta)), frontend,
                                        int(train["batch_size"]), rt, precision)
    fit(model, step, data, settings, outputs, meta, rt, validate_fn=validate, resume_key=params,
        inputs=(*inputs, *augmenter.inputs), code=code, on_epoch=on_epoch)
