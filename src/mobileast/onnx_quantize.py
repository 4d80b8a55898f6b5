"""int8 ONNX models in onnxruntime's QDQ format, converted from the torch quantization.

`quantize_onnx` gives a float ONNX model of the student's deploy form (mobileast.export)
the activation qparams that torch's observers (mobileast.quantize.qconfig) choose on the
same calibration crops, and torch's int8 weights, so that the ONNX int8 model computes
what the torch int8 model computes: the same ops in int8, the same scales. Exporting the
torch int8 model itself fails in both torch exporters (quantized tensors, FX
GraphModules), hence the conversion.
"""
from __future__ import annotations

import ast
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from mobileast.quantize import qconfig, quiet

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
        with quiet():
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
