"""Model files: the typed meta every model carries, and loading and saving the three kinds.

A deployed model is the classifier without its log-mel frontend, taking
(B, 1, n_mels, frames) and returning (B, n_classes) logits, saved with
torch.jit.save and a "meta.json" extra file (`ModelMeta`: features, classes,
architecture, quantization; the project contract), so a user needs only torch to
rebuild the frontend and run it. The `quantize` stage writes one; `evaluate` and
`predict` read it with `load_model_any`, which also accepts a float training
checkpoint and an ONNX model (`*.onnx`, written by mobileast.export with the same
meta.json in its metadata_props), run with onnxruntime behind the same call:
model(logmel) -> logits.

An int8 TorchScript model records the quantized engine it was made for
(`quant_engine`: x86 on x86-64, qnnpack on ARM); it is loaded with that engine,
and a host whose PyTorch lacks it gets an error naming both.

`input` "waveform" marks a model that takes the waveform (B, samples) and computes
its own features (the PaSST teacher); `features` then still gives its sample rate.
"logmel" (the default): the model takes LogMel output.

Every file is loaded without running code it carries: checkpoints with
torch.load(weights_only=True) (they hold only tensors, dicts, lists, strings and
numbers), ONNX models without external data.
"""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from mobileast.errors import InputError

from mobileast.files import atomic_output
from mobileast.features import LogMel

META_FILE = "meta.json"
INPUTS = ("logmel", "waveform")
CHECKPOINT_KEYS = ("arch", "config", "state_dict", "features", "classes")
SERIALIZATION_ID = "/.data/serialization_id"  # record of every torch zip archive
CHECKPOINT_FIELDS = ("arch", "config", "features", "classes", "input", "params")  # a checkpoint's meta keys


@dataclass(frozen=True)
class ModelMeta:
    """What a model file says about itself: how to build its input, what its outputs
    mean, what it was made from. Stored as JSON (`to_json` / `from_json`) in a deployed
    model's meta.json and an ONNX model's metadata_props; a training checkpoint holds the
    first fields as top-level keys (`from_checkpoint`). Optional fields left None are
    not stored."""

    features: dict[str, Any]  # LogMel kwargs (a waveform model: its sample_rate)
    classes: list[str]  # the class of each logit
    arch: str | None = None  # mobileast.models registry name ...
    config: dict[str, Any] | None = None  # ... and its config: the float architecture
    quantized: bool = False
    input: str = "logmel"  # "logmel" or "waveform" (the model computes its own features)
    params: dict[str, Any] | None = None  # the training stage's params (students of this pipeline)
    quant_engine: str | None = None  # int8 TorchScript: PyTorch's quantized engine (x86, qnnpack)
    float_modules: list[str] | None = None  # int8: deploy-form modules kept float
    dynamic_modules: list[str] | None = None  # int8: Linears quantized dynamically
    source: dict[str, str] | None = None  # int8: {"checkpoint": path, "md5": md5} of the float checkpoint
    calibration: dict[str, Any] | None = None  # int8: {"batches", "batch_size", "hop_s", "seed", "split"[, "device"]} of its crops
    format: str | None = None  # "onnx" for an ONNX model
    runtime: str | None = None  # int8 ONNX: "onnxruntime"
    onnx_quantization: dict[str, Any] | None = None  # int8 ONNX: how it was converted

    def __post_init__(self) -> None:
        if self.input not in INPUTS:
            raise ValueError(f'meta "input" must be "logmel" or "waveform", got {self.input!r}')

    @classmethod
    def from_dict(cls, entries: Mapping[str, Any], where: str = "meta") -> ModelMeta:
        """The meta of stored `entries`; unknown or missing keys are a ValueError naming `where`."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in entries if k not in names]
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.default is dataclasses.MISSING and f.name not in entries]
        if unknown or missing:
            raise ValueError(f"{where}: " + "; ".join(
                ([f"lacks {missing}"] if missing else []) + ([f"unknown keys {unknown}"] if unknown else [])))
        return cls(**{k: v for k, v in entries.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        """The stored entries, in field order, without the fields left None."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}

    @classmethod
    def from_json(cls, text: str, where: str) -> ModelMeta:
        """The meta of a stored meta.json text (`where`: its file, for errors)."""
        try:
            entries = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: invalid {META_FILE} ({e})") from e
        if not isinstance(entries, dict):
            raise ValueError(f"{where}: {META_FILE} is not a JSON object")
        return cls.from_dict(entries, f"{where}: {META_FILE}")

    def to_json(self, sort_keys: bool = False) -> str:
        """The meta.json text (ONNX metadata sorts the keys)."""
        return json.dumps(self.to_dict(), sort_keys=sort_keys)

    def to_checkpoint(self) -> dict[str, Any]:
        """The top-level meta keys of a training checkpoint (the inverse of `from_checkpoint`)."""
        return {name: getattr(self, name) for name in CHECKPOINT_FIELDS if getattr(self, name) is not None}

    @classmethod
    def from_checkpoint(cls, checkpoint: Mapping[str, Any]) -> ModelMeta:
        """The meta of a training checkpoint (its contract keys; checked by the caller)."""
        return cls(features=checkpoint["features"], classes=list(checkpoint["classes"]), arch=checkpoint["arch"],
                   config=checkpoint["config"], quantized=False, input=checkpoint.get("input", "logmel"),
                   params=checkpoint.get("params"))

    def replace(self, **changes: Any) -> ModelMeta:
        return dataclasses.replace(self, **changes)

    @property
    def takes_waveform(self) -> bool:
        """True for a model with its own frontend (input "waveform")."""
        return self.input == "waveform"

    @property
    def is_onnx(self) -> bool:
        return self.format == "onnx"

    @property
    def sample_rate(self) -> int:
        """The rate of the audio the model takes (Hz)."""
        return int(feature_args(self.features)["sample_rate"])


def feature_args(features: Mapping[str, Any]) -> dict[str, Any]:
    """All LogMel kwargs: meta.features completed with LogMel's defaults."""
    defaults = {k: p.default for k, p in inspect.signature(LogMel).parameters.items()}
    return {**defaults, **features}


def frontend_for(meta: ModelMeta) -> nn.Module:
    """What turns a waveform batch (B, samples) into the model's input, in eval mode."""
    return nn.Identity() if meta.takes_waveform else LogMel(**meta.features).eval()


def input_shape(meta: ModelMeta) -> tuple[int, ...]:
    """Model input shape of one 1 s clip without the batch: (1, n_mels, frames) or (samples,)."""
    f = feature_args(meta.features)
    if meta.takes_waveform:
        return (int(f["sample_rate"]),)
    return 1, int(f["n_mels"]), int(f["sample_rate"]) // int(f["hop_length"])


def save_deployed(model: nn.Module, path: str | Path, meta: ModelMeta) -> None:
    """Trace `model` (switched to eval mode) and save it as TorchScript with `meta`, atomically.

    Tracing rather than scripting: it handles both eager float models and FX-quantized
    GraphModules whatever Python they use. A trace records one execution, so it is
    traced at batch 2 and checked at batches 1 and 3 (torch.jit.trace check_inputs):
    a model whose trace bakes in the batch size fails here, not at evaluation.
    The input size is fixed to 1 s clips (`input_shape(meta)`).
    """
    meta_json = meta.to_json()
    shape = input_shape(meta)
    gen = torch.Generator().manual_seed(0)
    example, *checks = (torch.randn(b, *shape, generator=gen) for b in (2, 1, 3))
    model.eval()
    try:
        with torch.no_grad():
            traced = torch.jit.trace(model, example, check_inputs=[(c,) for c in checks])
    except torch.jit.TracingCheckError as e:
        raise ValueError(f"cannot deploy {type(model).__name__} to {path}: its trace changes with "
                         f"the batch size (Python ints from tensor shapes or values?): "
                         f"{_first_line(e)}") from e
    with atomic_output(path) as tmp:
        torch.jit.save(traced, str(tmp), _extra_files={META_FILE: meta_json})
        _strip_debug_records(tmp)


def _strip_debug_records(archive: Path) -> None:
    """Drop TorchScript's debug records so the archive's bytes don't depend on where the code lives.

    The `*.debug_pkl` records hold source ranges and call stacks naming the absolute
    paths of the torch and project sources (e.g. inside `.venv`), so the same model saved
    from two checkouts differed, and so did its md5 in dvc.lock. Without them TorchScript
    errors still show the serialized code, only not the original Python lines.
    `.data/serialization_id` (a hash of the records torch wrote) is recomputed from
    the records kept.
    """
    with zipfile.ZipFile(archive) as source:
        infos = [i for i in source.infolist() if not i.filename.endswith(".debug_pkl")]
        id_info = next(i for i in infos if i.filename.endswith(SERIALIZATION_ID))
        kept = [(info, source.read(info)) for info in infos if info is not id_info]
    digest = hashlib.sha1()
    for info, data in kept:
        digest.update(info.filename.encode() + b"\0" + data)
    serialization_id = str(int(digest.hexdigest(), 16) % 10**40).zfill(40)
    rewritten = archive.with_name(archive.name + ".strip")
    with zipfile.ZipFile(rewritten, "w", zipfile.ZIP_STORED) as target:
        for info, data in kept:
            target.writestr(info, data)
        target.writestr(id_info, serialization_id)
    rewritten.replace(archive)


def is_torchscript(path: str | Path) -> bool:
    """True for a torch.jit.save archive (has constants.pkl), False for torch.save files."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


def read_meta(path: str | Path) -> ModelMeta:
    """The meta.json of a deployed TorchScript file, read from the archive without loading the model."""
    with zipfile.ZipFile(path) as archive:
        name = next((n for n in archive.namelist() if n.endswith(f"/extra/{META_FILE}")), None)
        if name is None:
            raise ValueError(f"{path}: TorchScript model without {META_FILE}; save it with "
                             f"mobileast.deploy.save_deployed")
        text = archive.read(name).decode()
    return ModelMeta.from_json(text, str(path))


def use_quant_engine(engine: str, path: str | Path) -> None:
    """Make `engine` PyTorch's quantized engine, or explain why this host cannot run `path`."""
    supported = torch.backends.quantized.supported_engines
    if engine not in supported:
        raise InputError(f"{path} was quantized for PyTorch's {engine!r} engine, which this host's PyTorch lacks "
                         f"(it has {', '.join(e for e in supported if e != 'none')}): quantize it again on this "
                         f"host (dvc repro quantize) or run its ONNX export ({Path(path).with_suffix('.onnx')})")
    torch.backends.quantized.engine = engine


def load_deployed(path: str | Path) -> tuple[torch.jit.ScriptModule, ModelMeta]:
    """Load a deployed TorchScript model on the CPU in eval mode, with its meta
    (a quantized one with its quantized engine). The one place a TorchScript file is loaded."""
    path = _existing(path)
    try:
        meta = read_meta(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise ValueError(f"{path}: not a loadable TorchScript model ({_first_line(e)})") from e
    if meta.quantized:
        use_quant_engine(meta.quant_engine or "x86", path)
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # torch raises RuntimeError, zip and pickle errors alike
        raise ValueError(f"{path}: not a loadable TorchScript model ({_first_line(e)})") from e
    return module.eval(), meta


class OnnxModel(nn.Module):
    """An ONNX model run by onnxruntime (CPU) behind the nn.Module call: logmel -> logits.
    onnxruntime's errors (a graph it cannot load, an input it rejects) come out as
    ValueError naming the model file, as for the other model formats."""

    def __init__(self, path: str | Path, threads: int = 0):
        super().__init__()
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads  # 0: onnxruntime's default, one per core
        options.log_severity_level = 3
        self.path = Path(path)
        try:
            self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own pybind exception types
            raise ValueError(f"{path}: onnxruntime cannot load this model ({_first_line(e)})") from e
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().cpu().numpy().astype("float32", copy=False)
        try:
            return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])
        except Exception as e:
            raise ValueError(f"{self.path}: onnxruntime failed on input {tuple(array.shape)} ({_first_line(e)})") from e


def load_onnx(path: str | Path, threads: int = 0) -> tuple[OnnxModel, ModelMeta]:
    """An ONNX model of mobileast.export (run with onnxruntime) and its meta; a model that
    refers to external data files is refused."""
    path = _existing(path)
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf DecodeError and friends
        raise ValueError(f"{path}: not a loadable ONNX model ({_first_line(e)})") from e
    props = {p.key: p.value for p in proto.metadata_props}
    if META_FILE not in props:
        raise ValueError(f"{path}: ONNX model without {META_FILE} metadata; export it with python -m mobileast export")
    meta = ModelMeta.from_json(props[META_FILE], str(path))
    if any(init.data_location == onnx.TensorProto.EXTERNAL for init in proto.graph.initializer):
        raise ValueError(f"{path}: the model refers to external data files, which are not loaded")
    return OnnxModel(path, threads).eval(), meta


def load_checkpoint_model(path: str | Path) -> tuple[nn.Module, ModelMeta]:
    """Rebuild the float model of a training checkpoint (contract format) in eval mode,
    with its meta. Loaded with weights_only=True: tensors and plain data only, no code."""
    path = _existing(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, bad pickle, not a torch file at all, or refused by weights_only
        named = re.search(r"Unsupported global: GLOBAL (\S+)", str(e)) if isinstance(e, pickle.UnpicklingError) else None
        if named:
            raise InputError(f"{path}: refused: its pickle would call or build {named.group(1)}, which a checkpoint "
                             "never holds (only tensors and plain data are loaded, so no code in a model file runs)") from e
        raise InputError(f"{path}: not a loadable model or checkpoint ({_first_line(e)})") from e
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise ValueError(f"{path}: not a training checkpoint (lacks {missing})")
    from mobileast.models import build_model  # lazy: deployed models need no model code

    model = build_model(ckpt["arch"], ckpt["config"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ModelMeta.from_checkpoint(ckpt)


def load_model_any(path: str | Path) -> tuple[nn.Module, ModelMeta]:
    """A deployed TorchScript model, an ONNX model (*.onnx) or a training checkpoint
    -> (model in eval mode, meta)."""
    path = _existing(path)
    if path.suffix == ".onnx":
        return load_onnx(path)
    return load_deployed(path) if is_torchscript(path) else load_checkpoint_model(path)


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model file")
    return path


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
