"""Deterministic demo dataset in the TAU22 development layout (stage `demo_data`).

Each 10 s recording is synthesised as a power spectrogram (STFT domain, 1024-point
frames, hop 512) filled with random phases and turned into audio by overlap-add. A
scene is a mix of shared ingredients with scene-specific weights, so classes differ
but overlap:
- a background bed (spectral envelope over octave bands, slow swells);
- tonal sources: engines and motors with gliding pitch, ventilation hum, music;
- people: near talkers (syllables with harmonics and moving formants), distant crowd;
- events: footsteps, chimes, bells, birds, passing cars, squeals, rail joints, horns,
  rolling suitcases, wind gusts;
- reverberation (long in halls and stations).
Every location draws its own variation of its scene (spectrum, level, event rates,
pitches) and every recording a smaller one, so a model must learn the scene, not the
location. Locations of the evaluate fold are disjoint from those of the train fold.

Devices are rendered from the same clean spectrogram (parallel recordings share the
segment id, as in TAU22) as distinct transfer functions (high/low-pass, resonances,
tilt), self-noise, gain and soft saturation: `a` is nearly flat and dominates the train
fold, b/c/s1..s3 also appear in train, s4..s6 only in evaluate. A few slices are
dropped from the layout, as in the real dataset. The same seed gives identical bytes
(with the same numpy build and CPU family: float32 maths may round differently elsewhere).
"""
from __future__ import annotations

import dataclasses
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from mobileast.labels import DEVICES, SCENES, UNSEEN_DEVICES
from mobileast.data import tau22
from mobileast.data.audio import to_int16
from mobileast.data.parallel import runner

SAMPLE_RATE = tau22.SOURCE_RATE
CLIP = SAMPLE_RATE * tau22.CLIP_SECONDS
RECORDING_SECONDS = tau22.CLIP_SECONDS * tau22.SLICES_PER_RECORDING
RECORDING_SAMPLES = CLIP * tau22.SLICES_PER_RECORDING
N_FFT, HOP = 1024, 512
N_FRAMES = RECORDING_SAMPLES // HOP + 2  # overlap-add covers HOP + RECORDING_SAMPLES samples
FRAME_RATE = SAMPLE_RATE / HOP
FREQS = np.fft.rfftfreq(N_FFT, 1 / SAMPLE_RATE).astype(np.float32)  # float32 throughout: twice as fast
LOG_FREQS = np.log2(np.maximum(FREQS, 10.0))
WINDOW = np.sqrt(np.hanning(N_FFT + 1)[:-1]).astype(np.float32)  # squares overlap-add to 1 at hop N/2
BED_FREQS = np.array([31.5, 63, 125, 250, 500, 1000, 2000, 4000, 8000, 16000])


# ----------------------------------------------------------------------------- sounds
def _band(centre: Any, octaves: float) -> np.ndarray:
    """Gaussian bump in log-frequency at `centre` Hz (scalar or (frames, 1) array)."""
    return np.exp(-0.5 * ((LOG_FREQS - np.log2(centre, dtype=np.float32)) / np.float32(octaves)) ** 2)


def _comb(f0: Any, spread_hz: float) -> np.ndarray:
    """Harmonic comb: peaks of width ~spread_hz at the multiples of f0 (scalar or (frames, 1))."""
    f0 = np.asarray(f0, np.float32)
    kappa = (f0 / np.float32(2 * np.pi * spread_hz)) ** 2
    return np.exp(kappa * (np.cos(np.float32(2 * np.pi) * FREQS / f0) - 1))


def _col(envelope: np.ndarray) -> np.ndarray:
    """A per-frame envelope as a float32 (frames, 1) column, to scale spectra frame by frame."""
    return np.asarray(envelope, np.float32)[:, None]


def _frames(seconds: float) -> int:
    return max(1, round(seconds * FRAME_RATE))


def _decay(n: int, seconds: float) -> np.ndarray:
    """Exponential power decay over n frames with time constant `seconds`."""
    return np.exp(-np.arange(n) / (seconds * FRAME_RATE))


def _smooth(rng: np.random.Generator, n: int, seconds: float) -> np.ndarray:
    """Random curve over n frames varying on a time scale of `seconds`, zero mean and unit variance.

    Gaussian-filtered white noise, cut from a longer stretch so that slow curves drift
    rather than wrap around, and scaled by the filter's noise gain (not by the sample
    spread, which is tiny for curves slower than the recording).
    """
    sigma = seconds * FRAME_RATE / 2
    margin = int(4 * sigma) + 1
    kernel = np.exp(-0.5 * (np.arange(-margin, margin + 1) / sigma) ** 2)
    curve = np.convolve(rng.standard_normal(n + 2 * margin), kernel, mode="valid")
    return curve / np.sqrt(np.sum(kernel ** 2))


def _smear(x: np.ndarray, seconds: float) -> np.ndarray:
    """x (frames, ...) with every frame ringing on as exp(-t / seconds): y[t] = x[t] + a y[t-1]."""
    ring = float(np.exp(-1 / (seconds * FRAME_RATE)))
    y = np.array(x)
    for t in range(1, len(y)):
        y[t] += ring * y[t - 1]
    return y


def _pulses(n: int, onsets: np.ndarray, seconds: float) -> np.ndarray:
    """Envelope of n frames with exponentially decaying pulses at frame `onsets`."""
    impulses = np.zeros(n)
    impulses[onsets[onsets < n]] = 1.0
    return _smear(impulses, seconds)


def _footsteps(rng: np.random.Generator) -> np.ndarray:
    steps, period = rng.integers(3, 9), rng.uniform(0.45, 0.65)
    env = _pulses(_frames(steps * period), (np.arange(steps) * period * FRAME_RATE).astype(int), 0.02)
    return _col(env) * (_band(rng.uniform(800, 2500), 1.3) + 0.6 * _band(rng.uniform(80, 160), 0.8))


def _chime(rng: np.random.Generator) -> np.ndarray:
    """Announcement signal: two or three descending harmonic notes."""
    notes = rng.uniform(500, 900) * np.array([1.0, 0.8, 0.67])[:rng.integers(2, 4)]
    step = _frames(rng.uniform(0.35, 0.6))
    patch = np.zeros((step * len(notes) + _frames(1.0), len(FREQS)), np.float32)
    for i, f0 in enumerate(notes):
        tail = len(patch) - i * step
        patch[i * step:] += _col(_decay(tail, 0.3)) * (_comb(f0, 10) * _band(2 * f0, 1.2))
    return patch


def _bell(rng: np.random.Generator) -> np.ndarray:
    """Tram bell: inharmonic partials struck two or three times."""
    f0 = rng.uniform(700, 1100)
    partials = sum(weight * _band(f0 * ratio, 0.02) for ratio, weight in ((1, 1.0), (2.76, 0.5), (5.4, 0.25)))
    strikes, gap = rng.integers(2, 4), _frames(rng.uniform(0.12, 0.25))
    env = _pulses(strikes * gap + _frames(0.8), np.arange(strikes) * gap, 0.2)
    return _col(env) * partials


def _birds(rng: np.random.Generator) -> np.ndarray:
    """A burst of frequency-modulated chirps."""
    base, pieces = rng.uniform(2500, 6000), []
    for _ in range(rng.integers(2, 8)):
        n = rng.integers(3, 12)
        sweep = base * 2 ** np.linspace(rng.uniform(-0.4, 0.4), rng.uniform(-0.7, 0.7), n)
        pieces += [_band(sweep[:, None], 0.05) * _col(np.hanning(n + 2)[1:-1]),
                   np.zeros((rng.integers(2, 10), len(FREQS)), np.float32)]
    return np.concatenate(pieces)


def _car(rng: np.random.Generator) -> np.ndarray:
    """A passing vehicle: swelling tyre noise and an engine whose pitch drops (Doppler)."""
    t = np.linspace(-1, 1, _frames(rng.uniform(2.5, 5)))
    f0 = rng.uniform(35, 70) * (1 - 0.05 * np.tanh(4 * t))
    spectrum = _band(rng.uniform(600, 1200), 1.6) + 0.7 * _comb(f0[:, None], 15) * _band(150.0, 1.2)
    return _col(np.exp(-0.5 * (t / 0.35) ** 2)) * spectrum


def _squeal(rng: np.random.Generator) -> np.ndarray:
    """Wheel or brake squeal: a narrow, wobbling tone."""
    n = _frames(rng.uniform(0.4, 1.8))
    f = rng.uniform(2000, 5500) * 2 ** (0.01 * np.sin(2 * np.pi * rng.uniform(3, 8) * np.arange(n) / FRAME_RATE))
    return _col(np.hanning(n + 2)[1:-1] ** 0.5) * (_band(f[:, None], 0.025) + 0.3 * _band(2 * f[:, None], 0.025))


def _rail(rng: np.random.Generator) -> np.ndarray:
    """Rail joints: pairs of low thumps."""
    pairs, gap, within = rng.integers(1, 5), _frames(rng.uniform(0.6, 1.2)), _frames(0.12)
    onsets = np.concatenate([np.arange(pairs) * gap, np.arange(pairs) * gap + within])
    return _col(_pulses(pairs * gap + _frames(0.3), onsets, 0.05)) * _band(rng.uniform(100, 250), 1.2)


def _horn(rng: np.random.Generator) -> np.ndarray:
    n = _frames(rng.uniform(0.25, 0.9))
    return _col(np.hanning(n + 4)[2:-2] ** 0.3) * _comb(rng.uniform(330, 480), 12) * _band(1200.0, 1.5)


def _suitcase(rng: np.random.Generator) -> np.ndarray:
    """Rolling suitcase: fast regular clicks of small wheels."""
    n = _frames(rng.uniform(1.5, 4))
    clicks = (0.5 + 0.5 * np.cos(2 * np.pi * rng.uniform(9, 16) * np.arange(n) / FRAME_RATE)) ** 4
    return _col(clicks * np.hanning(n + 2)[1:-1] ** 0.5) * _band(rng.uniform(1500, 3500), 1.5)


def _wind(rng: np.random.Generator) -> np.ndarray:
    n = _frames(rng.uniform(1.5, 4))
    return _col(np.hanning(n + 2)[1:-1] ** 2) * _band(rng.uniform(40, 120), 1.5)


EVENTS: dict[str, Callable[[np.random.Generator], np.ndarray]] = {
    "footsteps": _footsteps, "chime": _chime, "bell": _bell, "birds": _birds, "car": _car,
    "squeal": _squeal, "rail": _rail, "horn": _horn, "suitcase": _suitcase, "wind": _wind,
}


def _talker(rng: np.random.Generator) -> np.ndarray:
    """One near talker: syllables of a voiced harmonic spectrum with moving formants."""
    base = rng.choice([115.0, 210.0]) * 2 ** rng.normal(0, 0.1)
    env, f0, f1, f2 = np.zeros(N_FRAMES), np.full(N_FRAMES, base), np.full(N_FRAMES, 500.0), np.full(N_FRAMES, 1500.0)
    pos = int(rng.integers(0, _frames(1.0)))
    while pos < N_FRAMES:
        if rng.random() < 0.15:  # a pause between phrases
            pos += _frames(rng.uniform(0.4, 1.2))
            continue
        n = _frames(rng.uniform(0.08, 0.3))
        part = slice(pos, pos + n)
        env[part] = np.sin(np.pi * (np.arange(n) + 0.5) / n)[:len(env[part])] ** 2
        f0[part] = base * 2 ** (rng.normal(0, 0.12) + np.linspace(0, rng.normal(0, 0.1), n))[:len(env[part])]
        f1[part], f2[part] = rng.uniform(300, 850), rng.uniform(900, 2400)
        pos += n + _frames(rng.uniform(0.03, 0.2))
    formants = _band(f1[:, None], 0.3) + 0.5 * _band(f2[:, None], 0.25) + 0.03
    return _col(env) * _comb(f0[:, None], 18) * formants * _band(700.0, 1.8)


def _music(rng: np.random.Generator) -> np.ndarray:
    """Background music: three-note chords changing every 1.5-3 s, and a soft beat."""
    scale = 220 * 2 ** (np.array([0, 2, 3, 5, 7, 8, 10, 12, 14]) / 12)
    voices, pos = np.zeros((3, N_FRAMES)), 0
    while pos < N_FRAMES:
        n = _frames(rng.uniform(1.5, 3))
        voices[:, pos:pos + n] = rng.choice(scale, 3, replace=False)[:, None]
        pos += n
    tones = sum(_comb(f0[:, None], 8) for f0 in voices) * _band(600.0, 1.3)
    beat = _pulses(N_FRAMES, np.arange(0, N_FRAMES, _frames(60 / rng.uniform(95, 130))), 0.08)
    return tones + 2 * _col(beat) * _band(70.0, 0.8)


# ----------------------------------------------------------------------------- scenes
@dataclass(frozen=True)
class Scene:
    """Recipe of one acoustic scene; levels in dB relative to the background bed."""

    level_db: float                      # typical level of a clean recording, dBFS
    bed_db: tuple[float, ...]            # background spectrum at BED_FREQS, dB
    swell_db: float                      # depth of slow level changes (traffic, trains, wind)
    swell_s: float                       # their time scale
    rt60_s: float                        # reverberation time (long in halls and stations)
    hum: tuple[float, float, float, float] | None = None  # f0 Hz, band centre Hz, level dB, glide octaves
    talkers: float = 0.0                 # mean number of near talkers
    talker_db: float = -10.0
    crowd_db: float | None = None        # distant crowd babble
    music_db: float | None = None
    events: Mapping[str, tuple[float, float]] = dataclasses.field(default_factory=dict)  # rate /s, level dB


SCENE_RECIPES: dict[str, Scene] = {
    "airport": Scene(-32, (-14, -10, -6, -3, -2, -4, -10, -18, -28, -40), 2, 8, 1.6,
                     hum=(120, 240, -12, 0.02), talkers=1.0, talker_db=-8, crowd_db=-8,
                     events={"chime": (0.08, 4), "suitcase": (0.4, -4), "footsteps": (0.4, -8)}),
    "bus": Scene(-28, (2, 4, 2, -4, -12, -16, -20, -26, -34, -46), 4, 8, 0.3,
                 hum=(55, 120, 0, 0.5), talkers=0.8, talker_db=-10,
                 events={"rail": (0.05, -6), "squeal": (0.03, -10), "chime": (0.05, -6), "horn": (0.02, -12)}),
    "metro": Scene(-26, (-6, -3, -2, -2, 0, 0, -4, -12, -22, -34), 6, 4, 0.4,
                   hum=(450, 1400, -4, 0.6), talkers=0.6, talker_db=-14,
                   events={"squeal": (0.2, 0), "rail": (0.3, 2), "chime": (0.02, -6)}),
    "metro_station": Scene(-30, (-6, -2, -2, -4, -8, -11, -14, -19, -27, -38), 8, 12, 2.0,
                           hum=(150, 300, -16, 0.02), talkers=0.6, talker_db=-10, crowd_db=-12,
                           events={"chime": (0.08, 4), "footsteps": (0.5, -8), "squeal": (0.08, -8),
                                   "rail": (0.06, -6)}),
    "park": Scene(-38, (-6, -10, -16, -22, -26, -28, -28, -26, -28, -38), 5, 3, 0.2,
                  talkers=0.3, talker_db=-10,
                  events={"birds": (0.8, 6), "wind": (0.15, 2), "footsteps": (0.1, -6), "car": (0.04, -14)}),
    "public_square": Scene(-33, (-10, -10, -10, -11, -12, -13, -15, -19, -25, -34), 3, 6, 0.5,
                           talkers=1.0, talker_db=-8, crowd_db=-10,
                           events={"footsteps": (0.3, -6), "car": (0.06, -8), "birds": (0.2, -2),
                                   "bell": (0.02, -4)}),
    "shopping_mall": Scene(-31, (-14, -12, -9, -7, -6, -7, -11, -18, -27, -40), 2, 8, 1.2,
                           hum=(100, 200, -20, 0.0), talkers=1.2, talker_db=-8, crowd_db=-8, music_db=-8,
                           events={"footsteps": (0.5, -6), "chime": (0.04, -2), "suitcase": (0.05, -8)}),
    "street_pedestrian": Scene(-31, (-8, -8, -8, -9, -10, -11, -13, -18, -25, -36), 4, 5, 0.4,
                               talkers=1.2, talker_db=-8, crowd_db=-14,
                               events={"footsteps": (0.8, -2), "car": (0.12, -4), "birds": (0.05, -8),
                                       "horn": (0.01, -6)}),
    "street_traffic": Scene(-24, (-4, -3, -3, -3, -2, -2, -6, -12, -22, -34), 8, 3, 0.3,
                            talkers=0.2, talker_db=-14,
                            events={"car": (0.6, 4), "horn": (0.05, -2), "footsteps": (0.05, -10)}),
    "tram": Scene(-28, (-6, -2, -2, -4, -6, -9, -13, -19, -28, -40), 4, 6, 0.3,
                  hum=(600, 1100, -4, 0.8), talkers=0.8, talker_db=-10,
                  events={"squeal": (0.15, -4), "bell": (0.06, 2), "rail": (0.15, -4)}),
}


def _db(level: float) -> float:
    return 10 ** (level / 10)


def vary(scene: Scene, rng: np.random.Generator, spread_db: float) -> Scene:
    """A random variant of a scene: a location's (spread_db) or a recording's (smaller)."""
    def level(value: float | None) -> float | None:
        return None if value is None else value + rng.normal(0, spread_db)

    hum = None
    if scene.hum:
        f0, centre, hum_db, glide = scene.hum
        hum = (f0 * 2 ** rng.normal(0, spread_db / 16), centre, hum_db + rng.normal(0, spread_db), glide)
    return dataclasses.replace(
        scene, level_db=scene.level_db + rng.normal(0, spread_db * 0.75),
        bed_db=tuple(np.asarray(scene.bed_db) + rng.normal(0, spread_db, len(BED_FREQS))),
        rt60_s=scene.rt60_s * 2 ** rng.normal(0, 0.3), hum=hum, talker_db=level(scene.talker_db),
        crowd_db=level(scene.crowd_db), music_db=level(scene.music_db),
        events={name: (rate * 2 ** rng.normal(0, 0.7), lvl + rng.normal(0, spread_db))
                for name, (rate, lvl) in scene.events.items()})


def synthesize(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Complex STFT (N_FRAMES, N_FFT/2+1) of one clean 10 s recording of `scene`."""
    bed = _db(np.interp(LOG_FREQS, np.log2(BED_FREQS), scene.bed_db))
    power = _col(_db(scene.swell_db * _smooth(rng, N_FRAMES, scene.swell_s))) * bed.astype(np.float32)
    if scene.hum:
        f0, centre, level, glide = scene.hum
        pitch = f0 * 2 ** (glide * 0.5 * _smooth(rng, N_FRAMES, 4.0))
        power += _db(level) * _comb(pitch[:, None], 20) * _band(centre, 1.2)
    for _ in range(rng.poisson(scene.talkers)):
        power += _db(scene.talker_db + rng.normal(0, 3)) * _talker(rng)
    if scene.crowd_db is not None:
        syllabic = np.clip(1 + 0.5 * _smooth(rng, N_FRAMES, 0.25), 0.1, None)
        power += _db(scene.crowd_db) * _col(syllabic) * (_band(500.0, 1.3) + 0.5 * _band(1500.0, 1.0))
    if scene.music_db is not None:
        power += _db(scene.music_db) * _music(rng)
    for name, (rate, level) in scene.events.items():
        for _ in range(rng.poisson(rate * RECORDING_SECONDS)):
            patch = _db(level + rng.normal(0, 3)) * EVENTS[name](rng)
            start = int(rng.integers(-len(patch) // 2, N_FRAMES))
            power[max(start, 0):start + len(patch)] += patch[max(-start, 0):N_FRAMES - start]
    power = _smear(power, scene.rt60_s / (6 * np.log(10)))  # power falls 60 dB in rt60
    # Expected mean square of the overlap-added signal is sum over frames and (two-sided) bins / N_FFT^2.
    mean_square = (2 * power.sum(axis=1) - power[:, 0] - power[:, -1]).mean() / N_FFT ** 2
    power *= _db(scene.level_db) / mean_square
    phases = rng.standard_normal((*power.shape, 2), dtype=np.float32).view(np.complex64)[..., 0]
    return np.sqrt(power / 2) * phases


def istft(spectrum: np.ndarray) -> np.ndarray:
    """Overlap-add synthesis of a (N_FRAMES, bins) spectrum -> RECORDING_SAMPLES float32."""
    frames = np.fft.irfft(spectrum, n=N_FFT, axis=1) * WINDOW
    out = np.zeros((len(frames) + 1) * HOP, np.float32)
    out[:-HOP].reshape(-1, HOP)[:] += frames[:, :HOP]
    out[HOP:].reshape(-1, HOP)[:] += frames[:, HOP:]
    return out[HOP:HOP + RECORDING_SAMPLES]


# ---------------------------------------------------------------------------- devices
@dataclass(frozen=True)
class Device:
    """A recording device: transfer function, self-noise, gain and saturation."""

    highpass_hz: float
    lowpass_hz: float
    peaks: tuple[tuple[float, float, float], ...]  # resonances: centre Hz, gain dB, width octaves
    tilt_db: float                                 # dB per octave around 1 kHz
    noise_db: float                                # self-noise, dBFS
    gain_db: float
    drive: float                                   # soft saturation, 0 = linear

    def response(self) -> np.ndarray:
        """Magnitude response at FREQS."""
        f = np.maximum(FREQS, 1.0)
        shape_db = self.tilt_db * np.log2(f / 1000) + sum(g * _band(c, w) for c, g, w in self.peaks)
        return (10 ** (shape_db / 20) / np.sqrt(1 + (self.highpass_hz / f) ** 4)
                / np.sqrt(1 + (f / self.lowpass_hz) ** 8)).astype(np.float32)

    def render(self, spectrum: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The device's recording (float32, RECORDING_SAMPLES) of a clean spectrum."""
        audio = istft(spectrum * self.response()) * np.float32(10 ** (self.gain_db / 20))
        audio += rng.standard_normal(len(audio), dtype=np.float32) * np.float32(10 ** (self.noise_db / 20))
        if self.drive:
            audio = np.tanh(self.drive * audio) / self.drive
        return audio


DEVICE_MODELS: dict[str, Device] = {
    "a": Device(20, 20000, (), 0.0, -88, 0, 0.0),  # high-quality binaural microphones
    "b": Device(150, 8000, ((3000, 6, 0.6),), -1.0, -66, -2, 1.5),
    "c": Device(300, 11000, ((1200, 4, 0.5), (6000, -8, 0.8)), 1.0, -62, 2, 3.0),
    "s1": Device(100, 16000, ((600, -6, 1.0), (4000, 5, 0.7)), 0.0, -72, 0, 0.0),
    "s2": Device(250, 7000, ((2000, 8, 0.4),), -2.0, -64, -4, 1.0),
    "s3": Device(60, 12000, ((250, 6, 0.8), (3500, -5, 0.6)), -0.5, -70, 3, 0.0),
    "s4": Device(400, 10000, ((1500, 6, 0.5),), 1.5, -60, -3, 2.0),
    "s5": Device(120, 6000, ((800, 5, 0.7), (2500, -6, 0.5)), -1.5, -66, 1, 0.0),
    "s6": Device(200, 14000, ((300, -6, 1.0), (5000, 7, 0.5)), 0.5, -62, -1, 1.0),
}


# ------------------------------------------------------------------------- the dataset
@dataclass(frozen=True)
class DemoConfig:
    """Size and make-up of the demo dataset (params.yaml `demo:`)."""

    seed: int
    cities: tuple[str, ...]
    locations_per_city: int            # per scene and city
    train_recordings_per_class: int    # device-a recordings per scene in the train fold
    parallel_devices_train: tuple[str, ...]
    parallel_fraction: float           # share of train recordings also rendered on each parallel device
    eval_recordings_per_class: int     # each at its own location, none shared with train
    eval_devices: tuple[str, ...]
    eval_devices_per_recording: int    # devices per evaluate recording, balanced over eval_devices
    missing_slice_fraction: float      # share of slices left out of the layout
    location_spread_db: float          # variation between locations of a scene (difficulty)

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "DemoConfig":
        names = {field.name for field in dataclasses.fields(cls)}
        if set(params) != names:
            raise ValueError(f"demo params: missing {sorted(names - set(params))}, unknown {sorted(set(params) - names)}")
        values = {key: tuple(value) if isinstance(value, list) else value for key, value in params.items()}
        return cls(**values)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.parallel_devices_train + self.eval_devices) - set(DEVICES))
        if unknown:
            raise ValueError(f"demo: unknown devices {unknown} (known: {', '.join(DEVICES)})")
        if set(self.parallel_devices_train) & {"a", *UNSEEN_DEVICES}:
            raise ValueError(f"demo.parallel_devices_train must not contain a or the unseen devices {UNSEEN_DEVICES}")
        if self.eval_recordings_per_class >= len(self.cities) * self.locations_per_city:
            raise ValueError("demo: eval_recordings_per_class must leave locations for the train fold")
        if not 1 <= self.eval_devices_per_recording <= len(self.eval_devices):
            raise ValueError("demo.eval_devices_per_recording must be between 1 and len(eval_devices)")


def plan(config: DemoConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(recordings, renderings): what to synthesise and on which devices.

    recordings: scene, city, location, segment, fold, location_index (one clean 10 s
    signal each). renderings: recording (row of recordings), device, and the slices kept.
    """
    rng = np.random.default_rng([config.seed, 0])
    n_places = len(config.cities) * config.locations_per_city
    n_locations = n_places * len(SCENES)
    location_ids = rng.choice(np.arange(100, max(1000, 100 + 2 * n_locations)), n_locations, replace=False)
    rows = []
    for s, scene in enumerate(SCENES):
        places = rng.permutation(n_places)
        folds = (["evaluate"] * config.eval_recordings_per_class
                 + ["train"] * config.train_recordings_per_class)
        n_eval = config.eval_recordings_per_class
        for r, fold in enumerate(folds):
            place = places[r] if fold == "evaluate" else places[n_eval + (r - n_eval) % (n_places - n_eval)]
            rows.append((scene, config.cities[place // config.locations_per_city],
                         str(location_ids[s * n_places + place]), fold, s * n_places + place))
    recordings = pd.DataFrame(rows, columns=["scene", "city", "location", "fold", "location_index"])
    recordings["segment"] = rng.choice(np.arange(1000, 100000), len(recordings), replace=False).astype(str)

    train = np.flatnonzero(recordings.fold == "train")
    renders = [(r, "a") for r in train]
    for device in config.parallel_devices_train:
        chosen = rng.choice(train, round(config.parallel_fraction * len(train)), replace=False)
        renders += [(r, device) for r in sorted(chosen)]
    counts = np.zeros(len(config.eval_devices))
    for r in np.flatnonzero(recordings.fold == "evaluate"):  # least used devices first, ties at random
        chosen = np.lexsort((rng.random(len(counts)), counts))[:config.eval_devices_per_recording]
        counts[chosen] += 1
        renders += [(r, config.eval_devices[i]) for i in sorted(chosen)]
    renderings = pd.DataFrame(renders, columns=["recording", "device"])
    kept = rng.random((len(renderings), tau22.SLICES_PER_RECORDING)) >= config.missing_slice_fraction
    kept[~kept.any(axis=1), 0] = True  # every recording keeps at least one slice
    renderings["slices"] = list(kept)
    return recordings, renderings


def write_wav(path: Path, audio: np.ndarray) -> None:
    """Write int16 mono audio as a 16-bit PCM WAV at SAMPLE_RATE.

    The standard library's writer: soundfile would fsync every file, which makes
    writing thousands of clips ten times slower.
    """
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(audio.astype("<i2").tobytes())


def _write_recordings(task: tuple[str, DemoConfig, list[tuple[int, dict, list]]]) -> list[tuple[str, ...]]:
    """Synthesise recordings, render them on their devices, write their slices; return clip rows."""
    root, config, items = task
    clips = []
    for r, rec, renders in items:
        location = vary(SCENE_RECIPES[rec["scene"]], np.random.default_rng([config.seed, 1, rec["location_index"]]),
                        config.location_spread_db)
        rng = np.random.default_rng([config.seed, 2, r])
        spectrum = synthesize(vary(location, rng, config.location_spread_db / 2), rng)
        for k, device, slices in renders:
            audio = to_int16(DEVICE_MODELS[device].render(spectrum, np.random.default_rng([config.seed, 3, k])))
            for slice_ in np.flatnonzero(slices):
                name = tau22.clip_filename(rec["scene"], rec["city"], rec["location"], rec["segment"], slice_, device)
                write_wav(Path(root) / name, audio[slice_ * CLIP:(slice_ + 1) * CLIP])
                clips.append((name, rec["scene"], f"{rec['city']}-{rec['location']}", device, rec["fold"]))
    return clips


def generate(root: Path, config: DemoConfig, workers: int = 0) -> pd.DataFrame:
    """Write the demo dataset in TAU22 layout into root; return its clips table.

    Deterministic whatever the number of worker processes (0 = one per core): every
    random stream is seeded by (seed, purpose, item), so the bytes depend only on config.
    """
    recordings, renderings = plan(config)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    items = [(r, recordings.loc[r].to_dict(), list(zip(renders.index, renders.device, renders.slices)))
             for r, renders in renderings.groupby("recording")]
    with runner(workers) as run:
        tasks = [(str(root), config, items[start:stop]) for start, stop in run.chunks(len(items), max_chunk=4)]
        clips = [clip for done in run.imap(_write_recordings, tasks) for clip in done]
    table = pd.DataFrame(clips, columns=["filename", "scene_label", "identifier", "device", "fold"])
    tau22.write_metadata(root, table)
    return table
