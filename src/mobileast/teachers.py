"""Teacher models: the teacher a params `teacher:` section describes, the trained teacher
checkpoints loaded for the logit dump, and their ensemble's logits."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from mobileast.data.crops import Batch
from mobileast.deploy import ModelMeta, frontend_for, load_checkpoint_model
from mobileast.errors import ParamsError, params_errors
from mobileast.inference import predict
from mobileast.labels import SCENES
from mobileast.models import build_preset, model_spec
from mobileast.models.cnn import PRESETS as CNN_PRESETS
from mobileast.progress import progress


def build_teacher(teacher: Mapping[str, Any], features: Mapping[str, Any]) -> tuple[nn.Module, ModelMeta]:
    """The teacher named by params' `teacher:` section and its checkpoint meta.

    `cnn`: the demo teacher preset (fields in `teacher.cnn.custom` replaced) on the
    student's log-mel features. `passt`: PaSST with the AudioSet weights from the local
    file `teacher.passt.checkpoint`; it takes the waveform and computes its own features.
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
    return model, ModelMeta(features=meta_features, classes=list(SCENES), arch=arch, config=config, input=kind)


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


def ensemble_logits(teachers: Sequence[tuple[nn.Module, nn.Module]], batches_fn: Callable[[], Iterable[Batch]],
                    n_batches: int, device: torch.device, desc: str, precision: str = "fp32") -> np.ndarray:
    """Mean logits of the teachers over the batches that `batches_fn()` yields, float32."""
    total = 0
    for i, (model, frontend) in enumerate(teachers, 1):
        batches = progress(batches_fn(), total=n_batches, desc=f"{desc} (teacher {i}/{len(teachers)})", unit="batch")
        total = total + predict(model, frontend, batches, device, precision)
    return (total / len(teachers)).numpy().astype(np.float32)
