import copy
import math
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

import numpy as np
import soundfile as sf

from mobileast.augment import (SECTIONS, Augmenter, add_noise, convolve_ir, cutmix, istft, load_impulse_responses,
                               mask_bands, mixstyle, mixup, pitch_shift, sample_beta, time_shift)
from mobileast.errors import ParamsError
from mobileast.labels import DEVICES
from mobileast.params import check_params, load_params, read_params
from mobileast.schema import augmentations

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


def test_same_seed_same_output_other_seed_differs(tmp_path):
    cfg = copy.deepcopy(PARAMS)
    for section in cfg.values():
        section["enabled"] = True
    cfg["mixup"]["p"], cfg["mixstyle"]["p"] = 0.5, 1.0
    cfg["dir"]["ir_dir"] = str(write_irs(tmp_path))
    aug = Augmenter.from_params(cfg, SR)
    outs = []
    for seed in (3, 3, 4):
        g = gen(seed)
        y, mix = aug.wave(waves(), g, torch.zeros(6, dtype=torch.long))
        z, mix = aug.spec(specs(), g, mix)
        outs.append((y, z, mix))
    (y1, z1, m1), (y2, z2, m2), (y3, z3, _) = outs
    assert torch.equal(y1, y2) and torch.equal(z1, z2)
    assert torch.equal(m1.perm, m2.perm) and torch.equal(m1.lam, m2.lam)
    assert not torch.equal(y1, y3)


def test_sections_are_the_schemas():
    assert SECTIONS == {name: set(keys) for name, keys in augmentations().items()} and "dir" in SECTIONS


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


# ---------------------------------------------------------------- device impulse responses

def write_irs(folder, rate=SR, irs=None):
    """Impulse response WAV files (float) in `folder` and a subfolder (the search is recursive)."""
    irs = irs if irs is not None else {"one.wav": [1.0, 0.5, 0.25, 0.125], "sub/two.WAV": [0.0, 0.0, 1.0, -0.3]}
    for name, ir in irs.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        sf.write(folder / name, np.asarray(ir, dtype=np.float64), rate, subtype="FLOAT")
    return folder


def dir_only(folder, **overrides):
    return only("dir", ir_dir=str(folder), **overrides)


def reference_convolution(x, ir):
    """numpy.convolve of each clip with its IR in float64, cut to the clip, scaled to the clip's RMS."""
    out = []
    for clip, h in zip(x.double().numpy(), ir.double().numpy()):
        y = np.convolve(clip, h)[:len(clip)]
        out.append(y * np.sqrt(np.sum(clip ** 2) / np.sum(y ** 2)))
    return torch.from_numpy(np.stack(out))


def test_unit_impulse_leaves_audio_unchanged():
    x = waves()
    delta = torch.zeros(6, 300)
    delta[:, 0] = 1.0
    assert_close(convolve_ir(x, delta), x)
    assert_close(convolve_ir(x.double(), delta), x.double())


@pytest.mark.parametrize("taps", [2, 64, 9000])  # 9000 > the clip: taps past its end cannot reach it
def test_convolution_matches_numpy_convolve(taps):
    x = waves(b=4, n=8000)
    decay = 0.5 ** torch.arange(taps, dtype=torch.float64)
    irs = torch.stack([decay, torch.roll(decay, 3), -decay, torch.randn(taps, generator=gen(4), dtype=torch.float64)])
    assert_close(convolve_ir(x.double(), irs), reference_convolution(x, irs))
    assert_close(convolve_ir(x, irs.float()), reference_convolution(x, irs).float(), atol=1e-5, rtol=1e-4)


def test_two_tap_average_gives_its_cosine_magnitude_response():
    """h = [1, 1] / 2 has |H(f)| = |cos(pi f / rate)|: the ratio of two tones' levels follows it."""
    n, f1, f2 = 8000, 500, 12000  # whole numbers of periods in the clip: exact FFT bins
    x = (sine(f1, n) + sine(f2, n))[None].double()
    y = convolve_ir(x, torch.tensor([[0.5, 0.5]], dtype=torch.float64))
    spectrum = torch.fft.rfft(y[0]).abs()
    bins = [f * n // SR for f in (f1, f2)]
    expected = math.cos(math.pi * f1 / SR) / math.cos(math.pi * f2 / SR)
    assert float(spectrum[bins[0]] / spectrum[bins[1]]) == pytest.approx(expected, rel=1e-3)


def test_level_matching_keeps_each_clips_rms():
    x = waves() * torch.arange(1, 7)[:, None]  # clips of different levels
    y = convolve_ir(x, torch.randn(6, 500, generator=gen(7)) * 3)
    assert_close(y.square().mean(-1).sqrt(), x.square().mean(-1).sqrt(), rtol=1e-4, atol=0)
    assert torch.equal(convolve_ir(torch.zeros(2, 100), torch.ones(2, 5)), torch.zeros(2, 100))  # silence stays


def test_dir_filters_only_the_configured_devices(tmp_path):
    folder = write_irs(tmp_path)
    x = waves(b=8)
    devices = torch.tensor([DEVICES.index(d) for d in ["a", "b", "a", "s1", "c", "a", "b", "a"]])
    y, mix = dir_only(folder, p=1.0, devices=["a"]).wave(x, gen(), devices)
    a = devices == 0
    assert mix is None and torch.equal(y[~a], x[~a])
    irs = load_impulse_responses(folder, SR)
    for i in a.nonzero().flatten().tolist():  # each a-clip is x convolved with one of the IRs
        assert any(torch.allclose(y[i], convolve_ir(x[i:i + 1], ir[None])[0], atol=1e-6) for ir in irs)
    y, _ = dir_only(folder, p=1.0, devices=["b", "s1"]).wave(x, gen(), devices)
    changed = (y != x).any(-1)
    assert changed.tolist() == [d in ("b", "s1") for d in ["a", "b", "a", "s1", "c", "a", "b", "a"]]


def test_dir_probability_zero_changes_nothing_and_p_is_per_clip(tmp_path):
    folder = write_irs(tmp_path)
    x, a = waves(b=400, n=400), torch.zeros(400, dtype=torch.long)
    assert torch.equal(dir_only(folder, p=0.0).wave(x, gen(), a)[0], x)
    y, _ = dir_only(folder, p=0.4).wave(x, gen(), a)
    assert float((y != x).any(-1).float().mean()) == pytest.approx(0.4, abs=0.08)


def test_dir_draws_the_impulse_responses_uniformly(tmp_path):
    folder = write_irs(tmp_path, irs={f"{k}.wav": [0.0] * k + [1.0] for k in range(4)})  # delays 0..3
    x = torch.zeros(2000, 50)
    x[:, 10] = 1.0
    y, _ = dir_only(folder, p=1.0).wave(x, gen(), torch.zeros(2000, dtype=torch.long))
    counts = torch.bincount(y.argmax(-1) - 10, minlength=4)
    assert counts.tolist() != [0, 0, 0, 0] and len(counts) == 4
    assert_close(counts / 2000.0, torch.full((4,), 0.25), atol=0.04, rtol=0)


def test_impulse_responses_at_another_rate_are_resampled_once(tmp_path):
    ir = np.zeros(800)
    ir[100] = 1.0  # a 100-sample delay at 16 kHz: 200 samples at 32 kHz
    folder = write_irs(tmp_path, rate=16000, irs={"slow.wav": ir})
    write_irs(tmp_path, rate=SR, irs={"fast.wav": [1.0]})
    irs = load_impulse_responses(folder, SR)
    assert irs.shape == (2, 1600) and irs.dtype == torch.float32
    assert int(irs[1].argmax()) == 200 and float(irs[1].max()) == pytest.approx(1.0, abs=0.05)
    assert float(irs[0, 0]) == 1.0 and not irs[0, 1:].any()  # zero-padded to the longest
    aug = dir_only(folder, p=1.0)
    assert torch.equal(aug.irs, irs) and aug.inputs == (folder,)
    assert only("mixup").inputs == () and only("mixup").irs is None  # disabled: nothing read


def test_dir_runs_where_the_batch_is(tmp_path):
    aug = dir_only(write_irs(tmp_path), p=1.0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    x, a = waves().to(device), torch.zeros(6, dtype=torch.long, device=device)
    y, _ = aug.wave(x, torch.Generator(device).manual_seed(0), a)
    assert y.device == x.device and not torch.equal(y, x)


def test_disabled_dir_draws_nothing_and_touches_nothing(tmp_path):
    """The other waveform ops draw exactly what they drew before dir existed: same output
    and same generator state as the ops applied with the draws made in their order."""
    cfg = copy.deepcopy(PARAMS)
    for name in ("time_shift", "pitch_shift", "mixup", "noise"):
        cfg[name]["enabled"] = True
    cfg["mixup"]["p"] = 1.0
    cfg["dir"].update(enabled=False, ir_dir=str(tmp_path / "absent"))  # never read while disabled
    aug = Augmenter.from_params(cfg, SR)
    x, g = waves(), gen(11)
    y, mix = aug.wave(x, g, torch.zeros(6, dtype=torch.long))

    r = gen(11)
    max_shift = int(round(cfg["time_shift"]["max_s"] * SR))
    expected = time_shift(x, torch.randint(-max_shift, max_shift + 1, (6,), generator=r))
    semitones = cfg["pitch_shift"]["max_semitones"]
    expected = pitch_shift(expected, -semitones + 2 * semitones * torch.rand(6, generator=r), max_semitones=semitones)
    assert bool(torch.rand((), generator=r) < 1.0)  # mixup's yes/no
    perm, lam = torch.randperm(6, generator=r), sample_beta(cfg["mixup"]["alpha"], 6, r)
    expected = mixup(expected, perm, lam)
    lo, hi = cfg["noise"]["snr_db_min"], cfg["noise"]["snr_db_max"]
    snr = lo + (hi - lo) * torch.rand(6, generator=r)
    expected = add_noise(expected, snr, torch.randn(x.shape, generator=r))
    assert torch.equal(y, expected) and torch.equal(mix.perm, perm) and torch.equal(mix.lam, lam)
    assert torch.equal(g.get_state(), r.get_state())
    assert torch.equal(aug.wave(x, gen(11))[0], y)  # no devices needed while disabled


def test_enabled_dir_needs_impulse_responses(tmp_path):
    with pytest.raises(ParamsError, match=f"dir.ir_dir: {tmp_path / 'absent'} is not a folder"):
        dir_only(tmp_path / "absent")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no audio")
    with pytest.raises(ParamsError, match=f"dir.ir_dir: no .wav files under {tmp_path / 'empty'}"):
        dir_only(tmp_path / "empty")
    write_irs(tmp_path / "silent", irs={"zero.wav": [0.0, 0.0]})
    with pytest.raises(ParamsError, match="zero.wav is silent"):
        dir_only(tmp_path / "silent")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.wav").write_bytes(b"RIFF not really")
    with pytest.raises(ParamsError, match="broken.wav: not a readable audio file"):
        dir_only(tmp_path / "bad")
    with pytest.raises(ValueError, match="no recording devices"):
        dir_only(write_irs(tmp_path / "ok")).wave(waves(), gen())


@pytest.mark.parametrize("section", ["augment", "teacher.augment"])
def test_params_dir_section_is_checked(section):
    params = read_params(Path(__file__).parents[1] / "params.yaml")
    node = params["augment"] if section == "augment" else params["teacher"]["augment"]
    assert node["dir"] == {"enabled": False, "p": 0.4, "ir_dir": "data/irs", "devices": ["a"]}
    for key, value, problem in [("ir_dir", None, "must be a string"), ("devices", ["x"], "must be a list of items"),
                                ("p", 1.5, "must be in")]:
        bad = copy.deepcopy(params)
        target = bad["augment"] if section == "augment" else bad["teacher"]["augment"]
        target["dir"][key] = value
        with pytest.raises(ParamsError, match=f"{section}.dir.{key} {problem}"):
            check_params(bad)
