"""Post-training static quantization (PTSQ) of the student to int8 TorchScript, in torch.

PyTorch FX graph mode (`torch.ao.quantization.quantize_fx`): `prepare_fx` traces the
float model, fuses Conv2d+BatchNorm2d(+ReLU) and Linear+ReLU (the FFN with act=relu)
and inserts observers; calibration runs float batches through it; `convert_fx` swaps
in int8 modules. All torch quantization code lives here so that it can move to
torchao's PT2E flow (FX mode is deprecated upstream) in one place; the deprecation
warnings FX emits are filtered around its calls only (`quiet`). The ONNX int8 model is
converted from this one in mobileast.onnx_quantize.

Choices (their measured effects are in docs/benchmarks.md):
- Engine by platform (`quant_engine`): "x86" on x86-64 (faster here than "fbgemm"),
  "qnnpack" on ARM, where the x86 engine does not exist. It is recorded in the model's
  meta (`quant_engine`); mobileast.deploy loads a model with its engine and refuses,
  naming both, a host whose PyTorch lacks it.
- Weights: qint8, symmetric, per output channel, MinMax observer; on x86 7-bit
  (-64..63): x86 int8 kernels without VNNI sum pairs of u8*s8 products in int16, which
  saturates for 8-bit weights and activations; 7-bit weights rule that out on every x86
  CPU (onnxruntime's advice too), and cost less agreement with the float model than
  7-bit activations would. qnnpack has no such limit: 8-bit. Activations: quint8 0..255,
  per tensor, histogram observer (minimises the quantization error, robust to outliers).
- The model is quantized in its deploy form (mobileast.models.mobileast.deploy_form:
  BN folded, tokens as a matrix, q|k|v as one Linear, one scaled_dot_product_attention).
  The attention core (`AttentionCore`: head split, attention, head merge) stays float:
  one dequantize of the qkv output, one quantize before the output projection. An int8
  core has no int8 arithmetic on x86 (quantized matmul and softmax dequantize, compute in
  float and quantize), only conversions and copies.
- LayerNorm stays float between a dequantize and a quantize (`_float_layer_norms`): the
  x86 int8 LayerNorm computes the same in float internally and is slower.
- SiLU (sub1) has no int8 kernel in PyTorch: each SiLU runs in float between a
  dequantize and a quantize. ReLU fuses into the preceding conv/Linear.
- Partial quantization: `float_modules` are patterns naming submodules of the deploy
  form kept in float (qconfig None; FX puts dequantize/quantize around them). A pattern
  matches a module's qualified name (`blocks.vit.transformer.0.attn`) exactly, or any
  name ending in "." + pattern, with fnmatch wildcards: "attn" = every attention module,
  "qkv", "transformer" = the whole transformer, "blocks.vit" = the MobileViT block.
  Their children stay float too. By default everything is int8: keeping parts float
  cost memory without changing accuracy or agreement.
- `dynamic_modules`: patterns naming nn.Linear layers quantized dynamically: int8
  weights (same memory), input quantized per batch at run time, float output. Used
  for the classifier by default: statically quantized logits have only 128 levels,
  and rounding them flips the top class of near-ties.
- Calibration data: log-mels of random 1 s crops of the train recordings on the
  teacher-logit crop grid, chosen by the seed (`calibration_batches`).
"""
from __future__ import annotations

import fnmatch
import itertools
import math
import platform
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.ao.nn.quantized as nnq
from torch import nn
from torch.ao.quantization import QConfig, QConfigMapping, per_channel_dynamic_qconfig
from torch.ao.quantization.observer import HistogramObserver, PerChannelMinMaxObserver
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

from mobileast.complexity import LIMIT_PARAM_MEMORY_BYTES, param_memory_bytes
from mobileast.data.crops import evaluate_clips, train_crops
from mobileast.data.store import FULL_SPLIT
from mobileast.deploy import ModelMeta, frontend_for, load_checkpoint_model, load_deployed, save_deployed
from mobileast.errors import params_errors
from mobileast.features import LogMel
from mobileast.files import file_md5
from mobileast.inference import logit_agreement, predict
from mobileast.models.mobileast import AttentionCore, deploy_form

ENGINES = {"x86_64": "x86", "amd64": "x86", "aarch64": "qnnpack", "arm64": "qnnpack"}  # platform.machine()


def quant_engine(machine: str | None = None) -> str:
    """PyTorch's quantized engine for this host (or `machine`): x86 on x86-64, qnnpack on ARM."""
    machine = (machine or platform.machine()).lower()
    if machine not in ENGINES:
        raise RuntimeError(f"no quantized engine known for the {machine} platform (known: {', '.join(ENGINES)})")
    return ENGINES[machine]


def qconfig(engine: str) -> QConfig:
    """Observers for `engine` (see the module docstring): uint8 activations per tensor
    (histogram), int8 weights per output channel (symmetric MinMax), 7-bit on x86."""
    weight_bound = 64 if engine == "x86" else 128
    return QConfig(
        activation=HistogramObserver.with_args(dtype=torch.quint8, quant_min=0, quant_max=255),
        weight=PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric,
                                                  quant_min=-weight_bound, quant_max=weight_bound - 1),
    )


# Warnings FX quantization emits on every use (deprecation notices), and the tracer's
# note that a quantized graph's scales and zero points become constants (they are).
_EXPECTED_WARNINGS = (
    (DeprecationWarning, r"torch\.ao\.quantization is deprecated"),
    (UserWarning, r"torch\.quantize_per_tensor, torch\.quantize_per_channel and other quantized"),
    (torch.jit.TracerWarning, r"Converting a tensor to a Python float"),
)


@contextmanager
def quiet() -> Iterator[None]:
    """Hide only the expected FX-quantization warnings, for the calls inside."""
    with warnings.catch_warnings():
        for category, message in _EXPECTED_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield


@contextmanager
def untraced_stacks() -> Iterator[None]:
    """FX tracing without a Python stack trace recorded per node (torch.fx.config's
    do_not_emit_stack_traces, for the calls inside): that debugging metadata is most of the
    tracer's time, and neither the int8 model nor its TorchScript file keeps it."""
    config = torch.fx.config
    before, config.do_not_emit_stack_traces = config.do_not_emit_stack_traces, True
    try:
        yield
    finally:
        config.do_not_emit_stack_traces = before


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


def qconfig_mapping(engine: str, float_names: Sequence[str] = (), dynamic_names: Sequence[str] = ()) -> QConfigMapping:
    """The QConfigMapping: `qconfig(engine)` everywhere, None (float) for the attention
    cores, the LayerNorms and the `float_names` submodules, dynamic int8 for the
    `dynamic_names` Linears."""
    both = set(float_names) & set(dynamic_names)
    if both:
        raise ValueError(f"modules both float and dynamically quantized: {sorted(both)}")
    mapping = QConfigMapping().set_global(qconfig(engine)).set_object_type(AttentionCore, None).set_object_type(nn.LayerNorm, None)
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
    model = deploy_form(model)  # an eval-mode copy
    batches = iter(calib_inputs)
    first = next(batches, None)
    if first is None:
        raise ValueError("quantize_model: no calibration batches")
    engine = torch.backends.quantized.engine = quant_engine()
    mapping = qconfig_mapping(engine, select_modules(model, float_modules), dynamic_module_names(model, dynamic_modules))
    with quiet(), untraced_stacks():
        prepared = prepare_fx(model, mapping, example_inputs=(first,))
        with torch.no_grad():
            for x in (first, *batches):
                prepared(x)
        return _float_layer_norms(convert_fx(prepared), model)


def _float_layer_norms(qmodel: torch.fx.GraphModule, model: nn.Module) -> torch.fx.GraphModule:
    """Put the float LayerNorms of `model` back where convert_fx lowered them to int8.

    Its lowering turns every dequantize -> LayerNorm -> quantize into the int8 kernel,
    whatever the LayerNorm's qconfig; on x86 that kernel is slower than the float
    LayerNorm with its dequantize and quantize, so the LayerNorm runs float between
    them, with the same output scale and zero point.
    """
    graph = qmodel.graph
    for node in list(graph.nodes):
        if node.op != "call_module" or type(qmodel.get_submodule(node.target)) is not nnq.LayerNorm:
            continue
        lowered = qmodel.get_submodule(node.target)
        parent, _, name = node.target.rpartition(".")
        setattr(qmodel.get_submodule(parent), name, model.get_submodule(node.target))
        with graph.inserting_before(node):
            node.args = (graph.call_method("dequantize", (node.args[0],)),)
        with graph.inserting_after(node):
            quantized = graph.call_function(torch.quantize_per_tensor, (node, float(lowered.scale),
                                                                        int(lowered.zero_point), torch.quint8))
        node.replace_all_uses_with(quantized, delete_user_cb=lambda user: user is not quantized)
    qmodel.recompile()
    return qmodel


def calibration_batches(recordings: str | Path, resampled: str | Path, features: Mapping[str, Any],
                        n_batches: int, batch_size: int, hop_s: float, seed: int,
                        split: int = FULL_SPLIT, device: str | None = None) -> Iterator[torch.Tensor]:
    """`n_batches` log-mel batches of random 1 s crops of the train recordings of split `split`
    (data.split), of `device` only for a per-device model (None: all devices).

    Crops are drawn uniformly, without replacement, from the teacher-logit crop grid
    (hop `hop_s`: the crops the student trained on); which ones depends only on `seed`.
    """
    crops = train_crops(recordings, resampled, int(features["sample_rate"]), hop_s, "logits.hop_s",
                        "the student's features.sample_rate", split=split,
                        devices=None if device is None else [device])
    n = n_batches * batch_size
    rows = np.random.default_rng(seed).choice(crops.n_rows, size=n, replace=n > crops.n_rows)
    frontend = LogMel(**features).eval()
    for begin in range(0, n, batch_size):
        with torch.no_grad():  # never yield inside no_grad: it would leak into the caller
            batch = frontend(crops.load(rows[begin:begin + batch_size]).wave)
        yield batch


def save_quantized(qmodel: nn.Module, path: str | Path, meta: ModelMeta) -> None:
    """`mobileast.deploy.save_deployed` (TorchScript + meta.json, atomic) for an int8 model."""
    with quiet():
        save_deployed(qmodel, path, meta)


def quantize_student(checkpoint: str | Path, recordings: str | Path, resampled: str | Path, out: str | Path,
                     quant: Mapping[str, Any], hop_s: float, seed: int, split: int = FULL_SPLIT,
                     device: str | None = None) -> dict[str, Any]:
    """Stage quantize: the int8 model of a float training checkpoint -> `out` (TorchScript).

    The model's meta records the float checkpoint it came from (path, md5) and its
    calibration crops, so that the ONNX export can quantize the same model on the same
    crops. Calibrates on `quant.calib_batches` batches of `quant.batch_size` crops of the train
    recordings of split `split` (data.split; of `device` only when given: a per-device model,
    recorded in the meta), keeps
    `quant.float_modules` in float, quantizes `quant.dynamic_modules` dynamically and
    returns a summary: parameter memory of the deployed int8 model and of the BN-folded
    float one (bytes), and the agreement of the saved and reloaded int8 model with the
    float one on evaluate clips: as many batches as calibration used, spread evenly over
    the fold (all of it when it is smaller; the evaluate stage scores the whole fold).
    """
    model, meta = load_checkpoint_model(checkpoint)
    deployed_float = deploy_form(model)
    with params_errors("section 'quant'"):
        parts = {"float_modules": select_modules(deployed_float, quant["float_modules"]),
                 "dynamic_modules": dynamic_module_names(deployed_float, quant["dynamic_modules"])}
    n_batches, batch_size = int(quant["calib_batches"]), int(quant["batch_size"])
    calib = calibration_batches(recordings, resampled, meta.features, n_batches, batch_size, hop_s, seed, split,
                                device)
    qmodel = quantize_model(model, calib, **parts)
    save_quantized(qmodel, out, meta.replace(
        quantized=True, quant_engine=quant_engine(), **parts,
        source={"checkpoint": str(checkpoint), "md5": file_md5(checkpoint)},
        calibration={"batches": n_batches, "batch_size": batch_size, "hop_s": hop_s, "seed": seed, "split": split,
                     **({} if device is None else {"device": device})}))
    deployed, _ = load_deployed(out)
    clips = evaluate_clips(resampled, int(meta.features["sample_rate"]), "the student's features.sample_rate")
    step = max(1, math.ceil(math.ceil(len(clips) / batch_size) / n_batches))
    batches = list(itertools.islice(clips.batches(batch_size), 0, None, step))
    frontend, cpu = frontend_for(meta), torch.device("cpu")
    memory = param_memory_bytes(deployed)
    return {"param_memory_bytes": memory, "param_memory_bytes_float32": param_memory_bytes(deployed_float),
            "param_memory_pass": memory <= LIMIT_PARAM_MEMORY_BYTES, **parts,
            "evaluate_agreement": logit_agreement(predict(model, frontend, batches, cpu),
                                                  predict(deployed, frontend, batches, cpu))}
