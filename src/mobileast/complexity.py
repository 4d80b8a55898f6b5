"""Complexity of a model against the DCASE2023 Task 1 limits.

Counted on the deployment form (BN folded into the convs) for one 1 s input of
1 x 1 x 256 x 64, without the mel frontend:

- `params`: number of parameters.
- `macs_dcase`: the challenge's convention, the total mult-adds of `torchinfo.summary`
  (what the DCASE helper `nessi` reports). torchinfo counts a conv's weights and bias
  once per output position, but any other layer with parameters (Linear, LayerNorm)
  once per sample, not per token, and no parameter-free products at all, so it
  under-counts transformers.
- `macs_full`: every conv weight per output position, every Linear weight per token
  (= output row), and the attention products QK^T and AV. Not counted (they are not
  multiply-accumulates of a weight matrix, and `torch.utils.flop_counter` omits them
  too): bias adds, LayerNorm, softmax, the attention scale, activations, residual
  adds, pooling, concatenation.
- `param_memory_bytes`: parameters at their stored size (float32 = 4 bytes, int8 = 1).
  For a quantized model (FX-converted, or its TorchScript) the packed weights of the
  quantized convs/Linears are unpacked, so int8 weights count 1 byte and their float
  biases and the LayerNorms 4. Quantization scales and zero points are not parameters and
  are not counted (as in `nessi`).
- `param_memory_bytes_int8_estimate` (float models): the stored size after PTSQ with
  every conv/Linear quantized: their weights at 1 byte, biases and norms at 4.

`python -m mobileast complexity --preset sub1 --json` prints the report of a preset.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator

import torch
import torchinfo
from torch import nn

from mobileast.files import atomic_output, write_json
from mobileast.deploy import load_checkpoint_model, load_deployed
from mobileast.models import PRESETS, build_preset, model_spec
from mobileast.models.mobileast import MatMul, TransformerLayer, fold_bn

LIMIT_PARAM_MEMORY_BYTES = 128_000
LIMIT_MACS = 30_000_000
INPUT_SHAPE = (1, 1, 256, 64)
NOT_COUNTED_IN_MACS_FULL = ("bias adds", "LayerNorm", "softmax", "attention scale", "activations",
                            "residual adds", "pooling", "concatenation")


def macs_full_by_module(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """{module name: MACs} of convs, Linears and MatMuls for one forward pass on `x`."""
    names = {m: name for name, m in model.named_modules()}
    macs: dict[str, int] = defaultdict(int)

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        if isinstance(module, nn.modules.conv._ConvNd):
            per_output = module.in_channels // module.groups * torch.Size(module.kernel_size).numel()
        elif isinstance(module, nn.Linear):
            per_output = module.in_features
        else:  # MatMul: (..., n, k) @ (..., k, m)
            per_output = inputs[0].shape[-1]
        macs[names[module]] += out.numel() * per_output

    counted = (nn.modules.conv._ConvNd, nn.Linear, MatMul)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, counted)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return dict(macs)


def torchinfo_by_module(model: nn.Module,
                        input_shape: tuple[int, ...]) -> tuple[dict[str, int], dict[str, list[int]]]:
    """torchinfo's MACs of its leaf layers (they sum to its total mult-adds, the DCASE
    convention) and the output shape of every module, both by module name."""
    names = {m: name for name, m in model.named_modules()}
    stats = torchinfo.summary(model, input_size=input_shape, verbose=0, mode="eval", device="cpu")
    macs: dict[str, int] = defaultdict(int)
    for layer in stats.summary_list:
        if layer.is_leaf_layer:
            macs[names[layer.module]] += layer.macs
    assert sum(macs.values()) == stats.total_mult_adds
    return dict(macs), {names[layer.module]: layer.output_size for layer in stats.summary_list}


def _packed_params(module: nn.Module) -> Any:
    """The packed int8 weight of a quantized conv/Linear (eager or TorchScript), or None."""
    if isinstance(module, torch.jit.ScriptModule):
        packed = module._c.getattr("_packed_params") if module._c.hasattr("_packed_params") else None
    else:
        packed = getattr(module, "_packed_params", None)
    if isinstance(packed, torch.ScriptObject) and packed._type().qualified_name().endswith("PackedParamsBase"):
        return packed
    return None


def _stored_tensors(model: nn.Module) -> Iterator[torch.Tensor]:
    """Parameters as stored: the (weight, bias) packed in quantized convs and Linears, and
    every module's own `parameters()` (float models, LayerNorms, float parts)."""
    for module in model.modules():
        packed = _packed_params(module)
        if packed is not None:
            is_linear = packed._type().qualified_name().endswith("LinearPackedParamsBase")
            weight, bias = torch.ops.quantized.linear_unpack(packed) if is_linear else packed.unpack()
            yield from (weight,) if bias is None else (weight, bias)
        yield from module.parameters(recurse=False)


def param_memory_bytes(model: nn.Module) -> int:
    """Bytes of all parameters at their stored dtype (float32 model, FX-quantized or TorchScript)."""
    return sum(t.numel() * t.element_size() for t in _stored_tensors(model))


_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
_WEIGHT_INPUT = {"Conv": 1, "MatMul": 1, "Gemm": 1}  # op type -> input index of its weight


def onnx_param_memory_bytes(path: str | Path) -> int:
    """`param_memory_bytes` of an ONNX model (mobileast.export), in the torch model's convention.

    Counted per use of an initializer (the exporter merges initializers of equal value,
    e.g. two LayerNorms' unit weights, which torch stores twice): a Conv/MatMul/Gemm
    weight stored int8 (behind its DequantizeLinear) counts 1 byte an element, every
    other parameter 4, whatever onnxruntime stores it as (it keeps biases as int32 and
    some as uint8 where torch keeps float32). Quantization scales and zero points
    (inputs 1 and 2 of Q/DQ), int64 shapes and axes, and scalars are not parameters.
    """
    return sum(array.size * width for array, width in _onnx_parameters(path))


def onnx_param_nonzero(path: str | Path) -> int:
    """Non-zero parameter elements of an ONNX model, counted as `onnx_param_memory_bytes`
    counts them (an int8 weight is zero where its stored integer is)."""
    import numpy as np

    return sum(int(np.count_nonzero(array)) for array, _ in _onnx_parameters(path))


def param_nonzero(model: nn.Module) -> int:
    """Non-zero parameter elements of a torch model as stored (float, FX-quantized or TorchScript)."""
    return sum(int((t.dequantize() if t.is_quantized else t).count_nonzero()) for t in _stored_tensors(model))


def _onnx_parameters(path: str | Path) -> Iterator[tuple[Any, int]]:
    """(array, stored bytes per element) of every use of an ONNX model's parameters
    (`onnx_param_memory_bytes` says which initializers and uses count)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    uses: dict[str, list[tuple[Any, int]]] = defaultdict(list)
    for node in graph.node:
        for position, name in enumerate(node.input):
            uses[name].append((node, position))
    for init in graph.initializer:
        array = numpy_helper.to_array(init)
        sites = uses.get(init.name, [])
        if array.dtype == np.int64 or array.size <= 1 or any(n.op_type in _QDQ_OPS and i > 0 for n, i in sites):
            continue
        consumers = [use for n, i in sites
                     for use in (uses.get(n.output[0], []) if n.op_type == "DequantizeLinear" else [(n, i)])]
        for node, position in consumers:
            weight = _WEIGHT_INPUT.get(node.op_type) == position and array.itemsize == 1
            yield array, 1 if weight else 4


def param_memory_bytes_int8_estimate(model: nn.Module) -> int:
    """Stored bytes if every conv/Linear weight were int8 (1 byte) and the rest float32."""
    total = 0
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            quantized = name == "weight" and isinstance(module, (nn.modules.conv._ConvNd, nn.Linear))
            total += p.numel() * (1 if quantized else 4)
    return total


def transformer_modules(model: nn.Module) -> list[str]:
    """Names of the transformer layers (each with its attention, FFN and LayerNorms)."""
    return [name for name, m in model.named_modules() if isinstance(m, TransformerLayer)]


def breakdown_units(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The rows of the per-block table: top-level children, with the members of top-level
    containers (ModuleDict, plain Sequential) listed one by one."""
    units = []
    for name, child in model.named_children():
        if type(child) in (nn.ModuleDict, nn.Sequential, nn.ModuleList):
            units += [(f"{name}.{sub}", m) for sub, m in child.named_children()]
        else:
            units.append((name, child))
    return units


def _owner(name: str, prefixes: list[str]) -> str | None:
    return next((p for p in prefixes if name == p or name.startswith(p + ".")), None)


def _sum_under(counts: dict[str, int], prefix: str) -> int:
    return sum(v for k, v in counts.items() if _owner(k, [prefix]))


def _share(part: int, total: int) -> float:
    return round(part / total, 4) if total else 0.0


def complexity_report(model: nn.Module, input_shape: tuple[int, ...] = INPUT_SHAPE,
                      stored: nn.Module | None = None) -> dict[str, Any]:
    """Complexity figures and verdicts of `model` (float; BN is folded here).

    `stored`: the deployed (e.g. int8) form of the same model; when given,
    `param_memory_bytes` is its stored size, else the float model's.
    """
    model = fold_bn(model)
    full = macs_full_by_module(model, torch.zeros(input_shape))
    dcase, shapes = torchinfo_by_module(model, input_shape)
    params = sum(p.numel() for p in model.parameters())
    macs_full, macs_dcase = sum(full.values()), sum(dcase.values())

    def counts(prefixes: list[str], module_params: int) -> dict[str, Any]:
        part_dcase = sum(_sum_under(dcase, p) for p in prefixes)
        part_full = sum(_sum_under(full, p) for p in prefixes)
        return {"params": module_params, "params_share": _share(module_params, params),
                "macs_dcase": part_dcase, "macs_dcase_share": _share(part_dcase, macs_dcase),
                "macs_full": part_full, "macs_full_share": _share(part_full, macs_full)}

    blocks = [{"name": n, "type": type(m).__name__, "output_shape": shapes.get(n),
               **counts([n], sum(p.numel() for p in m.parameters()))} for n, m in breakdown_units(model)]
    layers = transformer_modules(model)
    modules = dict(model.named_modules())
    transformer = {"layers": layers,
                   **counts(layers, sum(p.numel() for n in layers for p in modules[n].parameters()))}

    quantized = stored is not None
    memory = param_memory_bytes(stored if quantized else model)
    verdicts = {
        "param_memory": _verdict(memory, LIMIT_PARAM_MEMORY_BYTES, "param_memory_bytes: parameters as stored "
                                 f"in the {'quantized' if quantized else 'float'} model"),
        "macs_dcase": _verdict(macs_dcase, LIMIT_MACS,
                               "macs_dcase: torchinfo total mult-adds, the DCASE (nessi) convention"),
        "macs_full": _verdict(macs_full, LIMIT_MACS,
                              "macs_full: convs and Linears per position/token + attention products"),
    }
    report: dict[str, Any] = {
        "input_shape": list(input_shape),
        "params": params,
        "transformer_params": transformer["params"],
        "macs_dcase": macs_dcase,
        "macs_full": macs_full,
        "param_memory_bytes": memory,
        "param_memory_of": "quantized model" if quantized else "float model",
        "param_memory_bytes_float32": 4 * params,
        "limits": {"param_memory_bytes": LIMIT_PARAM_MEMORY_BYTES, "macs": LIMIT_MACS},
        "verdicts": verdicts,
        "transformer": transformer,
        "blocks": blocks,
        "macs_full_not_counted": list(NOT_COUNTED_IN_MACS_FULL),
    }
    if not quantized:
        estimate = param_memory_bytes_int8_estimate(model)
        report["param_memory_bytes_int8_estimate"] = estimate
        verdicts["param_memory_int8_estimate"] = _verdict(
            estimate, LIMIT_PARAM_MEMORY_BYTES,
            "param_memory_bytes_int8_estimate: conv/Linear weights int8, rest float32")
    memory_key = "param_memory" if quantized else "param_memory_int8_estimate"
    report["dcase_pass"] = verdicts[memory_key]["pass"] and verdicts["macs_dcase"]["pass"]
    report["dcase_pass_basis"] = f"{memory_key} and macs_dcase"
    try:
        report["arch"], report["config"] = model_spec(model)
    except TypeError:
        pass
    return report


HEADLINE_KEYS = ("params", "transformer_params", "macs_dcase", "macs_full", "param_memory_bytes",
                 "param_memory_bytes_float32", "dcase_pass")


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """The report's headline figures and verdicts (the DVC metrics file); the rest is detail."""
    return {**{k: report[k] for k in HEADLINE_KEYS},
            **{f"{name}_pass": verdict["pass"] for name, verdict in report["verdicts"].items()}}


def _verdict(value: int, limit: int, basis: str) -> dict[str, Any]:
    return {"value": value, "limit": limit, "pass": value <= limit, "basis": basis}


def _n(v: int) -> str:
    return f"{v:,}"


def _pct(v: float) -> str:
    return f"{100 * v:.1f} %"


def format_markdown(report: dict[str, Any], title: str = "Model complexity") -> str:
    """The report as Markdown: verdicts, then one row per block."""
    v = report["verdicts"]
    lines = [f"# {title}", "",
             f"Input {'×'.join(map(str, report['input_shape']))} (log-mel; the frontend is not counted), "
             "BatchNorm folded into the convs.", "",
             "| quantity | value | limit | verdict |", "|---|---:|---:|---|",
             f"| parameters | {_n(report['params'])} | | |",
             f"| transformer parameters | {_n(report['transformer_params'])} "
             f"({_pct(report['transformer']['params_share'])}) | | |"]
    rows = [("param_memory", f"parameter memory as stored ({report['param_memory_of']}), bytes"),
            ("param_memory_int8_estimate", "parameter memory, int8 estimate (weights 1 B, biases/norms 4 B), bytes"),
            ("macs_dcase", "MACs, DCASE convention (torchinfo)"),
            ("macs_full", "MACs, full count (per token + attention)")]
    for key, label in rows:
        if key in v:
            lines.append(f"| {label} | {_n(v[key]['value'])} | {_n(v[key]['limit'])} | "
                         f"{'PASS' if v[key]['pass'] else 'FAIL'} |")
    lines += ["", f"**DCASE2023 limits: {'PASS' if report['dcase_pass'] else 'FAIL'}** "
              f"(on {report['dcase_pass_basis']}).", "",
              "## Per block", "",
              "| block | type | output | params | % | MACs (DCASE) | % | MACs (full) | % |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    t = report["transformer"]
    rows = report["blocks"]
    if t["layers"]:
        holder = _owner(t["layers"][0], [b["name"] for b in rows])
        rows = rows + [{**t, "name": f"↳ transformer layers (in {holder})", "output_shape": None,
                        "type": f"{len(t['layers'])} × TransformerLayer"}]
    for b in rows:
        shape = "×".join(map(str, b["output_shape"][1:])) if b["output_shape"] else ""
        lines.append(f"| {b['name']} | {b['type']} | {shape} | {_n(b['params'])} | {_pct(b['params_share'])} | "
                     f"{_n(b['macs_dcase'])} | {_pct(b['macs_dcase_share'])} | "
                     f"{_n(b['macs_full'])} | {_pct(b['macs_full_share'])} |")
    lines.append(f"| **total** | | | {_n(report['params'])} | | {_n(report['macs_dcase'])} | | "
                 f"{_n(report['macs_full'])} | |")
    lines += [""]
    if t["layers"]:
        lines.append("The transformer layers (attention, FFN and their LayerNorms) are counted in their block too.")
    lines += ["MACs (DCASE) are torchinfo's total mult-adds: it counts a Linear or LayerNorm once per sample, "
              "not per token, and no attention products. MACs (full) count every conv/Linear per output "
              "position or token plus QKᵀ and AV; not counted: " + ", ".join(report["macs_full_not_counted"]) + "."]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], json_path: str | Path, md_path: str | Path,
                 title: str = "Model complexity") -> None:
    """Write the report as JSON and as Markdown, each atomically."""
    write_json(json_path, report)
    with atomic_output(md_path) as tmp:
        tmp.write_text(format_markdown(report, title))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mobileast complexity", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Params, MACs and parameter memory of a student against the DCASE2023 Task 1 limits\n"
                    "(30 M MACs per 1 s clip, 128 kB of parameter memory), counted on the deployment form\n"
                    "(BN folded) for one 1 x 1 x 256 x 64 input, without the mel frontend. MACs are given in\n"
                    "two conventions: macs_dcase (torchinfo's total mult-adds, as the challenge's nessi\n"
                    "helper counts) and macs_full (every conv and Linear per position and token, plus the\n"
                    "attention matrix products); see docs/models.md.",
        epilog="examples:\n"
               "  python -m mobileast complexity --preset sub1\n"
               "  python -m mobileast complexity --checkpoint models/student.pt --quantized models/student_int8.pt --json")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--preset", choices=sorted(PRESETS), help="a named preset (no trained model needed)")
    source.add_argument("--checkpoint", help="a training checkpoint (float model)")
    parser.add_argument("--quantized", help="the deployed (TorchScript) form of the same model, "
                                            "for param_memory_bytes as stored")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.add_argument("--out-json", help="write the JSON report here")
    parser.add_argument("--out-md", help="write the Markdown report here")
    args = parser.parse_args(argv)
    if bool(args.out_json) != bool(args.out_md):
        parser.error("--out-json and --out-md go together")

    try:
        model = build_preset(args.preset) if args.preset else load_checkpoint_model(args.checkpoint)[0]
        stored = load_deployed(args.quantized)[0] if args.quantized else None
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    report = complexity_report(model, stored=stored)
    title = f"Complexity of {args.preset or Path(args.checkpoint).name}"
    if args.out_json:
        write_report(report, args.out_json, args.out_md, title)
    print(json.dumps(report) if args.json else format_markdown(report, title), end="\n" if args.json else "")
    return 0
