"""Deployed models: TorchScript or ONNX files that run without the training code.

A deployed model is the classifier without its log-mel frontend, taking
(B, 1, n_mels, frames) and returning (B, n_classes) logits, saved with
torch.jit.save and a "meta.json" extra file {"features": LogMel kwargs,
"classes": [...], "arch": ..., "quantized": bool} (the project contract), so a
user needs only torch to rebuild the frontend and run it. The `quantize` stage
writes one; `evaluate` and `predict` read it with `load_model_any`, which also
accepts a float training checkpoint and an ONNX model (`*.onnx`, written by
mobileast.export with the same meta.json in its metadata_props), run with
onnxruntime behind the same call: model(logmel) -> logits.

An int8 TorchScript model records the quantized engine it was made for
(meta "quant_engine": x86 on x86-64, qnnpack on ARM); it is loaded with that engine,
and a host whose PyTorch lacks it gets an error naming both.

Optional meta key "input": "waveform" marks a model that takes the waveform
(B, samples) and computes its own features (the PaSST teacher); meta["features"]
then still gives its sample rate. Absent or "logmel": the model takes LogMel output.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from mobileast.errors import InputError

from mobileast.files import atomic_output
from mobileast.features import LogMel

META_FILE = "meta.json"
REQUIRED_META = ("features", "classes")
CHECKPOINT_KEYS = ("arch", "config", "state_dict", "features", "classes")
SERIALIZATION_ID = "/.data/serialization_id"  # record of every torch zip archive


def feature_args(features: Mapping[str, Any]) -> dict[str, Any]:
    """All LogMel kwargs: meta["features"] completed with LogMel's defaults."""
    defaults = {k: p.default for k, p in inspect.signature(LogMel).parameters.items()}
    return {**defaults, **features}


def takes_waveform(meta: Mapping[str, Any]) -> bool:
    """True for a model with its own frontend (meta "input": "waveform")."""
    kind = meta.get("input", "logmel")
    if kind not in ("logmel", "waveform"):
        raise ValueError(f'meta "input" must be "logmel" or "waveform", got {kind!r}')
    return kind == "waveform"


def frontend_for(meta: Mapping[str, Any]) -> nn.Module:
    """What turns a waveform batch (B, samples) into the model's input, in eval mode."""
    return nn.Identity() if takes_waveform(meta) else LogMel(**meta["features"]).eval()


def input_shape(meta: Mapping[str, Any]) -> tuple[int, ...]:
    """Model input shape of one 1 s clip without the batch: (1, n_mels, frames) or (samples,)."""
    f = feature_args(meta["features"])
    if takes_waveform(meta):
        return (int(f["sample_rate"]),)
    return 1, int(f["n_mels"]), int(f["sample_rate"]) // int(f["hop_length"])


def save_deployed(model: nn.Module, path: str | Path, meta: Mapping[str, Any]) -> None:
    """Trace `model` (switched to eval mode) and save it as TorchScript with `meta`, atomically.

    Tracing rather than scripting: it handles both eager float models and FX-quantized
    GraphModules whatever Python they use. A trace records one execution, so it is
    traced at batch 2 and checked at batches 1 and 3 (torch.jit.trace check_inputs):
    a model whose trace bakes in the batch size fails here, not at evaluation.
    The input size is fixed to 1 s clips (`input_shape(meta)`).
    """
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ValueError(f"meta lacks {missing} (needed to rebuild the frontend and name classes)")
    meta_json = json.dumps(dict(meta))
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


def read_meta(path: str | Path) -> dict[str, Any]:
    """The meta.json of a deployed TorchScript file, read from the archive without loading the model."""
    with zipfile.ZipFile(path) as archive:
        name = next((n for n in archive.namelist() if n.endswith(f"/extra/{META_FILE}")), None)
        if name is None:
            raise ValueError(f"{path}: TorchScript model without {META_FILE}; save it with "
                             f"mobileast.deploy.save_deployed")
        text = archive.read(name).decode()
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid {META_FILE} ({e})") from e
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ValueError(f"{path}: {META_FILE} lacks {missing}")
    return meta


def use_quant_engine(engine: str, path: str | Path) -> None:
    """Make `engine` PyTorch's quantized engine, or explain why this host cannot run `path`."""
    supported = torch.backends.quantized.supported_engines
    if engine not in supported:
        raise InputError(f"{path} was quantized for PyTorch's {engine!r} engine, which this host's PyTorch lacks "
                         f"(it has {', '.join(e for e in supported if e != 'none')}): quantize it again on this "
                         f"host (dvc repro quantize) or run its ONNX export ({Path(path).with_suffix('.onnx')})")
    torch.backends.quantized.engine = engine


def load_deployed(path: str | Path) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """Load a deployed TorchScript model on the CPU in eval mode, with its meta dict
    (a quantized one with its quantized engine)."""
    path = _existing(path)
    try:
        meta = read_meta(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise ValueError(f"{path}: not a loadable TorchScript model ({_first_line(e)})") from e
    if meta.get("quantized"):
        use_quant_engine(meta.get("quant_engine", "x86"), path)
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


def load_onnx(path: str | Path, threads: int = 0) -> tuple[OnnxModel, dict[str, Any]]:
    """An ONNX model of mobileast.export (run with onnxruntime) and its meta dict."""
    path = _existing(path)
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf DecodeError and friends
        raise ValueError(f"{path}: not a loadable ONNX model ({_first_line(e)})") from e
    props = {p.key: p.value for p in proto.metadata_props}
    if META_FILE not in props:
        raise ValueError(f"{path}: ONNX model without {META_FILE} metadata; export it with python -m mobileast export")
    meta = json.loads(props[META_FILE])
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ValueError(f"{path}: {META_FILE} lacks {missing}")
    return OnnxModel(path, threads).eval(), meta


def load_checkpoint_model(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the float model of a training checkpoint (contract format) in eval mode.

    Checkpoints are pickles with engine state (optimizer, RNG states), so they are
    loaded with weights_only=False: load only checkpoints you trust.
    """
    path = _existing(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated zip, bad pickle, not a torch file at all
        raise ValueError(f"{path}: not a loadable model or checkpoint ({_first_line(e)})") from e
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise ValueError(f"{path}: not a training checkpoint (lacks {missing})")
    from mobileast.models import build_model  # lazy: deployed models need no model code

    model = build_model(ckpt["arch"], ckpt["config"])
    model.load_state_dict(ckpt["state_dict"])
    meta = {"features": ckpt["features"], "classes": list(ckpt["classes"]), "arch": ckpt["arch"],
            "config": ckpt["config"], "quantized": False, "input": ckpt.get("input", "logmel")}
    if "params" in ckpt:  # the training stage's params (students of this pipeline), carried into deployed models
        meta["params"] = ckpt["params"]
    return model.eval(), meta


def load_model_any(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
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
