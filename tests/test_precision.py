"""The GPU training path run on the CPU (the same code CUDA runs; test_cuda.py repeats the
device checks on a GPU): precisions, fp32 losses, background prefetch, GradScaler resume,
host-side augmentation decisions, sync_bn, GPU claiming and torchrun launch from a stage."""
from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

import gpu_checks
from mobileast import launch
from mobileast.augment import HostDecisions, pitch_shift
from mobileast.errors import ParamsError
from mobileast.data.crops import RecordingCrops
from mobileast.inference import Prefetcher, prefetch, resolve_precision
from mobileast.training.distributed import Runtime, with_sync_bn
from mobileast.training.settings import TrainSettings
from test_train import CLIP, make_stores, train, train_settings

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    return make_stores(tmp_path_factory.mktemp("stores"))


def test_resolve_precision():
    assert resolve_precision("auto", CPU) == "fp32"  # CPU training stays fp32: same results as before
    assert resolve_precision("bf16", CPU) == "bf16"
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp8", CPU)
    with pytest.raises(ValueError, match="precision"):
        TrainSettings(epochs=1, batch_size=1, lr=1.0, precision="half")


@pytest.mark.parametrize("name", ["student", "passt"])
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_training_steps_at_each_precision(name, precision):
    torch.set_num_threads(2)
    gpu_checks.assert_trains(gpu_checks.train_losses(name, precision, CPU))


@pytest.mark.parametrize("name", ["student", "passt"])
def test_bf16_logits_agree_with_fp32(name):
    gpu_checks.assert_low_precision_agrees(name, "bf16", CPU)


@pytest.mark.parametrize("name", ["student", "passt"])
def test_augmented_distillation_steps_at_bf16_are_finite(name):
    assert all(math.isfinite(x) for x in gpu_checks.augmented_distillation_losses(name, CPU))


def _same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for field in ("wave", "label", "row"):
            torch.testing.assert_close(getattr(x, field), getattr(y, field), rtol=0, atol=0)


def test_prefetch_yields_exactly_the_batches_of_the_synchronous_loader(stores):
    recordings, _ = stores
    crops = RecordingCrops(recordings, "train", CLIP, 200, crops_per_recording=4, seed=1)
    for epoch in (0, 3):
        _same_batches(list(prefetch(crops.epoch_batches(epoch, 16), CPU)), list(crops.epoch_batches(epoch, 16)))
    _same_batches(list(prefetch(crops.grid_batches(7), CPU, depth=1)), list(crops.grid_batches(7)))


def test_prefetch_raises_the_loaders_error_and_stops_when_left_early(stores):
    recordings, _ = stores
    crops = RecordingCrops(recordings, "train", CLIP, 200, crops_per_recording=4, seed=1)

    def failing():
        yield from list(crops.epoch_batches(0, 16))[:2]
        raise OSError("store unreadable")

    with pytest.raises(OSError, match="store unreadable"):
        list(prefetch(failing(), CPU))
    loader = Prefetcher(crops.grid_batches(1), CPU, depth=1)
    for _ in zip(range(2), loader):  # leave after two batches of many
        pass
    loader.thread.join(timeout=5)
    assert not loader.thread.is_alive()
    def two_then_error():
        yield from list(crops.epoch_batches(0, 16))[:2]
        raise OSError("store unreadable")

    for source in (list(crops.epoch_batches(0, 16))[:2], two_then_error()):  # left with its end (error) to queue
        loader = Prefetcher(source, CPU, depth=1)
        for _ in zip(range(1), loader):
            time.sleep(0.5)  # the producer queues the last batch meanwhile
        loader.thread.join(timeout=5)
        assert not loader.thread.is_alive()
    assert threading.active_count() < 50


def test_fp16_run_resumes_exactly_with_its_grad_scaler(stores, tmp_path):
    torch.set_num_threads(1)
    settings = dataclasses.replace(train_settings(epochs=3), precision="fp16")
    reference, reference_state = train(stores, tmp_path / "ref", settings)
    assert "grad_scaler" in torch.load(tmp_path / "ref" / "model.pt")
    with pytest.raises(KeyboardInterrupt):
        train(stores, tmp_path / "cut", settings, fail_at_epoch=2)
    assert torch.load(tmp_path / "cut" / "last.pt")["grad_scaler"]["scale"] > 0
    resumed, state = train(stores, tmp_path / "cut", settings)
    assert resumed == reference
    for key, value in state.items():
        torch.testing.assert_close(value, reference_state[key], rtol=0, atol=0)


def test_host_decisions_keep_cpu_generators_and_shadow_device_ones():
    decide = HostDecisions()
    cpu = torch.Generator().manual_seed(4)
    assert decide(cpu) is cpu  # CPU runs draw exactly as before

    class DeviceGenerator:  # what the engine passes on a GPU: only device and seed are read
        device = torch.device("cuda")

        def __init__(self, seed):
            self.seed = seed

        def initial_seed(self):
            return self.seed

    first = decide(DeviceGenerator(11))
    assert first.device.type == "cpu" and decide(DeviceGenerator(11)) is first
    draws = torch.rand(3, generator=first)
    assert torch.equal(draws, torch.rand(3, generator=HostDecisions()(DeviceGenerator(11))))  # same seed, same draws
    assert decide(DeviceGenerator(12)) is not first


def test_pitch_shift_bound_sizes_the_buffer_without_changing_the_result():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 16000, generator=g)
    semitones = torch.tensor([-2.0, 0.7, 1.9])
    torch.testing.assert_close(pitch_shift(x, semitones, max_semitones=2.0), pitch_shift(x, semitones))


def test_sync_bn_needs_cuda_and_is_a_no_op_for_one_process():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2))
    assert with_sync_bn(model, True, Runtime(CPU)) is model
    assert with_sync_bn(model, False, Runtime(CPU, rank=0, world_size=2)) is model
    with pytest.raises(ValueError, match="sync_bn needs CUDA"):
        with_sync_bn(model, True, Runtime(CPU, rank=0, world_size=2))


def test_claim_gpus_gives_each_claimant_its_own_gpu(tmp_path):
    assert launch.claim_gpus(1, 3, tmp_path) == [0]
    assert launch.claim_gpus(2, 3, tmp_path) == [1, 2]  # 0 is held (by this process's first claim)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from mobileast.launch import claim_gpus
        print(claim_gpus(1, 4, __import__('pathlib').Path({str(tmp_path)!r}), wait=0.05), flush=True)
        time.sleep(30)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "[3]"  # another process waits for none of ours
    finally:
        holder.kill()
        holder.wait()
    with pytest.raises(ValueError, match="exceeds the 3 GPUs"):
        launch.claim_gpus(4, 3, tmp_path)


def test_prepare_refuses_more_processes_than_usable_gpus(monkeypatch):
    monkeypatch.setattr(launch, "gpu_count", lambda: 4)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    with pytest.raises(ParamsError, match=r"nproc 2 exceeds the 1 GPU\(s\).*CUDA_VISIBLE_DEVICES=2"):
        launch.prepare(2, "stages.student_train")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setattr(launch, "gpu_count", lambda: 1)
    with pytest.raises(ParamsError, match=r"nproc 2 exceeds the 1 GPU\(s\) this stage can use$"):
        launch.prepare(2, "stages.student_train")


STAGE_MODULE = """
import os, sys
from pathlib import Path
from mobileast.launch import prepare
status = prepare(int(sys.argv[1]), __spec__.name)
if status is not None:
    Path(sys.argv[2], "launcher").write_text(str(status))
    raise SystemExit(status)
rank = os.environ.get("RANK", "none")
Path(sys.argv[2], f"rank{rank}").write_text(os.environ.get("WORLD_SIZE", "1"))
if rank == "1":  # fail only once rank 0 has written: else torchrun may stop rank 0 first
    import time
    deadline = time.monotonic() + 60
    while not Path(sys.argv[2], "rank0").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
raise SystemExit(3 if rank == "1" else 0)
"""


@pytest.mark.parametrize("nproc", [1, 2])
def test_stage_runs_itself_under_torchrun_when_nproc_exceeds_one(nproc, tmp_path):
    (tmp_path / "fake_stage.py").write_text(STAGE_MODULE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}  # CPU processes, GPU or not
    proc = subprocess.run([sys.executable, "-m", "fake_stage", str(nproc), str(tmp_path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    written = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("rank", "launcher")))
    if nproc == 1:
        assert proc.returncode == 0 and written == ["ranknone"]
    else:  # two workers, and the failure of one is the stage's failure
        assert written == ["launcher", "rank0", "rank1"], proc.stderr[-2000:]
        assert (tmp_path / "rank0").read_text() == "2"
        assert proc.returncode != 0
