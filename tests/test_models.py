"""MobileAST_Light presets, BN folding, patches, attention, FX tracing and the registry."""
import math

import pytest
import torch
from torch.testing import assert_close

from mobileast.errors import ParamsError
from mobileast.models import build_model, build_preset, build_student, model_spec
from mobileast.models.mobileast import (PRESETS, Attention, MobileASTConfig, MobileASTLight, Patches,
                                        fold_bn)

X_SHAPE = (2, 1, 256, 64)
VARIANTS = {
    **{name: {} for name in PRESETS},
    "sub2_v1": {"vit_version": 1},
    "sub1_ex": {"ex_ratios": {"mv2_1": 0.25, "vit": 0.5}},
}


def _student(variant: str) -> MobileASTLight:
    return build_preset(variant.split("_")[0], **VARIANTS[variant])


def _randomize_bn(model: torch.nn.Module) -> None:
    """Non-trivial BN statistics and affine parameters, so that folding changes weights."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)


@pytest.mark.parametrize("variant", [*VARIANTS, "teacher_cnn"])
def test_forward_shape_finite_and_gradients_reach_first_conv(variant):
    torch.manual_seed(0)
    model = build_preset("teacher_cnn") if variant == "teacher_cnn" else _student(variant)
    y = model(torch.randn(X_SHAPE))
    assert y.shape == (2, 10) and torch.isfinite(y).all()
    y.square().sum().backward()
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.weight.grad is not None and first.weight.grad.abs().sum() > 0


def _block_shapes(model: MobileASTLight) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for name, block in model.blocks.items():
        block.register_forward_hook(lambda m, i, o, n=name: shapes.__setitem__(n, tuple(o.shape[1:])))
    model(torch.zeros(1, 1, 256, 64))
    return shapes


@pytest.mark.parametrize("name", ["sub1", "sub2", "sub3"])
def test_standard_layout_follows_the_spec_table(name):
    cfg = PRESETS[name]
    assert _block_shapes(MobileASTLight(cfg)) == {
        "in_conv": (32, 128, 32), "mv2_1": (cfg.c1, 128, 32), "mv2_2": (cfg.c2, 64, 16),
        "pool": (cfg.c2, 32, 16), "vit": (cfg.c2, 32, 16), "mv2_3": (64, 16, 8),
        "out_conv": (cfg.c_out, 16, 8)}


def test_compact_layout_sub4():
    model = MobileASTLight(PRESETS["sub4"])
    assert _block_shapes(model) == {"in_conv": (32, 127, 31), "mv2_1": (50, 64, 16),
                                    "pool": (50, 32, 16), "vit": (50, 32, 16)}
    assert model.blocks.in_conv.conv.kernel_size == (5, 5) and model.blocks.in_conv.conv.padding == (1, 1)


def _conv(c_in, c_out, k=1, groups=1):  # folded conv: weights + bias
    return c_in // groups * c_out * k * k + c_out


def _transformer_layer(d, d_m):  # 2 LayerNorms, q/k/v without bias, proj with bias, FFN
    return 2 * 2 * d + 3 * d * d + d * d + d + d * d_m + d_m + d_m * d + d


def test_parameter_counts_by_hand():
    """Deployment-form parameter counts of sub1 and sub4 written out layer by layer."""
    mv2_e1 = lambda c_in, c_out: _conv(c_in, c_in, 3, c_in) + _conv(c_in, c_out)  # noqa: E731
    vit = lambda c, d, d_m, depth: (_conv(c, c, 3, c) + _conv(c, d) + depth * _transformer_layer(d, d_m)  # noqa: E731
                                    + _conv(d, c) + _conv(d + c, c))
    sub1 = (_conv(1, 32, 3) + mv2_e1(32, 64) + mv2_e1(64, 64) + vit(64, 32, 64, 2) + mv2_e1(64, 64)
            + _conv(64, 160) + 160 * 10)
    sub4 = _conv(1, 32, 5) + mv2_e1(32, 50) + vit(50, 64, 64, 2) + 50 * 10
    for name, expected in [("sub1", sub1), ("sub4", sub4)]:
        assert sum(p.numel() for p in fold_bn(build_preset(name)).parameters()) == expected


def test_mv2_expand_conv_only_when_expansion_is_not_one():
    sub2 = MobileASTLight(PRESETS["sub2"])  # e1 = 2, e2 = 1
    assert sub2.blocks.mv2_1.conv.expand.conv.out_channels == 64
    assert not hasattr(sub2.blocks.mv2_2.conv, "expand")
    assert sub2.blocks.mv2_1.residual and not sub2.blocks.mv2_2.residual  # 32 -> 32 stride 1; stride 2
    assert not MobileASTLight(PRESETS["sub1"]).blocks.mv2_1.residual  # 32 -> 64


@pytest.mark.parametrize("variant", ["sub1", "sub2_v1", "sub1_ex"])
def test_fold_bn_preserves_outputs(variant):
    model = _student(variant)
    _randomize_bn(model)
    model.eval()
    folded = fold_bn(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the input is untouched
    x = torch.randn(X_SHAPE)
    with torch.no_grad():
        assert_close(folded(x), model(x), rtol=1e-4, atol=1e-5)
        assert_close(fold_bn(folded)(x), folded(x), rtol=0, atol=0)


def test_patches_round_trip_and_layout():
    patches = Patches(dim=3, size=(6, 4), patch=(2, 2))
    x = torch.randn(2, 3, 6, 4)
    tokens = patches.unfold(x)
    assert tokens.shape == (2, 4, 6, 3)
    assert torch.equal(patches.fold(tokens), x)
    for b, c, i, j in torch.cartesian_prod(*map(torch.arange, x.shape)).tolist():
        # pixel (i, j): position (i % 2, j % 2) inside patch (i // 2, j // 2) of a 3 x 2 grid
        assert tokens[b, (i % 2) * 2 + j % 2, (i // 2) * 2 + j // 2, c] == x[b, c, i, j]


@torch.no_grad()
def _slow_attention(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """Per sample, sequence and head, with explicit dot products and softmax."""
    batch, p, n, dim = x.shape
    hd = dim // attn.heads
    out = torch.empty_like(x)
    for b in range(batch):
        for s in range(p):
            seq = x[b, s]  # (N, d)
            q, k, v = seq @ attn.q.weight.T, seq @ attn.k.weight.T, seq @ attn.v.weight.T
            heads = []
            for h in range(attn.heads):
                cols = slice(h * hd, (h + 1) * hd)
                scores = torch.tensor([[float(q[i, cols] @ k[j, cols]) / math.sqrt(hd) for j in range(n)]
                                       for i in range(n)])
                weights = scores.exp() / scores.exp().sum(dim=1, keepdim=True)
                heads.append(weights @ v[:, cols])
            out[b, s] = torch.cat(heads, dim=1) @ attn.proj.weight.T + attn.proj.bias
    return out


def random_attention() -> Attention:
    """An Attention with weights far from their init (distinct scores per head)."""
    torch.manual_seed(0)
    attn = Attention(dim=16, heads=4, seq_shape=(3, 5))
    for lin in (attn.q, attn.k, attn.v, attn.proj):
        torch.nn.init.normal_(lin.weight, std=0.5)
    torch.nn.init.normal_(attn.proj.bias)
    return attn


def test_attention_matches_slow_reference():
    attn = random_attention()
    assert attn.q.bias is None and attn.k.bias is None and attn.v.bias is None
    x = torch.randn(2, 3, 5, 16)
    assert_close(attn(x), _slow_attention(attn, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("variant", [*VARIANTS])
def test_fx_symbolic_trace(variant):
    model = _student(variant).eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(X_SHAPE)
    with torch.no_grad():
        assert_close(traced(x), model(x), rtol=0, atol=0)


def test_fx_quantization_fuses_and_runs():
    """FX graph mode PTSQ (x86): conv+BN+ReLU and Linear+ReLU are fused, the model runs."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    model = build_preset("sub2").eval()
    x = torch.randn(X_SHAPE)
    prepared = prepare_fx(model, get_default_qconfig_mapping("x86"), example_inputs=(x,))
    prepared(x)
    quantized = convert_fx(prepared)
    kinds = {type(m).__name__ for m in quantized.modules()}
    assert {"ConvReLU2d", "LinearReLU", "Conv2d", "Linear", "LayerNorm"} <= kinds
    assert "BatchNorm2d" not in kinds
    y = quantized(x)
    assert y.shape == (2, 10) and torch.isfinite(y).all()


def test_registry_round_trip():
    model = build_student({"preset": "sub3", "custom": {"act": "silu", "ex_ratios": {"in_conv": 0.5}}})
    arch, config = model_spec(model)
    assert arch == "mobileast" and config["act"] == "silu" and config["c_out"] == 192
    rebuilt = build_model(arch, config)
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(X_SHAPE)
    with torch.no_grad():
        assert_close(rebuilt.eval()(x), model.eval()(x), rtol=0, atol=0)
    assert model_spec(build_preset("teacher_cnn"))[0] == "cnn"


def test_student_params_custom_and_errors():
    custom = build_student({"preset": "custom", "custom": {"c1": 16, "act": "relu"}})
    assert custom.cfg == MobileASTConfig(c1=16, act="relu")
    assert build_student({"preset": "sub4"}).cfg == PRESETS["sub4"]
    with pytest.raises(ValueError, match="unknown MobileASTConfig fields"):
        build_student({"preset": "sub1", "custom": {"width": 3}})
    with pytest.raises(ParamsError, match="student.preset must be"):
        build_student({"preset": "teacher_cnn"})
    with pytest.raises(ValueError, match="compact layout"):
        MobileASTConfig(layout="compact")
    with pytest.raises(ValueError, match="cannot tap"):
        build_preset("sub1", ex_ratios={"out_conv": 1.0})


def test_ex_taps_widen_the_classifier():
    model = build_preset("sub1", ex_ratios={"mv2_1": 0.25, "vit": 0.5})
    assert model.classifier.in_features == 160 + 16 + 32


@pytest.mark.parametrize("name", ["sub1", "sub4"])
def test_deploy_form_is_the_same_function(name):
    """Deployment form: BN folded, tokens as a matrix, q|k|v stacked, one scaled_dot_product_attention."""
    from mobileast.models.mobileast import FusedAttention, deploy_form
    torch.manual_seed(0)
    model = build_preset(name).eval()
    deployed = deploy_form(model)
    attns = {n: m for n, m in model.named_modules() if isinstance(m, Attention)}
    fused = {n: m for n, m in deployed.named_modules() if isinstance(m, FusedAttention)}
    assert fused.keys() == attns.keys() and not any(isinstance(m, Attention) for m in deployed.modules())
    for n, attn in attns.items():
        assert torch.equal(fused[n].qkv.weight, torch.cat([attn.q.weight, attn.k.weight, attn.v.weight]))
    x = torch.randn(3, 1, 256, 64)
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), model(x), rtol=1e-5, atol=1e-5)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in deployed.modules())
    assert sum(p.numel() for p in deployed.parameters()) == sum(p.numel() for p in fold_bn(model).parameters())


def test_fused_attention_matches_slow_reference():
    """On the (B*P*N, d) token matrix, as the deploy form runs it."""
    from mobileast.models.mobileast import FusedAttention
    attn = random_attention()
    x = torch.randn(2, 3, 5, 16)
    with torch.no_grad():
        out = FusedAttention(attn)(x.reshape(-1, 16))
    assert_close(out, _slow_attention(attn, x).reshape(-1, 16), rtol=1e-4, atol=1e-5)
