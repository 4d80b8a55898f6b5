"""`python -m mobileast export`: a trained student as an ONNX model (float or int8), and
stage `export`.

- Float: the deploy form (mobileast.models.mobileast.deploy_form: BN folded, tokens as a
  matrix so every Linear is a Gemm with its bias, q|k|v fused) exported with torch's
  dynamo exporter (opset 23, dynamic batch), each attention core then written as one
  ONNX Attention op on (B*P, N, d) tensors (`attention_ops`), checked with onnx.checker.
- int8: from the int8 TorchScript model of the quantize stage, the float checkpoint it
  was quantized from (its meta records path and md5, checked) is exported as above and
  converted to QDQ int8 with the qparams torch's observers choose on the same
  calibration crops (mobileast.onnx_quantize.quantize_onnx): the same ops int8, the same
  scales.

The model's meta (mobileast.deploy.ModelMeta: features, classes, architecture,
quantization) rides as meta.json in the ONNX file's metadata_props, so
mobileast.deploy.load_model_any (predict, evaluate, submit) runs it like the TorchScript
model.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from mobileast.data import RECORDINGS_DIR, RESAMPLED_DIR
from mobileast.data.store import FULL_SPLIT
from mobileast.deploy import META_FILE, ModelMeta, input_shape, load_checkpoint_model, load_deployed, load_model_any
from mobileast.errors import InputError
from mobileast.files import atomic_output, file_md5
from mobileast.models.mobileast import AttentionCore, deploy_form
from mobileast.onnx_quantize import name_scopes

OPSET = 23  # the first with an Attention op


def export_float(model: torch.nn.Module, meta: ModelMeta, out: str | Path) -> None:
    """The float model's deploy form as ONNX (input `logmel` (B, 1, n_mels, frames), output `logits`)."""
    import onnx

    model = deploy_form(model)
    example = torch.zeros(2, *input_shape(meta))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's notes on its own internals
        program = torch.onnx.export(model, (example,), dynamo=True, opset_version=OPSET,
                                    input_names=["logmel"], output_names=["logits"],
                                    dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=4096)}},
                                    verbose=False)
    proto = program.model_proto
    attention_ops(proto, model)
    _set_meta(proto, meta.replace(quantized=False, format="onnx"))
    onnx.checker.check_model(proto, full_check=True)
    with atomic_output(out) as tmp:
        onnx.save(proto, str(tmp))


def export_int8(int8_model: str | Path, out: str | Path, recordings: Path = RECORDINGS_DIR,
                resampled: Path = RESAMPLED_DIR) -> ModelMeta:
    """The int8 ONNX model of an int8 TorchScript model (see the module docstring); returns its meta."""
    import onnx

    from mobileast.onnx_quantize import quantize_onnx
    from mobileast.quantize import calibration_batches

    _, meta = load_deployed(int8_model)
    if not meta.quantized or meta.source is None:
        raise InputError(f"{int8_model}: not an int8 model of the quantize stage (its meta has no source checkpoint)")
    if set(meta.dynamic_modules or []) - {"classifier"}:
        raise InputError(f"{int8_model} quantizes {meta.dynamic_modules} dynamically: the ONNX export converts "
                         "dynamic quantization of the classifier only (quant.dynamic_modules: [classifier] or [])")
    source = Path(meta.source["checkpoint"])
    if not source.is_file() or file_md5(source) != meta.source["md5"]:
        raise InputError(f"{int8_model} was quantized from {source} (md5 {meta.source['md5']}), which is "
                         f"{'missing' if not source.is_file() else 'not that file any more'}: export the float "
                         "checkpoint it came from, or quantize again (dvc repro quantize)")
    model, float_meta = load_checkpoint_model(source)
    calibration = meta.calibration
    calib = calibration_batches(recordings, resampled, float_meta.features, calibration["batches"],
                                calibration["batch_size"], calibration["hop_s"], calibration["seed"],
                                calibration.get("split", FULL_SPLIT),  # int8 models older than data.split: all
                                calibration.get("device"))
    float_modules = meta.float_modules or []
    with tempfile.TemporaryDirectory(prefix="export-") as scratch:
        float_path = Path(scratch) / "float.onnx"
        export_float(model, float_meta, float_path)
        quantized = Path(scratch) / "int8.onnx"
        summary = quantize_onnx(float_path, quantized, calib, meta.quant_engine, float_modules)
        proto = onnx.load(str(quantized))
    onnx_meta = meta.replace(format="onnx", runtime="onnxruntime", quant_engine=None, onnx_quantization={
        "format": "QDQ", "qparams": f"torch's {meta.quant_engine} observers on the calibration crops",
        "weights": "int8 per channel", "activations": "uint8 per tensor",
        "float": ", ".join(["LayerNorm", "SiLU", "attention core", "logits", *float_modules]),
        **summary})
    _set_meta(proto, onnx_meta)
    onnx.checker.check_model(proto, full_check=True)
    with atomic_output(out) as tmp:
        onnx.save(proto, str(tmp))
    return onnx_meta


def attention_ops(proto: Any, model: torch.nn.Module) -> None:
    """Rewrite each AttentionCore of `model` in the exported graph `proto` as Reshape ->
    Split -> Attention -> Reshape on (B*P, N, 3d) rows: the op takes the heads side by side
    (q_num_heads), so the head split and merge need no Transpose (the exporter's form had
    four per layer, a large share of onnxruntime's float time).

    The exporter names each node's module scope in its metadata; the core's nodes are
    those inside `<name>.core`, with one input (qkv) and one output used outside.
    """
    import numpy as np
    from onnx import helper, numpy_helper

    graph = proto.graph
    cores = {name: m for name, m in model.named_modules() if isinstance(m, AttentionCore)}
    old = list(graph.node)
    scopes = [_scope(node, cores) for node in old]
    constants = {init.name for init in graph.initializer} | {o for n in old if n.op_type == "Constant" for o in n.output}
    nodes = []
    for i, (node, name) in enumerate(zip(old, scopes)):
        if name is None:
            nodes.append(node)
        elif name not in scopes[:i]:  # the core's first node: write the whole core here
            core = cores[name]
            members = [n for n, s in zip(old, scopes) if s == name]
            produced = {o for n in members for o in n.output}
            (qkv,) = {i for n in members for i in n.input if i not in produced and i not in constants}
            used_outside = {i for n, s in zip(old, scopes) if s != name for i in n.input} | {o.name for o in graph.output}
            (out,) = produced & used_outside
            tag = name.replace(".", "_")
            graph.initializer.extend([
                numpy_helper.from_array(np.array([-1, core.seq_len, 3 * core.dim], np.int64), f"{tag}_rows_shape"),
                numpy_helper.from_array(np.array([-1, core.dim], np.int64), f"{tag}_tokens_shape")])
            nodes += [helper.make_node("Reshape", [qkv, f"{tag}_rows_shape"], [f"{tag}_rows"], f"{tag}_rows"),  # (B*P, N, 3d)
                      helper.make_node("Split", [f"{tag}_rows"], [f"{tag}_{x}" for x in "qkv"], f"{tag}_split",
                                       axis=2, num_outputs=3),  # 3 x (B*P, N, d)
                      helper.make_node("Attention", [f"{tag}_{x}" for x in "qkv"], [f"{tag}_attention"],
                                       f"{tag}_attention", q_num_heads=core.heads, kv_num_heads=core.heads),
                      helper.make_node("Reshape", [f"{tag}_attention", f"{tag}_tokens_shape"], [out], f"{tag}_tokens")]
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)


def _scope(node: Any, cores: Mapping[str, Any]) -> str | None:
    """The AttentionCore (by module name) a node of the exported graph belongs to, if any."""
    return next((s for s in name_scopes(node) if s in cores), None)


def _set_meta(proto: Any, meta: ModelMeta) -> None:
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_FILE, meta.to_json(sort_keys=True)


def export(model_path: str | Path, out: str | Path, recordings: Path = RECORDINGS_DIR,
           resampled: Path = RESAMPLED_DIR) -> ModelMeta:
    """Float ONNX of a training checkpoint, int8 ONNX of an int8 TorchScript model; returns the meta."""
    _, meta = load_model_any(model_path)
    if meta.quantized:
        return export_int8(model_path, out, recordings, resampled)
    if str(model_path).endswith(".onnx") or meta.is_onnx:
        raise InputError(f"{model_path} is already an ONNX model")
    model, meta = load_checkpoint_model(model_path)
    export_float(model, meta, out)
    return meta


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mobileast export", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="A trained student as an ONNX model (opset 23, dynamic batch, checked with\n"
                    "onnx.checker). From the float checkpoint: a float model. From the int8 TorchScript\n"
                    "model: the float checkpoint it was made from, converted to QDQ int8 with the scales\n"
                    "and int8 weights PyTorch chose (calibrated on the same training crops, read from\n"
                    "--recordings and --resampled). The model's meta rides in the ONNX metadata, so\n"
                    "predict, evaluate and submit run it like the TorchScript model.",
        epilog="examples:\n"
               "  python -m mobileast export --model models/student.pt --format onnx student.onnx\n"
               "  python -m mobileast export --model models/student_int8.pt --format onnx student_int8.onnx")
    parser.add_argument("--model", required=True, help="models/student.pt (float) or models/student_int8.pt (int8)")
    parser.add_argument("--format", choices=["onnx"], default="onnx", help="output format (onnx)")
    parser.add_argument("--recordings", type=Path, default=RECORDINGS_DIR,
                        help=f"recordings table of the calibration crops (int8; default {RECORDINGS_DIR})")
    parser.add_argument("--resampled", type=Path, default=RESAMPLED_DIR,
                        help=f"resampled store holding their audio (int8; default {RESAMPLED_DIR})")
    parser.add_argument("out", type=Path, help="the ONNX file to write")
    args = parser.parse_args(argv)
    try:
        meta = export(args.model, args.out, args.recordings, args.resampled)
    except (InputError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    kind = "int8" if meta.quantized else "float"
    print(f"wrote {kind} ONNX model {args.out} (opset {OPSET})")
    return 0
