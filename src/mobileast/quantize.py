"""Post-training static quantization (PTSQ) of the student to int8.

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
- Weights: qint8, symmetric, per output channel, MinMax observer; on x86 7-bit
  (-64..63): x86 int8 kernels without VNNI sum pairs of u8*s8 products in int16, which
  saturates for 8-bit weights and activations; 7-bit weights rule that out on every x86
  CPU (onnxruntime's advice too). qnnpack has no such limit: 8-bit. Activations:
  quint8 0..255, per tensor, histogram observer (minimises the quantization error,
  robust to outliers). Measured on the demo sub1 student (890 evaluate clips), 7-bit
  weights with 8-bit activations instead of the reverse raised top-1 agreement with the
  float model from 97.0 to 98.1 % and accuracy from 43.8 to 44.6 % (float 44.3 %).
- The model is quantized in its deploy form (mobileast.models.mobileast.deploy_form:
  BN folded, tokens as a matrix, q|k|v as one Linear, one scaled_dot_product_attention).
  The attention core (`AttentionCore`: head split, attention, head merge) stays float:
  one dequantize of the qkv output, one quantize before the output projection. An int8
  core has no int8 arithmetic on x86 (quantized matmul and softmax dequantize, compute in
  float and quantize), only conversions and copies.
- LayerNorm stays float between a dequantize and a quantize (`_float_layer_norms`): the
  x86 int8 LayerNorm computes the same in float internally and is slower (76 vs 24 us
  with its dequantize and quantize at d = 48, batch 1).
- SiLU (sub1) has no int8 kernel in PyTorch: each SiLU runs in float between a
  dequantize and a quantize (11 of them in sub1; about 17 % of its int8 time). ReLU
  fuses into the preceding conv/Linear.
- Partial quantization: `float_modules` are patterns naming submodules of the deploy
  form kept in float (qconfig None; FX puts dequantize/quantize around them). A pattern
  matches a module's qualified name (`blocks.vit.transformer.0.attn`) exactly, or any
  name ending in "." + pattern, with fnmatch wildcards: "attn" = every attention module,
  "qkv", "transformer" = the whole transformer, "blocks.vit" = the MobileViT block.
  Their children stay float too. Measured on demo-trained sub1/sub2, keeping attention,
  LayerNorms or the whole transformer in float changed neither accuracy nor agreement
  with the float model and cost 25-50 kB, so by default everything is int8.
- `dynamic_modules`: patterns naming nn.Linear layers quantized dynamically: int8
  weights (same memory), input quantized per batch at run time, float output. Used
  for the classifier by default: statically quantized logits have only 128 levels,
  and rounding them flips the top class of near-ties. Measured on demo-trained
  students (884 evaluate clips), top-1 agreement with the float model rose from
  0.90/0.93/0.88/0.93 to 0.92/0.97/0.96/0.96 (sub1..sub4), at no memory cost.
- Calibration data: log-mels of random 1 s crops of the train recordings on the
  teacher-logit crop grid, chosen by the seed (`calibration_batches`).
- ONNX (`quantize_onnx`): the same model in onnxruntime's QDQ format, converted with the
  qparams torch's observers choose on the same crops, so that both int8 models agree.
"""
from __future__ import annotations

import ast
import fnmatch
import hashlib
import itertools
import math
import platform
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.ao.nn.quantized as nnq
from torch import nn
from torch.ao.quantization import QConfig, QConfigMapping, per_channel_dynamic_qconfig
from torch.ao.quantization.observer import HistogramObserver, PerChannelMinMaxObserver
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

from mobileast.complexity import LIMIT_PARAM_MEMORY_BYTES, param_memory_bytes
from mobileast.errors import params_errors
from mobileast.data.crops import evaluate_clips, train_crops
from mobileast.deploy import frontend_for, load_checkpoint_model, load_deployed, save_deployed
from mobileast.features import LogMel
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
    with _quiet():
        prepared = prepare_fx(model, mapping, example_inputs=(first,))
        with torch.no_grad():
            for x in (first, *batches):
                prepared(x)
        return _float_layer_norms(convert_fx(prepared), model)


def _float_layer_norms(qmodel: torch.fx.GraphModule, model: nn.Module) -> torch.fx.GraphModule:
    """Put the float LayerNorms of `model` back where convert_fx lowered them to int8.

    Its lowering turns every dequantize -> LayerNorm -> quantize into the int8 kernel,
    whatever the LayerNorm's qconfig; on x86 that kernel is slower than the float
    LayerNorm with its dequantize and quantize (76 vs 24 us at d = 48, batch 1), so the
    LayerNorm runs float between them, with the same output scale and zero point.
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
    """How closely `other` (e.g. int8) follows `reference` (float) on the input batches
    (`logit_agreement` of their logits)."""
    inputs = list(inputs)
    return logit_agreement(model_logits(reference, inputs), model_logits(other, inputs))


def model_logits(model: nn.Module, inputs: Iterable[torch.Tensor]) -> torch.Tensor:
    """The model's logits of every input batch, concatenated."""
    with torch.no_grad():
        return torch.cat([model(x) for x in inputs])


def logit_agreement(reference: torch.Tensor, other: torch.Tensor) -> dict[str, float]:
    """How closely the logits `other` (N, classes) follow `reference` (same inputs).

    `top1_agreement`: share of inputs with the same top class. `logit_correlation`:
    Pearson correlation of the logits with each class's mean over the inputs removed,
    i.e. of their input-dependent part (a class bias shared by all inputs, large in an
    untrained model, cannot inflate it). `max_abs_diff_rel`: largest absolute logit
    difference over the reference's logit range.
    """
    a, b = reference.double(), other.double()
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
    deployed_float = deploy_form(model)
    with params_errors("section 'quant'"):
        parts = {"float_modules": select_modules(deployed_float, quant["float_modules"]),
                 "dynamic_modules": dynamic_module_names(deployed_float, quant["dynamic_modules"])}
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
    return {"param_memory_bytes": memory, "param_memory_bytes_float32": param_memory_bytes(deployed_float),
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

# What the torch int8 model computes in int8, as ONNX ops (mobileast.export's graph):
# convs and Linears (Gemm; ReLU folds into them), residual adds, concatenation, max pool
# and the reshapes/transposes of the patch unfold/fold. LayerNorm, SiLU (Sigmoid, Mul)
# and the attention core (Split, Attention) stay float between a dequantize and a
# quantize, as in torch.
ONNX_INT8_OPS = ("Conv", "Gemm", "Relu", "Add", "Concat", "MaxPool", "Reshape", "Transpose")
# Ops whose output torch keeps at its input's scale and zero point (one shared observer).
ONNX_SHARED_QPARAMS_OPS = ("MaxPool", "Reshape", "Transpose", "ReduceMean")


def quantize_onnx(float_path: str | Path, out: str | Path, calib_inputs: Iterable[torch.Tensor],
                  engine: str, float_modules: Sequence[str] = ()) -> dict[str, Any]:
    """The int8 ONNX counterpart of `quantize_model` (QDQ format), converted rather than
    re-calibrated: a float ONNX model of the same deploy form (mobileast.export) gets the
    activation qparams torch's observers of `qconfig(engine)` choose on the same
    calibration batches (`activation_qparams`) and torch's int8 weights
    (`snap_weights`); int8 where torch runs int8 (ONNX_INT8_OPS) except in the
    `float_modules` (deploy-form module names, as the int8 model's meta lists them), float
    logits (the torch classifier is dynamic: float output). onnxruntime writes the graph
    (quantize_static with the qparams as TensorQuantOverrides and its own calibration
    skipped). Returns what it quantized.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorsData, save_tensors_data
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="quantize_onnx-") as scratch:
        work = Path(scratch)
        prepared, cache = work / "prepared.onnx", work / "ranges.json"
        keep_float = nodes_in_modules(onnx.load(str(float_path)).graph, float_modules)  # (the scopes go next)
        quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
        model = onnx.load(str(prepared))
        qparams, ranges = activation_qparams(model, calib_inputs, engine)
        qparams.update(snap_weights(model.graph, engine, keep_float))
        onnx.save(model, str(prepared))
        save_tensors_data(TensorsData(CalibrationMethod.MinMax, ranges), cache)
        quantize_static(str(prepared), str(out), None, quant_format=QuantFormat.QDQ, op_types_to_quantize=list(ONNX_INT8_OPS),
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=keep_float, calibration_cache_path=str(cache),
                        extra_options={"TensorQuantOverrides": qparams})
    model = onnx.load(str(out))
    _float_outputs(model.graph)
    onnx.save(model, str(out))
    ops = [n.op_type for n in model.graph.node]
    return {"quantized_tensors": ops.count("QuantizeLinear"), "int8_weights": sum(
        1 for init in model.graph.initializer if init.data_type == onnx.TensorProto.INT8 and len(init.dims) > 1),
        "float_nodes": len(keep_float)}


def name_scopes(node: Any) -> list[str]:
    """The module names (outermost first) torch's exporter records for an ONNX node."""
    props = {p.key: p.value for p in node.metadata_props}
    return ast.literal_eval(props.get("pkg.torch.onnx.name_scopes", "[]"))  # a Python list literal


def nodes_in_modules(graph: Any, modules: Sequence[str]) -> list[str]:
    """Names of the nodes of an exported graph that belong to any of `modules`."""
    wanted = set(modules)
    return [node.name for node in graph.node if wanted.intersection(name_scopes(node))]


def activation_qparams(model: Any, calib_inputs: Iterable[torch.Tensor],
                       engine: str) -> tuple[dict[str, list[dict[str, Any]]], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Activation qparams of a float ONNX model as torch's PTSQ chooses them for the same
    graph: ({tensor: onnxruntime TensorQuantOverrides entry}, {tensor: (min, max)}).

    Tensors torch quantizes alike share one observer (`qparams_groups`); each group gets
    `qconfig(engine)`'s activation observer, fed its tensors' values on `calib_inputs`
    (run by onnxruntime) in graph order, as torch's shared observer is fed.
    """
    import onnx
    import onnxruntime

    graph = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.value_info, *graph.output)}
    observed = [graph.input[0].name] + [o for n in graph.node for o in n.output if types.get(o) == onnx.TensorProto.FLOAT]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    outputs = {o.name for o in graph.output}
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
                              for name in observed if name not in outputs)
    session = onnxruntime.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    group = qparams_groups(graph)
    observers = {group(name): qconfig(engine).activation() for name in observed}
    for x in calib_inputs:
        for name, value in zip(observed, session.run(observed, {graph.input[0].name: x.numpy()})):
            observers[group(name)](torch.from_numpy(value))
    qparams, ranges = {}, {}
    for name in observed:
        observer = observers[group(name)]
        scale, zero_point = observer.calculate_qparams()
        qparams[name] = [{"scale": np.array(scale.item(), np.float32), "zero_point": np.array(zero_point.item(), np.uint8)}]
        ranges[name] = (observer.min_val.numpy(), observer.max_val.numpy())
    return qparams, ranges


def snap_weights(graph: Any, engine: str, keep_float: Sequence[str] = ()) -> dict[str, list[dict[str, Any]]]:
    """Per-channel qparams of the Conv and Gemm weights (but those of the `keep_float`
    nodes) from `qconfig(engine)`'s weight observer, as TensorQuantOverrides entries; each
    weight is replaced in `graph` by its torch int8 value dequantized, so that
    onnxruntime's rounding gives torch's int8 weights exactly (its own rounds w / scale in
    float32, which flips ties)."""
    from onnx import numpy_helper

    initializers = {init.name: init for init in graph.initializer}
    qparams = {}
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm") or node.input[1] not in initializers or node.name in keep_float:
            continue
        axis = 1 if node.op_type == "Gemm" and not _attribute(node, "transB", 0) else 0  # output channels
        init = initializers[node.input[1]]
        weight = torch.from_numpy(numpy_helper.to_array(init).copy())
        observer = qconfig(engine).weight(ch_axis=axis)
        observer(weight)
        scales, zero_points = observer.calculate_qparams()
        with _quiet():
            snapped = torch.quantize_per_channel(weight, scales, zero_points, axis, torch.qint8).dequantize()
        init.CopyFrom(numpy_helper.from_array(snapped.numpy(), init.name))
        qparams[init.name] = [{"axis": axis, "scale": np.array(s, np.float32), "zero_point": np.array(z, np.int8)}
                              for s, z in zip(scales.tolist(), zero_points.tolist())]
    return qparams


def qparams_groups(graph: Any) -> Callable[[str], str]:
    """tensor name -> its group's name: tensors that torch's x86/qnnpack backends quantize
    with one shared observer. The output of ONNX_SHARED_QPARAMS_OPS joins its input's
    group; a Concat joins its inputs and output (torch's cat shares one observer)."""
    parent: dict[str, str] = {}

    def find(name: str) -> str:
        while parent.get(name, name) != name:
            name = parent[name]
        return name

    for node in graph.node:
        joined = node.input[:1] if node.op_type in ONNX_SHARED_QPARAMS_OPS else node.input if node.op_type == "Concat" else []
        for name in joined:
            parent[find(name)] = find(node.output[0])
    return find


def _attribute(node: Any, name: str, default: Any) -> Any:
    import onnx

    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _float_outputs(graph: Any) -> None:
    """Drop the QuantizeLinear -> DequantizeLinear pair onnxruntime puts on each graph
    output, with their scale and zero point, so the logits stay float."""
    producers = {o: node for node in graph.node for o in node.output}
    for output in graph.output:
        dequantize = producers[output.name]
        if dequantize.op_type != "DequantizeLinear":
            continue
        quantize = producers[dequantize.input[0]]
        source = producers[quantize.input[0]]
        source.output[list(source.output).index(quantize.input[0])] = output.name
        graph.node.remove(dequantize)
        graph.node.remove(quantize)
    used = {i for node in graph.node for i in node.input}
    unused = [init for init in graph.initializer if init.name not in used]
    for init in unused:
        graph.initializer.remove(init)
