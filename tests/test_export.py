"""ONNX export (float and int8), the models it writes as predict/evaluate/submit run them,
and the quantized engine by platform (the submission formats: test_submit.py)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from mobileast import deploy, evaluate, predict, quantize
from mobileast.data.crops import ClipSource
from mobileast.complexity import onnx_param_memory_bytes, param_memory_bytes
from mobileast.errors import InputError
from mobileast.labels import SCENES
from mobileast.export import export, export_int8
from mobileast.models import model_spec
from mobileast.models.mobileast import fold_bn
from mobileast.predict import predict_file
from test_crops import make_clip_store, make_recordings_store
from test_quantize import FEATURES, agreement, as_if_trained, one_thread, varied_inputs  # noqa: F401 (autouse fixture)


def perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """Every parameter distinct from the init's ones and zeros, as after training (the ONNX
    exporter merges initializers of equal value, which an untrained model is full of)."""
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    return model


# the student_train params the checkpoint carries (params.yaml says dkd alpha 1, beta 2, T 1)
TRAINED_WITH = {"seed": 0, "distill": {"method": "dkd"}, "dkd": {"alpha": 5, "beta": 10, "T": 4},
                "augment": {"mixup": {"enabled": True}, "noise": {"enabled": False}}}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A trained-looking sub4 checkpoint, its int8 model from the quantize stage, and the stores."""
    root = tmp_path_factory.mktemp("export")
    recordings, resampled = root / "data/recordings", root / "data/resampled"
    recordings.mkdir(parents=True)
    resampled.mkdir(parents=True)
    make_recordings_store(recordings, {"train": [[0, 1, 2], [0, 2, 3, 4], [1, 2], [0, 1, 2, 3]]}, clip_samples=32000)
    (recordings / "train.npy").rename(resampled / "train.npy")
    clips = (np.random.default_rng(0).standard_normal((12, 32000)) * 3000).astype(np.int16)
    make_clip_store(resampled, "evaluate", clips, [SCENES[i % 10] for i in range(12)])
    gen = torch.Generator().manual_seed(1)
    model = perturbed(as_if_trained("sub4", [varied_inputs(8, gen) for _ in range(2)]))
    arch, config = model_spec(model)
    checkpoint = root / "student.pt"
    torch.save({"arch": arch, "config": config, "state_dict": model.state_dict(), "features": FEATURES,
                "classes": list(SCENES), "input": "logmel", "params": TRAINED_WITH}, checkpoint)
    quant = {"calib_batches": 2, "batch_size": 4, "float_modules": [], "dynamic_modules": ["classifier"]}
    quantize.quantize_student(checkpoint, recordings, resampled, root / "student_int8.pt", quant, hop_s=0.5, seed=0)
    export(checkpoint, root / "student.onnx")
    export(root / "student_int8.pt", root / "student_int8.onnx", recordings, resampled)
    return root


def test_float_onnx_computes_the_float_model(project):
    onnx_model, meta = deploy.load_model_any(project / "student.onnx")
    model, _ = deploy.load_checkpoint_model(project / "student.pt")
    x = varied_inputs(5, torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(onnx_model(x), model(x), rtol=1e-4, atol=1e-4)
    assert meta.quantized is False and meta.format == "onnx" and meta.classes == list(SCENES)


def test_int8_onnx_follows_the_torch_int8_model(project):
    """Converted, not re-calibrated: the same scales, the same int8 weights, near-identical logits."""
    onnx_int8, meta = deploy.load_model_any(project / "student_int8.onnx")
    torch_int8, torch_meta = deploy.load_deployed(project / "student_int8.pt")
    inputs = [varied_inputs(64, torch.Generator().manual_seed(s)) for s in (7, 8)]
    with_torch = agreement(torch_int8, onnx_int8, inputs)
    # measured: top-1 1.0, logit correlation 0.9995 (the int8 kernels round differently)
    assert with_torch["top1_agreement"] >= 0.95 and with_torch["logit_correlation"] > 0.995, with_torch
    assert meta.quantized and meta.onnx_quantization["format"] == "QDQ"
    assert meta.calibration == torch_meta.calibration  # the same calibration crops
    import onnx
    from onnx import numpy_helper
    graph = onnx.load(str(project / "student_int8.onnx")).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    consumers = {i: n for n in graph.node for i in n.input}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    torch_convs = [m for m in torch_int8.modules() if m.original_name in ("Conv2d", "ConvReLU2d")]  # graph order
    assert len(convs) == len(torch_convs) == 7
    for conv, torch_conv in zip(convs, torch_convs):
        out = consumers[conv.output[0]]  # ReLU folded: the output's QuantizeLinear
        assert out.op_type == "QuantizeLinear"
        assert inits[out.input[1]] == pytest.approx(torch_conv.scale, rel=0.02)
        assert abs(int(inits[out.input[2]]) - torch_conv.zero_point) <= 1
        dq = next(n for n in graph.node if n.output[0] == conv.input[1])
        torch.testing.assert_close(torch.from_numpy(inits[dq.input[0]].astype(np.int64)),
                                   torch_conv._c.getattr("_packed_params").unpack()[0].int_repr().long())  # the same int8 weights
    ops = [n.op_type for n in graph.node]
    assert "Attention" in ops and "Softmax" not in ops and "Transpose" not in {
        n.op_type for n in graph.node if "attn" in n.name}
    assert graph.output[0].name == "logits" and "DequantizeLinear" not in {
        n.op_type for n in graph.node if "logits" in n.output}  # float logits, like the dynamic classifier


def test_predict_agrees_on_files_with_torch_and_onnx_int8(project, tmp_path):
    """The acceptance check of issue 13 on a small scale: `predict` on WAV files (varied
    spectra and levels) gives the same scene with both int8 models. Measured: 48 of 48."""
    rng = np.random.default_rng(3)
    freqs = np.fft.rfftfreq(32000, 1 / 32000)
    files = []
    for i in range(48):
        spectrum = np.fft.rfft(rng.standard_normal(32000)) * (1 + freqs / 1000) ** rng.uniform(-2, 1)
        wave = np.fft.irfft(spectrum) + rng.uniform(0, 3) * np.sin(2 * np.pi * rng.uniform(50, 4000) * np.arange(32000) / 32000)
        files.append(tmp_path / f"clip{i}.wav")
        sf.write(files[-1], 0.3 * wave / np.abs(wave).max() * rng.uniform(0.05, 1), 32000)
    labels = {}
    for name in ("student_int8.pt", "student_int8.onnx"):
        model, meta = deploy.load_model_any(project / name)
        frontend = deploy.frontend_for(meta)
        labels[name] = [predict_file(f, model, frontend, meta)["label"] for f in files]
    same = np.mean([a == b for a, b in zip(labels["student_int8.pt"], labels["student_int8.onnx"])])
    assert len(set(labels["student_int8.pt"])) >= 3  # the files are told apart
    assert same >= 0.95, same


def test_onnx_parameter_memory_equals_the_torch_count(project):
    torch_int8, _ = deploy.load_deployed(project / "student_int8.pt")
    model, _ = deploy.load_checkpoint_model(project / "student.pt")
    assert onnx_param_memory_bytes(project / "student_int8.onnx") == param_memory_bytes(torch_int8) < 128_000
    assert onnx_param_memory_bytes(project / "student.onnx") == param_memory_bytes(fold_bn(model))


def test_int8_export_keeps_the_float_modules_float(project, tmp_path):
    """quant.float_modules: the ONNX int8 model keeps the same modules float as the torch one
    (the export stage checks the parameter memory equality)."""
    data = project / "data"
    quant = {"calib_batches": 2, "batch_size": 4, "float_modules": ["blocks.vit.local*"],
             "dynamic_modules": ["classifier"]}
    summary = quantize.quantize_student(project / "student.pt", data / "recordings", data / "resampled",
                                        tmp_path / "int8.pt", quant, hop_s=0.5, seed=0)
    assert summary["float_modules"] == ["blocks.vit.local"]
    meta = export_int8(tmp_path / "int8.pt", tmp_path / "int8.onnx", data / "recordings", data / "resampled")
    assert meta.onnx_quantization["float_nodes"] == 4  # the local block's two convs and their ReLUs
    torch_int8, _ = deploy.load_deployed(tmp_path / "int8.pt")
    assert onnx_param_memory_bytes(tmp_path / "int8.onnx") == param_memory_bytes(torch_int8) \
        > param_memory_bytes(deploy.load_deployed(project / "student_int8.pt")[0])
    onnx_int8, _ = deploy.load_model_any(tmp_path / "int8.onnx")
    inputs = [varied_inputs(64, torch.Generator().manual_seed(s)) for s in (7, 8)]
    assert agreement(torch_int8, onnx_int8, inputs)["top1_agreement"] >= 0.95
    with pytest.raises(InputError, match="dynamic quantization of the classifier only"):
        quantize.quantize_student(project / "student.pt", data / "recordings", data / "resampled",
                                  tmp_path / "dyn.pt", {**quant, "dynamic_modules": ["blocks.vit.transformer.*.ffn.fc1"]},
                                  hop_s=0.5, seed=0)
        export_int8(tmp_path / "dyn.pt", tmp_path / "dyn.onnx", data / "recordings", data / "resampled")


def test_int8_export_needs_its_own_float_checkpoint(project, tmp_path):
    moved = tmp_path / "int8.pt"
    moved.write_bytes((project / "student_int8.pt").read_bytes())
    checkpoint = project / "student.pt"
    original = checkpoint.read_bytes()
    try:
        checkpoint.write_bytes(original + b"changed")
        with pytest.raises(InputError, match="not that file any more"):
            export_int8(moved, tmp_path / "x.onnx", project / "data/recordings", project / "data/resampled")
    finally:
        checkpoint.write_bytes(original)
    assert not (tmp_path / "x.onnx").exists()


def test_quantized_engine_by_platform_and_a_clear_error_without_it(project):
    assert quantize.quant_engine("x86_64") == "x86" and quantize.quant_engine("aarch64") == "qnnpack"
    assert quantize.quant_engine("arm64") == "qnnpack"
    with pytest.raises(RuntimeError, match="no quantized engine known for the riscv64"):
        quantize.quant_engine("riscv64")
    assert deploy.read_meta(project / "student_int8.pt").quant_engine == quantize.quant_engine()
    with pytest.raises(InputError, match="quantized for PyTorch's 'x87' engine, which this host's PyTorch lacks"):
        deploy.use_quant_engine("x87", project / "student_int8.pt")


def write_wav(path: Path, rate: int, channels: int, seconds: float = 1.0) -> None:
    t = np.arange(int(rate * seconds)) / rate
    tone = 0.3 * np.sin(2 * np.pi * 440 * t)
    sf.write(path, np.stack([tone] * channels, 1) if channels > 1 else tone, rate)


def test_predict_gives_the_same_scene_with_torch_and_onnx_int8(project, tmp_path):
    files = []
    for i, (rate, channels) in enumerate([(44100, 1), (48000, 2), (16000, 1), (32000, 1)]):
        files.append(tmp_path / f"clip{i}.wav")
        write_wav(files[-1], rate, channels, seconds=1 + i)
    labels = {}
    for name in ("student_int8.pt", "student_int8.onnx"):
        model, meta = deploy.load_model_any(project / name)
        frontend = deploy.frontend_for(meta)
        labels[name] = [predict_file(f, model, frontend, meta)["label"] for f in files]
    assert labels["student_int8.pt"] == labels["student_int8.onnx"]


def test_predict_gives_evaluates_logits_on_the_evaluate_files(project, tmp_path):
    """One inference path: `predict` on the evaluate fold's clips written as WAV files (the
    store's int16 samples, 1 s each) gives the per-clip logits of `evaluate` for every
    model kind: float checkpoint, int8 TorchScript, int8 ONNX. Evaluated one clip per batch,
    as `predict` sees a 1 s file: the int8 classifier quantizes its input per batch
    (dynamic quantization), so its logits depend on the other clips of the batch."""
    clips = ClipSource(project / "data/resampled", "evaluate")
    files = []
    for i, offset in enumerate(clips.offsets):
        files.append(tmp_path / f"clip{i}.wav")
        sf.write(files[-1], np.asarray(clips.audio[offset:offset + clips.clip_samples]), 32000, subtype="PCM_16")
    for name in ("student.pt", "student_int8.pt", "student_int8.onnx"):
        model, meta = deploy.load_model_any(project / name)
        expected = evaluate.fold_logits(model, meta, clips, batch_size=1, precision="fp32")
        frontend = deploy.frontend_for(meta)
        got = torch.cat([predict.file_logits(f, model, frontend, meta).logits for f in files])
        assert got.shape == (12, 10)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5, msg=name)
