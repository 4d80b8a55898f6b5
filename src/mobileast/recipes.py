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
  the teacher logits of a crop are one array lookup: teacher_logits[batch.row]. The dump
  saves its grid (train_index.npy) and the student checks it equals its own.
- Params that must agree are checked before any work: the stores' clip length against
  features.sample_rate / data.sample_rate, and the crop-grid hops against the clip length.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from mobileast import tracking
from mobileast.augment import Augmenter
from mobileast.errors import ParamsError, params_errors
from mobileast.files import atomic_output
from mobileast.labels import SCENES
from mobileast.progress import progress
from mobileast.data.crops import Batch, RecordingCrops, evaluate_clips, train_crops
from mobileast.deploy import ModelMeta, frontend_for, load_checkpoint_model
from mobileast.distill import DistillLoss
from mobileast.metrics import evaluate_predictions
from mobileast.models import build_preset, build_student, model_spec
from mobileast.models.cnn import PRESETS as CNN_PRESETS
from mobileast.inference import autocast, predict, resolve_precision
from mobileast.train import Outputs, Runtime, StepFn, TrainSettings, classification_validator, fit, runtime

SPEC_AUGMENTS = ("mixstyle", "cutmix", "masking")


def build_teacher(teacher: Mapping[str, Any], features: Mapping[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    """The teacher named by params' `teacher:` section and its checkpoint meta.

    `cnn`: the demo teacher preset (fields in `teacher.cnn.custom` replaced) on the
    student's log-mel features. `passt`: PaSST with
    the AudioSet weights from the local file `teacher.passt.checkpoint`; it takes the
    waveform and computes its own features.
    """
    if teacher["arch"] == "cnn":
        cnn = teacher["cnn"]
        if cnn["preset"] not in CNN_PRESETS:
            raise ParamsError(f"teacher.cnn.preset must be one of {', '.join(CNN_PRESETS)}, got {cnn['preset']!r}")
        with params_errors(f"teacher.cnn (preset {cnn['preset']}, custom {dict(cnn.get('custom') or {})})"):
            model = build_preset(cnn["preset"], **dict(cnn.get("custom") or {}))
        meta_features, kind = dict(features), "logmel"
    elif teacher["arch"] == "passt":
        from mobileast.models.passt import passt_from_checkpoint

        cfg = dict(teacher["passt"])
        with params_errors("section 'teacher.passt'"):
            model = passt_from_checkpoint(cfg.pop("checkpoint"), n_classes=len(SCENES), **cfg)
        meta_features, kind = {"sample_rate": model.cfg.sample_rate}, "waveform"
    else:
        raise ParamsError(f"teacher.arch must be cnn or passt, got {teacher['arch']!r}")
    arch, config = model_spec(model)
    return model, {"arch": arch, "config": config, "features": meta_features,
                   "classes": list(SCENES), "input": kind}


def supervised_step(frontend: nn.Module, augmenter: Augmenter, loss_fn: DistillLoss,
                    teacher_logits: torch.Tensor | None = None, drop_logs: Sequence[str] = (),
                    precision: str = "fp32") -> StepFn:
    """The engine's step: augment, frontend, classify, (distillation) loss.

    teacher_logits: the whole logits array (rows = grid crops), looked up by batch.row.
    drop_logs: loss logs left out of the history (the teacher has no distillation term).
    precision (resolved, mobileast.train.resolve_precision): the classifier runs under
    autocast of it; augmentation, frontend and the loss always in fp32.
    """
    def step(net: nn.Module, batch: Batch, epoch: int, gen: torch.Generator):
        wave, mix = augmenter.wave(batch.wave, gen)
        spec, mix = augmenter.spec(frontend(wave), gen, mix)
        with autocast(precision, spec.device):
            logits = net(spec)
        logits = logits.float()
        z_t = None if teacher_logits is None else teacher_logits[batch.row].float()
        mixed = () if mix is None else (None if z_t is None else z_t[mix.perm], batch.label[mix.perm], mix.lam)
        loss, logs = loss_fn(logits, z_t, batch.label, *mixed, epoch=epoch + 1)
        return loss, {k: v for k, v in logs.items() if k != "loss" and k not in drop_logs}

    return step


def _rate_key(meta: Mapping[str, Any]) -> str:
    """What sets a model's input sample rate, for error messages."""
    return "features.sample_rate" if meta["input"] == "logmel" else "the PaSST teacher's input rate"


def _train(stage: str, model: nn.Module, meta: dict[str, Any], prefix: str, params: Mapping[str, Any],
           loss_fn: DistillLoss, resampled: Path, data: RecordingCrops, outputs: Outputs, rt: Runtime,
           inputs: Sequence[Path], teacher_logits: torch.Tensor | None = None, drop_logs: Sequence[str] = ()) -> None:
    """Run the engine on the train crops `data`, validating on the evaluate clips, with the
    params sections `<prefix>train` and `<prefix>augment` ("" for the student, "teacher.");
    `inputs`: the stage's data directories (a resume checkpoint made before they changed is
    not resumed)."""
    section = _section(params, f"{prefix}train")
    settings = TrainSettings.from_params(section, params["seed"], f"{prefix}train")
    steps = data.steps_per_epoch(settings.batch_size)
    if steps == 0:
        raise ParamsError(f"{prefix}train.batch_size {settings.batch_size} is larger than the crops of one epoch "
                          f"({len(data.table)} train recordings x {prefix}train.crops_per_recording "
                          f"{data.crops_per_recording}): lower it, or raise crops_per_recording")
    precision = resolve_precision(settings.precision, rt.device)
    sample_rate = int(meta["features"]["sample_rate"])
    with params_errors("section 'features'" if meta["input"] == "logmel" else "section 'teacher.passt'"):
        frontend = frontend_for(ModelMeta.from_dict(meta)).to(rt.device)
    with params_errors(f"section '{prefix}augment'"):
        augmenter = Augmenter.from_params(_section(params, f"{prefix}augment"), sample_rate)
    step = supervised_step(frontend, augmenter, loss_fn,
                           None if teacher_logits is None else teacher_logits.to(rt.device), drop_logs, precision)
    validate = classification_validator(evaluate_clips(resampled, sample_rate, _rate_key(meta)), frontend,
                                        int(section["batch_size"]), rt, precision)
    with tracking.start_run(stage, params):
        fit(model, step, data, settings, outputs, meta, rt, validate_fn=validate, resume_key=params, inputs=inputs)


def _section(params: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """The params section of a dotted key."""
    for name in key.split("."):
        params = params[name]
    return params


def train_teacher(params: Mapping[str, Any], recordings: Path, resampled: Path, outputs: Outputs) -> None:
    """Stage teacher_train: train (or fine-tune) the teacher with cross-entropy.
    `params`: exactly the keys the stage declares in dvc.yaml."""
    teacher = params["teacher"]
    augment, section = teacher["augment"], teacher["train"]
    if teacher["arch"] == "passt" and any(augment[name]["enabled"] for name in SPEC_AUGMENTS):
        raise ParamsError(f"teacher.augment: PaSST applies its own SpecAugment; disable {', '.join(SPEC_AUGMENTS)}")
    with runtime(params["seed"]) as rt:
        model, meta = build_teacher(teacher, params["features"])
        rate = int(meta["features"]["sample_rate"])
        data = train_crops(recordings, resampled, rate, section["crop_hop_s"], "teacher.train.crop_hop_s",
                           _rate_key(meta), int(section["crops_per_recording"]), params["seed"], teacher["split"])
        _train("teacher_train", model, meta, "teacher.", params, DistillLoss(method="none"),
               resampled, data, outputs, rt, (recordings, resampled), drop_logs=("kd",))


def load_logits(logits_dir: Path, crops: RecordingCrops) -> torch.Tensor:
    """The dumped train logits, checked to be those of exactly this crop grid (same
    recordings, same crop starts), so that row r is the teacher's output on crop r."""
    grid = np.load(logits_dir / "train_index.npy")
    if not np.array_equal(grid, crops.grid()):
        raise ParamsError(f"{logits_dir}: the teacher logits were dumped on another crop grid "
                          f"({len(grid)} crops) than the student's ({crops.n_rows} crops of these recordings "
                          "at logits.hop_s): re-run the teacher_logits stage (dvc repro teacher_logits)")
    return torch.from_numpy(np.load(logits_dir / "train.npy"))


def train_student(params: Mapping[str, Any], recordings: Path, resampled: Path, logits_dir: Path,
                  outputs: Outputs) -> None:
    """Stage student_train: MobileAST_Light with DKD (or KD, or CE) from the teacher logits.
    `params`: exactly the keys the stage declares in dvc.yaml."""
    with params_errors("sections 'distill' and 'dkd'"):
        loss_fn = DistillLoss.from_params(params)
    features, section = params["features"], params["train"]
    data = train_crops(recordings, resampled, int(features["sample_rate"]), params["logits"]["hop_s"],
                       "logits.hop_s", "features.sample_rate", int(section["crops_per_recording"]), params["seed"],
                       params["data"]["split"])
    teacher_logits = None if loss_fn.method == "none" else load_logits(logits_dir, data)
    with runtime(params["seed"]) as rt:
        model = build_student(params["student"], features)
        arch, config = model_spec(model)
        meta = {"arch": arch, "config": config, "features": dict(features), "classes": list(SCENES),
                "input": "logmel", "params": dict(params)}  # what it was trained with, for `submit`
        _train("student_train", model, meta, "", params, loss_fn, resampled, data, outputs, rt,
               (recordings, resampled, logits_dir), teacher_logits)


def load_teachers(checkpoints: Sequence[Path], device: torch.device,
                  sample_rate: int) -> list[tuple[nn.Module, nn.Module]]:
    """(classifier, frontend) in eval mode for every teacher checkpoint of the ensemble, each
    checked to take audio at `sample_rate` (data.sample_rate, the stores' rate)."""
    teachers = []
    for path in checkpoints:
        model, meta = load_checkpoint_model(path)
        rate = meta.sample_rate
        if rate != sample_rate:
            raise ParamsError(f"{path}: this teacher takes {rate} Hz audio, but data.sample_rate (the stores' rate) "
                              f"is {sample_rate} Hz: resample the data at {rate} Hz or leave the checkpoint out "
                              "of teacher.ensemble")
        teachers.append((model.to(device).eval(), frontend_for(meta).to(device)))
    return teachers


def ensemble_logits(teachers: Sequence[tuple[nn.Module, nn.Module]], batches_fn, n_batches: int,
                    device: torch.device, desc: str, precision: str = "fp32") -> np.ndarray:
    """Mean logits of the teachers over the batches that `batches_fn()` yields, float32."""
    total = 0
    for i, (model, frontend) in enumerate(teachers, 1):
        batches = progress(batches_fn(), total=n_batches, desc=f"{desc} (teacher {i}/{len(teachers)})", unit="batch")
        total = total + predict(model, frontend, batches, device, precision)
    return (total / len(teachers)).numpy().astype(np.float32)


def ensemble_checkpoints(main: Path, ensemble: Sequence[str | Path], ensemble_dir: Path) -> list[Path]:
    """The teacher checkpoints: `main`, then `teacher.ensemble`, each of which must lie in
    `ensemble_dir` (a DVC dependency of the stage, so the logits follow their content)."""
    extra = [Path(p) for p in ensemble]
    outside = [str(p) for p in extra if ensemble_dir.resolve() not in p.resolve().parents]
    if outside:
        raise ParamsError(f"teacher.ensemble: {', '.join(outside)} not in {ensemble_dir}/: put the extra teacher "
                          f"checkpoints there, so that DVC tracks them as dependencies of teacher_logits")
    missing = [str(p) for p in extra if not p.is_file()]
    if missing:
        raise ParamsError(f"teacher.ensemble: no such checkpoint {', '.join(missing)}")
    return [main, *extra]


def dump_teacher_logits(params: Mapping[str, Any], checkpoints: Sequence[Path], recordings: Path,
                        resampled: Path, out_dir: Path) -> dict[str, Any]:
    """Stage teacher_logits: raw logits of every grid crop of the train recordings of
    data.split (the student's) and of
    every evaluate clip (ensemble mean over `checkpoints`); returns the teacher's
    evaluate-fold metrics. Writes train.npy (rows = grid crops), train_index.npy (the
    grid: recording, start sample) and evaluate.npy."""
    logits_params = params["logits"]
    batch_size = int(logits_params["batch_size"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = resolve_precision(logits_params.get("precision", "auto"), device, "logits.precision")
    sample_rate = int(params["data"]["sample_rate"])
    teachers = load_teachers(checkpoints, device, sample_rate)
    crops = train_crops(recordings, resampled, sample_rate, logits_params["hop_s"], "logits.hop_s",
                        "data.sample_rate", split=params["data"]["split"])
    clips = evaluate_clips(resampled, sample_rate, "data.sample_rate")
    train = ensemble_logits(teachers, lambda: crops.grid_batches(batch_size), -(-crops.n_rows // batch_size),
                            device, "teacher logits, train crops", precision)
    evaluate = ensemble_logits(teachers, lambda: clips.batches(batch_size), -(-len(clips) // batch_size),
                               device, "teacher logits, evaluate clips", precision)
    with atomic_output(out_dir) as tmp:
        tmp.mkdir()
        np.save(tmp / "train.npy", train)
        np.save(tmp / "train_index.npy", crops.grid())
        np.save(tmp / "evaluate.npy", evaluate)
    train_devices = sorted(set(crops.table["device"]))
    return evaluate_predictions(evaluate, clips.labels, clips.table["device"].to_numpy(), train_devices, list(SCENES))
