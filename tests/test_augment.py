import copy
import math
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from mobileast.augment import (SECTIONS, Augmenter, add_noise, cutmix, istft, mask_bands, mixstyle, mixup,
                               pitch_shift, sample_beta, time_shift)
from mobileast.params import load_params

SR = 32000
PARAMS = load_params(Path(__file__).parents[1] / "params.yaml")["augment"]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def only(name, **overrides):
    """An Augmenter with just one section enabled (with optional parameter overrides)."""
    cfg = copy.deepcopy(PARAMS)
    for section in cfg.values():
        section["enabled"] = False
    cfg[name].update(enabled=True, **overrides)
    return Augmenter.from_params(cfg, SR)


def waves(b=6, n=SR // 4, seed=0, dtype=torch.float32):
    return (torch.randn(b, n, generator=gen(seed)) * 0.1).to(dtype)


def specs(b=6, f=32, t=20, seed=0, dtype=torch.float32):
    return (torch.randn(b, 1, f, t, generator=gen(seed)) * 2 + 1).to(dtype)


def sine(freq, n=SR // 2):
    return torch.sin(2 * math.pi * freq * torch.arange(n) / SR)


def peak_freq(x):
    """Frequency of the largest spectral peak, refined by parabolic interpolation."""
    n = x.shape[-1]
    mag = torch.fft.rfft(x * torch.hann_window(n, dtype=x.dtype)).abs().log()
    k = int(mag.argmax())
    a, b, c = mag[k - 1], mag[k], mag[k + 1]
    return (k + 0.5 * float(a - c) / float(a - 2 * b + c)) * SR / n


# ---------------------------------------------------------------- shared properties

WAVE_OPS = ["time_shift", "pitch_shift", "noise", "mixup"]
SPEC_OPS = ["masking", "cutmix", "mixstyle"]


@pytest.mark.parametrize("name", WAVE_OPS + SPEC_OPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_each_op_keeps_shape_and_dtype_and_changes_input(name, dtype):
    aug = only(name, **({"p": 1.0} if "p" in SECTIONS[name] else {}))
    x = waves(dtype=dtype) if name in WAVE_OPS else specs(dtype=dtype)
    y, mix = aug.wave(x, gen()) if name in WAVE_OPS else aug.spec(x, gen())
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.isfinite(y).all() and not torch.equal(y, x)
    assert (mix is not None) == (name in ("mixup", "cutmix"))


def test_all_disabled_is_identity():
    cfg = copy.deepcopy(PARAMS)
    for section in cfg.values():
        section["enabled"] = False
    aug = Augmenter.from_params(cfg, SR)
    x, s = waves(), specs()
    y, mix = aug.wave(x, gen())
    assert torch.equal(y, x) and mix is None
    z, mix = aug.spec(s, gen())
    assert torch.equal(z, s) and mix is None


def test_null_parameters_are_identity():
    x, s = waves(), specs()
    perm = torch.randperm(6, generator=gen())
    ones, zeros = torch.ones(6), torch.zeros(6)
    assert torch.equal(time_shift(x, torch.zeros(6, dtype=torch.long)), x)
    assert_close(pitch_shift(x, zeros), x, atol=2e-3, rtol=0)
    assert torch.equal(add_noise(x, torch.full((6,), math.inf), torch.randn(6, x.shape[1])), x)
    assert torch.equal(mixup(x, perm, ones), x)
    assert_close(mixstyle(s, perm, ones), s)
    mixed, lam = cutmix(s, perm, ones, torch.rand(6, 2))
    assert torch.equal(mixed, s) and torch.equal(lam, ones)
    empty = torch.zeros(6, 2, dtype=torch.long)
    assert torch.equal(mask_bands(s, empty, empty, -1), s)


def test_same_seed_same_output_other_seed_differs():
    cfg = copy.deepcopy(PARAMS)
    for section in cfg.values():
        section["enabled"] = True
    cfg["mixup"]["p"], cfg["mixstyle"]["p"] = 0.5, 1.0
    aug = Augmenter.from_params(cfg, SR)
    outs = []
    for seed in (3, 3, 4):
        g = gen(seed)
        y, mix = aug.wave(waves(), g)
        z, mix = aug.spec(specs(), g, mix)
        outs.append((y, z, mix))
    (y1, z1, m1), (y2, z2, m2), (y3, z3, _) = outs
    assert torch.equal(y1, y2) and torch.equal(z1, z2)
    assert torch.equal(m1.perm, m2.perm) and torch.equal(m1.lam, m2.lam)
    assert not torch.equal(y1, y3)


def test_from_params_validates_sections_and_keys():
    Augmenter.from_params(PARAMS, SR)
    bad = copy.deepcopy(PARAMS)
    bad["mixup"]["alpah"] = 0.3
    with pytest.raises(ValueError, match="mixup"):
        Augmenter.from_params(bad, SR)
    bad = copy.deepcopy(PARAMS)
    del bad["noise"]
    with pytest.raises(ValueError, match="sections"):
        Augmenter.from_params(bad, SR)


# ---------------------------------------------------------------- waveform ops

def test_time_shift_moves_impulse_circularly():
    n = 1000
    x = torch.zeros(4, n)
    x[:, 100] = 1.0
    shifts = torch.tensor([0, 250, -150, 950])
    y = time_shift(x, shifts)
    assert y.argmax(-1).tolist() == [100, 350, 950, 50]
    assert torch.equal(y.sum(-1), x.sum(-1))


def test_time_shift_draws_within_max():
    n, max_s = SR // 2, 0.1
    x = torch.zeros(64, n)
    x[:, n // 2] = 1.0
    y, _ = only("time_shift", max_s=max_s).wave(x, gen())
    moved = y.argmax(-1) - n // 2
    assert moved.abs().max() <= max_s * SR and moved.unique().numel() > 32
    assert torch.equal(y.sum(-1), x.sum(-1))


def test_pitch_shift_moves_sine_by_ratio_per_sample():
    freqs = [440.0, 1000.0, 2500.0, 5000.0]
    semitones = torch.tensor([2.0, -2.0, 0.7, -1.3])
    x = torch.stack([0.5 * sine(f) for f in freqs])
    y = pitch_shift(x, semitones)
    assert y.shape == x.shape
    for f, s, out in zip(freqs, semitones.tolist(), y):
        assert peak_freq(out) == pytest.approx(f * 2 ** (s / 12), rel=2e-3)
    assert_close(y.square().mean(-1), x.square().mean(-1))  # level kept


def test_pitch_shift_keeps_tone_pure_and_batch_independent():
    """A shifted tone is one tone (>99.9 % of the energy within +-2 bins of the target),
    and a clip's result does not depend on the other clips' shifts (besides edges)."""
    n = SR // 2
    x = torch.stack([0.3 * sine(600.0, n) + 0.1 * sine(3100.0, n), waves(1, n)[0]])
    y = pitch_shift(x, torch.tensor([1.5, -2.0]))
    spectrum = torch.fft.rfft(y[0] * torch.hann_window(n)).abs().square()
    target = torch.zeros_like(spectrum)
    for f in (600.0, 3100.0):
        k = round(f * 2 ** (1.5 / 12) * n / SR)
        target[k - 2: k + 3] = 1
    assert (spectrum * target).sum() / spectrum.sum() > 0.999
    alone = pitch_shift(x[:1], torch.tensor([1.5]))
    edge = 2048
    assert_close(y[0, edge:-edge], alone[0, edge:-edge], atol=1e-3, rtol=0)


@pytest.mark.filterwarnings("ignore:The length of signal is shorter")  # torch.istft pads too
@pytest.mark.parametrize("length", [8000, 9000, 12000])  # within, at and past the end of the frames
def test_istft_equals_torch_istft(length):
    n_fft, hop = 1024, 256
    window = torch.hann_window(n_fft, dtype=torch.float64)
    spec = torch.stft(waves(3, 8000).double(), n_fft, hop, window=window, center=True, return_complex=True)
    spec = spec * torch.exp(1j * torch.rand(spec.shape, generator=gen(3), dtype=torch.float64))  # not an STFT
    assert_close(istft(spec, n_fft, hop, window, length),
                 torch.istft(spec, n_fft, hop, window=window, center=True, length=length), atol=1e-12, rtol=0)


def test_noise_hits_requested_snr_exactly():
    x = waves(5)
    snr = torch.tensor([0.0, 10.0, 20.0, 33.3, -5.0])
    y = add_noise(x, snr, torch.randn(x.shape, generator=gen(1)))
    measured = 10 * torch.log10(x.square().mean(-1) / (y - x).square().mean(-1))
    assert_close(measured, snr, atol=1e-3, rtol=0)


def test_noise_snr_within_configured_range():
    x = waves(32)
    y, _ = only("noise", snr_db_min=10.0, snr_db_max=20.0).wave(x, gen())
    measured = 10 * torch.log10(x.square().mean(-1) / (y - x).square().mean(-1))
    assert measured.min() >= 10 - 1e-3 and measured.max() <= 20 + 1e-3
    assert measured.std() > 1


def test_mixup_is_convex_combination():
    x = waves()
    y, mix = only("mixup", alpha=0.3, p=1.0).wave(x, gen())
    assert ((mix.lam >= 0) & (mix.lam <= 1)).all()
    assert sorted(mix.perm.tolist()) == list(range(6))
    for i in range(6):
        lam = float(mix.lam[i])
        assert_close(y[i], lam * x[i] + (1 - lam) * x[mix.perm[i]])


def test_beta_samples():
    lam = sample_beta(0.3, 20000, gen())
    assert lam.dtype == torch.float32 and ((lam >= 0) & (lam <= 1)).all()
    assert float(lam.mean()) == pytest.approx(0.5, abs=0.02)
    # Beta(a, a) variance: 1 / (4 (2a + 1))
    assert float(lam.var()) == pytest.approx(1 / (4 * 1.6), rel=0.05)


# ---------------------------------------------------------------- spectrogram ops

def cpjku_mixstyle(x, perm, lmda, eps=1e-6):
    """cpjku_dcase23 helpers/utils.py mixstyle after its `rand > p` test, with the
    permutation and the (B, 1, 1, 1) weights passed in instead of drawn."""
    f_mu = x.mean(dim=[1, 3], keepdim=True)
    f_var = x.var(dim=[1, 3], keepdim=True)
    f_sig = (f_var + eps).sqrt()
    f_mu, f_sig = f_mu.detach(), f_sig.detach()
    x_normed = (x - f_mu) / f_sig
    f_mu_perm, f_sig_perm = f_mu[perm], f_sig[perm]
    mu_mix = f_mu * lmda + f_mu_perm * (1 - lmda)
    sig_mix = f_sig * lmda + f_sig_perm * (1 - lmda)
    return x_normed * sig_mix + mu_mix


def test_mixstyle_matches_cpjku_and_mixes_frequency_statistics():
    x = specs(dtype=torch.float64)
    perm = torch.randperm(6, generator=gen(2))
    lam = torch.rand(6, generator=gen(3), dtype=torch.float64)
    y = mixstyle(x, perm, lam)
    assert_close(y, cpjku_mixstyle(x, perm, lam.reshape(-1, 1, 1, 1)))
    y = mixstyle(x, perm, lam, eps=0.0)
    mu, sigma = x.mean(dim=(1, 3)), x.std(dim=(1, 3))  # (B, F): per sample and frequency bin
    lam2 = lam[:, None]
    assert_close(y.mean(dim=(1, 3)), lam2 * mu + (1 - lam2) * mu[perm])
    assert_close(y.std(dim=(1, 3)), lam2 * sigma + (1 - lam2) * sigma[perm])


def test_mixstyle_probability_per_batch():
    aug = only("mixstyle", p=0.6)
    g = gen()
    changed = [not torch.equal(aug.spec(specs(), g)[0], specs()) for _ in range(200)]
    assert sum(changed) / 200 == pytest.approx(0.6, abs=0.1)


def test_cutmix_pastes_one_box_and_returns_area_lambda():
    x = specs(b=8, f=32, t=20)
    perm = torch.roll(torch.arange(8), 1)
    lam = torch.tensor([0.0, 0.2, 0.5, 0.7, 0.9, 0.99, 0.3, 0.6])
    centre = torch.rand(8, 2, generator=gen(5))
    y, area_lam = cutmix(x, perm, lam, centre)
    for i in range(8):
        pasted = (y[i, 0] == x[perm[i], 0]) & (y[i, 0] != x[i, 0])
        kept = y[i, 0] == x[i, 0]
        assert (pasted | kept).all()
        rows, cols = pasted.any(1).nonzero(), pasted.any(0).nonzero()
        if pasted.any():  # a filled rectangle
            assert pasted[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
        assert float(area_lam[i]) == pytest.approx(1 - float(pasted.float().mean()))
    assert (area_lam >= lam - 0.1).all()  # clipping at the borders only shrinks the box
    _, centred_lam = cutmix(x, perm, lam, torch.full((8, 2), 0.5))
    assert_close(centred_lam, lam, atol=0.1, rtol=0)  # up to rounding the box to bins


def test_mixup_and_cutmix_are_exclusive_per_batch():
    cfg = copy.deepcopy(PARAMS)
    for section in cfg.values():
        section["enabled"] = False
    cfg["mixup"].update(enabled=True, p=1.0)
    cfg["cutmix"].update(enabled=True, p=1.0)
    aug = Augmenter.from_params(cfg, SR)
    g = gen()
    _, mix = aug.wave(waves(), g)
    s = specs()
    z, mix_after = aug.spec(s, g, mix)
    assert mix_after is mix and torch.equal(z, s)
    z, mix_cut = aug.spec(s, g, None)
    assert mix_cut is not None and not torch.equal(z, s)


def test_masking_zeroes_exactly_the_bands():
    x = specs(b=3, f=16, t=10)
    start = torch.tensor([[2, 9], [0, 0], [14, 3]])
    width = torch.tensor([[3, 1], [0, 2], [5, 0]])
    y = mask_bands(x, start, width, dim=-2)
    expected = x.clone()
    for i in range(3):
        for s, w in zip(start[i].tolist(), width[i].tolist()):
            expected[i, :, s:s + w, :] = 0
    assert torch.equal(y, expected)
    y = mask_bands(x, start.clamp(max=9), width, dim=-1)
    expected = x.clone()
    for i in range(3):
        for s, w in zip(start[i].clamp(max=9).tolist(), width[i].tolist()):
            expected[i, ..., s:s + w] = 0
    assert torch.equal(y, expected)


def test_masking_draws_bands_within_limits():
    x = specs(b=64, f=32, t=20) + 100  # nothing else is zero
    y, _ = only("masking", freq_width=5, time_width=3, n_freq=2, n_time=1).spec(x, gen())
    freq_masked = (y == 0).all(dim=-1).sum(dim=(1, 2))  # fully masked frequency rows
    time_masked = (y == 0).all(dim=-2).sum(dim=(1, 2))
    assert freq_masked.max() <= 10 and time_masked.max() <= 3
    assert freq_masked.float().mean() > 1 and time_masked.float().mean() > 0.5
