"""Log-mel frontends computed in torch (inside the training/inference graph, outside
the counted model). torchaudio cannot be loaded here, so the Kaldi-style mel banks
are built in this module."""
from __future__ import annotations


import torch
from torch import nn


def mel_scale(freq: torch.Tensor) -> torch.Tensor:
    """Hz -> mel, Kaldi/HTK convention: 1127 ln(1 + f / 700)."""
    return 1127.0 * torch.log1p(freq / 700.0)


def kaldi_mel_banks(n_mels: int, n_fft: int, sample_rate: float,
                    f_min: float = 0.0, f_max: float | None = None,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """Triangular mel filters, shape (n_mels, n_fft // 2 + 1), built on `device`
    (default CPU; on the GPU for per-batch banks, without a host-to-device copy or sync).

    Same construction as Kaldi's (and torchaudio.compliance.kaldi.get_mel_banks
    without VTLN): triangles equally spaced on the mel scale, evaluated at the
    FFT bin centres 0 .. n_fft/2 - 1; the Nyquist bin gets weight 0.
    """
    nyquist = sample_rate / 2
    f_max = nyquist if f_max is None or f_max <= 0 else f_max
    if not 0 <= f_min < f_max <= nyquist:
        raise ValueError(f"need 0 <= f_min < f_max <= {nyquist}, got {f_min}, {f_max}")
    n_bins = n_fft // 2
    f64 = {"dtype": torch.float64, "device": device}
    bin_mel = mel_scale(torch.arange(n_bins, **f64) * sample_rate / n_fft)
    # The range ends as Python numbers from CPU tensors: a scalar copied to a GPU waits for it.
    lo, hi = (mel_scale(torch.tensor(float(f), dtype=torch.float64, device="cpu")).item() for f in (f_min, f_max))
    delta = (hi - lo) / (n_mels + 1)
    left = lo + delta * torch.arange(n_mels, **f64)  # (n_mels,)
    centre, right = left + delta, left + 2 * delta
    up = (bin_mel[None, :] - left[:, None]) / (centre - left)[:, None]
    down = (right[:, None] - bin_mel[None, :]) / (right - centre)[:, None]
    banks = torch.clamp(torch.minimum(up, down), min=0.0)  # (n_mels, n_bins)
    return torch.nn.functional.pad(banks, (0, 1)).float()  # Nyquist bin -> 0


class LogMel(nn.Module):
    """Waveform (B, samples) in [-1, 1] -> log-mel (B, 1, n_mels, samples // hop).

    Pre-emphasis, centred STFT with a Hann window, power spectrum, Kaldi mel banks,
    log(x + 1e-5) and the fixed normalisation (x + 4.5) / 5 of the CP-JKU DCASE
    systems (no dataset statistics needed). The extra frame of a centred STFT is
    dropped: 1 s at 32 kHz with hop 500 gives 64 frames.
    """

    def __init__(self, sample_rate: int = 32000, n_fft: int = 2048, win_length: int = 2000,
                 hop_length: int = 500, n_mels: int = 256, preemphasis: float = 0.97,
                 f_min: float = 0.0, f_max: float | None = None):
        super().__init__()
        if win_length > n_fft:
            raise ValueError(f"win_length {win_length} > n_fft {n_fft}")
        self.n_fft, self.win_length, self.hop_length = n_fft, win_length, hop_length
        self.preemphasis = preemphasis
        self.register_buffer("window", torch.hann_window(win_length, periodic=False), persistent=False)
        self.register_buffer("mel_banks", kaldi_mel_banks(n_mels, n_fft, sample_rate, f_min, f_max),
                             persistent=False)

    def power(self, wave: torch.Tensor) -> torch.Tensor:
        """Pre-emphasised power spectrogram (B, n_fft // 2 + 1, 1 + (T - 1) // hop)."""
        x = wave[..., 1:] - self.preemphasis * wave[..., :-1]  # (B, T - 1)
        spec = torch.stft(x, self.n_fft, hop_length=self.hop_length, win_length=self.win_length,
                          window=self.window, center=True, return_complex=True)  # (B, F, frames)
        return spec.real.square() + spec.imag.square()

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        n_frames = wave.shape[-1] // self.hop_length
        mel = torch.matmul(self.mel_banks, self.power(wave))  # (B, n_mels, frames)
        logmel = (torch.log(mel + 1e-5) + 4.5) / 5.0
        return logmel[..., :n_frames].unsqueeze(1)  # (B, 1, n_mels, n_frames)
