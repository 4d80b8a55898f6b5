"""What the teacher_train, teacher_logits and student_train stages do, on top of the
training engine (mobileast.train). Stage scripts only resolve paths and call these.

Choices worth knowing:
- One training step serves teacher and student: waveform augmentation -> frontend ->
  spectrogram augmentation -> classifier -> loss (mobileast.distill.DistillLoss; the
  teacher uses method "none", i.e. cross-entropy, mixed when mixup/CutMix mix a batch).
- The evaluate fold is the validation source (the DCASE development setup has no other
  held-out fold); it is logged per epoch for the learning curves, but the final model is
  the LAST epoch's, never one picked on that fold.
- Student crops come from the teacher-logit grid (RecordingCrops with hop logits.hop_s), so
  the teacher logits of a crop are one array lookup: teacher_logits[batch.row].
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from mobileast import tracking
from mobileast.augment import Augmenter
from mobileast.config import SCENES, atomic_output
from mobileast.data.crops import Batch, ClipSource, RecordingCrops
from mobileast.deploy import frontend_for, load_checkpoint_model
from mobileast.distill import DistillLoss
from mobileast.metrics import evaluate_predictions
from mobileast.models import build_preset, build_student, model_spec
from mobileast.train import (Outputs, Runtime, StepFn, TrainSettings, classification_validator, fit,
                             predict, runtime)

SPEC_AUGMENTS = ("mixstyle", "cutmix", "masking")


def build_teacher(teacher: Mapping[str, Any], features: Mapping[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    """The teacher named by params' `teacher:` section and its checkpoint meta.

    `cnn`: the demo teacher preset (fields in `teacher.cnn.custom` replaced) on the
    student's log-mel features. `passt`: PaSST with
    the AudioSet weights from the local file `teacher.passt.checkpoint`; it takes the
    waveform and computes its own features.
    """
    if teacher["arch"] == "cnn":
        model = build_preset(teacher["cnn"]["preset"], **dict(teacher["cnn"].get("custom") or {}))
        meta_features, kind = dict(features), "logmel"
    elif teacher["arch"] == "passt":
        from mobileast.models.passt import passt_from_checkpoint

        cfg = dict(teacher["passt"])
        model = passt_from_checkpoint(cfg.pop("checkpoint"), n_classes=len(SCENES), **cfg)
        meta_features, kind = {"sample_rate": model.cfg.sample_rate}, "waveform"
    else:
        raise ValueError(f"teacher.arch must be cnn or passt, got {teacher['arch']!r}")
    arch, config = model_spec(model)
    return model, {"arch": arch, "config": config, "features": meta_features,
                   "classes": list(SCENES), "input": kind}


def supervised_step(frontend: nn.Module, augmenter: Augmenter, loss_fn: DistillLoss,
                    teacher_logits: torch.Tensor | None = None, drop_logs: Sequence[str] = ()) -> StepFn:
    """The engine's step: augment, frontend, classify, (distillation) loss.

    teacher_logits: the whole logits array (rows = grid crops), looked up by batch.row.
    drop_logs: loss logs left out of the history (the teacher has no distillation term).
    """
    def step(net: nn.Module, batch: Batch, epoch: int, gen: torch.Generator):
        wave, mix = augmenter.wave(batch.wave, gen)
        spec, mix = augmenter.spec(frontend(wave), gen, mix)
        logits = net(spec)
        z_t = None if teacher_logits is None else teacher_logits[batch.row]
        mixed = () if mix is None else (None if z_t is None else z_t[mix.perm], batch.label[mix.perm], mix.lam)
        loss, logs = loss_fn(logits, z_t, batch.label, *mixed, epoch=epoch + 1)
        return loss, {k: v for k, v in logs.items() if k != "loss" and k not in drop_logs}

    return step


def _train(stage: str, model: nn.Module, meta: dict[str, Any], section: Mapping[str, Any],
           params: Mapping[str, Any], augment: Mapping[str, Any], loss_fn: DistillLoss, recordings: Path,
           resampled: Path, crop_hop_s: float, outputs: Outputs, rt: Runtime,
           teacher_logits: torch.Tensor | None = None, drop_logs: Sequence[str] = ()) -> None:
    """Run the engine on the train recordings, validating on the evaluate clips."""
    seed = params["seed"]
    sample_rate = int(meta["features"]["sample_rate"])
    data = RecordingCrops(recordings, "train", sample_rate, round(crop_hop_s * sample_rate),
                          int(section["crops_per_recording"]), seed)
    if teacher_logits is not None and len(teacher_logits) != data.n_rows:
        raise ValueError(f"teacher logits have {len(teacher_logits)} rows but the crop grid of "
                         f"{recordings} has {data.n_rows}: re-run teacher_logits with the same logits.hop_s")
    frontend = frontend_for(meta).to(rt.device)
    augmenter = Augmenter.from_params(augment, sample_rate)
    step = supervised_step(frontend, augmenter, loss_fn,
                           None if teacher_logits is None else teacher_logits.to(rt.device), drop_logs)
    validate = classification_validator(ClipSource(resampled, "evaluate"), frontend,
                                        int(section["batch_size"]), rt.device)
    with tracking.start_run(stage, params):
        fit(model, step, data, TrainSettings.from_params(section, seed), outputs, meta, rt,
            validate_fn=validate, resume_key=params)


def train_teacher(params: Mapping[str, Any], recordings: Path, resampled: Path, outputs: Outputs) -> None:
    """Stage teacher_train: train (or fine-tune) the teacher with cross-entropy.
    `params`: exactly the keys the stage declares in dvc.yaml."""
    teacher = params["teacher"]
    augment = teacher["augment"]
    if teacher["arch"] == "passt" and any(augment[name]["enabled"] for name in SPEC_AUGMENTS):
        raise ValueError(f"teacher.augment: PaSST applies its own SpecAugment; disable {', '.join(SPEC_AUGMENTS)}")
    with runtime(params["seed"]) as rt:
        model, meta = build_teacher(teacher, params["features"])
        _train("teacher_train", model, meta, teacher["train"], params, augment, DistillLoss(method="none"),
               recordings, resampled, teacher["train"]["crop_hop_s"], outputs, rt, drop_logs=("kd",))


def train_student(params: Mapping[str, Any], recordings: Path, resampled: Path, logits_dir: Path,
                  outputs: Outputs) -> None:
    """Stage student_train: MobileAST_Light with DKD (or KD, or CE) from the teacher logits.
    `params`: exactly the keys the stage declares in dvc.yaml."""
    loss_fn = DistillLoss.from_params(params)
    teacher_logits = None
    if loss_fn.method != "none":
        teacher_logits = torch.from_numpy(np.load(logits_dir / "train.npy"))
    with runtime(params["seed"]) as rt:
        model = build_student(params["student"])
        arch, config = model_spec(model)
        meta = {"arch": arch, "config": config, "features": dict(params["features"]),
                "classes": list(SCENES), "input": "logmel"}
        _train("student_train", model, meta, params["train"], params, params["augment"], loss_fn,
               recordings, resampled, params["logits"]["hop_s"], outputs, rt, teacher_logits)


def load_teachers(checkpoints: Sequence[Path], device: torch.device) -> list[tuple[nn.Module, nn.Module]]:
    """(classifier, frontend) in eval mode for every teacher checkpoint of the ensemble."""
    teachers = []
    for path in checkpoints:
        model, meta = load_checkpoint_model(path)
        teachers.append((model.to(device).eval(), frontend_for(meta).to(device)))
    return teachers


def ensemble_logits(teachers: Sequence[tuple[nn.Module, nn.Module]], batches_fn, device: torch.device) -> np.ndarray:
    """Mean logits of the teachers over the batches that `batches_fn()` yields, float32."""
    total = sum(predict(model, frontend, batches_fn(), device) for model, frontend in teachers)
    return (total / len(teachers)).numpy().astype(np.float32)


def dump_teacher_logits(params: Mapping[str, Any], checkpoints: Sequence[Path], recordings: Path,
                        resampled: Path, out_dir: Path) -> dict[str, Any]:
    """Stage teacher_logits: raw logits of every grid crop of the train recordings and of
    every evaluate clip (ensemble mean over `checkpoints`); returns the teacher's
    evaluate-fold metrics."""
    logits_params = params["logits"]
    batch_size = int(logits_params["batch_size"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    teachers = load_teachers(checkpoints, device)
    sample_rate = int(params["data"]["sample_rate"])
    crops = RecordingCrops(recordings, "train", sample_rate, round(logits_params["hop_s"] * sample_rate))
    clips = ClipSource(resampled, "evaluate")
    train = ensemble_logits(teachers, lambda: crops.grid_batches(batch_size), device)
    evaluate = ensemble_logits(teachers, lambda: clips.batches(batch_size), device)
    with atomic_output(out_dir) as tmp:
        tmp.mkdir()
        np.save(tmp / "train.npy", train)
        np.save(tmp / "train_index.npy", crops.row_offsets)
        np.save(tmp / "evaluate.npy", evaluate)
    train_devices = sorted(set(crops.table["device"]))
    return evaluate_predictions(evaluate, clips.labels, clips.table["device"].to_numpy(), train_devices, list(SCENES))
