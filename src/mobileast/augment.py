"""Batched training augmentations, on the tensors' device.

Waveform (B, samples): time shift, pitch shift, device impulse response, mixup, Gaussian noise.
Log-mel spectrogram (B, 1, F, T): frequency-wise MixStyle, CutMix, time/frequency masking.

Each op is a pure function of the batch and explicitly given per-sample parameters (so it
can be tested exactly); `Augmenter` draws those parameters from a `torch.Generator` and
applies the enabled ops in a fixed order. Label-mixing ops (mixup, CutMix) return a `Mix`
(partner permutation, per-sample weight of the sample's own target); see
`mobileast.distill` for how the loss uses it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mobileast.data.audio import AudioReader, resample
from mobileast.errors import ParamsError
from mobileast.labels import DEVICES
from mobileast.schema import AUGMENT

# Keys of each params.yaml `augment:` section (all required, nothing else allowed): the schema's.
SECTIONS = {name: set(keys) for name, keys in AUGMENT.items()}


@dataclass(frozen=True)
class Mix:
    """Label mixing of a batch: sample i = lam[i] * own sample + (1 - lam[i]) * sample perm[i]
    (for CutMix lam is the share of area kept). Targets/teacher logits of the partner are
    `t[perm]`."""
    perm: Tensor  # (B,) int64
    lam: Tensor   # (B,) float, in [0, 1]


def _per_sample(v: Tensor, like: Tensor) -> Tensor:
    """(B,) -> (B, 1, ..., 1) broadcastable against `like`, on its device and dtype."""
    return v.to(like.device, like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


# ---------------------------------------------------------------- waveform ops

def time_shift(x: Tensor, shifts: Tensor) -> Tensor:
    """Circularly shift each waveform by shifts[i] samples (positive = later).

    A roll, not a zero-filled shift: scenes are close to stationary, so rolling keeps the
    clip's statistics and all the audio the teacher logits were computed on, while zero
    filling would blank up to half of a 1 s crop at +-0.5 s.
    """
    n = x.shape[-1]
    index = (torch.arange(n, device=x.device) - shifts.to(x.device)[:, None]) % n
    return x.gather(-1, index)


def pitch_shift(x: Tensor, semitones: Tensor, n_fft: int = 1024, hop_length: int = 256,
                oversample: int = 4, max_semitones: float | None = None) -> Tensor:
    """Shift each waveform's pitch by semitones[i], keeping its length and level.

    The algorithm of librosa.effects.pitch_shift (phase-vocoder time stretch by
    r = 2^(semitones / 12), then resampling by r back to the original length), batched
    over the clips with per-sample r (rates only change gather indices and masks), plus:
    identity phase locking in the vocoder (tones keep their level; librosa's loses up to
    ~20 %) and a final per-clip gain to the input's RMS (the vocoder decorrelates
    noise-like content across overlapping frames, about -3 dB, for librosa as well).
    r = 1 reconstructs the input up to rounding. `max_semitones` (>= every |semitones[i]|)
    sizes the stretch buffer without reading the shifts back from the device (a host sync
    per step on a GPU); by default it is sized by the batch's largest shift.
    """
    n = x.shape[-1]
    work = x.to(torch.promote_types(x.dtype, torch.float32))
    ratio = 2.0 ** (semitones.to(x.device, work.dtype) / 12)  # (B,)
    window = torch.hann_window(n_fft, device=x.device, dtype=work.dtype)
    spec = torch.stft(work, n_fft, hop_length, window=window, center=True, return_complex=True)
    largest = float(ratio.max()) if max_semitones is None else 2.0 ** (abs(max_semitones) / 12)
    stretched_len = _smooth_size(math.ceil(n * largest))
    stretched = _time_stretch(spec, ratio, stretched_len // hop_length + 1, hop_length)
    stretched = istft(stretched, n_fft, hop_length, window, stretched_len)
    y = _resample(stretched, ratio, n, oversample)
    gain = torch.sqrt(work.square().sum(-1, keepdim=True) / y.square().sum(-1, keepdim=True).clamp_min(1e-30))
    return (y * gain).to(x.dtype)


def istft(spec: Tensor, n_fft: int, hop_length: int, window: Tensor, length: int) -> Tensor:
    """Inverse of a centred torch.stft (B, n_fft // 2 + 1, frames) -> (B, length): windowed
    overlap-add divided by the summed squared window, as torch.istft(center=True) computes
    it, but without its check that the envelope is nonzero, which reads a value back from
    the device (a host sync every step on a GPU). Samples the frames don't cover are 0."""
    frames = torch.fft.irfft(spec.transpose(1, 2), n=n_fft) * window  # (B, frames, n_fft)
    n_frames = frames.shape[1]
    total = n_fft + hop_length * (n_frames - 1)

    def overlap_add(x: Tensor) -> Tensor:  # (B, frames, n_fft) -> (B, total)
        return F.fold(x.transpose(1, 2), (1, total), (1, n_fft), stride=(1, hop_length))[:, 0, 0]

    envelope = overlap_add(window.square().expand(1, n_frames, n_fft))  # (1, total)
    signal = overlap_add(frames) / torch.where(envelope > 1e-11, envelope, 1.0)
    signal = signal[:, n_fft // 2:n_fft // 2 + length]
    return F.pad(signal, (0, length - signal.shape[-1]))


def _smooth_size(n: int) -> int:
    """The smallest 2^a 3^b 5^c >= n (an FFT length without slow large prime factors)."""
    best = 2 ** math.ceil(math.log2(n))
    p3 = 1
    while p3 < best:
        p35 = p3
        while p35 < best:
            best = min(best, p35 * 2 ** max(0, math.ceil(math.log2(n / p35))))
            p35 *= 5
        p3 *= 3
    return best


def _time_stretch(spec: Tensor, ratio: Tensor, out_frames: int, hop_length: int) -> Tensor:
    """Phase-vocoder time stretch of an STFT (B, bins, frames) by ratio[i] (> 1: longer).

    Output frame m reads source position m / r: magnitudes interpolated linearly between
    the two nearest frames (zero past the end), phases accumulated from the source's
    phase advance per hop (as librosa.phase_vocoder); then each bin takes the phase of
    the largest bin within +-2 bins (a Hann main lobe) plus its source phase offset to
    it (identity phase locking, Laroche & Dolson 1999), which keeps the bins of a partial
    coherent.
    """
    spec = spec.transpose(1, 2)  # (B, frames, bins): frames are gathered as whole rows
    batch, n_frames, n_bins = spec.shape
    pos = torch.arange(out_frames, device=spec.device, dtype=ratio.dtype)[None, :] / ratio[:, None]
    lo = pos.floor().clamp(max=n_frames - 1)
    frac = (pos - lo)[..., None]
    rows = torch.arange(batch, device=spec.device)[:, None]
    before = spec[rows, lo.long()]
    after = spec[rows, (lo.long() + 1).clamp(max=n_frames - 1)]
    out_mag = ((1 - frac) * before.abs() + frac * after.abs()) * (pos <= n_frames - 1)[..., None]
    source_phase = before.angle()
    expected = hop_length * torch.linspace(0, math.pi, n_bins, device=spec.device, dtype=ratio.dtype)
    advance = after.angle() - source_phase - expected
    advance = advance - 2 * math.pi * torch.round(advance / (2 * math.pi)) + expected
    steps = torch.remainder(advance[:, :-1], 2 * math.pi)
    out_phase = source_phase[:, :1] + F.pad(steps.cumsum(dim=1), (0, 0, 1, 0))
    _, peak = F.max_pool1d(out_mag.reshape(-1, 1, n_bins), 5, 1, 2, return_indices=True)
    peak = peak.reshape(out_mag.shape)  # the largest bin within +-2 bins
    out_phase = source_phase + (out_phase - source_phase).gather(2, peak)
    return torch.polar(out_mag, out_phase).transpose(1, 2)


def _resample(x: Tensor, ratio: Tensor, n: int, oversample: int) -> Tensor:
    """y[i, k] = x_i(ratio[i] * k) for k < n, band-limited.

    Low-pass at the new Nyquist frequency 0.5 / r cycles per sample when r > 1, FFT
    interpolation to `oversample` x the rate, then linear interpolation (its error is
    small on the oversampled signal).
    """
    length = x.shape[-1]
    spectrum = torch.fft.rfft(x, dim=-1)
    freqs = torch.fft.rfftfreq(length, device=x.device, dtype=x.dtype)
    spectrum = spectrum * (freqs[None, :] <= 0.5 / ratio.clamp(min=1)[:, None])
    fine = torch.fft.irfft(spectrum, n=length * oversample, dim=-1) * oversample
    where = torch.arange(n, device=x.device, dtype=x.dtype)[None, :] * ratio[:, None] * oversample
    left = where.floor().clamp(max=fine.shape[-1] - 2)
    weight = where - left
    left = left.long()
    return (1 - weight) * fine.gather(1, left) + weight * fine.gather(1, left + 1)


def convolve_ir(x: Tensor, irs: Tensor) -> Tensor:
    """Each waveform x[i] (B, n) filtered by its impulse response irs[i] (B, taps): the causal
    convolution sum_k irs[i, k] x[i, t - k] for t < n (the signal before the clip counts as
    silence; taps at or beyond n cannot reach the clip), then scaled to the clip's own RMS
    (the simulated device changes the spectrum, not the level). FFT convolution over the
    batch, in float32 or wider; a silent clip stays silent.
    """
    n = x.shape[-1]
    work = x.to(torch.promote_types(x.dtype, torch.float32))
    irs = irs[:, :n].to(x.device, work.dtype)
    size = _smooth_size(n + irs.shape[-1] - 1)  # no circular wrap into the first n samples
    y = torch.fft.irfft(torch.fft.rfft(work, size) * torch.fft.rfft(irs, size), size)[:, :n]
    gain = torch.sqrt(work.square().sum(-1, keepdim=True) / y.square().sum(-1, keepdim=True).clamp_min(1e-30))
    return (y * gain).to(x.dtype)


def load_impulse_responses(folder: str | Path, sample_rate: int) -> Tensor:
    """The .wav files under `folder` (recursively, in path order) as mono impulse responses at
    `sample_rate` (resampled with soxr where recorded at another rate), zero-padded into one
    (files, longest) float32 tensor. Their scale does not matter (convolve_ir matches levels).

    A missing folder, one without .wav files, an unreadable or all-zero file is a ParamsError
    naming the key (dir.ir_dir of an augment section) and the folder or file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ParamsError(f"dir.ir_dir: {folder} is not a folder (download impulse responses into it with "
                          f"`python -m mobileast download --micirp {folder}`)")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() == ".wav" and p.is_file())
    if not files:
        raise ParamsError(f"dir.ir_dir: no .wav files under {folder} (download impulse responses into it with "
                          f"`python -m mobileast download --micirp {folder}`)")
    irs = []
    for path in files:
        try:
            reader = AudioReader(path)
            wave = np.concatenate(list(reader.blocks()))
        except (OSError, ValueError) as error:
            raise ParamsError(f"dir.ir_dir: {error}") from None
        wave = resample(wave, reader.rate, sample_rate)
        if not np.any(wave):
            raise ParamsError(f"dir.ir_dir: {path} is silent (all samples 0): not an impulse response")
        irs.append(torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)))
    return torch.nn.utils.rnn.pad_sequence(irs, batch_first=True)


def add_noise(x: Tensor, snr_db: Tensor, noise: Tensor) -> Tensor:
    """x + noise scaled per sample to exactly snr_db[i] dB (power ratio over the clip)."""
    p_signal = x.square().mean(-1, keepdim=True)
    p_noise = noise.square().mean(-1, keepdim=True).clamp_min(torch.finfo(noise.dtype).tiny)
    gain = torch.sqrt(p_signal / p_noise * 10.0 ** (-_per_sample(snr_db, x) / 10))
    return x + gain * noise


def mixup(x: Tensor, perm: Tensor, lam: Tensor) -> Tensor:
    """Convex combination lam[i] * x[i] + (1 - lam[i]) * x[perm[i]] (any shape (B, ...))."""
    lam = _per_sample(lam, x)
    return lam * x + (1 - lam) * x[perm.to(x.device)]


# ---------------------------------------------------------------- spectrogram ops

def mixstyle(x: Tensor, perm: Tensor, lam: Tensor, eps: float = 1e-6) -> Tensor:
    """Frequency-wise MixStyle (CP-JKU, cpjku_dcase23 helpers/utils.py mixstyle).

    Normalise each sample per frequency bin by its mean and std over channels and time
    (unbiased variance, + eps, statistics detached), then de-normalise with the lam-mix of
    its own and its partner's statistics: mu = lam mu_i + (1 - lam) mu_perm, likewise sigma.
    """
    mu = x.mean(dim=(1, 3), keepdim=True).detach()
    sigma = (x.var(dim=(1, 3), keepdim=True) + eps).sqrt().detach()
    lam = _per_sample(lam, x)
    perm = perm.to(x.device)
    mu_mix = lam * mu + (1 - lam) * mu[perm]
    sigma_mix = lam * sigma + (1 - lam) * sigma[perm]
    return (x - mu) / sigma * sigma_mix + mu_mix


def cutmix(x: Tensor, perm: Tensor, lam: Tensor, centre: Tensor) -> tuple[Tensor, Tensor]:
    """Spectrogram CutMix: paste a box of x[perm[i]] into x[i]; returns (x, area-based lam).

    The box has sides sqrt(1 - lam) * (F, T) around centre[i] (fractions in [0, 1) of F
    and T), clipped at the borders as in Yun et al. (2019); the returned lam is the share
    of sample i's own bins that remain, which is what its target should be weighted by.
    """
    n_freq, n_time = x.shape[-2:]
    side = torch.sqrt(1 - lam.to(x.device, torch.float64))  # (B,): box sides side * (F, T)
    centre = centre.to(x.device, torch.float64)  # (B, 2)
    lo, hi = [], []
    for axis, size in enumerate((n_freq, n_time)):  # Python sizes: no host-to-device copy
        mid, half = centre[:, axis] * size, side * size / 2
        lo.append(torch.round(torch.clamp(torch.clamp(mid - half, min=0), max=size)))
        hi.append(torch.round(torch.clamp(torch.clamp(mid + half, min=0), max=size)))
    lo, hi = torch.stack(lo, 1), torch.stack(hi, 1)  # (B, 2)
    f = torch.arange(x.shape[-2], device=x.device)[None, :, None]
    t = torch.arange(x.shape[-1], device=x.device)[None, None, :]
    box = ((f >= lo[:, 0, None, None]) & (f < hi[:, 0, None, None])
           & (t >= lo[:, 1, None, None]) & (t < hi[:, 1, None, None]))  # (B, F, T)
    box = box[:, None]  # (B, 1, F, T)
    mixed = torch.where(box, x[perm.to(x.device)], x)
    return mixed, 1 - box.flatten(1).to(x.dtype).mean(1)


def mask_bands(x: Tensor, start: Tensor, width: Tensor, dim: int) -> Tensor:
    """Zero the bands [start, start + width) along `dim` (-2 frequency, -1 time).

    start, width: (B, n_bands) integers; width 0 masks nothing. The fill value is 0, as
    in torchaudio's SpecAugment masks.
    """
    pos = torch.arange(x.shape[dim], device=x.device)
    start, width = start.to(x.device)[..., None], width.to(x.device)[..., None]
    hit = ((pos >= start) & (pos < start + width)).any(dim=1)  # (B, L)
    shape = [x.shape[0]] + [1] * (x.dim() - 1)
    shape[dim] = x.shape[dim]
    return x.masked_fill(hit.reshape(shape), 0.0)


# ---------------------------------------------------------------- random parameters

def _uniform(n: int, low: float, high: float, gen: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=gen, device=gen.device)


def _chance(p: float, gen: torch.Generator) -> bool:
    """A yes/no draw from `gen`, which lives on the CPU (reading a device draw would sync)."""
    return bool(torch.rand((), generator=gen, device=gen.device) < p)


class HostDecisions:
    """CPU generators for the augmenter's per-batch yes/no draws when the step's generator is
    on a GPU: a Python bool of a GPU draw waits for the GPU (a host sync every step).

    For a CPU generator the draws come from it, as they always did (CPU runs are unchanged
    bit for bit). For a device generator they come from a CPU generator seeded with its
    initial seed, which the engine sets per epoch from (seed, epoch, rank): deterministic,
    and a resumed run draws the same.
    """

    def __init__(self) -> None:
        self._streams: dict[int, torch.Generator] = {}

    def __call__(self, gen: torch.Generator) -> torch.Generator:
        if gen.device.type == "cpu":
            return gen
        seed = gen.initial_seed()
        if seed not in self._streams:
            self._streams = {seed: torch.Generator().manual_seed(seed)}  # only the current epoch's
        return self._streams[seed]


def sample_beta(alpha: float, n: int, gen: torch.Generator) -> Tensor:
    """n draws of Beta(alpha, alpha) from `gen`, as G1 / (G1 + G2) with Gamma(alpha) draws.

    torch.distributions.Beta takes no generator; torch._standard_gamma (which it uses
    internally) does. float64 keeps G1 + G2 > 0 for small alpha.
    """
    shape = torch.full((2, n), float(alpha), dtype=torch.float64, device=gen.device)
    g = torch._standard_gamma(shape, generator=gen)
    return (g[0] / (g[0] + g[1])).float()


def _random_bands(n: int, n_bands: int, max_width: int, length: int,
                  gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """SpecAugment bands: width ~ U{0..max_width}, start ~ U{0..length - width}."""
    width = torch.randint(0, min(max_width, length) + 1, (n, n_bands), generator=gen, device=gen.device)
    u = torch.rand((n, n_bands), generator=gen, device=gen.device)
    return (u * (length - width + 1)).floor().long(), width


@dataclass(frozen=True)
class Augmenter:
    """The enabled augmentations of params.yaml `augment:`, with parameters drawn per batch.

    Order: waveform time shift -> pitch shift -> device impulse response (DIR) -> mixup ->
    noise. DIR filters the (shifted) scene as another device would record it: after the
    shifts, so the device response is applied as measured (a pitch shift after it would
    move it in frequency) and the convolution's start-up stays at the clip's start (a roll
    after it would move it inside); before mixup, so each clip is filtered as its own
    recording was; noise is added last so it is one recording condition of the mixture, at
    the drawn SNR of the mixture. Spectrogram MixStyle -> CutMix -> masking (masks last so
    no pasted box covers them).
    Mixup and CutMix are exclusive per batch: mixup happens with probability mixup.p; a
    batch that was not mixed up gets CutMix with probability cutmix.p. MixStyle mixes
    statistics only, not labels, so it returns no Mix. Random draws come from the given
    generator (create it on the batch's device to avoid host-device copies of noise); the
    yes/no decisions of a device generator from a CPU stream (HostDecisions), so a GPU
    step never waits for the GPU. A disabled augmentation draws nothing.

    `irs`: DIR's impulse responses (load_impulse_responses of dir.ir_dir, read once by
    from_params when dir is enabled; None otherwise), kept on the CPU and copied once to
    each device the batches come on.
    """
    cfg: Mapping[str, Mapping[str, Any]]
    sample_rate: int
    irs: Tensor | None = field(default=None, compare=False, repr=False)
    host: HostDecisions = field(default_factory=HostDecisions, compare=False, repr=False)
    _on_device: dict[torch.device, tuple[Tensor, Tensor]] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_params(cls, augment: Mapping[str, Any], sample_rate: int) -> "Augmenter":
        """Validate the `augment:` section (exact sections and keys) and build; with dir
        enabled, read its impulse responses (ParamsError for a folder without any)."""
        if set(augment) != set(SECTIONS):
            raise ValueError(f"augment sections must be {sorted(SECTIONS)}, got {sorted(augment)}")
        for name, keys in SECTIONS.items():
            if set(augment[name]) != keys:
                raise ValueError(f"augment.{name} keys must be {sorted(keys)}, got {sorted(augment[name])}")
        cfg = {k: dict(v) for k, v in augment.items()}
        irs = None
        if cfg["dir"]["enabled"]:
            irs = load_impulse_responses(cfg["dir"]["ir_dir"], int(sample_rate))
        return cls(cfg, int(sample_rate), irs)

    @property
    def inputs(self) -> tuple[Path, ...]:
        """Files the augmentation reads (the IR folder when dir is enabled): inputs of a training run."""
        return (Path(self.cfg["dir"]["ir_dir"]),) if self.irs is not None else ()

    def _on(self, name: str) -> Mapping[str, Any] | None:
        section = self.cfg[name]
        return section if section["enabled"] else None

    def _dir_tables(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """(impulse responses, which DEVICES dir.devices holds as bools) on `device`, copied
        there once: a per-step copy from the host would wait for the GPU."""
        if device not in self._on_device:
            wanted = torch.tensor([name in self.cfg["dir"]["devices"] for name in DEVICES])
            self._on_device[device] = (self.irs.to(device), wanted.to(device))
        return self._on_device[device]

    def _dir(self, x: Tensor, devices: Tensor | None, cfg: Mapping[str, Any], gen: torch.Generator) -> Tensor:
        """Clip i (recorded on DEVICES[devices[i]]) convolved with a uniformly drawn impulse
        response with probability cfg["p"] if its device is in cfg["devices"], else kept.
        Every clip is convolved and the others' results dropped: picking the chosen clips out
        would read the draws back from the device (a host sync per step on a GPU)."""
        if devices is None:
            raise ValueError("augment.dir is enabled but the batch carries no recording devices")
        n = x.shape[0]
        chance = torch.rand(n, generator=gen, device=gen.device).to(x.device)
        pick = torch.randint(len(self.irs), (n,), generator=gen, device=gen.device).to(x.device)
        irs, wanted = self._dir_tables(x.device)
        chosen = (chance < cfg["p"]) & wanted[devices.to(x.device)]
        return torch.where(chosen[:, None], convolve_ir(x, irs[pick]), x)

    def wave(self, x: Tensor, gen: torch.Generator,
             devices: Tensor | None = None) -> tuple[Tensor, Mix | None]:
        """Augment waveforms (B, samples); returns them and the Mix if mixup was applied.
        `devices` (B,): each clip's recording device as an index into mobileast.labels.DEVICES
        (Batch.device), needed when dir is enabled."""
        n, mix = x.shape[0], None
        if cfg := self._on("time_shift"):
            max_shift = int(round(cfg["max_s"] * self.sample_rate))
            x = time_shift(x, torch.randint(-max_shift, max_shift + 1, (n,), generator=gen, device=gen.device))
        if cfg := self._on("pitch_shift"):
            x = pitch_shift(x, _uniform(n, -cfg["max_semitones"], cfg["max_semitones"], gen),
                            max_semitones=cfg["max_semitones"])
        if cfg := self._on("dir"):
            x = self._dir(x, devices, cfg, gen)
        if (cfg := self._on("mixup")) and _chance(cfg["p"], self.host(gen)):
            mix = Mix(torch.randperm(n, generator=gen, device=gen.device).to(x.device),
                      sample_beta(cfg["alpha"], n, gen).to(x.device))
            x = mixup(x, mix.perm, mix.lam)
        if cfg := self._on("noise"):
            snr = _uniform(n, cfg["snr_db_min"], cfg["snr_db_max"], gen)
            noise = torch.randn(x.shape, generator=gen, device=gen.device, dtype=x.dtype)
            x = add_noise(x, snr, noise.to(x.device))
        return x, mix

    def spec(self, x: Tensor, gen: torch.Generator, mix: Mix | None = None) -> tuple[Tensor, Mix | None]:
        """Augment log-mels (B, 1, F, T); `mix` is wave()'s (CutMix is skipped if given)."""
        n = x.shape[0]
        if (cfg := self._on("mixstyle")) and _chance(cfg["p"], self.host(gen)):
            perm = torch.randperm(n, generator=gen, device=gen.device)
            x = mixstyle(x, perm, sample_beta(cfg["alpha"], n, gen))
        if (cfg := self._on("cutmix")) and mix is None and _chance(cfg["p"], self.host(gen)):
            perm = torch.randperm(n, generator=gen, device=gen.device).to(x.device)
            lam = sample_beta(cfg["alpha"], n, gen)
            x, lam = cutmix(x, perm, lam, torch.rand((n, 2), generator=gen, device=gen.device))
            mix = Mix(perm, lam)
        if cfg := self._on("masking"):
            for n_bands, width, dim in ((cfg["n_freq"], cfg["freq_width"], -2),
                                        (cfg["n_time"], cfg["time_width"], -1)):
                start, widths = _random_bands(n, n_bands, width, x.shape[dim], gen)
                x = mask_bands(x, start, widths, dim)
        return x, mix
