"""DCASE2025 Task 1 inference module with device-specific models, written by
`python -m mobileast submit --format 2025`.

It implements the task's inference API: `load_model`, `load_inputs`,
`get_model_for_device` and `predict`. It needs numpy and torch (the feature frontend is
a TorchScript file; TorchScript models run with torch), and onnxruntime for ONNX models;
nothing of the project that wrote it.

The models live in resources/<module name>/ next to this file, described by its
routing.json: the class order, the sample rate, the frontend, the general model and one
model per device. A file recorded on a device with a model of its own is classified by
that model; any other device (one unseen in training, or "unknown") by the general model.

Audio: PCM WAV (8, 16, 24 or 32 bit) read with the standard library, channels averaged,
resampled to the models' rate (band-limited resampling by the FFT), cut into consecutive
1 s clips (the last one zero-padded); a file's logits are the log of its clips' mean
class probabilities (for a 1 s file, the model's log-softmax).
"""
from __future__ import annotations

import json
import wave
from collections import defaultdict
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn

DEFAULT_RESOURCES = Path(__file__).resolve().parent / "resources" / Path(__file__).stem


class OnnxModel(nn.Module):
    """An ONNX model run by onnxruntime on the CPU, called like a torch module."""

    def __init__(self, path: Path):
        super().__init__()
        import onnxruntime

        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: Tensor) -> Tensor:
        array = x.detach().cpu().numpy().astype(np.float32, copy=False)
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])


def _load_file(path: Path, quant_engine: Optional[str]) -> nn.Module:
    if path.suffix == ".onnx":
        return OnnxModel(path).eval()
    if quant_engine:
        torch.backends.quantized.engine = quant_engine
    return torch.jit.load(str(path), map_location="cpu").eval()


class DeviceModels(nn.Module):
    """The general model, the device models and the frontend of a routing.json."""

    def __init__(self, resources: Path):
        super().__init__()
        routing = json.loads((resources / "routing.json").read_text())
        self.class_order: List[str] = list(routing["classes"])
        self.sample_rate: int = int(routing["sample_rate"])
        self.frontend = torch.jit.load(str(resources / routing["frontend"]), map_location="cpu").eval() \
            if routing["frontend"] else nn.Identity()
        engine = routing.get("quant_engine")
        self.general = _load_file(resources / routing["general"], engine)
        self.devices = nn.ModuleDict({d: _load_file(resources / f, engine) for d, f in routing["devices"].items()})

    def for_device(self, device_id: str) -> nn.Module:
        return self.devices[device_id] if device_id in self.devices else self.general


def load_model(model_file_path: Optional[str] = None) -> DeviceModels:
    """The models of a resources folder (default: the one packaged with this module)."""
    return DeviceModels(Path(model_file_path) if model_file_path else DEFAULT_RESOURCES)


def read_wav(path: str) -> Tuple[np.ndarray, int]:
    """Mono float32 samples in [-1, 1) and the sample rate of a PCM WAV file."""
    with wave.open(str(path), "rb") as f:
        width, channels, rate = f.getsampwidth(), f.getnchannels(), f.getframerate()
        raw = f.readframes(f.getnframes())
    if width == 1:
        samples = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128) / 128
    elif width == 3:
        bytes3 = np.frombuffer(raw, np.uint8).reshape(-1, 3)
        as_int = (bytes3[:, 0].astype(np.int32) | (bytes3[:, 1].astype(np.int32) << 8)
                  | (bytes3[:, 2].astype(np.int32) << 16))
        samples = (np.where(as_int >= 1 << 23, as_int - (1 << 24), as_int) / float(1 << 23)).astype(np.float32)
    else:
        samples = (np.frombuffer(raw, {2: "<i2", 4: "<i4"}[width]) / float(1 << (8 * width - 1))).astype(np.float32)
    return samples.reshape(-1, channels).mean(axis=1), rate


def resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Band-limited resampling by the FFT (no-op at the same rate)."""
    if rate == target:
        return samples
    n_out = int(round(len(samples) * target / rate))
    spectrum = np.fft.rfft(samples)
    bins = n_out // 2 + 1
    spectrum = spectrum[:bins] if len(spectrum) >= bins else np.pad(spectrum, (0, bins - len(spectrum)))
    return (np.fft.irfft(spectrum, n_out) * n_out / len(samples)).astype(np.float32)


def clips_of(samples: np.ndarray, clip: int) -> np.ndarray:
    """Consecutive clips (n, clip) of `samples`, the last one zero-padded; at least one."""
    n = max(1, -(-len(samples) // clip))
    return np.pad(samples, (0, n * clip - len(samples))).reshape(n, clip)


def load_inputs(file_paths: List[str], device_ids: List[str], model: DeviceModels) -> List[Tensor]:
    """The model input of every file, in order: its 1 s clips through the frontend
    (clips, 1, mel bands, frames); device_ids are not needed to build inputs."""
    assert len(file_paths) == len(device_ids), "one device id per file"
    inputs = []
    with torch.no_grad():
        for path in file_paths:
            samples, rate = read_wav(path)
            clips = clips_of(resample(samples, rate, model.sample_rate), model.sample_rate)
            inputs.append(model.frontend(torch.from_numpy(clips)))
    return inputs


def get_model_for_device(model: DeviceModels, device_id: str) -> nn.Module:
    """The model of `device_id`: its own if it has one, else the general model."""
    return model.for_device(device_id)


def predict(file_paths: List[str], device_ids: List[str], model_file_path: Optional[str] = None,
            use_cuda: bool = False, batch_size: int = 64) -> Tuple[List[Tensor], List[str]]:
    """(logits [n_classes] of every file in input order, class order). Files are grouped
    by device and run by that device's model (get_model_for_device) in batches of clips.
    The models run on the CPU (int8 kernels and onnxruntime's CPU provider), whatever use_cuda says."""
    assert len(file_paths) == len(device_ids), "one device id per file"
    model = load_model(model_file_path)
    inputs = load_inputs(file_paths, device_ids, model)
    by_device = defaultdict(list)
    for index, device in enumerate(device_ids):
        by_device[device].append(index)
    outputs: List[Optional[Tensor]] = [None] * len(file_paths)
    with torch.no_grad():
        for device, indices in by_device.items():
            submodel = get_model_for_device(model, device)
            clips = torch.cat([inputs[i] for i in indices])
            logits = torch.cat([submodel(clips[b:b + batch_size]) for b in range(0, len(clips), batch_size)])
            for i, part in zip(indices, torch.split(logits, [len(inputs[i]) for i in indices])):
                probs = torch.softmax(part.double(), dim=1).mean(dim=0)
                outputs[i] = torch.log(probs).float()
    return outputs, model.class_order
