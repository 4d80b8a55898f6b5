"""Post-training static quantization (PTSQ) of the student to int8 (SPEC section 8).

PyTorch FX graph mode (`torch.ao.quantization.quantize_fx`): `prepare_fx` traces the
float model, fuses Conv2d+BatchNorm2d(+ReLU) and Linear+ReLU (the FFN with act=relu)
and inserts observers; calibration runs float batches through it; `convert_fx` swaps
in int8 modules. All quantization code lives here so that it can move to torchao's
PT2E flow (FX mode is deprecated upstream) in one place; the deprecation warnings FX
emits are filtered around its calls only.

Choices:
- Engine by platform (`quant_engine`): "x86" on x86-64 (measured faster here than
  "fbgemm"), "qnnpack" on ARM, where the x86 engine does not exist. It is recorded in
  the model's meta ("quant_engine"); mobileast.deploy loads a model with its engine and
  refuses, naming both, a host whose PyTorch lacks it.
- Weights: qint8, symmetric, per output channel, MinMax observer. Activations: quint8,
  per tensor, histogram observer (minimises the quantization error, robust to
  outliers), range 0..127 (`reduce_range`): x86 int8 kernels without VNNI sum pairs
  of u8*s8 products in int16, which can saturate at full 8-bit range; 7-bit
  activations rule that out on every x86 CPU.
- SiLU (sub1) has no int8 kernel: each SiLU runs in float between a dequantize and
  a quantize. ReLU fuses into the preceding conv/Linear.
- Attention core: quantized in its fused deployment form (`fused_attention`): one
  float F.scaled_dot_product_attention between int8 q/k/v and proj Linears (FX puts
  dequantize/quantize around it). The unfused int8 chain ran quantized.matmul (on x86:
  dequantize -> float bmm -> quantize), a requantizing scale and softmax (dequantize ->
  softmax -> quantize) on the (B, P, h, N, N) scores: no int8 arithmetic, only
  conversions, and at batch 64 tens of MB of fresh memory per layer. Measured (1 thread,
  benchmarks/bench_inference.py): int8 went from slower than float at batch 64 to about
  half its time, and gained at batch 1 too.
- Softmax output uses fixed qparams (scale 1/256 over [0, 1)), as the x86 backend
  requires for nn.Softmax (only an unfused Attention still runs one).
- Partial quantization: `float_modules` are patterns naming submodules kept in float
  (qconfig None; FX puts dequantize/quantize around them). A pattern matches a
  module's qualified name (`blocks.vit.transformer.0.attn`) exactly, or any name
  ending in "." + pattern, with fnmatch wildcards: "attn" = every attention module,
  "norm*" = every LayerNorm of the transformer, "softmax", "transformer" = the whole
  transformer, "blocks.vit" = the MobileViT block. Their children stay float too.
  Measured on demo-trained sub1/sub2, keeping attention, softmax, LayerNorms or the
  whole transformer in float changed neither accuracy nor agreement with the float
  model and cost 25-50 kB, so by default everything is int8.
- `dynamic_modules`: patterns naming nn.Linear layers quantized dynamically: int8
  weights (same memory), input quantized per batch at run time, float output. Used
  for the classifier by default: statically quantized logits have only 128 levels,
  and rounding them flips the top class of near-ties. Measured on demo-trained
  students (884 evaluate clips), top-1 agreement with the float model rose from
  0.90/0.93/0.88/0.93 to 0.92/0.97/0.96/0.96 (sub1..sub4), at no memory cost.
- Calibration data: log-mels of random 1 s crops of the train recordings on the
  teacher-logit crop grid, chosen by the seed (`calibration_batches`).
"""
from __future__ import annotations

import fnmatch
import hashlib
import itertools
import logging
import math
import platform
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.ao.quantization import QConfig, QConfigMapping, per_channel_dynamic_qconfig
from torch.ao.quantization.observer import (FixedQParamsObserver, HistogramObserver,
                                           PerChannelMinMaxObserver)
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

from mobileast.complexity import LIMIT_PARAM_MEMORY_BYTES, param_memory_bytes
from mobileast.config import params_errors
from mobileast.data.crops import evaluate_clips, train_crops
from mobileast.deploy import frontend_for, load_checkpoint_model, load_deployed, save_deployed
from mobileast.features import LogMel
from mobileast.models.mobileast import fold_bn, fused_attention

ENGINES = {"x86_64": "x86", "amd64": "x86", "aarch64": "qnnpack", "arm64": "qnnpack"}  # platform.machine()


def quant_engine(machine: str | None = None) -> str:
    """PyTorch's quantized engine for this host (or `machine`): x86 on x86-64, qnnpack on ARM."""
    machine = (machine or platform.machine()).lower()
    if machine not in ENGINES:
        raise RuntimeError(f"no quantized engine known for the {machine} platform (known: {', '.join(ENGINES)})")
    return ENGINES[machine]


QCONFIG = QConfig(
    activation=HistogramObserver.with_args(dtype=torch.quint8, quant_min=0, quant_max=127),
    weight=PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric),
)
SOFTMAX_QCONFIG = QConfig(
    activation=FixedQParamsObserver.with_args(scale=1.0 / 256, zero_point=0, dtype=torch.quint8,
                                              quant_min=0, quant_max=255),
    weight=QCONFIG.weight,
)
# Warnings FX quantization emits on every use (deprecation notices), and the tracer's
# note that a quantized graph's scales and zero points become constants (they are).
_EXPECTED_WARNINGS = (
    (DeprecationWarning, r"torch\.ao\.quantization is deprecated"),
    (UserWarning, r"torch\.quantize_per_tensor, torch\.quantize_per_channel and other quantized"),
    (torch.jit.TracerWarning, r"Converting a tensor to a Python float"),
)


@contextmanager
def _quiet() -> Iterator[None]:
    """Hide only the expected FX-quantization warnings, for the calls inside."""
    with warnings.catch_warnings():
        for category, message in _EXPECTED_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield


def select_modules(model: nn.Module, patterns: Iterable[str]) -> list[str]:
    """Qualified names of the submodules that `patterns` select (see the module
    docstring), outermost only, in model order. A pattern matching nothing is an error."""
    names = [name for name, _ in model.named_modules() if name]
    selected = set()
    for pattern in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern) or fnmatch.fnmatchcase(n, f"*.{pattern}")]
        if not hits:
            example = max(names, key=lambda n: n.count("."))
            raise ValueError(f"module pattern {pattern!r} matches no submodule of "
                             f"{type(model).__name__} (qualified names look like {example!r})")
        selected.update(hits)
    return [n for n in names if n in selected and not any(n.startswith(p + ".") for p in selected)]


def dynamic_module_names(model: nn.Module, patterns: Iterable[str]) -> list[str]:
    """Qualified names of the nn.Linear layers that `patterns` select (as `select_modules`)."""
    names = select_modules(model, patterns)
    modules = dict(model.named_modules())
    wrong = [n for n in names if type(modules[n]) is not nn.Linear]
    if wrong:
        raise ValueError(f"quant.dynamic_modules: only nn.Linear layers can be quantized dynamically, not {wrong}")
    return names


def qconfig_mapping(float_names: Sequence[str] = (), dynamic_names: Sequence[str] = ()) -> QConfigMapping:
    """The QConfigMapping: QCONFIG everywhere, fixed qparams for softmax, None (float)
    for the `float_names` submodules, dynamic int8 for the `dynamic_names` Linears."""
    both = set(float_names) & set(dynamic_names)
    if both:
        raise ValueError(f"modules both float and dynamically quantized: {sorted(both)}")
    mapping = QConfigMapping().set_global(QCONFIG).set_object_type(nn.Softmax, SOFTMAX_QCONFIG)
    for name in float_names:
        mapping.set_module_name(name, None)
    for name in dynamic_names:
        mapping.set_module_name(name, per_channel_dynamic_qconfig)
    return mapping


def quantize_model(model: nn.Module, calib_inputs: Iterable[torch.Tensor], float_modules: Iterable[str] = (),
                   dynamic_modules: Iterable[str] = ()) -> torch.fx.GraphModule:
    """int8 copy of a float model taking log-mels (B, 1, n_mels, frames), calibrated on
    `calib_inputs` (float batches of the model's input); `model` is left unchanged.
    `float_modules`, `dynamic_modules`: name patterns, see the module docstring."""
    model = fused_attention(model)  # an eval-mode copy
    batches = iter(calib_inputs)
    first = next(batches, None)
    if first is None:
        raise ValueError("quantize_model: no calibration batches")
    torch.backends.quantized.engine = quant_engine()
    mapping = qconfig_mapping(select_modules(model, float_modules), dynamic_module_names(model, dynamic_modules))
    with _quiet():
        prepared = prepare_fx(model, mapping, example_inputs=(first,))
        with torch.no_grad():
            for x in (first, *batches):
                prepared(x)
        return convert_fx(prepared)


def calibration_batches(recordings: str | Path, resampled: str | Path, features: Mapping[str, Any],
                        n_batches: int, batch_size: int, hop_s: float, seed: int) -> Iterator[torch.Tensor]:
    """`n_batches` log-mel batches of random 1 s crops of the train recordings.

    Crops are drawn uniformly, without replacement, from the teacher-logit crop grid
    (hop `hop_s`: the crops the student trained on); which ones depends only on `seed`.
    """
    crops = train_crops(recordings, resampled, int(features["sample_rate"]), hop_s, "logits.hop_s",
                        "the student's features.sample_rate")
    n = n_batches * batch_size
    rows = np.random.default_rng(seed).choice(crops.n_rows, size=n, replace=n > crops.n_rows)
    frontend = LogMel(**features).eval()
    for begin in range(0, n, batch_size):
        with torch.no_grad():  # never yield inside no_grad: it would leak into the caller
            batch = frontend(crops.load(rows[begin:begin + batch_size]).wave)
        yield batch


def save_quantized(qmodel: nn.Module, path: str | Path, meta: Mapping[str, Any]) -> None:
    """`mobileast.deploy.save_deployed` (TorchScript + meta.json, atomic) for an int8 model."""
    with _quiet():
        save_deployed(qmodel, path, meta)


def agreement(reference: nn.Module, other: nn.Module, inputs: Iterable[torch.Tensor]) -> dict[str, float]:
    """How closely `other` (e.g. int8) follows `reference` (float) on the input batches.

    `top1_agreement`: share of inputs with the same top class. `logit_correlation`:
    Pearson correlation of the logits with each class's mean over the inputs removed,
    i.e. of their input-dependent part (a class bias shared by all inputs, large in an
    untrained model, cannot inflate it). `max_abs_diff_rel`: largest absolute logit
    difference over the reference's logit range.
    """
    with torch.no_grad():
        pairs = [(reference(x), other(x)) for x in inputs]
    a, b = (torch.cat(side).double() for side in zip(*pairs))
    centered = torch.stack([(a - a.mean(0)).flatten(), (b - b.mean(0)).flatten()])
    return {"n": len(a),
            "top1_agreement": (a.argmax(1) == b.argmax(1)).double().mean().item(),
            "logit_correlation": torch.corrcoef(centered)[0, 1].item(),
            "max_abs_diff_rel": ((a - b).abs().max() / (a.max() - a.min())).item()}


def quantize_student(checkpoint: str | Path, recordings: str | Path, resampled: str | Path, out: str | Path,
                     quant: Mapping[str, Any], hop_s: float, seed: int) -> dict[str, Any]:
    """Stage quantize: the int8 model of a float training checkpoint -> `out` (TorchScript).

    The model's meta records the float checkpoint it came from (path, md5) and its
    calibration crops, so that the ONNX export can quantize the same model on the same
    crops. Calibrates on `quant.calib_batches` batches of `quant.batch_size` train crops, keeps
    `quant.float_modules` in float, quantizes `quant.dynamic_modules` dynamically and
    returns a summary: parameter memory of the deployed int8 model and of the BN-folded
    float one (bytes), and the agreement of the saved and reloaded int8 model with the
    float one on evaluate clips: as many batches as calibration used, spread evenly over
    the fold (all of it when it is smaller; the evaluate stage scores the whole fold).
    """
    model, meta = load_checkpoint_model(checkpoint)
    with params_errors("section 'quant'"):
        parts = {"float_modules": select_modules(model, quant["float_modules"]),
                 "dynamic_modules": dynamic_module_names(model, quant["dynamic_modules"])}
    n_batches, batch_size = int(quant["calib_batches"]), int(quant["batch_size"])
    calib = calibration_batches(recordings, resampled, meta["features"], n_batches, batch_size, hop_s, seed)
    qmodel = quantize_model(model, calib, **parts)
    provenance = {"source": {"checkpoint": str(checkpoint), "md5": file_md5(checkpoint)},
                  "calibration": {"batches": n_batches, "batch_size": batch_size, "hop_s": hop_s, "seed": seed}}
    save_quantized(qmodel, out, {**meta, "quantized": True, "quant_engine": quant_engine(), **parts, **provenance})
    deployed, _ = load_deployed(out)
    clips = evaluate_clips(resampled, int(meta["features"]["sample_rate"]), "the student's features.sample_rate")
    step = max(1, math.ceil(math.ceil(len(clips) / batch_size) / n_batches))
    frontend = frontend_for(meta)
    inputs = (frontend(batch.wave) for batch in itertools.islice(clips.batches(batch_size), 0, None, step))
    memory = param_memory_bytes(deployed)
    return {"param_memory_bytes": memory, "param_memory_bytes_float32": param_memory_bytes(fold_bn(model)),
            "param_memory_pass": memory <= LIMIT_PARAM_MEMORY_BYTES, **parts,
            "evaluate_agreement": agreement(model, deployed, inputs)}


def file_md5(path: str | Path) -> str:
    """md5 of a file (as DVC hashes it), to tie a quantized model to its float checkpoint."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------------ ONNX (onnxruntime)

ONNX_FLOAT_OPS = ("Softmax", "Mul")  # with the activation x activation MatMuls: the attention core


def quantize_onnx(float_path: str | Path, out: str | Path, calib_inputs: Iterable[torch.Tensor]) -> dict[str, Any]:
    """Static int8 quantization of a float ONNX model (mobileast.export) with onnxruntime, to `out`:
    the counterpart of `quantize_model`: QDQ format, int8 weights per output channel,
    uint8 activations calibrated (MinMax) on the same log-mel batches as the torch PTSQ,
    the attention core (QK^T, softmax, the scale, AV) kept float as in the torch model,
    float logits (the classifier's output is not quantized, like the torch model's
    dynamic classifier). Returns what was kept float.

    Measured here (1 thread): keeping the attention core float made the int8 model as
    fast as the float one instead of 1.5-2x slower (QLinearSoftmax alone took half the time).
    """
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self, name: str):
            self.batches, self.name = iter(calib_inputs), name

        def get_next(self) -> dict[str, Any] | None:
            x = next(self.batches, None)
            return None if x is None else {self.name: x.numpy()}

    with tempfile.TemporaryDirectory(prefix="quantize_onnx-") as scratch:
        work = Path(scratch)
        prepared = work / "prepared.onnx"
        quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
        graph = onnx.load(str(prepared)).graph
        constants = {init.name for init in graph.initializer}
        keep_float = [node.name for node in graph.node if node.op_type in ONNX_FLOAT_OPS
                      or (node.op_type == "MatMul" and not any(i in constants for i in node.input))]
        with _without_per_channel_fallback_warnings():
            quantize_static(str(prepared), str(out), Reader(graph.input[0].name),
                            quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                            nodes_to_exclude=keep_float,
                            extra_options={"OpTypesToExcludeOutputQuantization": ["Gemm"]})
    return {"float_nodes": len(keep_float)}


class _PerChannelFallback(logging.Filter):
    """Drops onnxruntime's "Axis 1 is out-of-range for weight ..." warnings: 1-d weights
    (normalisation scales) cannot be per-channel and are quantized per tensor, as intended."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.getMessage().startswith("Axis ") and "out-of-range for weight" in record.getMessage())


@contextmanager
def _without_per_channel_fallback_warnings() -> Iterator[None]:
    root, fallback = logging.getLogger(), _PerChannelFallback()
    root.addFilter(fallback)
    try:
        yield
    finally:
        root.removeFilter(fallback)
