"""The data stages at TAU22 scale: `resample` and `reassemble` on a generated TAU22-layout set.

Writes a dataset in the exact TAU22 layout at a fraction of the real size (default 10 %:
about 1,400 train recordings, 23,000 files of 1 s, 44.1 kHz 24-bit PCM, a few missing
slices, one 48 kHz stereo file, files in meta.csv that are in neither fold), runs the two
stages through their real stage scripts (`python -m stages.resample`, `stages.reassemble`
in a scratch project), and prints: files/s, audio seconds per second per core, peak
memory (of the stage process, of one worker, of all together: see Peak), bytes
written against the audio later stages need, the time DVC takes to hash the stores, and
the extrapolation to the full TAU22 development set (time on 2 and 16 cores, disk). A
second, smaller set (`--small`) gives the stage process's memory growth per clip (its
metadata tables), and with it its projected peak on full TAU22; a worker's memory is
bounded by its block of clips. Together they are the bound the data stages stay under.

    python benchmarks/bench_scale.py [--fraction 0.1] [--small 0.05] [--workers 0] [--keep DIR]

With --keep, sets already generated in DIR are reused.
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import soundfile as sf
import yaml
from dvc_data.hashfile.hash import file_md5

from mobileast.labels import SCENES
from mobileast.data import tau22
from mobileast.data.parallel import MAX_CHUNK, worker_count

REPO = Path(__file__).resolve().parents[1]
FULL = {"train_recordings": 13_962, "evaluate_recordings": 2_968, "files": 230_350}  # TAU22 development set
FULL_FOLD_CLIPS = 139_620 + 29_680
TRAIN_DEVICES = ["a"] * 7 + ["b", "c", "s1"]  # about 70 % device a, as in TAU22
EVALUATE_DEVICES = ["a", "b", "c", "s1", "s2", "s3", "s4", "s5", "s6"]
CITIES = ["barcelona", "helsinki", "lisbon", "london", "lyon", "milan", "paris", "prague", "stockholm", "vienna"]
MISSING = 0.01  # share of slices left out
RATE = 32000


def plan(fraction: float, seed: int = 0) -> pd.DataFrame:
    """Clips (filename, scene_label, identifier, device, fold) of a TAU22-layout set of `fraction` size."""
    rng = np.random.default_rng(seed)
    rows = []
    counts = {"train": round(FULL["train_recordings"] * fraction), "evaluate": round(FULL["evaluate_recordings"] * fraction)}
    n_files = round(FULL["files"] * fraction)
    unused = n_files - 10 * sum(counts.values())
    counts["none"] = max(0, unused // 10)
    segment = 0
    for fold, n in counts.items():
        devices = TRAIN_DEVICES if fold == "train" else EVALUATE_DEVICES
        for i in range(n):
            scene, city = SCENES[i % 10], CITIES[(i // 10) % 10]
            location = f"{(i // 100) % 50 + (0 if fold == 'train' else 100)}"
            device = devices[i % len(devices)]
            segment += 1
            for slice_ in range(10):
                if rng.random() < MISSING:
                    continue
                name = tau22.clip_filename(scene, city, location, str(segment), slice_, device)
                rows.append((name, scene, f"{city}-{location}", device, fold))
    return pd.DataFrame(rows, columns=["filename", "scene_label", "identifier", "device", "fold"])


def _write(task: tuple[str, list[str], int]) -> None:
    root, names, seed = task
    rng = np.random.default_rng(seed)
    t = np.arange(tau22.SOURCE_RATE) / tau22.SOURCE_RATE
    for name in names:
        tone = 0.2 * np.sin(2 * np.pi * rng.uniform(100, 4000) * t)
        sf.write(os.path.join(root, name), tone + 0.05 * rng.standard_normal(t.size), tau22.SOURCE_RATE,
                 subtype="PCM_24")


def generate(root: Path, fraction: float, workers: int) -> pd.DataFrame:
    """Write the set of `fraction` size at root (or reuse the one there); return its fold clips."""
    if (root / tau22.META_FILE).is_file():
        return pd.concat(pd.read_csv(root / tau22.SETUP_DIR / name, sep="\t").assign(fold=fold)
                         for fold, name in tau22.FOLD_FILES.items())
    clips = plan(fraction)
    (root / "audio").mkdir(parents=True)
    names = clips.filename.tolist()
    chunks = [(str(root), names[i:i + 500], i) for i in range(0, len(names), 500)]
    with Pool(workers) as pool:
        pool.map(_write, chunks)
    stereo = clips.filename[clips.fold == "train"].iloc[0]
    tone = 0.2 * np.sin(2 * np.pi * 440 * np.arange(48000) / 48000)
    sf.write(root / stereo, np.stack([tone, tone], 1), 48000, subtype="PCM_24")
    metadata = clips[clips.fold != "none"]
    tau22.write_metadata(root, metadata)
    extra = clips[clips.fold == "none"].rename(columns={"device": "source_label"})
    with open(root / tau22.META_FILE, "a") as meta:  # in meta.csv, in neither fold
        extra[list(tau22.META_COLUMNS)].to_csv(meta, sep="\t", index=False, header=False, lineterminator="\n")
    return metadata


class Peak:
    """Peak memory of a stage process and its workers, sampled every 50 ms: the stage
    process's RSS; the memory of all together, its RSS plus each worker's USS (the pages a
    forked worker shares with it counted once; PSS would also split shared libraries with
    unrelated processes, so it varies with the machine's other work); and the largest USS
    of one worker."""

    def __init__(self, pid: int):
        self.process, self.stop_event = psutil.Process(pid), threading.Event()
        self.rss = self.total = self.worker = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self.stop_event.wait(0.05):
            try:
                rss = self.process.memory_info().rss
                workers = [child.memory_full_info().uss for child in self.process.children(recursive=True)]
            except psutil.Error:
                continue
            self.rss, self.total = max(self.rss, rss), max(self.total, rss + sum(workers))
            self.worker = max(self.worker, *workers, 0)

    def stop(self) -> dict[str, int]:
        self.stop_event.set()
        self._thread.join()
        return {"rss": self.rss, "total": self.total, "worker": self.worker}


def run_stage(project: Path, stage: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'src'}"}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", f"stages.{stage}"], cwd=project, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = Peak(proc.pid)
    out, err = proc.communicate()
    seconds = time.perf_counter() - start
    memory = peak.stop()
    if proc.returncode:
        sys.exit(f"{stage} failed:\n{err[-3000:]}")
    return {"seconds": seconds, **memory, "stdout": out.strip()}


def written(directory: Path) -> tuple[int, int]:
    """(apparent bytes, allocated bytes) of the files under directory."""
    files = [p for p in directory.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), sum(p.stat().st_blocks * 512 for p in files)


def hash_seconds(directories: list[Path]) -> float:
    """Seconds DVC's md5 (dvc_data's file_md5, what `dvc repro` computes for outputs) takes
    over every file under `directories`, one after the other as DVC hashes one large file."""
    start = time.perf_counter()
    for path in sorted(p for directory in directories for p in directory.rglob("*") if p.is_file()):
        file_md5(str(path))
    return time.perf_counter() - start


def measure(base: Path, fraction: float, workers: int) -> dict[str, float]:
    dataset = base / f"tau22-{fraction:g}"
    start = time.perf_counter()
    clips = generate(dataset, fraction, workers)
    generated = time.perf_counter() - start
    project = base / f"project-{fraction:g}"
    shutil.rmtree(project, ignore_errors=True)
    project.mkdir()
    shutil.copy(REPO / "dvc.yaml", project)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(source="tau22", root=str(dataset), workers=workers, sample_rate=RATE)
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    result = {"fraction": fraction, "files": len(clips), "train_clips": int((clips.fold == "train").sum()),
              "generated_s": generated,
              "train_recordings": clips[clips.fold == "train"].filename.str.rsplit("-", n=2).str[0].nunique()}
    for stage in ("resample", "reassemble"):
        result[stage] = run_stage(project, stage)
    stores = [project / "data" / name for name in ("resampled", "recordings")]
    result["bytes"] = {store.name: written(store) for store in stores}
    result["hash_s"] = hash_seconds(stores)
    result["needed"] = len(clips) * RATE * 2  # int16 1 s clips of both folds, once
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fraction", type=float, default=0.1, help="size relative to TAU22 (default 0.1)")
    parser.add_argument("--small", type=float, default=0.05,
                        help="a smaller set for the memory growth per clip (default 0.05; 0: skip)")
    parser.add_argument("--workers", type=int, default=0, help="data.workers (default 0: one per core)")
    parser.add_argument("--keep", type=Path,
                        help="keep the generated sets here (reusing those already there) instead of a temp directory")
    args = parser.parse_args()
    workers = worker_count(args.workers)
    base = args.keep or Path(tempfile.mkdtemp(prefix="bench_scale-"))
    base.mkdir(parents=True, exist_ok=True)
    try:
        results = [measure(base, f, workers) for f in (args.small, args.fraction) if f > 0]
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    print(f"data stages on generated TAU22-layout sets, {workers} workers, {os.cpu_count()} CPUs, "
          f"1-min load {os.getloadavg()[0]:.1f}")
    print("| set | fold clips | train recordings | stage | wall s | files/s | audio s/s per core | "
          "peak RSS stage process | peak USS one worker | peak all processes |")
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        for stage in ("resample", "reassemble"):
            s = r[stage]
            rate = r["files"] / s["seconds"]
            print(f"| {100 * r['fraction']:g} % | {r['files']:,} | {r['train_recordings']:,} | {stage} | "
                  f"{s['seconds']:.1f} | {rate:,.0f} | {rate / workers:,.0f} | {s['rss'] / 2**20:,.0f} MiB | "
                  f"{s['worker'] / 2**20:,.0f} MiB | {s['total'] / 2**20:,.0f} MiB |")
    big = results[-1]
    apparent = sum(a for a, _ in big["bytes"].values())
    allocated = sum(b for _, b in big["bytes"].values())
    print(f"\nbytes written ({100 * big['fraction']:g} % set): {apparent / 1e9:.3f} GB apparent, "
          f"{allocated / 1e9:.3f} GB allocated (missing slices are sparse holes), for {big['needed'] / 1e9:.3f} GB "
          f"of int16 audio the later stages read: {apparent / big['needed']:.3f}x apparent, "
          f"{allocated / big['needed']:.3f}x allocated")
    seconds = big["resample"]["seconds"] + big["reassemble"]["seconds"]
    scale = FULL_FOLD_CLIPS / big["files"]
    print(f"DVC hashing of the stores ({100 * big['fraction']:g} % set): {big['hash_s']:.1f} s "
          f"({apparent / big['hash_s'] / 1e9:.2f} GB/s, one file at a time)")
    print(f"full TAU22 ({FULL_FOLD_CLIPS:,} fold clips) by linear extrapolation of the {100 * big['fraction']:g} % run, "
          "stages on all cores plus DVC's hashing on one: "
          + ", ".join(f"{(seconds * workers / cores + big['hash_s']) * scale / 60:.1f} min on {cores} cores"
                      for cores in (2, 16))
          + f"; disk {big['needed'] * scale / 1e9:.1f} GB for the stores (DVC's cache keeps a second copy unless "
          "cache.type links; copying into the cache is not counted)")
    if len(results) > 1:
        small = results[0]
        for stage in ("resample", "reassemble"):
            low, high = small[stage]["rss"], big[stage]["rss"]
            slope = (high - low) / (big["files"] - small["files"])
            projected = high + slope * (FULL_FOLD_CLIPS - big["files"])
            print(f"peak RSS of the {stage} process: {low / 2**20:,.0f} MiB at {small['files']:,} clips, "
                  f"{high / 2**20:,.0f} MiB at {big['files']:,} clips: {slope / 1e3:+.2f} kB per clip; "
                  f"projected for full TAU22: {projected / 2**20:,.0f} MiB")
        # a worker holds one block of its task's clips; Runner.chunks sizes the train fold's tasks so
        chunk = min(MAX_CHUNK, math.ceil(big["train_clips"] / (16 * workers)))
        worker = big["resample"]["worker"] * MAX_CHUNK / chunk
        print(f"a resample worker's own memory does not grow with the dataset (one block of at most {MAX_CHUNK} "
              f"clips): {big['resample']['worker'] / 2**20:,.0f} MiB with blocks of {chunk} clips, at most "
              f"{worker / 2**20:,.0f} MiB; full TAU22 on 16 cores: the stage process above plus "
              f"{16 * worker / 2**20:,.0f} MiB")

if __name__ == "__main__":
    main()
