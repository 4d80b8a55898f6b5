"""Per-device models: their manifest and the routing of clips by recording device.

The `device_models` stage fine-tunes one copy of the student per training device (as the
DCASE 2025 task 1 baseline does) and lists them in `models/device/manifest.json`:
`{"enabled": bool, "models": {device: {"float", "int8", "onnx", "complexity" (file names
in the manifest's folder), "n_recordings", "epochs", ...}}, ...}`. A clip recorded on a
device with a model of its own goes through that model; every other clip (devices unseen
in training, or left out of `device_models.devices`) through the general model. The
stage disabled writes a manifest with no models, and evaluation then reports nothing
more than without the stage.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from mobileast.errors import InputError
from mobileast.files import write_json
from mobileast.metrics import summary

MANIFEST = "manifest.json"
GENERAL = "general"  # the routing target of a device without a model of its own


def write_manifest(folder: str | Path, enabled: bool, models: Mapping[str, Mapping[str, Any]],
                   **facts: Any) -> Path:
    """Write `folder`/manifest.json (atomically): enabled, models by device (in the given
    order) and any further `facts` (the recipe, devices skipped)."""
    path = Path(folder) / MANIFEST
    write_json(path, {"enabled": enabled, "models": {d: dict(m) for d, m in models.items()}, **facts})
    return path


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The manifest of `folder`, with every model's file names turned into paths and checked
    to exist; a missing or malformed manifest is an InputError naming the file."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise InputError(f"{path}: no manifest of per-device models (run the device_models stage: "
                         "dvc repro device_models)")
    try:
        manifest = json.loads(path.read_text())
        models = manifest["models"]
        enabled = manifest["enabled"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise InputError(f"{path}: not a manifest of per-device models ({type(error).__name__}: {error})") from None
    if not isinstance(models, dict) or not isinstance(enabled, bool):
        raise InputError(f"{path}: 'models' must be a mapping of device to files and 'enabled' a boolean")
    for device, files in models.items():
        for kind in ("float", "int8", "onnx"):
            if kind not in files:
                raise InputError(f"{path}: the model of device {device!r} lacks its {kind!r} file")
            files[kind] = Path(folder) / files[kind]
            if not files[kind].is_file():
                raise InputError(f"{path}: the {kind} model of device {device!r}, {files[kind]}, is missing")
    return manifest


def model_of_device(devices: Sequence[str], with_model: Sequence[str]) -> dict[str, str]:
    """{device: the device whose model classifies its clips, or GENERAL}, for each of `devices`."""
    return {d: d if d in with_model else GENERAL for d in devices}


def route(general: np.ndarray, by_device: Mapping[str, np.ndarray], devices: Sequence[str]) -> np.ndarray:
    """Routed logits: row i from `by_device[devices[i]]` when the clip's device has a model,
    else from `general`. Every array holds the logits of all clips (n_clips, classes), in
    the order of `devices`."""
    devices = np.asarray(devices)
    if general.shape[0] != len(devices):
        raise ValueError(f"{general.shape[0]} rows of logits for {len(devices)} clips")
    routed = np.array(general, copy=True)
    for device, logits in by_device.items():
        if logits.shape != general.shape:
            raise ValueError(f"the logits of device {device!r} have shape {logits.shape}, the general "
                             f"model's {general.shape}")
        rows = devices == device
        routed[rows] = logits[rows]
    return routed


def device_report(general: Mapping[str, Any], routed: Mapping[str, Any], with_model: Sequence[str]) -> dict[str, Any]:
    """reports/device_models.json of an evaluation with per-device models: the summary
    figures (mobileast.metrics.summary) of the general and the routed predictions, and per
    device of the fold its clips, the model that classified them in the routed predictions
    and both accuracies. `general`, `routed`: mobileast.metrics.evaluate_predictions results."""
    figures = summary({"general": general, "routed": routed})
    routing = model_of_device(list(general["per_device"]), with_model)
    return {"enabled": True, **figures,
            "per_device": {d: {"n_clips": general["per_device"][d]["n_clips"], "model": routing[d],
                               **{name: figures[name].get("per_device_accuracy", {}).get(d) for name in figures}}
                           for d in general["per_device"]}}
