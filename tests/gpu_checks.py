"""Checks of the GPU training path, written once for any device: test_precision.py runs
them on the CPU (every CI run), test_cuda.py on a CUDA device when there is one."""
from __future__ import annotations

import math
from contextlib import nullcontext

import torch
from torch import nn

from mobileast.augment import Augmenter
from mobileast.params import load_params
from mobileast.data.crops import Batch
from mobileast.deploy import ModelMeta, frontend_for
from mobileast.distill import DistillLoss
from mobileast.features import LogMel
from mobileast.models import build_student
from mobileast.models.passt import PaSST, PaSSTConfig
from mobileast.inference import predict
from mobileast.training.engine import optimizer_step
from mobileast.training.schedule import Schedule
from mobileast.training.settings import TrainSettings
from mobileast.training.supervised import supervised_step
from stages.teacher_train import SPECTROGRAM_AUGMENTS

PARAMS = load_params()
STUDENT_FEATURES = {**PARAMS["features"], "n_mels": 64}  # the student recipe's frontend, fewer mel bins
SMALL_PASST = dict(embed_dim=64, depth=2, n_heads=4, patchout_f=2)
CLASSES = 10


def student_and_frontend(device: torch.device) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    model = build_student({"preset": "sub1", "custom": {}}, STUDENT_FEATURES).to(device)
    frontend = LogMel(**STUDENT_FEATURES).to(device)
    return model, frontend


def passt_and_frontend(device: torch.device) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    model = PaSST(PaSSTConfig(**SMALL_PASST)).to(device)
    return model, frontend_for(ModelMeta(features={}, classes=[], input="waveform")).to(device)  # PaSST takes the waveform


MODELS = {"student": student_and_frontend, "passt": passt_and_frontend}


def fixed_batch(device: torch.device, size: int = 8) -> Batch:
    g = torch.Generator().manual_seed(5)
    wave = 0.1 * torch.randn(size, 32000, generator=g)
    label = torch.arange(size) % CLASSES
    return Batch(wave, label, torch.arange(size)).to(device)


def train_losses(name: str, precision: str, device: torch.device, steps: int = 6,
                 augment: dict | None = None) -> list[float]:
    """Losses of `steps` optimiser steps on one fixed batch through the engine's step
    (supervised_step + optimizer_step, GradScaler for fp16), at `precision`."""
    model, frontend = MODELS[name](device)
    augment = augment or {k: {**v, "enabled": False} for k, v in PARAMS["augment"].items()}
    step = supervised_step(frontend, Augmenter.from_params(augment, 32000), DistillLoss.cross_entropy(),
                           precision=precision)
    settings = TrainSettings(epochs=1, batch_size=8, lr=1e-3, optimizer="adamw", precision=precision,
                             schedule=Schedule(warmup="none", decay="constant"))
    optimizer = settings.make_optimizer(model)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16", init_scale=2.0 ** 10)
    generator = torch.Generator(device=device).manual_seed(0)
    batch = fixed_batch(device)
    model.train()
    losses = []
    for i in range(steps):
        loss, _ = optimizer_step(model, optimizer, step, batch, settings, 0, i / steps, generator, scaler)
        assert loss.dtype == torch.float32, f"the loss must be computed in fp32, got {loss.dtype}"
        losses.append(float(loss))
    return losses


def assert_trains(losses: list[float]) -> None:
    assert all(math.isfinite(x) for x in losses), losses
    assert losses[-1] < losses[0], f"loss did not decrease: {losses}"


def eval_logits(name: str, precision: str, device: torch.device) -> torch.Tensor:
    """Eval-mode logits of the fixed batch (same seeded weights for every precision)."""
    model, frontend = MODELS[name](device)
    batch = fixed_batch(device)
    return predict(model, frontend, [Batch(batch.wave.cpu(), batch.label.cpu(), batch.row.cpu())], device,
                   precision)


def assert_low_precision_agrees(name: str, precision: str, device: torch.device) -> None:
    """Logits at `precision` close to fp32 ones: same top-1 and small error relative to their spread."""
    reference = eval_logits(name, "fp32", device)
    low = eval_logits(name, precision, device)
    assert low.dtype == torch.float32
    spread = reference.std().item()
    error = (low - reference).abs().max().item()
    # Relative to the spread only: a random student's logits spread ~1e-4, under any absolute floor.
    assert error < 0.1 * spread, f"{precision} logits differ by {error:.3g} (fp32 spread {spread:.3g})"


def augmented_distillation_losses(name: str, device: torch.device, guard=nullcontext, steps: int = 5) -> list[float]:
    """bf16 DKD steps with every augmentation on (the teacher recipe's for PaSST; mixup and
    CutMix at p 0.5), the steps
    after the first (which creates the optimiser state) inside `guard()`; the losses."""
    model, frontend = MODELS[name](device)
    augment = {k: {**v, "enabled": name == "student" or k not in SPECTROGRAM_AUGMENTS}  # PaSST: its own SpecAugment
               for k, v in PARAMS["augment"].items()}
    augment["mixup"]["p"] = augment["cutmix"]["p"] = 0.5
    batch = fixed_batch(device)
    teacher_logits = torch.randn(len(batch), CLASSES, device=device)
    loss_fn = DistillLoss(method="dkd", alpha=1.0, beta=8.0, temperature=4.0, warmup_epochs=20.0, ce_weight=1.0)
    step = supervised_step(frontend, Augmenter.from_params(augment, 32000), loss_fn, teacher_logits,
                           precision="bf16")
    settings = TrainSettings(epochs=1, batch_size=8, lr=1e-3, optimizer="adamw", precision="bf16",
                             schedule=Schedule(warmup="none", decay="constant"))
    optimizer = settings.make_optimizer(model)
    generator = torch.Generator(device=device).manual_seed(0)
    model.train()
    losses = [optimizer_step(model, optimizer, step, batch, settings, 0, 0.0, generator)[0]]
    with guard():
        for i in range(1, steps):
            losses.append(optimizer_step(model, optimizer, step, batch, settings, 0, i / steps, generator)[0])
    return [float(x) for x in losses]
