"""Benchmark of stage `resample` on the demo data against per-file loading approaches.

Prints throughput in audio-seconds per wall-second of
  (1) the resample stage (validation, process pool, int16 store, index and report),
  (2) per-file `librosa.load(path, sr=32000)` (the CP-JKU DCASE baseline's approach),
  (3) a bare floor: one process running soundfile.read + soxr.resample per file,
and the ratios stage / librosa (target >= 10) and stage per core / bare (target >= 0.8),
plus the CPU time each one used, which other load on the machine does not distort.

Uses data/demo when `dvc repro demo_data` has written it, else generates the demo
(params.yaml `demo:`) into a temporary directory. Files are read once before timing so
that all three runs see a warm page cache.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Callable

import librosa
import soundfile as sf
import soxr

from mobileast.files import atomic_output, project_root

from mobileast.params import load_params
from mobileast.data import DEMO_ROOT, tau22
from mobileast.data.demo import DemoConfig, generate
from mobileast.data.parallel import worker_count
from mobileast.data.resample import build_store

SAMPLE_RATE = 32000


def timed(work: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process and its finished child processes)."""
    def cpu() -> float:
        times = os.times()
        return times.user + times.system + times.children_user + times.children_system

    wall, used = time.perf_counter(), cpu()
    work()
    return time.perf_counter() - wall, cpu() - used


def main() -> None:
    params = load_params()
    workers = worker_count(params["data"]["workers"])
    with tempfile.TemporaryDirectory() as scratch:
        root = project_root() / DEMO_ROOT
        if not (root / tau22.META_FILE).exists():
            root = Path(scratch) / "demo"
            generate(root, DemoConfig.from_params(params["demo"]))
        paths = [str(root / name) for name in tau22.read_clips(root).filename]
        seconds = sum(sf.info(path).duration for path in paths)
        for path in paths:  # warm the page cache and librosa's lazy imports
            Path(path).read_bytes()
        librosa.load(paths[0], sr=SAMPLE_RATE)

        def stage() -> None:
            with atomic_output(Path(scratch) / "resampled") as out:
                build_store(root, out, sample_rate=SAMPLE_RATE, workers=workers, on_bad_file="error")

        def bare() -> None:
            for path in paths:
                audio, rate = sf.read(path, dtype="float32")
                soxr.resample(audio, rate, SAMPLE_RATE, quality="HQ")

        def per_file_librosa() -> None:
            for path in paths:
                librosa.load(path, sr=SAMPLE_RATE)

        wall, cpu = zip(*(timed(work) for work in (bare, per_file_librosa, stage)))
    speed = dict(zip(("bare", "librosa", "stage"), (seconds / w for w in wall)))
    print(f"{len(paths)} files, {seconds:.0f} s of audio from {root}; stage workers: {workers}")
    print(f"(1) resample stage          {speed['stage']:8.0f} audio-s/s")
    print(f"(2) librosa.load per file   {speed['librosa']:8.0f} audio-s/s")
    print(f"(3) bare sf.read + soxr     {speed['bare']:8.0f} audio-s/s (one process)")
    print(f"stage / librosa:            {speed['stage'] / speed['librosa']:8.1f}x (target >= 10)")
    print(f"stage per core / bare:      {speed['stage'] / workers / speed['bare']:8.2f} (target >= 0.80)")
    print(f"CPU seconds: stage {cpu[2]:.1f} (all processes), bare {cpu[0]:.1f}, librosa {cpu[1]:.1f}; "
          f"bare / stage CPU {cpu[0] / cpu[2]:.2f} (the per-core figure when cores are not shared)")


if __name__ == "__main__":
    main()
