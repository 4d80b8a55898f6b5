"""MobileAST_Light: a MobileViTv3-style student for 1 x 256 x 64 log-mel input.

Layout (standard, presets sub1..sub3)::

    In_Conv 3x3/2 -> MV2(c1, e1) -> MV2(c2, e2, /2) -> MaxPool(2,1) -> MobileViT block(c2)
    -> MV2(c3, e3, /2) -> Out_Conv 1x1 (c_out) -> global AvgPool -> Linear(10, no bias)

Compact layout (sub4)::

    In_Conv 5x5/2 (padding 1) -> MV2(c1, e1, /2) -> MaxPool(2,1) -> MobileViT block(c1)
    -> global AvgPool -> Linear(10, no bias)

Every conv is conv -> BatchNorm -> activation during training; `fold_bn` folds BN into
the conv, `deploy_form` also fuses the attention (what is quantized and exported). The model is written for
`torch.fx.symbolic_trace` (FX graph mode quantization): all shapes and constants are
fixed in `__init__` from the config, the forward pass has no shape-dependent control
flow, and fusable sequences (Conv2d -> BatchNorm2d -> ReLU, Linear -> ReLU) are
separate modules in a row.
"""

import copy
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "silu": nn.SiLU}
LAYOUTS = ("standard", "compact")


@dataclass
class MobileASTConfig:
    """Hyper-parameters of MobileAST_Light; the names follow the MobileAST report.

    `c2, c3, c_out, e2, e3` exist only in the standard layout and must be None in
    the compact one. `ex_ratios` enables the ExMobileViT-style classifier extension:
    {block name: ratio}, each tapped block's output is average-pooled, projected by
    a 1x1 conv to round(ratio * its channels) and concatenated to the classifier input.
    """

    layout: str = "standard"                 # "standard" (sub1-3) | "compact" (sub4)
    input_size: tuple[int, int] = (256, 64)  # (mel bins, frames)
    in_channels: int = 1
    stem_channels: int = 32
    stem_kernel: int = 3
    stem_padding: int = 1
    c1: int = 64
    c2: int | None = 64
    c3: int | None = 64                      # width of the last MV2 block
    c_out: int | None = 160
    e1: int = 1
    e2: int | None = 1
    e3: int | None = 1
    d_local: int = 32                        # d_l: transformer width
    d_mlp: int = 64                          # d_m: FFN hidden width
    depth: int = 2                           # D: transformer layers
    heads: int = 4
    patch: tuple[int, int] = (2, 2)
    vit_version: int = 3                     # 3: MobileViTv3 block, 1: MobileViT v1 block
    act: str = "silu"                        # "silu" | "relu"
    ex_ratios: dict[str, float] = field(default_factory=dict)
    num_classes: int = 10

    def __post_init__(self) -> None:
        self.input_size, self.patch = tuple(self.input_size), tuple(self.patch)
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        standard_only = {k: getattr(self, k) for k in ("c2", "c3", "c_out", "e2", "e3")}
        if self.layout == "standard" and None in standard_only.values():
            raise ValueError(f"standard layout needs all of {sorted(standard_only)}: {standard_only}")
        if self.layout == "compact" and any(v is not None for v in standard_only.values()):
            raise ValueError(f"compact layout has no {sorted(standard_only)}; set them to None")
        if self.act not in ACTIVATIONS:
            raise ValueError(f"act must be one of {sorted(ACTIVATIONS)}, got {self.act!r}")
        if self.vit_version not in (1, 3):
            raise ValueError(f"vit_version must be 1 or 3, got {self.vit_version}")
        if self.d_local % self.heads:
            raise ValueError(f"d_local={self.d_local} is not divisible by heads={self.heads}")


# The report's four submissions.
PRESETS: dict[str, MobileASTConfig] = {
    "sub1": MobileASTConfig(c1=64, c2=64, c_out=160, e1=1, e2=1, e3=1,
                            d_local=32, d_mlp=64, depth=2, act="silu"),
    "sub2": MobileASTConfig(c1=32, c2=32, c_out=224, e1=2, e2=1, e3=2,
                            d_local=32, d_mlp=64, depth=2, act="relu"),
    "sub3": MobileASTConfig(c1=32, c2=32, c_out=192, e1=1, e2=1, e3=1,
                            d_local=48, d_mlp=64, depth=2, act="relu"),
    "sub4": MobileASTConfig(layout="compact", stem_kernel=5, stem_padding=1,
                            c1=50, c2=None, c3=None, c_out=None, e1=1, e2=None, e3=None,
                            d_local=64, d_mlp=64, depth=2, act="relu"),
}


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> activation (None: linear); `fold_bn` drops the BN."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1,
                 padding: int | None = None, groups: int = 1, act: type[nn.Module] | None = None):
        padding = kernel // 2 if padding is None else padding
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            conv=nn.Conv2d(c_in, c_out, kernel, stride, padding, groups=groups, bias=False),
            bn=nn.BatchNorm2d(c_out),
        )
        if act is not None:
            layers["act"] = act()
        super().__init__(layers)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: [1x1 expand] -> 3x3 depthwise (stride) -> 1x1 linear projection.

    The expand conv is omitted when expansion == 1 (hidden width = expansion * c_in);
    residual add when stride == 1 and c_in == c_out.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, expansion: int, act: type[nn.Module]):
        super().__init__()
        hidden = c_in * expansion
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        if expansion != 1:
            layers["expand"] = ConvBNAct(c_in, hidden, 1, act=act)
        layers["dw"] = ConvBNAct(hidden, hidden, 3, stride, groups=hidden, act=act)
        layers["project"] = ConvBNAct(hidden, c_out, 1)
        self.conv = nn.Sequential(layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return x + y if self.residual else y


class MatMul(nn.Module):
    """torch.matmul as a module, so complexity counting sees the attention products."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.matmul(a, b)


class Attention(nn.Module):
    """Multi-head self-attention within each of the P sequences of (B, P, N, dim).

    Built from nn.Linear: q/k/v projections without bias, output projection with bias
    (as the MobileAST report describes the block). `seq_shape` = (P, N) is fixed so that the head split is a plain
    reshape. This is the training form, whose MatMul modules complexity counting hooks;
    `deploy_form` turns it into `FusedAttention` for deployment.
    """

    def __init__(self, dim: int, heads: int, seq_shape: tuple[int, int]):
        super().__init__()
        self.dim, self.heads, self.head_dim, self.seq_shape = dim, heads, dim // heads, seq_shape
        self.scale = self.head_dim ** -0.5
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.scores = MatMul()
        self.softmax = nn.Softmax(dim=-1)
        self.mix = MatMul()
        self.proj = nn.Linear(dim, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, *self.seq_shape, self.heads, self.head_dim).transpose(2, 3)  # (B, P, h, N, hd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, P, N, d)
        q, k, v = self._split(self.q(x)), self._split(self.k(x)), self._split(self.v(x))
        attn = self.softmax(self.scores(q, k.transpose(-2, -1)) * self.scale)  # (B, P, h, N, N)
        out = self.mix(attn, v)  # (B, P, h, N, hd)
        return self.proj(out.transpose(2, 3).reshape(-1, *self.seq_shape, self.dim))  # (B, P, N, d)


class AttentionCore(nn.Module):
    """softmax(q k^T / sqrt(hd)) v per head, from the fused q|k|v projection of the token
    matrix (T = B*P*N, 3d) to the merged heads (T, d), as one F.scaled_dot_product_attention.

    One module so that quantization keeps it float as a whole (mobileast.quantize): one
    dequantize of the contiguous qkv output, one quantize before the output projection.
    The head split is a permuted view of the qkv rows, and torch's CPU kernel writes its
    output (B*P, N, h, hd)-major, so the merge is a view too: no copies in between.
    """

    def __init__(self, dim: int, heads: int, seq_len: int):
        super().__init__()
        self.dim, self.heads, self.head_dim, self.seq_len = dim, heads, dim // heads, seq_len

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:  # (T, 3d)
        qkv = qkv.reshape(-1, self.seq_len, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B*P, h, N, hd)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B*P, h, N, hd), scale hd ** -0.5
        return out.transpose(1, 2).reshape(-1, self.dim)  # (T, d)


class FusedAttention(nn.Module):
    """Deployment form of `Attention` on the token matrix (T, d), the same function: one
    Linear for q|k|v (their weights stacked), `AttentionCore`, the output projection."""

    def __init__(self, attn: Attention):
        super().__init__()
        self.qkv = nn.Linear(attn.dim, 3 * attn.dim, bias=False)
        with torch.no_grad():
            self.qkv.weight.copy_(torch.cat([attn.q.weight, attn.k.weight, attn.v.weight]))  # (3d, d)
        self.core = AttentionCore(attn.dim, attn.heads, attn.seq_shape[1])
        self.proj = copy.deepcopy(attn.proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (T, d)
        return self.proj(self.core(self.qkv(x)))


class Tokens(nn.Module):
    """(B, P, N, d) -> the (B*P*N, d) token matrix: a reshape (a view, also of int8 tensors)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, self.dim)


class TransformerLayer(nn.Module):
    """Pre-norm layer: x + MHA(LN(x)), then x + FFN(LN(x)); FFN = Linear, act, Linear."""

    def __init__(self, dim: int, mlp_dim: int, heads: int, seq_shape: tuple[int, int],
                 act: type[nn.Module]):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, seq_shape)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(OrderedDict(
            fc1=nn.Linear(dim, mlp_dim), act=act(), fc2=nn.Linear(mlp_dim, dim)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, P, N, d)
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class Patches(nn.Module):
    """Unfold (B, d, H, W) into (B, P = ph*pw, N = H*W/P, d) and fold it back (from that
    or from the same tokens as a (B*P*N, d) matrix).

    Sequence p holds the pixels at position p inside their patch, token n is the patch
    index in row-major order of the (H/ph, W/pw) patch grid. Shapes are fixed at
    construction so the graph traces without shape arithmetic. Channels move last first
    (and back first last): a channels-last map, what x86 int8 convs write, then unfolds
    with one copy instead of two, and every permute moves one axis or keeps the innermost
    one, which onnxruntime transposes in blocks rather than element by element.
    """

    def __init__(self, dim: int, size: tuple[int, int], patch: tuple[int, int]):
        super().__init__()
        (h, w), (ph, pw) = size, patch
        if h % ph or w % pw:
            raise ValueError(f"feature map {size} is not divisible into {patch} patches")
        self.dim, self.size, self.patch, self.grid = dim, (h, w), (ph, pw), (h // ph, w // pw)

    def unfold(self, x: torch.Tensor) -> torch.Tensor:
        (ph, pw), (nh, nw) = self.patch, self.grid
        x = x.permute(0, 2, 3, 1).reshape(-1, nh, ph, nw, pw, self.dim)  # (B, nh, ph, nw, pw, d)
        return x.permute(0, 2, 4, 1, 3, 5).reshape(-1, ph * pw, nh * nw, self.dim)  # (B, P, N, d)

    def fold(self, x: torch.Tensor) -> torch.Tensor:  # (B, P, N, d) or (B*P*N, d)
        (ph, pw), (nh, nw) = self.patch, self.grid
        x = x.reshape(-1, ph, pw, nh, nw, self.dim).permute(0, 3, 1, 4, 2, 5)  # (B, nh, ph, nw, pw, d)
        return x.reshape(-1, *self.size, self.dim).permute(0, 3, 1, 2)  # (B, d, H, W)


class MobileViTBlock(nn.Module):
    """MobileViT block on a (B, c, H, W) map with transformer width d.

    v3 (default): local = 3x3 depthwise conv + 1x1 conv c -> d = L; transformer over
    2x2-patch sequences; fold; 1x1 conv d -> c = G; fusion 1x1 conv on concat(L, G)
    (d + c channels) -> c; add the block input.
    v1: local 3x3 conv is a full conv; fusion is a 3x3 conv on concat(x, G) -> c; no add.
    Every conv has BN and activation in both versions (MobileViT v1's c -> d conv has
    neither), as the MobileAST report describes the block.
    """

    def __init__(self, channels: int, dim: int, mlp_dim: int, depth: int, heads: int,
                 size: tuple[int, int], patch: tuple[int, int], act: type[nn.Module],
                 version: int = 3):
        super().__init__()
        self.version = version
        self.local = nn.Sequential(OrderedDict(
            conv=ConvBNAct(channels, channels, 3, groups=channels if version == 3 else 1, act=act),
            proj=ConvBNAct(channels, dim, 1, act=act)))
        self.patches = Patches(dim, size, patch)
        seq_shape = (patch[0] * patch[1], self.patches.grid[0] * self.patches.grid[1])  # (P, N)
        self.transformer = nn.Sequential(*[TransformerLayer(dim, mlp_dim, heads, seq_shape, act)
                                           for _ in range(depth)])
        self.proj = ConvBNAct(dim, channels, 1, act=act)
        if version == 3:
            self.fusion = ConvBNAct(dim + channels, channels, 1, act=act)
        else:
            self.fusion = ConvBNAct(2 * channels, channels, 3, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, c, H, W)
        local = self.local(x)  # (B, d, H, W)
        tokens = self.transformer(self.patches.unfold(local))  # (B, P, N, d)
        glob = self.proj(self.patches.fold(tokens))  # (B, c, H, W)
        if self.version == 3:
            return x + self.fusion(torch.cat([local, glob], dim=1))
        return self.fusion(torch.cat([x, glob], dim=1))


def _conv_out(n: int, kernel: int, stride: int, padding: int) -> int:
    return (n + 2 * padding - kernel) // stride + 1


class MobileASTLight(nn.Module):
    """(B, 1, 256, 64) log-mel -> (B, num_classes) logits; see the module docstring."""

    def __init__(self, cfg: MobileASTConfig):
        super().__init__()
        self.cfg = cfg
        act = ACTIVATIONS[cfg.act]
        h, w = (_conv_out(n, cfg.stem_kernel, 2, cfg.stem_padding) for n in cfg.input_size)
        blocks: OrderedDict[str, nn.Module] = OrderedDict()
        blocks["in_conv"] = ConvBNAct(cfg.in_channels, cfg.stem_channels, cfg.stem_kernel, 2,
                                      cfg.stem_padding, act=act)
        if cfg.layout == "standard":
            blocks["mv2_1"] = InvertedResidual(cfg.stem_channels, cfg.c1, 1, cfg.e1, act)
            blocks["mv2_2"] = InvertedResidual(cfg.c1, cfg.c2, 2, cfg.e2, act)
            c = cfg.c2
        else:
            blocks["mv2_1"] = InvertedResidual(cfg.stem_channels, cfg.c1, 2, cfg.e1, act)
            c = cfg.c1
        h, w = _conv_out(h, 3, 2, 1) // 2, _conv_out(w, 3, 2, 1)  # stride-2 MV2, MaxPool (2, 1)
        blocks["pool"] = nn.MaxPool2d((2, 1))
        blocks["vit"] = MobileViTBlock(c, cfg.d_local, cfg.d_mlp, cfg.depth, cfg.heads,
                                       (h, w), cfg.patch, act, cfg.vit_version)
        if cfg.layout == "standard":
            blocks["mv2_3"] = InvertedResidual(c, cfg.c3, 2, cfg.e3, act)
            blocks["out_conv"] = ConvBNAct(cfg.c3, cfg.c_out, 1, act=act)
        widths = {"in_conv": cfg.stem_channels, "mv2_1": cfg.c1, "mv2_2": cfg.c2, "pool": c, "vit": c,
                  "mv2_3": cfg.c3, "out_conv": cfg.c_out}  # output channels per block
        self.blocks = nn.ModuleDict(blocks)
        last = next(reversed(blocks))
        bad = set(cfg.ex_ratios) - (set(blocks) - {last})
        if bad:
            raise ValueError(f"ex_ratios: cannot tap {sorted(bad)}; tap one of {list(blocks)[:-1]}")
        # ExMobileViT-style taps, in block order so the classifier input order is fixed.
        self.taps = nn.ModuleDict({
            name: ConvBNAct(widths[name], max(1, round(cfg.ex_ratios[name] * widths[name])), 1, act=act)
            for name in blocks if name in cfg.ex_ratios})
        self.pool = nn.AdaptiveAvgPool2d(1)
        features = widths[last] + sum(tap.conv.out_channels for tap in self.taps.values())
        self.classifier = nn.Linear(features, cfg.num_classes, bias=False)
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, 256, 64)
        pooled = []
        for name, block in self.blocks.items():
            x = block(x)
            if name in self.taps:
                pooled.append(self.taps[name](self.pool(x)))  # (B, w_tap, 1, 1)
        x = torch.cat([self.pool(x), *pooled], dim=1)  # (B, C, 1, 1)
        return self.classifier(torch.flatten(x, 1))  # (B, num_classes)


def _init_weights(m: nn.Module) -> None:
    """timm-style init: Kaiming (fan-out) convs, truncated-normal linears, unit norms."""
    if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out")
    elif isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
    elif isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
        nn.init.ones_(m.weight)
    if getattr(m, "bias", None) is not None:
        nn.init.zeros_(m.bias)


def fold_bn(model: nn.Module) -> nn.Module:
    """Deployment form: an eval-mode copy with every ConvBNAct's BN folded into its conv.

    Outputs equal the eval-mode model's up to float rounding; already folded blocks are
    left as they are. Works for any model built from ConvBNAct (student and CNN teacher).
    """
    model = copy.deepcopy(model).eval()
    for module in model.modules():
        if isinstance(module, ConvBNAct) and "bn" in module._modules:
            module.conv = fuse_conv_bn_eval(module.conv, module.bn)
            del module.bn
    return model


def deploy_form(model: nn.Module) -> nn.Module:
    """The float model as deployed, quantized and exported: an eval-mode copy with BN
    folded (`fold_bn`) and each MobileViT transformer run on the token matrix
    (B*P*N, d), its attention fused (`FusedAttention`). The same function up to float
    rounding and the same parameters (q/k/v stacked); module names are kept
    (`blocks.vit.transformer.0.attn.qkv`). On 2-D tokens every Linear is one GEMM,
    which ONNX exports as a Gemm with its bias rather than a MatMul and an Add.
    """
    model = fold_bn(model)
    for block in model.modules():
        if isinstance(block, MobileViTBlock):
            layers = list(block.transformer.named_children())
            for _, layer in layers:
                layer.attn = FusedAttention(layer.attn)
            # Patches.fold takes the (B*P*N, d) token matrix as it takes (B, P, N, d)
            block.transformer = nn.Sequential(OrderedDict([("tokens", Tokens(block.patches.dim)), *layers]))
    return model
