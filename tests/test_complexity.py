"""Complexity counting: MAC conventions, parameter memory, report and command."""
import json
import subprocess
import sys

import pytest
import torch
import torchinfo
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mobileast.complexity import (INPUT_SHAPE, complexity_report, macs_full_by_module, main,
                                  param_memory_bytes, param_memory_bytes_int8_estimate, write_report)
from mobileast.deploy import ModelMeta, load_deployed, save_deployed
from mobileast.labels import SCENES
from mobileast.models import build_preset, model_spec
from mobileast.models.mobileast import PRESETS, MatMul, fold_bn


@pytest.fixture(scope="module")
def reports():
    return {name: complexity_report(build_preset(name)) for name in [*PRESETS, "teacher_cnn"]}


@pytest.mark.parametrize("name", [*PRESETS, "teacher_cnn"])
def test_macs_full_equals_flop_counter(name, reports):
    """FlopCounterMode counts 2 FLOPs per conv/matmul MAC and, like macs_full, no bias adds,
    norms, softmax or elementwise ops, so the two agree exactly."""
    model = fold_bn(build_preset(name))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(INPUT_SHAPE))
    assert reports[name]["macs_full"] == counter.get_total_flops() // 2


@pytest.mark.parametrize("name", ["sub1", "sub4"])
def test_macs_dcase_is_torchinfo_total(name, reports):
    stats = torchinfo.summary(fold_bn(build_preset(name)), input_size=INPUT_SHAPE, verbose=0)
    assert reports[name]["macs_dcase"] == stats.total_mult_adds
    assert reports[name]["params"] == stats.total_params


def test_mac_conventions_on_a_small_model_by_hand():
    """A depthwise conv, a conv with bias, a Linear on tokens and a matrix product."""
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False)  # out 4 x 6 x 5
            self.conv = nn.Conv2d(4, 8, 1)  # out 8 x 6 x 5
            self.fc = nn.Linear(5, 3)  # tokens: 8 * 6 rows of 5
            self.mm = MatMul()

        def forward(self, x):  # (1, 4, 6, 5)
            t = self.fc(self.conv(self.dw(x)))  # (1, 8, 6, 3)
            return self.mm(t, t.transpose(-2, -1))  # (1, 8, 6, 6)

    model = Tiny()
    full = macs_full_by_module(model, torch.zeros(1, 4, 6, 5))
    assert full == {"dw": 4 * 30 * 9, "conv": 8 * 30 * 4, "fc": 48 * 3 * 5, "mm": 8 * 36 * 3}
    # torchinfo: conv weights and biases per output position, the Linear's once per sample
    dcase = torchinfo.summary(model, input_size=(1, 4, 6, 5), verbose=0).total_mult_adds
    assert dcase == 4 * 9 * 30 + (32 + 8) * 30 + (15 + 3)


def test_figures_of_the_presets(reports):
    sub1 = reports["sub1"]
    assert sub1["params"] == 52_288 and sub1["transformer_params"] == 2 * 8448
    assert sub1["param_memory_bytes_float32"] == sub1["param_memory_bytes"] == 4 * 52_288
    for name in PRESETS:
        r = reports[name]
        assert r["params"] < 128_000 and r["macs_dcase"] <= 30_000_000 < r["macs_full"]
        assert r["param_memory_bytes_int8_estimate"] <= 128_000 and r["dcase_pass"]
        for key in ("params", "macs_dcase", "macs_full"):
            assert sum(b[key] for b in r["blocks"]) == r[key]
        assert r["transformer"]["macs_full"] > r["transformer"]["macs_dcase"]
    assert reports["teacher_cnn"]["transformer_params"] == 0 and not reports["teacher_cnn"]["dcase_pass"]


def test_param_memory_of_fx_quantized_model(tmp_path, capsys):
    """int8 weights count 1 byte, float biases and LayerNorms 4, also in saved TorchScript."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    model = build_preset("sub2").eval()
    x = torch.randn(2, *INPUT_SHAPE[1:])
    prepared = prepare_fx(model, get_default_qconfig_mapping("x86"), example_inputs=(x,))
    prepared(x)
    quantized = convert_fx(prepared)
    expected = param_memory_bytes_int8_estimate(fold_bn(model))
    assert param_memory_bytes(quantized) == expected
    save_deployed(quantized, tmp_path / "int8.pt", ModelMeta(features={}, classes=list(SCENES), quantized=True,
                                                             quant_engine="x86"))  # LogMel's defaults: 256 x 64
    assert param_memory_bytes(load_deployed(tmp_path / "int8.pt")[0]) == expected
    assert main(["--preset", "sub2", "--quantized", str(tmp_path / "int8.pt"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["param_memory_bytes"] == expected < report["param_memory_bytes_float32"] / 3
    assert report["param_memory_of"] == "quantized model" and report["verdicts"]["param_memory"]["pass"]


def test_write_report(tmp_path, reports):
    write_report(reports["sub2"], tmp_path / "c.json", tmp_path / "c.md", title="sub2")
    assert json.loads((tmp_path / "c.json").read_text())["macs_full"] == reports["sub2"]["macs_full"]
    md = (tmp_path / "c.md").read_text()
    assert md.startswith("# sub2") and "| blocks.vit | MobileViTBlock | 32×32×16 |" in md
    assert "MACs, DCASE convention (torchinfo) | 28,400,320 | 30,000,000 | PASS |" in md


def test_command_prints_json():
    out = subprocess.run([sys.executable, "-m", "mobileast", "complexity", "--preset", "sub1", "--json"],
                         capture_output=True, text=True, check=True).stdout
    report = json.loads(out)
    for key in ("params", "macs_dcase", "macs_full", "transformer_params", "param_memory_bytes_float32"):
        assert isinstance(report[key], int)


def test_command_with_checkpoint(tmp_path, capsys):
    model = build_preset("sub4")
    arch, config = model_spec(model)
    torch.save({"arch": arch, "config": config, "state_dict": model.state_dict(), "features": {},
                "classes": list(SCENES)}, tmp_path / "ckpt.pt")
    assert main(["--checkpoint", str(tmp_path / "ckpt.pt"), "--json",
                 "--out-json", str(tmp_path / "r.json"), "--out-md", str(tmp_path / "r.md")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "r.json").read_text())
    assert printed["params"] == 66_114 and printed["config"]["layout"] == "compact"


def test_headline_holds_the_figures_and_verdicts_only(reports):
    from mobileast.complexity import headline

    report = reports["sub2"]
    figures = headline(report)
    assert figures == {"params": report["params"], "transformer_params": report["transformer_params"],
                       "macs_dcase": 28_400_320, "macs_full": report["macs_full"],
                       "param_memory_bytes": report["param_memory_bytes"],
                       "param_memory_bytes_float32": 4 * report["params"], "dcase_pass": True,
                       "param_memory_pass": False, "macs_dcase_pass": True,
                       "macs_full_pass": False, "param_memory_int8_estimate_pass": True}
