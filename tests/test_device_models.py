"""Per-device models: the device_models stage (off: a manifest only, without importing the
training code; on: one fine-tuned, quantized and exported model per training device) and
the routing of evaluate (a seen device's clips through its model, every other clip
through the general model)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from mobileast import quantize, routing
from mobileast.deploy import load_checkpoint_model, load_model_any
from mobileast.errors import InputError
from mobileast.evaluate import evaluate_routed, fold_logits
from mobileast.data.crops import ClipSource, train_crops
from mobileast.export import export_int8
from mobileast.labels import SCENES
from mobileast.metrics import evaluate_predictions
from mobileast.models import model_spec
from test_crops import make_clip_store, make_recordings_store
from test_quantize import FEATURES, as_if_trained, one_thread, varied_inputs  # noqa: F401 (autouse fixture)

ROOT = Path(__file__).parents[1]
TRAIN_DEVICES = ["a", "b", "a", "b", "a", "c"]  # of the six train recordings
EVAL_DEVICES = ["a", "b", "s4"] * 4  # of the twelve evaluate clips


def reference_route(general: np.ndarray, by_device: dict[str, np.ndarray], devices: list[str]) -> np.ndarray:
    """Clip by clip: its device's model's row if it has one, else the general model's."""
    return np.stack([(by_device[d] if d in by_device else general)[i] for i, d in enumerate(devices)])


def test_route_takes_each_clips_row_from_its_devices_model_else_the_general_one():
    rng = np.random.default_rng(0)
    devices = ["a", "s4", "b", "a", "c", "s4", "b"]
    general = rng.standard_normal((7, 10))
    by_device = {"a": rng.standard_normal((7, 10)), "b": rng.standard_normal((7, 10))}
    routed = routing.route(general, by_device, devices)
    torch.testing.assert_close(routed, reference_route(general, by_device, devices))
    assert routing.model_of_device(["a", "b", "c", "s4"], ["a", "b"]) == {"a": "a", "b": "b", "c": "general",
                                                                          "s4": "general"}
    torch.testing.assert_close(routing.route(general, {}, devices), general)
    with pytest.raises(ValueError, match="logits of device 'a' have shape"):
        routing.route(general, {"a": general[:3]}, devices)


def test_a_manifest_is_read_with_its_files_checked(tmp_path):
    with pytest.raises(InputError, match="no manifest of per-device models"):
        routing.read_manifest(tmp_path)
    (tmp_path / "a.pt").write_bytes(b"x")
    (tmp_path / "a_int8.pt").write_bytes(b"x")
    routing.write_manifest(tmp_path, True, {"a": {"float": "a.pt", "int8": "a_int8.pt", "onnx": "a_int8.onnx"}})
    with pytest.raises(InputError, match=r"the onnx model of device 'a', .*a_int8.onnx, is missing"):
        routing.read_manifest(tmp_path)
    (tmp_path / routing.MANIFEST).write_text("[]")
    with pytest.raises(InputError, match="not a manifest of per-device models"):
        routing.read_manifest(tmp_path)


def stage_project(root: Path, device_models: dict) -> Path:
    """A project folder the stage runs in: params.yaml (the repository's, with the given
    device_models keys and tiny quantization), a dvc.yaml marking the root, the stores."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["device_models"].update(device_models)
    params["quant"].update(calib_batches=1, batch_size=4)
    params["train"].update(validate_every=1, precision="fp32")
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / "dvc.yaml").write_text("stages: {}\n")
    return root


def test_disabled_stage_writes_an_empty_manifest_without_importing_the_training_code(tmp_path):
    stage_project(tmp_path, {"enabled": False})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")])}
    code = ("import runpy, sys; runpy.run_module('stages.device_models', run_name='__main__'); "
            "print(sorted(m for m in ('torch', 'mlflow', 'mobileast.training') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         check=True).stdout
    assert out.splitlines()[-1] == "[]"
    assert [p.name for p in (tmp_path / "models/device").iterdir()] == [routing.MANIFEST]
    assert json.loads((tmp_path / "models/device" / routing.MANIFEST).read_text()) == {"enabled": False, "models": {}}
    assert evaluate_routed(tmp_path / "models/device", tmp_path / "no-general.onnx", tmp_path, tmp_path, 8) == \
        {"enabled": False}  # runs no model (the general one does not even exist)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """Stores with devices (train: a, b, c; evaluate: a, b, s4), a trained-looking sub4
    student and its int8 ONNX model."""
    root = tmp_path_factory.mktemp("device_models")
    recordings, resampled = root / "data/recordings", root / "data/resampled"
    recordings.mkdir(parents=True)
    resampled.mkdir(parents=True)
    make_recordings_store(recordings, {"train": [[0, 1, 2], [0, 2, 3, 4], [1, 2], [0, 1, 2, 3], [0, 1], [1, 2]]},
                          clip_samples=32000)
    table = pd.read_csv(recordings / "recordings.csv")
    table.assign(device=TRAIN_DEVICES).to_csv(recordings / "recordings.csv", index=False)
    (recordings / "train.npy").rename(resampled / "train.npy")
    clips = (np.random.default_rng(0).standard_normal((12, 32000)) * 3000).astype(np.int16)
    make_clip_store(resampled, "evaluate", clips, [SCENES[i % 10] for i in range(12)])
    index = pd.read_csv(resampled / "index.csv")
    index.assign(device=EVAL_DEVICES).to_csv(resampled / "index.csv", index=False)
    model = as_if_trained("sub4", [varied_inputs(8, torch.Generator().manual_seed(1)) for _ in range(2)])
    arch, config = model_spec(model)
    (root / "models").mkdir()
    torch.save({"arch": arch, "config": config, "state_dict": model.state_dict(), "features": FEATURES,
                "classes": list(SCENES), "input": "logmel", "params": {"seed": 0}}, root / "models/student.pt")
    cwd = Path.cwd()
    os.chdir(root)  # the stage's paths are relative to the project root, as in DVC's runs
    try:
        quant = {"calib_batches": 1, "batch_size": 4, "float_modules": [], "dynamic_modules": ["classifier"]}
        quantize.quantize_student(Path("models/student.pt"), recordings, resampled, Path("models/student_int8.pt"),
                                  quant, hop_s=0.5, seed=0)
        export_int8(Path("models/student_int8.pt"), Path("models/student_int8.onnx"), recordings, resampled)
    finally:
        os.chdir(cwd)
    return root


@pytest.fixture(scope="module")
def enabled(project):
    """The stage run with device models on, for a, b and s4 (s4 has no train recordings)."""
    from stages import device_models

    stage_project(project, {"enabled": True, "devices": ["a", "b", "s4"], "epochs": 2, "batch_size": 4,
                            "crops_per_recording": 4, "lr": 0.001})
    cwd, uri = Path.cwd(), os.environ.get("MLFLOW_TRACKING_URI")
    os.chdir(project)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{project / 'mlflow.db'}"
    try:
        device_models.main()
    finally:
        os.chdir(cwd)
        if uri is None:
            del os.environ["MLFLOW_TRACKING_URI"]
        else:
            os.environ["MLFLOW_TRACKING_URI"] = uri
    return project / "models/device"


def test_enabled_stage_fine_tunes_quantizes_and_exports_one_model_per_training_device(project, enabled):
    manifest = routing.read_manifest(enabled)
    assert manifest["enabled"] is True and list(manifest["models"]) == ["a", "b"] and manifest["skipped"] == ["s4"]
    assert {d: m["n_recordings"] for d, m in manifest["models"].items()} == {"a": 3, "b": 2}
    general, _ = load_checkpoint_model(project / "models/student.pt")
    for device, files in manifest["models"].items():
        model, meta = load_checkpoint_model(files["float"])
        assert meta.params["device_model"]["device"] == device and meta.params["seed"] == 0
        changed = [not torch.equal(p, q) for p, q in zip(model.state_dict().values(), general.state_dict().values())
                   if p.is_floating_point()]
        assert any(changed)  # fine-tuned, not a copy
        _, onnx_meta = load_model_any(files["onnx"])
        assert onnx_meta.calibration["device"] == device
        assert onnx_meta.source["checkpoint"] == f"models/device/{device}.pt"
        history = pd.read_csv(enabled / files["history"])
        assert history["epoch"].tolist() == [1, 2] and (history["lr"] == 0.001).all()
        complexity = json.loads((enabled / files["complexity"]).read_text())
        assert complexity["param_memory_pass"] is True
    a, b = (load_checkpoint_model(manifest["models"][d]["float"])[0].state_dict() for d in "ab")
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())
    assert not list(project.glob(".resume/device_models_*"))  # discarded once every output is written


def test_routed_evaluation_uses_each_seen_devices_model_and_the_general_one_for_the_rest(project, enabled):
    recordings, resampled = project / "data/recordings", project / "data/resampled"
    cwd = Path.cwd()
    os.chdir(project)
    try:
        report = evaluate_routed(Path("models/device"), Path("models/student_int8.onnx"), resampled, recordings, 5)
        clips = ClipSource(resampled, "evaluate")
        logits = {}
        for name, path in (("general", "models/student_int8.onnx"), ("a", "models/device/a_int8.onnx"),
                           ("b", "models/device/b_int8.onnx")):
            model, meta = load_model_any(Path(path))
            logits[name] = fold_logits(model, meta, clips, 5).numpy()
    finally:
        os.chdir(cwd)
    devices = clips.table["device"].tolist()

    def accuracy(values: np.ndarray, device: str) -> float:
        result = evaluate_predictions(values, clips.labels, devices, ["a", "b", "c"], list(SCENES))
        return round(result["per_device"][device]["accuracy"], 5)

    assert report["enabled"] is True
    assert {d: row["model"] for d, row in report["per_device"].items()} == {"a": "a", "b": "b", "s4": "general"}
    assert {d: row["n_clips"] for d, row in report["per_device"].items()} == {"a": 4, "b": 4, "s4": 4}
    for device, row in report["per_device"].items():
        assert row["general"] == accuracy(logits["general"], device)
        assert row["routed"] == accuracy(logits.get(device, logits["general"]), device)
    routed = reference_route(logits["general"], {"a": logits["a"], "b": logits["b"]}, devices)
    expected = evaluate_predictions(routed, clips.labels, devices, ["a", "b", "c"], list(SCENES))
    assert report["routed"]["accuracy"] == round(expected["accuracy"], 5)
    assert report["routed"]["log_loss"] == round(expected["log_loss"], 5)


def test_device_crops_are_that_devices_recordings_on_the_same_grid(project):
    stores = (project / "data/recordings", project / "data/resampled")
    full = train_crops(*stores, 32000, 0.5, "logits.hop_s", "features.sample_rate")
    only_b = train_crops(*stores, 32000, 0.5, "logits.hop_s", "features.sample_rate", devices=["b"])
    assert only_b.table["recording"].tolist() == full.table["recording"][full.table["device"] == "b"].tolist()
    for i, name in enumerate(only_b.table["recording"]):
        j = int(np.flatnonzero(full.table["recording"] == name)[0])
        torch.testing.assert_close(only_b.load(np.arange(only_b.row_offsets[i], only_b.row_offsets[i + 1])).wave,
                                   full.load(np.arange(full.row_offsets[j], full.row_offsets[j + 1])).wave)
