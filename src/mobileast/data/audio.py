"""Audio file reading (the data stages and `predict`) and float <-> int16 conversion."""
from __future__ import annotations

from pathlib import Path

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
    audio, rate, _ = _decode(path)
    check_finite(audio, rate)
    return resample(audio, rate, sample_rate)


def read_audio(path: str | Path) -> tuple[np.ndarray, int, int]:
    """(mono float32 waveform in [-1, 1], sample rate, number of channels) of a user's
    audio file, channels averaged. A missing, empty, undecodable file or one with
    non-finite samples is an error naming the file (FileNotFoundError, ValueError)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if not path.is_file():
        raise ValueError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: empty file (0 bytes)")
    try:
        audio, rate, channels = _decode(path)
    except (sf.SoundFileError, RuntimeError) as e:
        reason = getattr(e, "error_string", None) or str(e)
        raise ValueError(f"{path}: not a readable audio file ({reason})") from e
    if len(audio) == 0:
        raise ValueError(f"{path}: no audio samples")
    try:
        check_finite(audio, rate)
    except NonFiniteAudio as e:
        raise NonFiniteAudio(f"{path}: {e}") from None
    return audio, rate, channels


def check_finite(audio: np.ndarray, rate: int) -> None:
    """Raise NonFiniteAudio, with their count and the time of the first, if samples are NaN or infinite."""
    finite = np.isfinite(audio)
    if not finite.all():
        first = np.flatnonzero(~finite)[0]
        raise NonFiniteAudio(f"{np.count_nonzero(~finite)} non-finite samples (NaN or inf), "
                             f"the first at {first / rate:.4f} s")


def _decode(path: str | Path) -> tuple[np.ndarray, int, int]:
    """(float32 samples with the channels averaged, sample rate, number of channels)."""
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    return audio.mean(axis=1, dtype=np.float32), int(rate), audio.shape[1]


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
