import numpy as np
import torch
from torch.testing import assert_close

from mobileast.features import LogMel, kaldi_mel_banks


def slow_mel_banks(n_mels, n_fft, sr, f_min, f_max):
    """Kaldi's construction written out with loops."""
    def mel(f):
        return 1127.0 * np.log(1.0 + f / 700.0)

    lo, hi = mel(f_min), mel(f_max)
    delta = (hi - lo) / (n_mels + 1)
    banks = np.zeros((n_mels, n_fft // 2 + 1))
    for m in range(n_mels):
        left, centre, right = lo + m * delta, lo + (m + 1) * delta, lo + (m + 2) * delta
        for k in range(n_fft // 2):
            x = mel(k * sr / n_fft)
            if left < x <= centre:
                banks[m, k] = (x - left) / (centre - left)
            elif centre < x < right:
                banks[m, k] = (right - x) / (right - centre)
    return torch.tensor(banks, dtype=torch.float32)


def slow_logmel(wave, sr, n_fft, win, hop, n_mels, pre):
    """Numpy reference: pre-emphasis, reflect-padded frames, Hann, |rfft|^2, mel, log, norm."""
    x = wave[1:] - pre * wave[:-1]
    padded = np.pad(x, n_fft // 2, mode="reflect")
    window = np.zeros(n_fft)
    start = (n_fft - win) // 2
    window[start:start + win] = np.hanning(win)
    n_frames = 1 + (len(padded) - n_fft) // hop
    frames = np.stack([padded[i * hop:i * hop + n_fft] * window for i in range(n_frames)], axis=1)
    power = np.abs(np.fft.rfft(frames, axis=0)) ** 2
    mel = slow_mel_banks(n_mels, n_fft, sr, 0.0, sr / 2).double().numpy() @ power
    out = (np.log(mel + 1e-5) + 4.5) / 5.0
    return out[:, : len(wave) // hop]


def test_mel_banks_match_loop_reference():
    for n_mels, n_fft, sr, lo, hi in [(256, 2048, 32000, 0.0, 16000.0), (40, 512, 16000, 100.0, 7000.0)]:
        assert_close(kaldi_mel_banks(n_mels, n_fft, sr, lo, hi), slow_mel_banks(n_mels, n_fft, sr, lo, hi),
                     atol=1e-6, rtol=1e-5)


def test_logmel_shape_is_256_by_64_for_one_second():
    out = LogMel()(torch.randn(3, 32000) * 0.1)
    assert out.shape == (3, 1, 256, 64)
    assert torch.isfinite(out).all()


def test_logmel_matches_numpy_reference():
    rng = np.random.default_rng(0)
    wave = (rng.standard_normal(8000) * 0.1).astype(np.float64)
    frontend = LogMel(sample_rate=16000, n_fft=512, win_length=400, hop_length=160, n_mels=40)
    ours = frontend(torch.tensor(wave, dtype=torch.float32)[None])[0, 0].double()
    ref = torch.tensor(slow_logmel(wave, 16000, 512, 400, 160, 40, 0.97))
    assert ours.shape == ref.shape == (40, 50)
    assert_close(ours, ref, atol=2e-4, rtol=1e-4)
