"""Audio file reading and float <-> int16 conversion shared by the data stages."""
from __future__ import annotations

import numpy as np
import soundfile as sf
import soxr

INT16_SCALE = 32768.0  # float = int16 / INT16_SCALE


class NonFiniteAudio(ValueError):
    """An audio file holds NaN or infinite samples (only float WAVs can)."""


def load_mono(path: str, sample_rate: int) -> np.ndarray:
    """Read an audio file as float32 mono at `sample_rate`.

    Channels are averaged (downmix); a file at another rate is resampled from its own
    rate with soxr's high-quality ('HQ') filter. Errors of libsndfile propagate; NaN or
    infinite samples raise NonFiniteAudio (resampling would smear them over their
    neighbours, and int16 conversion would turn them into silence without a word).
    """
    audio, rate = sf.read(path, dtype="float32")
    finite = np.isfinite(audio)
    if not finite.all():
        first = np.flatnonzero(~finite.all(axis=1) if audio.ndim == 2 else ~finite)[0]
        raise NonFiniteAudio(f"{np.count_nonzero(~finite)} non-finite samples (NaN or inf), "
                             f"the first at {first / rate:.4f} s")
    if audio.ndim == 2:
        audio = audio.mean(axis=1, dtype=np.float32)
    return resample(audio, rate, sample_rate)


def resample(wave: np.ndarray, sample_rate: int, target_rate: int) -> np.ndarray:
    """Resample a mono float32 waveform with soxr's high-quality filter (no-op at the same rate)."""
    if sample_rate == target_rate:
        return wave
    return soxr.resample(wave, sample_rate, target_rate, quality="HQ").astype(np.float32, copy=False)


def to_int16(audio: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Float audio in [-1, 1) -> int16 (rounded, clipped at full scale), into `out` if given."""
    scaled = np.rint(np.multiply(audio, INT16_SCALE, dtype=np.float32))
    np.clip(scaled, -INT16_SCALE, INT16_SCALE - 1, out=scaled)
    if out is None:
        return scaled.astype(np.int16)
    out[...] = scaled
    return out
