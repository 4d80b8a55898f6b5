"""Post-training static quantization: fusions, partial quantization, fidelity, saving,
parameter memory, calibration data and the stage function."""
import math
import warnings

import numpy as np
import pytest
import torch
import torch.ao.nn.intrinsic.quantized as nniq
import torch.ao.nn.quantized as nnq
import torch.ao.nn.quantized.dynamic as nnqd
from torch import nn

from mobileast import quantize
from mobileast.complexity import param_memory_bytes, param_memory_bytes_int8_estimate
from mobileast.labels import SCENES
from mobileast.data.crops import Batch, RecordingCrops
from mobileast.deploy import ModelMeta, load_deployed
from mobileast.inference import logit_agreement, predict
from mobileast.features import LogMel
from mobileast.models import build_preset, model_spec
from mobileast.models.mobileast import PRESETS, deploy_form, fold_bn
from test_crops import make_clip_store, make_recordings_store

FEATURES = {"sample_rate": 32000, "n_fft": 2048, "win_length": 2000, "hop_length": 500, "n_mels": 256}
META = ModelMeta(features=FEATURES, classes=list(SCENES), arch="mobileast", quantized=True)


def agreement(reference: nn.Module, other: nn.Module, inputs: list[torch.Tensor]) -> dict[str, float]:
    """logit_agreement of two models on log-mel batches, run by mobileast.inference."""
    batches, cpu = [Batch(x, torch.full((len(x),), -1), torch.arange(len(x))) for x in inputs], torch.device("cpu")
    return logit_agreement(predict(reference, nn.Identity(), batches, cpu), predict(other, nn.Identity(), batches, cpu))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small models: one thread is as fast on an idle machine and much faster on a busy one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def varied_inputs(n: int, gen: torch.Generator) -> torch.Tensor:
    """Log-mel-like (n, 1, 256, 64) batches that differ per example in gain, offset,
    spectral tilt and a slow modulation, so a random model's outputs vary with them."""
    f = torch.linspace(-1, 1, 256).view(1, 1, 256, 1)
    t = torch.linspace(-1, 1, 64).view(1, 1, 1, 64)
    gain, offset, tilt, mod = (2 * torch.rand(n, 1, 1, 1, generator=gen) - 1 for _ in range(4))
    return (offset + tilt * f + mod * torch.sin(3 * math.pi * t) * f
            + (0.75 + 0.25 * gain) * torch.randn(n, 1, 256, 64, generator=gen))


def as_if_trained(name: str, data: list[torch.Tensor]) -> nn.Module:
    """A random preset with BatchNorm statistics of `data` and a unit-scale classifier,
    as after training: activations normalised, predictions that depend on the input."""
    torch.manual_seed(0)
    model = build_preset(name)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the batches
    model.train()
    with torch.no_grad():
        for x in data:
            model(x)
        model.classifier.weight.normal_(0, model.classifier.in_features ** -0.5)
    return model.eval()


def assert_no_quantization_warnings(caught: list[warnings.WarningMessage]) -> None:
    """FX quantization's deprecation notices and the tracer's notes on its constants are hidden."""
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "quantiz" in m or "to a Python float" in m], messages


@pytest.fixture(scope="module")
def calib():
    gen = torch.Generator().manual_seed(1)
    return [varied_inputs(8, gen) for _ in range(2)]


@pytest.fixture(scope="module")
def sub2(calib):
    return as_if_trained("sub2", calib)


@pytest.fixture(scope="module")
def sub2_int8(sub2, calib):
    """The default configuration: all int8, the classifier quantized dynamically (float logits)."""
    return quantize.quantize_model(sub2, calib, dynamic_modules=["classifier"])


def test_converted_model_is_int8_with_fusions(sub2, sub2_int8):
    out = sub2_int8(torch.randn(3, 1, 256, 64))
    assert out.shape == (3, 10) and out.dtype == torch.float32
    modules, float_modules = dict(sub2_int8.named_modules()), dict(sub2.named_modules())
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.Conv2d, nn.Linear)) for m in modules.values())
    for name, m in float_modules.items():
        if isinstance(m, nn.Conv2d):  # ConvBNAct's conv: BN folded in, ReLU fused
            with_relu = name.removesuffix(".conv") + ".act" in float_modules
            assert type(modules[name]) is (nniq.ConvReLU2d if with_relu else nnq.Conv2d), name
    for layer in ("0", "1"):
        ffn = f"blocks.vit.transformer.{layer}.ffn"
        assert type(modules[f"{ffn}.fc1"]) is nniq.LinearReLU  # Linear + ReLU fused
        assert type(modules[f"{ffn}.fc2"]) is nnq.Linear
        # float between a dequantize and a quantize: faster than x86's int8 LayerNorm
        assert type(modules[f"blocks.vit.transformer.{layer}.norm1"]) is nn.LayerNorm
    sdpa = [n for n in sub2_int8.graph.nodes if n.target is torch.nn.functional.scaled_dot_product_attention]
    assert len(sdpa) == 2  # the fused attention core of both layers, in float between int8 Linears
    assert type(modules["classifier"]) is nnqd.Linear


@pytest.mark.parametrize("engine, weight_max", [("x86", 64), ("qnnpack", 127)])
def test_observers_by_engine(engine, weight_max):
    """Full 8-bit activations; on x86 7-bit weights, so u8*s8 pair sums fit int16 (no VNNI
    saturation): 2 * 255 * 64 <= 32767."""
    qc = quantize.qconfig(engine)
    activation = qc.activation()
    activation(torch.linspace(-1, 3, 1000))
    assert (activation.quant_min, activation.quant_max) == (0, 255)
    weight = torch.randn(8, 5)
    observer = qc.weight()
    observer(weight)
    q = torch.quantize_per_channel(weight, *observer.calculate_qparams(), 0, torch.qint8).int_repr()
    assert q.abs().max() == weight_max
    assert engine != "x86" or 2 * 255 * weight_max <= 32767


def test_module_patterns():
    model = deploy_form(build_preset("sub4"))  # patterns name modules of the deploy form
    layers = [f"blocks.vit.transformer.{i}" for i in (0, 1)]
    assert quantize.select_modules(model, ["attn"]) == [f"{x}.attn" for x in layers]
    assert quantize.select_modules(model, ["norm*"]) == [f"{x}.{n}" for x in layers for n in ("norm1", "norm2")]
    assert quantize.select_modules(model, ["transformer", "attn", "blocks.vit.transformer.1.ffn.fc1"]) == \
        ["blocks.vit.transformer"]  # outermost only
    assert quantize.select_modules(model, ["blocks.vit.proj"]) == ["blocks.vit.proj"]
    assert quantize.select_modules(model, ["*.attn.core"]) == [f"{x}.attn.core" for x in layers]
    assert quantize.select_modules(model, []) == []
    with pytest.raises(ValueError, match="'atn' matches no submodule"):
        quantize.select_modules(model, ["atn"])
    assert quantize.dynamic_module_names(model, ["classifier", "fc2"]) == [f"{x}.ffn.fc2" for x in layers] + ["classifier"]
    with pytest.raises(ValueError, match="only nn.Linear"):
        quantize.dynamic_module_names(model, ["ffn"])
    with pytest.raises(ValueError, match="both float and dynamically"):
        quantize.qconfig_mapping("x86", ["classifier"], ["classifier"])


def test_float_modules_stay_float(sub2, calib):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q = quantize.quantize_model(sub2, calib, float_modules=["attn"])
    assert_no_quantization_warnings(caught)
    modules = dict(q.named_modules())
    for layer in ("0", "1"):
        attn = f"blocks.vit.transformer.{layer}.attn"
        assert all(type(modules[f"{attn}.{p}"]) is nn.Linear for p in ("qkv", "proj"))  # the deploy form's
        assert type(modules[f"blocks.vit.transformer.{layer}.ffn.fc1"]) is nniq.LinearReLU
    targets = [n.target for n in q.graph.nodes]
    assert targets.count(torch.nn.functional.scaled_dot_product_attention) == 2
    assert q(calib[0]).shape == (8, 10)
    # the float Linears' weights count 4 bytes, everything else as in full int8
    float_weights = sum(m.weight.numel() for n, m in sub2.named_modules() if ".attn." in n and isinstance(m, nn.Linear))
    assert param_memory_bytes(q) == param_memory_bytes_int8_estimate(fold_bn(sub2)) + 3 * float_weights


def test_int8_agrees_with_float(sub2, sub2_int8):
    """Measured: top-1 agreement 0.94 (60 of 64), correlation of the input-dependent logits 0.996."""
    gen = torch.Generator().manual_seed(2)
    result = agreement(sub2, sub2_int8, [varied_inputs(32, gen) for _ in range(2)])
    assert result["n"] == 64
    assert result["top1_agreement"] >= 0.875
    assert result["logit_correlation"] >= 0.98


def test_agreement_against_plain_computation():
    a = torch.tensor([[1.0, 2.0], [3.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[1.5, 2.0], [0.0, 3.0], [0.0, 2.0]])
    result = logit_agreement(a, b)
    ca, cb = (a - a.mean(0)).flatten().numpy(), (b - b.mean(0)).flatten().numpy()
    assert result["n"] == 3 and result["top1_agreement"] == pytest.approx(2 / 3)
    assert result["logit_correlation"] == pytest.approx(np.corrcoef(ca, cb)[0, 1])
    assert result["max_abs_diff_rel"] == pytest.approx(3 / 3)


def test_saved_model_reloads_with_identical_outputs(sub2_int8, tmp_path):
    path = tmp_path / "student_int8.pt"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quantize.save_quantized(sub2_int8, path, META)
    assert_no_quantization_warnings(caught)
    loaded, meta = load_deployed(path)
    assert meta == META
    x = torch.randn(5, 1, 256, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), sub2_int8(x), rtol=0, atol=0)
    assert param_memory_bytes(loaded) == param_memory_bytes(sub2_int8)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_param_memory_int8_is_a_quarter_and_under_the_limit(name, sub2, sub2_int8):
    """sub1..sub4: 56,128 / 55,584 / 61,280 / 69,786 bytes (float32: 3.7-3.8x that)."""
    model = sub2 if name == "sub2" else build_preset(name).eval()
    q = sub2_int8 if name == "sub2" else quantize.quantize_model(model, [torch.randn(2, 1, 256, 64)],
                                                                dynamic_modules=["classifier"])
    memory, float_memory = param_memory_bytes(q), param_memory_bytes(fold_bn(model))
    assert memory == param_memory_bytes_int8_estimate(fold_bn(model))
    assert 0.25 < memory / float_memory < 0.3
    assert memory < 128_000


@pytest.fixture
def stores(tmp_path):
    recordings, resampled = tmp_path / "rec", tmp_path / "res"
    recordings.mkdir()
    resampled.mkdir()
    make_recordings_store(recordings, {"train": [[0, 1, 2], [0, 2, 3, 4], [1, 2]]}, clip_samples=32000)
    (recordings / "train.npy").rename(resampled / "train.npy")  # as in the pipeline: the table over the resampled audio
    clips = (np.random.default_rng(0).standard_normal((10, 32000)) * 3000).astype(np.int16)
    make_clip_store(resampled, "evaluate", clips, list(SCENES))
    return recordings, resampled


def test_calibration_batches_are_seeded_distinct_grid_crops(stores):
    recordings, resampled = stores
    batches = list(quantize.calibration_batches(recordings, resampled, FEATURES, 3, 4, hop_s=0.5, seed=3))
    assert [b.shape for b in batches] == [(4, 1, 256, 64)] * 3
    again = list(quantize.calibration_batches(recordings, resampled, FEATURES, 3, 4, hop_s=0.5, seed=3))
    assert all(torch.equal(a, b) for a, b in zip(batches, again))
    other = torch.cat(list(quantize.calibration_batches(recordings, resampled, FEATURES, 3, 4, hop_s=0.5, seed=4)))
    assert not torch.equal(torch.cat(batches), other)
    # every example is the log-mel of a different 1 s crop on the 0.5 s grid
    crops = RecordingCrops(recordings, "train", 32000, 16000, audio_dir=resampled)
    with torch.no_grad():
        grid = LogMel(**FEATURES)(crops.load(np.arange(crops.n_rows)).wave)
    found = [[j for j in range(len(grid)) if torch.equal(x, grid[j])] for x in torch.cat(batches)]
    assert all(len(f) == 1 for f in found) and len({f[0] for f in found}) == 12


def test_quantize_student_writes_deployable_int8_model(stores, tmp_path):
    recordings, resampled = stores
    model = build_preset("sub4").eval()
    arch, config = model_spec(model)
    torch.save({"arch": arch, "config": config, "state_dict": model.state_dict(), "features": FEATURES,
                "classes": list(SCENES), "epoch": 1}, tmp_path / "student.pt")
    quant = {"calib_batches": 2, "batch_size": 3, "float_modules": ["norm*"], "dynamic_modules": ["classifier"]}
    summary = quantize.quantize_student(tmp_path / "student.pt", recordings, resampled, tmp_path / "int8.pt",
                                        quant, hop_s=0.5, seed=0)
    loaded, meta = load_deployed(tmp_path / "int8.pt")
    assert meta.quantized is True and meta.features == FEATURES and meta.classes == list(SCENES)
    assert meta.float_modules == summary["float_modules"] == [
        f"blocks.vit.transformer.{i}.{n}" for i in (0, 1) for n in ("norm1", "norm2")]
    assert meta.dynamic_modules == summary["dynamic_modules"] == ["classifier"]
    # the float LayerNorms count 4 bytes per parameter, as in the int8 estimate
    assert summary["param_memory_bytes"] == param_memory_bytes(loaded) == \
        param_memory_bytes_int8_estimate(fold_bn(model)) < 128_000
    assert summary["param_memory_pass"] and summary["param_memory_bytes_float32"] == 4 * sum(
        p.numel() for p in fold_bn(model).parameters())
    assert summary["evaluate_agreement"]["n"] == 6  # 2 of the 4 batches of 10 clips: clips 0-2 and 6-8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int8.pt", "rec", "res", "student.pt"]

def test_partly_consumed_calibration_batches_leave_grad_mode_alone(stores):
    recordings, resampled = stores
    batches = quantize.calibration_batches(recordings, resampled, FEATURES, 3, 4, hop_s=0.5, seed=3)
    next(batches)
    assert torch.is_grad_enabled()
