"""The GPU training path on a CUDA device (skipped where there is none; test_precision.py
runs the same checks on the CPU in every CI run)."""
from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

import gpu_checks
from mobileast.inference import prefetch, resolve_precision

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")


@pytest.mark.parametrize("name", ["student", "passt"])
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_training_steps_at_each_precision(name, precision):
    gpu_checks.assert_trains(gpu_checks.train_losses(name, precision, CUDA))


@pytest.mark.parametrize("name", ["student", "passt"])
def test_bf16_logits_agree_with_fp32(name):
    gpu_checks.assert_low_precision_agrees(name, "bf16", CUDA)


def test_auto_precision_is_bf16_on_a_gpu_that_has_it():
    assert resolve_precision("auto", CUDA) == ("bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp32")


@contextmanager
def no_host_sync():
    """Any operation that waits for the GPU raises (torch.cuda.set_sync_debug_mode)."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("name", ["student", "passt"])
def test_a_distillation_step_with_every_augmentation_never_waits_for_the_gpu(name):
    losses = gpu_checks.augmented_distillation_losses(name, CUDA, guard=no_host_sync)
    assert all(torch.isfinite(torch.tensor(losses)))


def test_prefetch_pins_and_moves_batches_to_the_gpu():
    batches = [gpu_checks.fixed_batch(torch.device("cpu"), size) for size in (8, 8, 3)]
    moved = list(prefetch(iter(batches), CUDA))
    assert [b.wave.device.type for b in moved] == ["cuda"] * 3
    for cpu, gpu in zip(batches, moved):
        torch.testing.assert_close(gpu.wave.cpu(), cpu.wave, rtol=0, atol=0)
        torch.testing.assert_close(gpu.label.cpu(), cpu.label, rtol=0, atol=0)
