"""Deployed-model save/load: identical outputs, meta round trip, clear errors."""
import json
import sys
import types
import warnings
from dataclasses import asdict, dataclass

import pytest
import torch
from torch import nn

from mobileast import deploy

FEATURES = {"sample_rate": 8000, "n_fft": 256, "win_length": 256, "hop_length": 250, "n_mels": 16}
META = deploy.ModelMeta(features=FEATURES, classes=["x", "y", "z"], arch="tiny")


@dataclass
class TinyConfig:
    channels: int = 4
    n_classes: int = 3


class Tiny(nn.Module):
    """Conv + BN + ReLU + pooling + Linear: the layer types of the real student."""

    def __init__(self, cfg: TinyConfig = TinyConfig()):
        super().__init__()
        self.conv = nn.Conv2d(1, cfg.channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(cfg.channels)
        self.relu = nn.ReLU()
        self.head = nn.Linear(cfg.channels, cfg.n_classes)

    def forward(self, x):
        x = self.relu(self.bn(self.conv(x)))
        return self.head(x.mean(dim=(2, 3)))


def trained_tiny() -> Tiny:
    torch.manual_seed(0)
    model = Tiny()
    model.train()
    model(torch.randn(8, 1, 16, 32))  # non-trivial BN running statistics
    return model.eval()


def test_input_shape_and_frontend():
    assert deploy.input_shape(META) == (1, 16, 32)
    assert deploy.input_shape(deploy.ModelMeta({}, [])) == (1, 256, 64)  # LogMel defaults: 32 kHz, hop 500
    assert deploy.input_shape(META.replace(input="waveform")) == (8000,)
    wave = torch.randn(2, 8000)
    assert deploy.frontend_for(META)(wave).shape == (2, 1, 16, 32)
    assert deploy.frontend_for(META.replace(input="waveform"))(wave) is wave
    with pytest.raises(ValueError, match="must be"):
        META.replace(input="mfcc")


def test_meta_json_keeps_field_order_and_leaves_out_unset_fields():
    meta = META.replace(quantized=True, quant_engine="x86", calibration={"batches": 2, "seed": 0})
    text = meta.to_json()
    assert json.loads(text) == {"features": FEATURES, "classes": ["x", "y", "z"], "arch": "tiny", "quantized": True,
                                "input": "logmel", "quant_engine": "x86", "calibration": {"batches": 2, "seed": 0}}
    assert list(json.loads(text)) == ["features", "classes", "arch", "quantized", "input", "quant_engine",
                                      "calibration"]  # the stored bytes follow the field order
    assert deploy.ModelMeta.from_json(text, "m.pt") == meta
    assert meta.sample_rate == 8000 and not meta.is_onnx and not meta.takes_waveform
    with pytest.raises(ValueError, match=r"m.pt: meta.json: unknown keys \['colour'\]"):
        deploy.ModelMeta.from_json(json.dumps({**meta.to_dict(), "colour": "red"}), "m.pt")
    with pytest.raises(ValueError, match="m.pt: invalid meta.json"):
        deploy.ModelMeta.from_json("{", "m.pt")


def test_waveform_model_round_trip(tmp_path):
    """A model with its own frontend (like PaSST) deploys with meta "input": "waveform"."""
    from mobileast.features import LogMel

    model = nn.Sequential(LogMel(**FEATURES), trained_tiny())
    meta = META.replace(input="waveform")
    deploy.save_deployed(model, tmp_path / "wave.pt", meta)
    loaded, loaded_meta = deploy.load_deployed(tmp_path / "wave.pt")
    assert loaded_meta == meta
    wave = torch.randn(3, 8000)
    with torch.no_grad():
        torch.testing.assert_close(loaded(deploy.frontend_for(meta)(wave)), model(wave), rtol=0, atol=0)


def test_round_trip_identical_outputs(tmp_path):
    model = trained_tiny()
    path = tmp_path / "model.pt"
    deploy.save_deployed(model, path, META)
    loaded, meta = deploy.load_deployed(path)
    assert meta == META
    assert not loaded.training
    x = torch.randn(5, 1, 16, 32)  # a batch size not seen while tracing
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert deploy.load_model_any(path)[1] == META
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporary left


def test_quantized_fx_model_round_trip(tmp_path):
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    model = trained_tiny()
    x = torch.randn(4, 1, 16, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_fx(model, get_default_qconfig_mapping("x86"), (x,))
        prepared(x)
        quantized = convert_fx(prepared)
    deploy.save_deployed(quantized, tmp_path / "int8.pt", META.replace(quantized=True))
    loaded, meta = deploy.load_deployed(tmp_path / "int8.pt")
    assert meta.quantized is True
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), quantized(x), rtol=0, atol=0)


def test_archive_does_not_depend_on_install_location(tmp_path):
    """No record names where torch or this project is installed (TorchScript's debug
    records do), so checkouts in different directories write identical bytes."""
    import zipfile
    from pathlib import Path

    path = tmp_path / "model.pt"
    deploy.save_deployed(trained_tiny(), path, META)
    install_dirs = [str(Path(torch.__file__).parent), str(Path(deploy.__file__).parent), __file__]
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        blob = b"".join(archive.read(name) for name in names)
    assert not [n for n in names if n.endswith(".debug_pkl")]
    assert not [d for d in install_dirs if d.encode() in blob]


def test_trace_that_bakes_in_batch_size_is_rejected(tmp_path):
    class Baked(nn.Module):
        def forward(self, x):
            return x.reshape(int(x.shape[0]), -1)[:, :3]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="trace changes with the batch size"):
            deploy.save_deployed(Baked(), tmp_path / "baked.pt", META)
    assert not (tmp_path / "baked.pt").exists()


def test_meta_required(tmp_path):
    with pytest.raises(ValueError, match=r"m.pt: lacks \['classes'\]"):
        deploy.ModelMeta.from_dict({"features": FEATURES}, "m.pt")


def ckpt_entries() -> dict:
    return {"arch": "tiny", "config": asdict(TinyConfig()), "state_dict": trained_tiny().state_dict(),
            "features": FEATURES, "classes": META.classes}


def test_checkpoint_loads_through_registry(tmp_path, monkeypatch):
    fake = types.ModuleType("mobileast.models")
    fake.build_model = lambda arch, config: {"tiny": Tiny}[arch](TinyConfig(**config))
    monkeypatch.setitem(sys.modules, "mobileast.models", fake)
    model = trained_tiny()
    ckpt = {"arch": "tiny", "config": asdict(TinyConfig()), "state_dict": model.state_dict(),
            "features": FEATURES, "classes": META.classes, "epoch": 3, "optimizer": {}}
    torch.save(ckpt, tmp_path / "ckpt.pt")
    loaded, meta = deploy.load_model_any(tmp_path / "ckpt.pt")
    assert meta == META.replace(config=asdict(TinyConfig()))
    assert not loaded.training
    x = torch.randn(2, 1, 16, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt: no such model file"):
        deploy.load_model_any(tmp_path / "missing.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a model at all")
    with pytest.raises(ValueError, match="garbage.pt: not a loadable"):
        deploy.load_model_any(tmp_path / "garbage.pt")
    deploy.save_deployed(trained_tiny(), tmp_path / "good.pt", META)
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated.pt: not a loadable"):
        deploy.load_model_any(tmp_path / "truncated.pt")
    torch.save({**ckpt_entries(), "model": Tiny()}, tmp_path / "pickled.pt")  # code, not only weights
    with pytest.raises(ValueError, match="pickled.pt: refused: its pickle would call or build test_deploy.Tiny, "):
        deploy.load_model_any(tmp_path / "pickled.pt")
    torch.save({"state_dict": {}}, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match=r"partial.pt: not a training checkpoint \(lacks \['arch'"):
        deploy.load_model_any(tmp_path / "partial.pt")
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), str(tmp_path / "nometa.pt"))
    with pytest.raises(ValueError, match="nometa.pt: TorchScript model without meta.json"):
        deploy.load_model_any(tmp_path / "nometa.pt")


class MarkerPayload:
    """Unpickling this creates `marker` (builtins.open(marker, "w")): code a model file runs when loaded."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def malicious_checkpoint(path, marker):
    """A checkpoint with the contract keys whose state_dict unpickles into MarkerPayload."""
    torch.save({"arch": "tiny", "config": {}, "state_dict": MarkerPayload(marker), "features": {}, "classes": []}, path)


def test_a_model_file_whose_unpickling_runs_code_is_refused(tmp_path, capsys):
    from mobileast import complexity, export, predict
    from mobileast.teachers import load_teachers

    malicious_checkpoint(tmp_path / "proof.pt", tmp_path / "proof_marker")
    torch.load(tmp_path / "proof.pt", weights_only=False)  # the unsafe load the payload is made for
    assert (tmp_path / "proof_marker").exists()
    marker, evil = tmp_path / "marker", tmp_path / "evil.pt"
    malicious_checkpoint(evil, marker)
    refused = f"{evil}: refused: its pickle would call or build io.open, which a checkpoint never holds"
    for load in (deploy.load_model_any, deploy.load_checkpoint_model,
                 lambda p: load_teachers([p], torch.device("cpu"), 16000)):
        with pytest.raises(deploy.InputError, match="^" + refused):
            load(evil)
    for command, argv in [(predict.main, ["--model", str(evil), "x.wav"]),
                          (export.main, ["--model", str(evil), "--format", "onnx", str(tmp_path / "x.onnx")]),
                          (complexity.main, ["--checkpoint", str(evil)])]:
        assert command(argv) == 2
        assert capsys.readouterr().err.strip().startswith("error: " + refused)
    assert not marker.exists()


def test_a_torchscript_archive_whose_data_unpickles_into_code_is_refused(tmp_path):
    """TorchScript's own unpickler resolves only TorchScript types: a deployed archive whose
    data.pkl names a Python callable does not load, and nothing runs."""
    import pickle
    import zipfile

    deploy.save_deployed(trained_tiny(), tmp_path / "good.pt", META)
    marker = tmp_path / "marker"
    with zipfile.ZipFile(tmp_path / "good.pt") as source, zipfile.ZipFile(tmp_path / "evil.pt", "w") as target:
        for info in source.infolist():
            target.writestr(info, pickle.dumps(MarkerPayload(marker), protocol=2)
                            if info.filename.endswith("/data.pkl") else source.read(info))
    with pytest.raises(ValueError, match=f"^{tmp_path / 'evil.pt'}: not a loadable TorchScript model "
                                         r"\(Unknown type name 'io.open'"):
        deploy.load_model_any(tmp_path / "evil.pt")
    assert not marker.exists()
