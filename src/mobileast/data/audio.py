"""Audio file reading (the data stages and `predict`) and float <-> int16 conversion."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

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


MIN_RATE, MAX_RATE = 1000, 768000  # Hz: a user's file claiming a rate outside is refused
BLOCK_SECONDS = 60  # a user's file is read in blocks this long ...
MAX_BLOCK_SAMPLES = 1 << 23  # ... and of at most this many samples over all channels


class AudioReader:
    """A user's audio file (`predict`, `submit`) read in blocks, so that memory stays bounded
    whatever the file's length: `rate` and `channels` from its header, `blocks()` its mono
    float32 samples (channels averaged) block by block.

    A missing, empty or undecodable file, one whose sample rate is outside MIN_RATE..MAX_RATE
    (a header claiming 1 Hz would make resampling to the model's rate explode), one without
    samples or with non-finite samples is an error naming the file (FileNotFoundError,
    ValueError, NonFiniteAudio)."""

    def __init__(self, path: str | Path):
        self.path = path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file")
        if not path.is_file():
            raise ValueError(f"{path}: not a file")
        if path.stat().st_size == 0:
            raise ValueError(f"{path}: empty file (0 bytes)")
        with self._open() as file:
            self.rate, self.channels = int(file.samplerate), int(file.channels)
        if not MIN_RATE <= self.rate <= MAX_RATE:
            raise ValueError(f"{path}: sample rate {self.rate} Hz is outside {MIN_RATE}..{MAX_RATE} Hz "
                             "(a broken or mislabelled header)")

    def blocks(self) -> Iterator[np.ndarray]:
        """The mono float32 samples in blocks of BLOCK_SECONDS (fewer samples for files with
        many channels: at most MAX_BLOCK_SAMPLES are read at a time). Non-finite samples
        raise NonFiniteAudio after the whole file is scanned (their count, the first's time)."""
        frames = max(1, min(BLOCK_SECONDS * self.rate, MAX_BLOCK_SAMPLES // self.channels))
        total, bad, first_bad = 0, 0, None
        with self._open() as file:
            while True:
                try:
                    block = file.read(frames, dtype="float32", always_2d=True)
                except (sf.SoundFileError, RuntimeError) as e:
                    raise ValueError(f"{self.path}: not a readable audio file ({_reason(e)})") from e
                if len(block) == 0:
                    break
                mono = block.mean(axis=1, dtype=np.float32)
                finite = np.isfinite(mono)
                if not finite.all():
                    first_bad = total + int(np.flatnonzero(~finite)[0]) if first_bad is None else first_bad
                    bad += int(np.count_nonzero(~finite))
                total += len(mono)
                if first_bad is None:
                    yield mono
        if total == 0:
            raise ValueError(f"{self.path}: no audio samples")
        if bad:
            raise NonFiniteAudio(f"{self.path}: {bad} non-finite samples (NaN or inf), "
                                 f"the first at {first_bad / self.rate:.4f} s")

    def _open(self) -> sf.SoundFile:
        try:
            return sf.SoundFile(self.path)
        except (sf.SoundFileError, RuntimeError) as e:
            raise ValueError(f"{self.path}: not a readable audio file ({_reason(e)})") from e


def _reason(error: Exception) -> str:
    return getattr(error, "error_string", None) or str(error)


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


def resample_blocks(blocks: Iterable[np.ndarray], sample_rate: int, target_rate: int) -> Iterator[np.ndarray]:
    """Resample a mono float32 waveform given in blocks, block by block, with soxr's streaming
    resampler: the concatenated output equals `resample` of the whole waveform (same filter,
    state carried across blocks); the same blocks at the same rate."""
    if sample_rate == target_rate:
        yield from blocks
        return
    stream = soxr.ResampleStream(sample_rate, target_rate, 1, dtype="float32", quality="HQ")
    for block in blocks:
        yield stream.resample_chunk(block)
    yield stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)


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
