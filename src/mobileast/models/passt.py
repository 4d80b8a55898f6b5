"""PaSST teacher: Patchout faSt Spectrogram Transformer (Koutini et al., 2022,
arXiv:2110.05069), re-implemented after hear21passt 0.0.26 / kkoutini/PaSST.

A ViT-B (DeiT-distilled layout) on 16x16 log-mel patches at stride 10x10 with
separate frequency and time positional embeddings and structured patchout, plus its
own mel frontend. State-dict keys and shapes equal the official model's, so the
AudioSet checkpoints load directly (passt_from_checkpoint).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mobileast.augment import mask_bands
from mobileast.features import LogMel, kaldi_mel_banks

RELEASES_URL = "https://github.com/kkoutini/PaSST/releases"
CHECKPOINT_URLS = {  # official AudioSet checkpoints with this architecture (128 mels, 998 frames)
    "passt-s-f128-p16-s10-ap.476-swa.pt": f"{RELEASES_URL}/download/v0.0.1-audioset/passt-s-f128-p16-s10-ap.476-swa.pt",
    "passt-s-kd-ap.486.pt": f"{RELEASES_URL}/download/v.0.0.9/passt-s-kd-ap.486.pt",
    "passt-s-f128-p16-s16-ap.468.pt": f"{RELEASES_URL}/download/v0.0.2-audioset/passt-s-f128-p16-s16-ap.468.pt",
}
HEAD_KEYS = ("head.1.weight", "head.1.bias", "head_dist.weight", "head_dist.bias")


@dataclass
class PaSSTConfig:
    n_classes: int = 10
    # transformer: ViT-B with 16x16 patches
    embed_dim: int = 768
    depth: int = 12
    n_heads: int = 12
    mlp_ratio: float = 4.0
    patch_size: int = 16
    fstride: int = 10
    tstride: int = 10
    input_tdim: int = 998  # frames covered by the time embedding (AudioSet: 10 s)
    patchout_f: int = 6  # frequency rows of patches dropped in training
    patchout_t: int = 0  # time columns of patches dropped in training
    # mel frontend (AugmentMelSTFT of PaSST)
    sample_rate: int = 32000
    n_mels: int = 128
    n_fft: int = 1024
    win_length: int = 800
    hop_length: int = 320
    f_min: float = 0.0
    f_max: float = 15000.0  # hear21passt's fmax=None: sr / 2 - fmax_aug_range / 2
    fmin_aug_range: int = 10  # training: f_min + U{0 .. range - 1}
    fmax_aug_range: int = 2000  # training: f_max + range / 2 - U{0 .. range - 1}
    specaug_freq: int = 48  # SpecAugment: max width of the frequency mask (mel bins)
    specaug_time: int = 20  # and of the time mask (frames)

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid (frequency, time) of the positional embeddings: (12, 99) for f128 s10."""
        return self.n_mels // self.fstride, self.input_tdim // self.tstride


def mask_random_bands(x: torch.Tensor, max_width: int, dim: int) -> torch.Tensor:
    """SpecAugment on (B, F, T): per example zero one band of U[0, max_width) rows of
    `dim` (-2 frequency, -1 time) at a uniform position (torchaudio's iid masking);
    the masking itself is mobileast.augment.mask_bands."""
    if max_width < 1:
        return x
    size = x.shape[dim]
    width = torch.rand(x.shape[0], device=x.device) * max_width
    start = (torch.rand(x.shape[0], device=x.device) * (size - width)).long()
    return mask_bands(x, start[:, None], width.long()[:, None], dim)


class PaSSTMel(LogMel):
    """Waveform (B, samples) at 32 kHz -> log-mel (B, 1, n_mels, (samples - 1) // hop + 1).

    LogMel's pre-emphasis, centred Hann STFT, Kaldi mel banks, log(x + 1e-5) and
    (x + 4.5) / 5, keeping every STFT frame as PaSST does. Training only: mel range
    jittered per batch and SpecAugment (applied before the normalisation, as in
    PaSST). Eval equals LogMel with the same parameters.
    """

    def __init__(self, cfg: PaSSTConfig):
        super().__init__(cfg.sample_rate, cfg.n_fft, cfg.win_length, cfg.hop_length, cfg.n_mels,
                         0.97, cfg.f_min, cfg.f_max)
        self.cfg = cfg

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        with torch.autocast(wave.device.type, enabled=False):  # fp32 features under mixed precision
            return self._logmel(wave.float())

    def _logmel(self, wave: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        power = self.power(wave)  # (B, F, frames)
        banks = self.mel_banks
        if self.training:  # range drawn on the CPU, banks built on the device: no host sync
            f_min = c.f_min + int(torch.randint(c.fmin_aug_range, (1,)))
            f_max = c.f_max + c.fmax_aug_range // 2 - int(torch.randint(c.fmax_aug_range, (1,)))
            banks = kaldi_mel_banks(c.n_mels, c.n_fft, c.sample_rate, f_min, f_max, device=power.device)
        logmel = torch.log(torch.matmul(banks, power) + 1e-5)  # (B, n_mels, frames)
        if self.training:
            logmel = mask_random_bands(mask_random_bands(logmel, c.specaug_freq, -2), c.specaug_time, -1)
        return ((logmel + 4.5) / 5.0).unsqueeze(1)


class PatchEmbed(nn.Module):
    """(B, 1, F, T) -> (B, D, f, t): 16x16 patches at stride (fstride, tstride)."""

    def __init__(self, cfg: PaSSTConfig):
        super().__init__()
        self.proj = nn.Conv2d(1, cfg.embed_dim, cfg.patch_size, stride=(cfg.fstride, cfg.tstride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Attention(nn.Module):
    def __init__(self, cfg: PaSSTConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.embed_dim, 3 * cfg.embed_dim)
        self.proj = nn.Linear(cfg.embed_dim, cfg.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.n_heads, D // self.n_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, N, d)
        x = F.scaled_dot_product_attention(q, k, v)  # (B, H, N, d)
        return self.proj(x.transpose(1, 2).reshape(B, N, D))


class Mlp(nn.Module):
    def __init__(self, cfg: PaSSTConfig):
        super().__init__()
        hidden = int(cfg.embed_dim * cfg.mlp_ratio)
        self.fc1 = nn.Linear(cfg.embed_dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, cfg.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, cfg: PaSSTConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.mlp = Mlp(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PaSST(nn.Module):
    """Waveform (B, samples) at 32 kHz in [-1, 1] -> logits (B, n_classes).

    Logits = head(mean of the final cls and dist tokens), as in PaSST's forward;
    head_dist is kept (frozen) only so the official checkpoints load strictly.
    Training mode adds the frontend augmentation, a random crop of the time
    embedding and structured patchout; eval mode is deterministic.
    """

    def __init__(self, cfg: PaSSTConfig):
        super().__init__()
        grid_f, grid_t = cfg.grid
        if (cfg.n_mels - cfg.patch_size) // cfg.fstride + 1 != grid_f:
            raise ValueError(f"n_mels={cfg.n_mels} gives a patch grid that does not match n_mels // fstride")
        if not 0 <= cfg.patchout_f < grid_f:
            raise ValueError(f"patchout_f={cfg.patchout_f} must be in [0, {grid_f})")
        self.cfg = cfg
        self.mel = PaSSTMel(cfg)
        D = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, D))
        self.new_pos_embed = nn.Parameter(torch.zeros(1, 2, D))  # of the cls and dist tokens
        self.freq_new_pos_embed = nn.Parameter(torch.zeros(1, D, grid_f, 1))
        self.time_new_pos_embed = nn.Parameter(torch.zeros(1, D, 1, grid_t))
        self.blocks = nn.Sequential(*[Block(cfg) for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(D, eps=1e-6)
        self.head = nn.Sequential(nn.LayerNorm(D), nn.Linear(D, cfg.n_classes))
        self.head_dist = nn.Linear(D, cfg.n_classes)
        self.apply(_init_weights)
        for p in (self.cls_token, self.dist_token, self.new_pos_embed,
                  self.freq_new_pos_embed, self.time_new_pos_embed):
            nn.init.trunc_normal_(p, std=0.02)
        self.head_dist.requires_grad_(False)  # unused in forward; DDP must not wait for it

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.classify(self.mel(wave))

    def classify(self, spec: torch.Tensor) -> torch.Tensor:
        """Log-mel (B, 1, n_mels, frames) -> logits (B, n_classes)."""
        x = self.patch_embed(spec)  # (B, D, f, t)
        x = x + self.time_pos(x.shape[-1]) + self.freq_new_pos_embed
        if self.training:
            x = self.patchout(x)  # (B, D, f - patchout_f, t - patchout_t)
        x = x.flatten(2).transpose(1, 2)  # (B, f * t, D)
        tokens = torch.cat([self.cls_token, self.dist_token], dim=1) + self.new_pos_embed  # (1, 2, D)
        x = torch.cat([tokens.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 2 + f * t, D)
        x = self.norm(self.blocks(x))
        return self.head((x[:, 0] + x[:, 1]) / 2)

    def time_pos(self, t: int) -> torch.Tensor:
        """(1, D, 1, t) slice of the time embedding: at a random offset in training
        (kkoutini/PaSST), the first t columns in eval (1 s -> 9 of 99 columns)."""
        full = self.time_new_pos_embed.shape[-1]
        if t > full:
            raise ValueError(f"input gives {t} time patches, the time embedding covers {full} "
                             f"(input_tdim={self.cfg.input_tdim} frames)")
        offset = int(torch.randint(full - t + 1, (1,))) if self.training else 0
        return self.time_new_pos_embed[..., offset:offset + t]

    def patchout(self, x: torch.Tensor) -> torch.Tensor:
        """Structured patchout: drop random time columns / frequency rows of the patch
        grid, the same ones for the whole batch (drawn on the CPU, sent without a host sync)."""
        _, _, f, t = x.shape
        if self.cfg.patchout_t:
            keep = torch.randperm(t)[:t - self.cfg.patchout_t].sort().values
            x = x.index_select(3, keep.to(x.device, non_blocking=True))
        if self.cfg.patchout_f:
            keep = torch.randperm(f)[:f - self.cfg.patchout_f].sort().values
            x = x.index_select(2, keep.to(x.device, non_blocking=True))
        return x


def _init_weights(m: nn.Module) -> None:
    """timm ViT init: truncated normal linear weights, zero biases, unit LayerNorms."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def pool_classes(param: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(C, ...) head weight or bias -> (n_classes, ...): consecutive class rows averaged
    into n_classes groups, as adaptive average pooling along the class axis does."""
    rows = param.reshape(param.shape[0], -1).T.unsqueeze(0)  # (1, rest, C)
    return F.adaptive_avg_pool1d(rows, n_classes)[0].T.reshape(n_classes, *param.shape[1:])


def missing_checkpoint_message(path: Path) -> str:
    url = CHECKPOINT_URLS.get(path.name)
    where = (f"Download it from {url}" if url else
             f"Download an official PaSST AudioSet checkpoint from {RELEASES_URL}, e.g. "
             f"{CHECKPOINT_URLS['passt-s-f128-p16-s10-ap.476-swa.pt']}")
    return (f"PaSST checkpoint not found: {path}. {where} and save it at that path "
            "(params.yaml: teacher.passt.checkpoint).")


def passt_from_checkpoint(path: str | Path, n_classes: int = 10, **cfg) -> PaSST:
    """Official PaSST checkpoint (plain state dict, 527-class heads) -> PaSST whose
    n_classes heads are the average-pooled pretrained heads. cfg: PaSSTConfig fields."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(missing_checkpoint_message(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not all(key in state for key in HEAD_KEYS):
        raise ValueError(f"{path} is not a PaSST state dict: it lacks {', '.join(HEAD_KEYS)}")
    state.update({key: pool_classes(state[key], n_classes) for key in HEAD_KEYS})
    model = PaSST(PaSSTConfig(n_classes=n_classes, **cfg))
    model.load_state_dict(state)
    return model
