"""The DCASE2025 Task 1 inference package: a general model, one model per device, routing.

The 2025 task asks for an installable Python package whose submission module implements
`load_model`, `load_inputs`, `get_model_for_device` and `predict` (the task's inference
API; mobileast.submission.inference_package is that module, copied verbatim) and reports
the complexity of the model of every device. Written into the output folder:

    setup.py, requirements.txt
    <Lastname>_<INST>_task1/__init__.py
    <Lastname>_<INST>_task1/<label>.py                  the API module
    <Lastname>_<INST>_task1/resources/<label>/
        routing.json         classes, sample rate, frontend, general model, {device: model}
        frontend.pt          the log-mel frontend (TorchScript; absent for waveform models)
        general.<ext>, <device>.<ext>   the models (int8 ONNX or TorchScript, as given)
        <model>.complexity.json         each model's complexity figures (mobileast.complexity)
        complexity.json      MACs and parameters of the model each device is routed to, and their maxima

Devices with a model of their own use it; every other device (unseen in training) uses
the general model.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Mapping

import torch

from mobileast.deploy import feature_args, frontend_for, is_torchscript
from mobileast.errors import InputError
from mobileast.files import atomic_output, write_json
from mobileast.labels import DEVICES
from mobileast.metrics import device_order
from mobileast.routing import GENERAL, model_of_device
from mobileast.submission import common
from mobileast.submission.common import Model

MODULE_SOURCE = Path(__file__).with_name("inference_package.py")
REQUIREMENTS = "numpy\ntorch\nonnxruntime\n"


def parse_device_models(specs: list[str]) -> dict[str, Path]:
    """{device: model path} of `--device-model DEV=PATH` flags."""
    models: dict[str, Path] = {}
    for spec in specs:
        device, sep, path = spec.partition("=")
        if not sep or not path or not device.isalnum():
            raise InputError(f"--device-model {spec!r}: expected DEVICE=PATH, e.g. a=models/device/a_int8.onnx")
        if device in models:
            raise InputError(f"--device-model: device {device!r} given twice")
        models[device] = Path(path)
    return models


def package_name(label: str) -> str:
    """The package of a submission label: the label without its index (Doe_TAU_task1_1 -> Doe_TAU_task1)."""
    return label.rsplit("_", 1)[0]


def _deployed(model: Model) -> Model:
    if not (model.meta.is_onnx or is_torchscript(model.path)):
        raise InputError(f"{model.path}: the 2025 package takes deployed models (int8 ONNX or TorchScript "
                         "from the quantize and export stages), not training checkpoints")
    return model


def _same_inputs(general: Model, others: Mapping[str, Model]) -> None:
    for device, model in others.items():
        if (feature_args(model.meta.features), model.meta.input) != (feature_args(general.meta.features),
                                                                    general.meta.input):
            raise InputError(f"{model.path} (device {device}) takes other features than the general model "
                             f"{general.path}: every model of a package shares its frontend")


def write_frontend(model: Model, path: Path) -> None:
    """The model's log-mel frontend as TorchScript, traced on 1 s clips (batches of 1 to 3)."""
    rate = model.meta.sample_rate
    traced = torch.jit.trace(frontend_for(model.meta), torch.zeros(2, rate),
                             check_inputs=[(torch.zeros(1, rate),), (torch.randn(3, rate) * 0.1,)])
    with atomic_output(path) as tmp:
        torch.jit.save(traced, str(tmp))


def write(general_path: Path, device_paths: Mapping[str, Path], out_dir: Path, label: str) -> Path:
    """Write the package; returns the folder of its resources."""
    general = _deployed(common.load(general_path))
    devices = {d: _deployed(common.load(p)) for d, p in device_paths.items()}
    _same_inputs(general, devices)
    files = {GENERAL: general, **devices}
    engines = {m.meta.quant_engine for m in files.values() if m.meta.quant_engine}
    if len(engines) > 1:
        raise InputError(f"the TorchScript models were quantized for different engines {sorted(engines)}: "
                         "one package runs them all under one engine")
    package = out_dir / package_name(label)
    resources = package / "resources" / label
    if resources.exists():
        shutil.rmtree(resources)  # the models of an earlier run of this label, which routing.json may no longer name
    resources.mkdir(parents=True)
    names = {key: f"{key}{m.path.suffix}" for key, m in files.items()}
    for key, model in files.items():
        shutil.copyfile(model.path, resources / names[key])
    complexities = {key: common.model_complexity(m) for key, m in files.items()}
    for key, complexity in complexities.items():
        write_json(resources / f"{key}.complexity.json", {**complexity, "model": names[key]})
    routed = {d: complexities[model] for d, model in model_of_device(device_order([*DEVICES, *devices]),
                                                                      list(devices)).items()}
    write_json(resources / "complexity.json", {
        "per_device": {d: {"MACs": c["macs"], "Params": c["params"], "param_memory_bytes": c["param_memory_bytes"]}
                       for d, c in routed.items()},
        "unseen_devices": "general model",
        "max_MACs": max(c["macs"] for c in complexities.values()),
        "max_Params": max(c["params"] for c in complexities.values())})
    frontend = None if general.meta.takes_waveform else "frontend.pt"
    if frontend:
        write_frontend(general, resources / frontend)
    write_json(resources / "routing.json", {
        "classes": list(general.meta.classes), "sample_rate": general.meta.sample_rate, "frontend": frontend,
        "quant_engine": next(iter(engines), None), "general": names[GENERAL],
        "devices": {d: names[d] for d in devices}})
    shutil.copyfile(MODULE_SOURCE, package / f"{label}.py")
    (package / "__init__.py").write_text(f'"""DCASE2025 Task 1 inference package {package.name}."""\n')
    (out_dir / "requirements.txt").write_text(REQUIREMENTS)
    (out_dir / "setup.py").write_text(
        "from setuptools import find_packages, setup\n\n"
        f"setup(name={package.name!r}, version='1.0.0', packages=find_packages(),\n"
        f"      package_data={{{package.name!r}: ['resources/*/*']}}, install_requires=open('requirements.txt').read().split())\n")
    return resources
