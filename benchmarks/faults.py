"""The fault matrix: each fault done to the real stage and command code, and what came of it.

    .venv/bin/python benchmarks/faults.py              # every row
    .venv/bin/python benchmarks/faults.py --fast       # the rows `make test` runs too
    .venv/bin/python benchmarks/faults.py --only nan-float-wav zip-slip

Every row works in a scratch folder of its own, on a tiny generated dataset in the TAU22
layout, with this checkout's code (its `stages/` and `src/`), and prints one line of a
markdown table: the fault, what was done, what the user saw (the first line the command
wrote to stderr), what was lost or left running ("nothing lost" when nothing was), the
time to recover (to a good state again: the rerun that succeeds, or the processes gone;
"none needed" when the fault changed nothing)
and passed/FAILED. A row fails when anything was lost or left running, when the message
does not say what happened, or when the recovery does not succeed. Exits 1 if a row failed.

A row is a function taking a Scratch and returning a Row, registered with @fault(name,
fast=...); `fast` rows take a few seconds and run in `make test` (tests/test_faults.py).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import zipfile
from contextlib import closing
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import psutil
import soundfile as sf
import yaml

from mobileast.data import RESAMPLED_DIR, download, tau22
from mobileast.data.store import read_index
from mobileast.labels import SCENES

REPO = Path(__file__).resolve().parents[1]
NOTHING_LOST = "nothing lost"
GONE_WITHIN_S = 10.0  # processes still running this long after their stage ended count as left running


@dataclass
class Row:
    """One fault's outcome. `problems`: what was lost, left running or not said; none = passed."""

    done: str
    saw: str = ""
    problems: list[str] = field(default_factory=list)
    recover_s: float | None = None  # None: nothing to recover from

    def expect(self, condition: bool, problem: str) -> bool:
        if not condition:
            self.problems.append(problem)
        return condition


@dataclass(frozen=True)
class Fault:
    name: str
    run: Callable[["Scratch"], Row]
    fast: bool


FAULTS: list[Fault] = []


def fault(name: str, fast: bool) -> Callable[[Callable[["Scratch"], Row]], Callable[["Scratch"], Row]]:
    """Register a row function under `name` (the order of registration is the table's)."""
    def register(run: Callable[[Scratch], Row]) -> Callable[[Scratch], Row]:
        FAULTS.append(Fault(name, run, fast))
        return run
    return register


@dataclass
class Run:
    """A finished command: exit status, its output, and its wall time."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def first_line(self) -> str:
        """The first non-empty stderr line (what a user reads first)."""
        return next((line.strip() for line in self.stderr.splitlines() if line.strip()), "(nothing)")


class Scratch:
    """A scratch folder for one row, with helpers to build a project and run this checkout's code in it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "src")]),
                    "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",  # CPU processes, GPU or not
                    "TQDM_DISABLE": "1"}  # no progress lines: the first stderr line is the message

    def project(self, params: dict, name: str = "project") -> Path:
        """A project folder: the repository's dvc.yaml and the given params.yaml."""
        project = self.folder / name
        project.mkdir()
        (project / "dvc.yaml").write_bytes((REPO / "dvc.yaml").read_bytes())
        write_params(project, params)
        return project

    def popen(self, args: list[str], cwd: Path, **kwargs) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, *args], cwd=cwd, env=self.env, text=True, **kwargs)

    def run(self, args: list[str], cwd: Path, timeout: float = 300) -> Run:
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, *args], cwd=cwd, env=self.env, capture_output=True, text=True,
                              timeout=timeout)
        return Run(proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - start)

    def stage(self, project: Path, name: str) -> Run:
        """`python -m stages.<name>` in `project`, as dvc.yaml runs it."""
        return self.run(["-m", f"stages.{name}"], project)


def write_params(project: Path, params: dict) -> None:
    (project / "params.yaml").write_text(yaml.safe_dump(params))


# --- a tiny dataset in the TAU22 layout --------------------------------------------------

RATE = 44100


def clip(seed: int) -> np.ndarray:
    """1 s of quiet noise, as a float WAV of the dataset holds it."""
    return (0.1 * np.random.default_rng(seed).standard_normal(RATE)).astype(np.float32)


def tiny_dataset(root: Path, train: int = 4, evaluate: int = 2) -> dict[str, list[str]]:
    """Write `train` + `evaluate` float-WAV clips and the metadata -> {fold: [file names]}."""
    (root / "audio").mkdir(parents=True)
    rows, names = [], {"train": [], "evaluate": []}
    for i in range(train + evaluate):
        fold = "train" if i < train else "evaluate"
        scene, city = SCENES[i % len(SCENES)], ("lyon" if fold == "train" else "milan")
        name = tau22.clip_filename(scene, city, "1", str(i), 0, "a")
        sf.write(root / name, clip(i), RATE, subtype="FLOAT")
        rows.append((name, scene, f"{city}-1", "a", fold))
        names[fold].append(name)
    tau22.write_metadata(root, pd.DataFrame(rows, columns=["filename", "scene_label", "identifier", "device", "fold"]))
    return names


def data_params(dataset: Path, **values) -> dict:
    """The repository's `data:` section pointed at `dataset` (TAU22 layout) at 16 kHz."""
    return {"data": {**repo_params()["data"], "source": "tau22", "root": str(dataset), "on_bad_file": "error",
                     "sample_rate": 16000, "workers": 1, **values}}


def poison(path: Path) -> None:
    """NaN and inf samples in a float WAV, as a broken recorder or converter writes them."""
    audio, rate = sf.read(path, dtype="float32")
    audio[[1000, 2000]] = np.nan, np.inf
    sf.write(path, audio, rate, subtype="FLOAT")


def no_traceback(row: Row, run: Run) -> None:
    row.expect("Traceback" not in run.stderr, "a traceback instead of a message")


def no_store(row: Row, project: Path) -> None:
    """The failed run wrote no resampled store, not even a partial one."""
    left = sorted(p.name for p in (project / "data").iterdir()) if (project / "data").exists() else []
    row.expect(not left, f"the failed run left data/{', data/'.join(left)}")


# --- data stages -------------------------------------------------------------------------

@fault("nan-float-wav", fast=True)
def nan_float_wav(scratch: Scratch) -> Row:
    dataset = scratch.folder / "dataset"
    bad = tiny_dataset(dataset)["train"][1]
    poison(dataset / bad)
    project = scratch.project(data_params(dataset))
    row = Row(f"NaN and inf samples in the float WAV {bad}; stage resample (on_bad_file: error)")
    run = scratch.stage(project, "resample")
    row.saw = run.first_line
    row.expect(run.returncode == 1, f"exit status {run.returncode}, expected 1")
    row.expect(bad in run.first_line and "non-finite samples" in run.first_line, "the message names no file or problem")
    no_traceback(row, run)
    no_store(row, project)
    write_params(project, data_params(dataset, on_bad_file="skip"))
    rerun = scratch.stage(project, "resample")
    row.recover_s = rerun.seconds
    if row.expect(rerun.returncode == 0, f"the rerun with on_bad_file: skip failed: {rerun.first_line}"):
        report = json.loads((project / RESAMPLED_DIR / "report.json").read_text())
        row.expect([item["filename"] for item in report["skipped"]] == [bad], "the report does not list the file")
        row.expect(bad not in set(read_index(project / RESAMPLED_DIR).filename), "the file is in the store")
    return row


@fault("all-files-of-a-fold-skipped", fast=True)
def all_skipped(scratch: Scratch) -> Row:
    dataset = scratch.folder / "dataset"
    evaluate = tiny_dataset(dataset)["evaluate"]
    originals = {name: (dataset / name).read_bytes() for name in evaluate}
    for name in evaluate:
        poison(dataset / name)
    project = scratch.project(data_params(dataset, on_bad_file="skip"))
    row = Row("every evaluate file bad (NaN samples); stage resample with on_bad_file: skip")
    run = scratch.stage(project, "resample")
    row.saw = run.first_line
    row.expect(run.returncode == 1, f"exit status {run.returncode}, expected 1")
    row.expect("every file of the evaluate fold" in run.first_line, "the message does not say the fold is empty")
    no_traceback(row, run)
    no_store(row, project)
    for name, data in originals.items():  # the user replaces the broken files
        (dataset / name).write_bytes(data)
    rerun = scratch.stage(project, "resample")
    row.recover_s = rerun.seconds
    row.expect(rerun.returncode == 0, f"the rerun with the files replaced failed: {rerun.first_line}")
    return row


@fault("wrong-param-types", fast=True)
def wrong_param_types(scratch: Scratch) -> Row:
    dataset = scratch.folder / "dataset"
    tiny_dataset(dataset)
    good = data_params(dataset)
    project = scratch.project(good)
    wrong = {"data.workers": {**good, "data": {**good["data"], "workers": "4"}},
             "train.compile": {**good, "train": {"compile": "false"}}}
    row = Row('data.workers: "4", then train.compile: "false" in params.yaml; stage resample')
    saw = []
    for key, params in wrong.items():
        write_params(project, params)
        run = scratch.stage(project, "resample")
        saw.append(run.first_line)
        row.expect(run.returncode == 1 and f"params.yaml: {key} must be" in run.first_line,
                   f"{key}: exit status {run.returncode}, message {run.first_line!r}")
        no_traceback(row, run)
        no_store(row, project)
    row.saw = " / ".join(saw)
    write_params(project, good)
    rerun = scratch.stage(project, "resample")
    row.recover_s = rerun.seconds
    row.expect(rerun.returncode == 0, f"the rerun with the values fixed failed: {rerun.first_line}")
    return row


def repo_params(**sections) -> dict:
    """The repository's params.yaml with `sections` (top-level keys) replaced."""
    return {**yaml.safe_load((REPO / "params.yaml").read_text()), **sections}


def set_keys(params: dict, values: dict) -> dict:
    """`params` with dotted keys set (a copy): {"teacher.train.epochs": 3}."""
    params = json.loads(json.dumps(params))
    for key, value in values.items():
        *path, last = key.split(".")
        section = params
        for name in path:
            section = section[name]
        section[last] = value
    return params


def stores(scratch: Scratch, params: dict) -> Path:
    """A project over the tiny TAU22 dataset with its resampled store and recordings
    (stages resample and reassemble), ready for the stages after them."""
    dataset = scratch.folder / "dataset"
    tiny_dataset(dataset)
    project = scratch.project({**params, **data_params(dataset)})
    for name in ("resample", "reassemble"):
        run = scratch.stage(project, name)
        if run.returncode != 0:
            raise RuntimeError(f"stage {name} failed: {run.first_line}")
    return project


# --- model files and user audio ----------------------------------------------------------

class MarkerPayload:
    """Unpickling this creates `marker` (builtins.open(marker, "w")): code a model file runs when loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@fault("malicious-checkpoint", fast=True)
def malicious_checkpoint(scratch: Scratch) -> Row:
    import torch

    project = stores(scratch, repo_params())
    marker, evil = scratch.folder / "marker", Path("models/teacher.pt")
    (project / "models").mkdir()
    torch.save({"arch": "cnn", "config": {}, "state_dict": MarkerPayload(marker), "features": {}, "classes": []},
               project / evil)
    sf.write(project / "a.wav", clip(0), RATE)
    commands = {"predict": ["-m", "mobileast", "predict", "--model", str(evil), "a.wav"],
                "evaluate": ["-m", "mobileast", "evaluate", "--model", str(evil)],
                "submit": ["-m", "mobileast", "submit", "--model", str(evil), "--audio-dir", ".", "--out", "out"],
                "export": ["-m", "mobileast", "export", "--model", str(evil), "--format", "onnx", "out.onnx"],
                "complexity": ["-m", "mobileast", "complexity", "--checkpoint", str(evil)],
                "stage teacher_logits": ["-m", "stages.teacher_logits"]}
    row = Row(f"a checkpoint whose unpickling would create a file, as --model of {', '.join(list(commands)[:-1])} "
              "and as the teacher of stage teacher_logits (the ensemble loader)")
    refused = f"{evil}: refused: its pickle would call or build io.open"
    for name, args in commands.items():
        run = scratch.run(args, project)
        row.saw = row.saw or run.first_line
        row.expect(run.returncode != 0 and refused in run.first_line, f"{name}: exit status {run.returncode}, "
                                                                      f"message {run.first_line!r}")
        no_traceback(row, run)
    row.expect(not marker.exists(), "the file's code ran: the marker exists")
    row.expect(not (project / "out").exists() and not (project / "out.onnx").exists(), "outputs were written")
    return row


def deployed_model(path: Path) -> Path:
    """A tiny deployed (TorchScript) scene model at 16 kHz: its logits are a linear map of
    the mean log-mel, enough for `predict` to run."""
    import torch
    from torch import nn

    from mobileast import deploy

    torch.manual_seed(0)
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1, len(SCENES)))
    features = {"sample_rate": 16000, "n_fft": 512, "win_length": 400, "hop_length": 250, "n_mels": 30}
    deploy.save_deployed(model, path, deploy.ModelMeta(features=features, classes=list(SCENES), arch="mean"))
    return path


@fault("one-hz-wav", fast=True)
def one_hz_wav(scratch: Scratch) -> Row:
    model = deployed_model(scratch.folder / "model.pt")
    sf.write(scratch.folder / "one_hz.wav", np.zeros(1000, np.int16), 1)  # a header claiming 1 Hz
    sf.write(scratch.folder / "good.wav", clip(0), RATE)
    row = Row("python -m mobileast predict --json of a WAV whose header claims 1 Hz, then of a good file")
    run = scratch.run(["-m", "mobileast", "predict", "--model", str(model), "--json", "one_hz.wav", "good.wav"],
                      scratch.folder)
    row.saw = run.first_line
    row.expect(run.returncode == 1 and "one_hz.wav: sample rate 1 Hz is outside" in run.first_line,
               f"exit status {run.returncode}, message {run.first_line!r}")
    no_traceback(row, run)
    files = json.loads(run.stdout)["files"] if run.stdout.strip() else []
    row.expect(len(files) == 2 and "error" in files[0] and "label" in files[1],
               "the --json document lacks the bad file's error or the good file's prediction")
    return row


# `python -m mobileast predict ARGS...` that writes its peak resident memory (bytes) to argv[1]
PEAK_RSS = ("import resource, runpy, sys\n"
            "out, sys.argv = sys.argv[1], ['mobileast', 'predict', *sys.argv[2:]]\n"
            "try:\n"
            "    runpy.run_module('mobileast', run_name='__main__')\n"
            "finally:\n"
            "    with open(out, 'w') as f:\n"
            "        f.write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024))\n")
LONG_RATE = 8000  # the long file's rate: predict resamples it to the model's 16 kHz


def long_wav(path: Path, seconds: int) -> None:
    """A mono 16-bit WAV of `seconds` of noise, written a minute at a time (the writer stays small)."""
    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", LONG_RATE, 1, "PCM_16") as file:
        for start in range(0, seconds, 60):
            file.write((0.1 * rng.standard_normal(min(60, seconds - start) * LONG_RATE)).astype(np.float32))


@fault("two-hour-wav", fast=False)
def two_hour_wav(scratch: Scratch) -> Row:
    model = deployed_model(scratch.folder / "model.pt")
    peaks, runs = {}, {}
    for seconds in (10, 1800, 7200):
        long_wav(scratch.folder / f"{seconds}.wav", seconds)
        runs[seconds] = scratch.run(["-c", PEAK_RSS, str(scratch.folder / "peak"), "--model", str(model), "--json",
                                     f"{seconds}.wav"], scratch.folder, timeout=900)
        peaks[seconds] = int((scratch.folder / "peak").read_text()) >> 20
    run, whole = runs[7200], 7200 * 16000 * 4 >> 20
    result = json.loads(run.stdout)["files"][0] if run.returncode == 0 else {}
    row = Row(f"python -m mobileast predict --json of a 2-hour {LONG_RATE // 1000} kHz 16-bit WAV "
              f"({(scratch.folder / '7200.wav').stat().st_size >> 20} MiB; its samples as float32 at the model's "
              f"16 kHz: {whole} MiB), and of 10 s and 30 min files of the same")
    row.saw = (f"exit status {run.returncode}, duration_s {result.get('duration_s')}, label {result.get('label')} in "
               f"{run.seconds:.0f} s; peak RSS {peaks[7200]} MiB (10 s: {peaks[10]} MiB, 30 min: {peaks[1800]} MiB)")
    row.expect(run.returncode == 0 and result.get("duration_s") == 7200.0, f"predict failed: {run.first_line}")
    row.expect(peaks[7200] - peaks[10] < whole // 2, f"the peak grew by {peaks[7200] - peaks[10]} MiB over a 10 s "
                                                     f"file's, as if the file were held in memory")
    row.expect(peaks[7200] - peaks[1800] < whole // 4, "the peak grew with the file's length from 30 min to 2 h")
    return row


# --- training stages -----------------------------------------------------------------------

TINY_TEACHER = {  # dotted keys over params.yaml: a small CNN teacher on 16 kHz audio, a few steps an epoch
    "features.sample_rate": 16000, "features.n_fft": 512, "features.win_length": 400, "features.hop_length": 250,
    "features.n_mels": 32, "teacher.cnn.custom": {"stem_channels": 8, "channels": [8, 16]},
    "teacher.train.batch_size": 2, "teacher.train.crops_per_recording": 2,
}


# `python -m stages.teacher_train` whose weights turn non-finite after optimiser step argv[1]:
# a run diverging at a step the row chooses (a huge learning rate overflows the BatchNorm
# statistics within the first epoch)
DIVERGE_AT = ("import runpy, sys, torch\n"
              "after, steps = int(sys.argv[1]), []\n"
              "step = torch.optim.Adam.step\n"
              "def diverging(self, *args, **kwargs):\n"
              "    result = step(self, *args, **kwargs)\n"
              "    steps.append(1)\n"
              "    if len(steps) == after:\n"
              "        with torch.no_grad():\n"
              "            for group in self.param_groups:\n"
              "                for weight in group['params']:\n"
              "                    weight.mul_(float('inf'))\n"
              "    return result\n"
              "torch.optim.Adam.step = diverging\n"
              "sys.argv = sys.argv[:1]\n"
              "runpy.run_module('stages.teacher_train', run_name='__main__')\n")


@fault("nan-loss", fast=False)
def nan_loss(scratch: Scratch) -> Row:
    params = set_keys(repo_params(), {**TINY_TEACHER, "teacher.train.epochs": 3})
    project = stores(scratch, params)
    row = Row("stage teacher_train whose weights become infinite after step 6 (epoch 2 of 3, 4 steps an epoch): "
              "the loss turns NaN; then the stage again")
    run = scratch.run(["-c", DIVERGE_AT, "6"], project)
    row.saw = run.first_line
    row.expect(run.returncode == 1 and run.first_line.startswith("teacher_train: epoch 2, step 3 of 4: the training "
                                                                 "loss is not finite"),
               f"exit status {run.returncode}, message {run.first_line!r}")
    row.expect("the checkpoint of epoch 1 is kept in .resume/teacher_train.pt" in run.first_line,
               "the message does not say which checkpoint is kept")
    no_traceback(row, run)
    row.expect(not (project / "models" / "teacher.pt").exists(), "the diverged model was written")
    import torch

    kept = torch.load(project / ".resume" / "teacher_train.pt", weights_only=True)
    row.expect(kept["epoch"] == 1, f"the kept checkpoint is of epoch {kept['epoch']}")
    bad = [k for k, v in kept["state_dict"].items() if not torch.isfinite(v).all()]
    row.expect(not bad, f"the kept checkpoint holds non-finite {', '.join(bad)}")
    row.expect(len(pd.read_csv(project / "reports" / "teacher_history.csv")) == 1,
               "the history does not end at the kept epoch")
    rerun = scratch.stage(project, "teacher_train")
    row.recover_s = rerun.seconds
    row.expect(rerun.returncode == 0 and (project / "models" / "teacher.pt").exists(),
               f"the rerun failed: {rerun.first_line}")
    row.expect("resuming from .resume/teacher_train.pt after epoch 1" in rerun.stdout + rerun.stderr,
               "the rerun did not resume from the kept checkpoint")
    return row


def store_query(store: Path, sql: str) -> list[tuple]:
    """Rows of `sql` on the sqlite MLflow store, [] while it does not exist or is being set up."""
    import sqlite3

    if not store.exists():
        return []
    try:
        with closing(sqlite3.connect(store, timeout=1)) as connection:
            return connection.execute(sql).fetchall()
    except sqlite3.Error:
        return []


@fault("locked-mlflow-store", fast=False)
def locked_mlflow_store(scratch: Scratch) -> Row:
    import sqlite3

    scratch.env.pop("MLFLOW_TRACKING_URI", None)  # the project's own store, mlflow.db
    project = stores(scratch, set_keys(repo_params(), {**TINY_TEACHER, "teacher.train.epochs": 2}))
    store, model = project / "mlflow.db", project / "models" / "teacher.pt"
    row = Row("stage teacher_train (2 epochs) with the MLflow store's sqlite file held locked by another writer "
              "from when its run has logged its params until the model is written")
    stage = scratch.popen(["-m", "stages.teacher_train"], project, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not store_query(store, "SELECT key FROM params JOIN runs USING (run_uuid) WHERE status = 'RUNNING'"):
        if time.monotonic() > deadline or stage.poll() is not None:
            stage.kill()
            row.problems.append("the stage's MLflow run did not start")
            return row
        time.sleep(0.05)
    with closing(sqlite3.connect(store, timeout=30, isolation_level=None)) as lock:
        lock.execute("BEGIN EXCLUSIVE")
        start = time.perf_counter()
        while not model.exists() and stage.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        locked_s = time.perf_counter() - start
        lock.execute("ROLLBACK")
    out, err = stage.communicate(timeout=300)
    run = Run(stage.returncode, out, err, 0.0)
    row.saw = next((line for line in err.splitlines() if "tracking: warning" in line), run.first_line)
    row.expect(run.returncode == 0 and model.exists(), f"the stage failed: {run.first_line}")
    row.expect(err.count("tracking: warning: cannot log metrics") == 1, "no warning (or more than one) on stderr")
    no_traceback(row, run)
    row.expect(len(pd.read_csv(project / "reports" / "teacher_history.csv")) == 2, "the history lacks epochs")
    row.expect([r[0] for r in store_query(store, "SELECT status FROM runs")] == ["FINISHED"],
               "the stage's run is not FINISHED in the store")
    row.done += f" (locked for {locked_s:.0f} s)"
    return row


# --- kill -9 of `dvc repro` in a clone of this checkout --------------------------------------

TINY_PIPELINE = {  # dotted keys over params.yaml: the demo dataset at about 200 clips, tiny models, a few steps an epoch
    "data.workers": 1, "demo.seed": 7, "demo.cities": ["lyon", "milan"], "demo.locations_per_city": 2,
    "demo.train_recordings_per_class": 1, "demo.parallel_devices_train": ["b"], "demo.parallel_fraction": 0.5,
    "demo.eval_recordings_per_class": 1, "demo.eval_devices": ["a", "s4"], "demo.eval_devices_per_recording": 1,
    "teacher.cnn.custom": {"stem_channels": 8, "channels": [32, 64]},
    "teacher.train.epochs": 2, "teacher.train.batch_size": 8, "teacher.train.crops_per_recording": 4,
    "logits.batch_size": 64,
    "student.custom": {"stem_channels": 8, "c1": 8, "c2": 8, "c3": 8, "c_out": 16, "d_local": 8, "d_mlp": 16,
                       "depth": 1},
    "train.epochs": 1, "train.batch_size": 8, "quant.calib_batches": 2, "quant.batch_size": 8,
    "evaluate.batch_size": 64,
}


class Pipeline:
    """A copy of this checkout's tracked files (their working-tree content) committed in a new git
    repository, `.venv` linked as `make` does, params.yaml set to TINY_PIPELINE; `dvc repro` runs in it
    as a user runs it (no PYTHONPATH: stages/python puts the copy's src/ first)."""

    def __init__(self, scratch: Scratch, values: dict | None = None) -> None:
        self.root = root = scratch.folder / "checkout"
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
        for name in filter(None, listed.decode().split("\0")):
            if (REPO / name).is_file():
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / name, root / name)
        (root / ".venv").symlink_to(Path(sys.prefix))
        write_params(root, set_keys(yaml.safe_load((root / "params.yaml").read_text()), {**TINY_PIPELINE, **(values or {})}))
        drop = {"PYTHONPATH", "MLFLOW_TRACKING_URI", "VIRTUAL_ENV", "DVC_ROOT", "DVC_EXP_NAME", "RANK"}
        self.env = {k: v for k, v in scratch.env.items() if k not in drop}
        for args in (["init", "-q"], ["add", "-A"], ["-c", "user.name=f", "-c", "user.email=f@f", "commit", "-qm", "copy"]):
            subprocess.run(["git", *args], cwd=root, capture_output=True, check=True)
        self.log = scratch.folder / "dvc.log"

    def repro(self, *args: str) -> Run:
        start = time.perf_counter()
        proc = subprocess.run([str(Path(sys.executable).parent / "dvc"), "repro", *args], cwd=self.root, env=self.env,
                              capture_output=True, text=True, timeout=900)
        return Run(proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - start)

    def kill_repro_when(self, reached: Callable[[], bool], *args: str) -> tuple[bool, list[psutil.Process]]:
        """`dvc repro ARGS` killed with SIGKILL (dvc and the stage: its process group) as soon as
        `reached()`, polled every millisecond; -> (reached before the run ended, its processes)."""
        with self.log.open("w") as log:
            proc = subprocess.Popen([str(Path(sys.executable).parent / "dvc"), "repro", *args], cwd=self.root,
                                    env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        family: list[psutil.Process] = []
        deadline = time.monotonic() + 900
        hit = False
        while proc.poll() is None and time.monotonic() < deadline:
            if reached():
                hit = True
                break
            if len(family) < 3:  # dvc, the stage's shell, its python
                family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
            time.sleep(0.001)
        try:
            family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return hit, family


def resume_epoch(path: Path) -> int | None:
    """The epoch of a resume checkpoint, None when there is none."""
    import torch

    return int(torch.load(path, weights_only=True)["epoch"]) if path.exists() else None


def versions(path: Path) -> Callable[[], int]:
    """A counter of the versions of `path` seen so far (each atomic rewrite is a new inode), for polling."""
    seen: set[tuple[int, int]] = set()

    def count() -> int:
        try:
            stat = path.stat()
        except FileNotFoundError:
            return len(seen)
        seen.add((stat.st_ino, stat.st_mtime_ns))
        return len(seen)
    return count


def kill_training(scratch: Scratch, point: str, reached: Callable[[Path], Callable[[], bool]],
                  landed: Callable[[Path], str | None]) -> Row:
    """kill -9 of `dvc repro teacher_train` (2 epochs) when `reached(root)()` turns true, then `dvc repro`
    again: it must resume from the resume checkpoint and give the bytes of an uninterrupted run.
    `landed(root)`: None when the kill hit `point`, else what it hit instead."""
    pipeline = Pipeline(scratch)
    root = pipeline.root
    ready = pipeline.repro("reassemble")
    if ready.returncode != 0:
        raise RuntimeError(f"dvc repro reassemble failed: {ready.stderr.strip()[-300:]}")
    row = Row(f"kill -9 of `dvc repro teacher_train` (2 epochs) {point}, then `dvc repro teacher_train` again")
    hit, family = pipeline.kill_repro_when(reached(root), "teacher_train")
    missed = landed(root) if hit else "the run ended before the point was seen"
    row.expect(missed is None, f"the kill missed the point: {missed}")
    kept = resume_epoch(root / ".resume" / "teacher_train.pt")
    row.saw = f"(killed) .resume/teacher_train.pt of epoch {kept}; models/teacher.pt " + \
        ("present" if (root / "models" / "teacher.pt").exists() else "absent")
    start = time.perf_counter()
    while running(family) and time.perf_counter() - start < GONE_WITHIN_S:
        time.sleep(0.05)
    left = running(family)
    row.expect(not left, f"left running: {', '.join(str(p.pid) for p in left)}")
    rerun = pipeline.repro("teacher_train")
    row.recover_s = rerun.seconds
    if not row.expect(rerun.returncode == 0, f"the rerun failed: {(rerun.stderr or rerun.stdout).strip()[-300:]}"):
        return row
    if kept is not None:
        row.expect(f"resuming from .resume/teacher_train.pt after epoch {kept}" in rerun.stdout,
                   f"the rerun did not resume after epoch {kept}")
    row.saw += "; rerun: " + next((line.strip() for line in rerun.stdout.splitlines() if "resuming from" in line),
                                  "trained from epoch 0")
    row.expect(not (root / ".resume" / "teacher_train.pt").exists(), "the resume checkpoint was left behind")
    row.expect(not (root / "models" / ".teacher.pt.tmp").exists(), "the killed write's scratch folder was left behind")
    history = pd.read_csv(root / "reports" / "teacher_history.csv")
    row.expect(history["epoch"].tolist() == [1, 2], f"the history holds epochs {history['epoch'].tolist()}")
    resumed = (root / "models" / "teacher.pt").read_bytes()
    shutil.rmtree(root / ".dvc" / "cache" / "runs", ignore_errors=True)  # DVC would restore, not train
    reference = pipeline.repro("-f", "-s", "teacher_train")
    row.expect(reference.returncode == 0 and (root / "models" / "teacher.pt").read_bytes() == resumed,
               "the resumed model differs from an uninterrupted run's")
    return row


@fault("kill-9-mid-epoch", fast=False)
def kill_mid_epoch(scratch: Scratch) -> Row:
    def reached(root: Path) -> Callable[[], bool]:
        resume, seen = root / ".resume" / "teacher_train.pt", []

        def check() -> bool:  # a quarter of the first epoch's time into the second epoch
            if not seen and resume.exists():
                seen.append(time.monotonic())
            return bool(seen) and time.monotonic() > seen[0] + 0.25
        return check

    def landed(root: Path) -> str | None:
        epoch = resume_epoch(root / ".resume" / "teacher_train.pt")
        return None if epoch == 1 else f"the resume checkpoint is of epoch {epoch}"

    return kill_training(scratch, "during epoch 2 (after epoch 1's checkpoint)", reached, landed)


@fault("kill-9-after-last-checkpoint", fast=False)
def kill_after_last_checkpoint(scratch: Scratch) -> Row:
    def reached(root: Path) -> Callable[[], bool]:
        count = versions(root / ".resume" / "teacher_train.pt")
        return lambda: count() >= 2

    def landed(root: Path) -> str | None:
        if (root / "models" / "teacher.pt").exists():
            return "after the model was written"
        epoch = resume_epoch(root / ".resume" / "teacher_train.pt")
        return None if epoch == 2 else f"the resume checkpoint is of epoch {epoch}"

    return kill_training(scratch, "right after the last epoch's resume checkpoint, before the model is written",
                         reached, landed)


@fault("kill-9-during-model-write", fast=False)
def kill_during_model_write(scratch: Scratch) -> Row:
    def reached(root: Path) -> Callable[[], bool]:
        scratch_dir = root / "models" / ".teacher.pt.tmp"
        return scratch_dir.exists

    def landed(root: Path) -> str | None:
        if (root / "models" / "teacher.pt").exists():
            return "after the model was written"
        return None if (root / "models" / ".teacher.pt.tmp").exists() else "outside the model write"

    return kill_training(scratch, "while the model is written (its scratch folder models/.teacher.pt.tmp exists)",
                         reached, landed)


def stage_process(root: Path, stage: str) -> psutil.Process | None:
    """The python process of `stage` (`-m stages.<stage>`) running in `root`, if any."""
    for process in psutil.process_iter(["cmdline", "cwd"]):
        if f"stages.{stage}" in (process.info["cmdline"] or []) and process.info["cwd"] == str(root):
            return process
    return None


def kill_stage(pipeline: "Pipeline", stage: str, after_s: float = 0.3) -> tuple[bool, int]:
    """`dvc repro <stage>` with the stage's process SIGKILLed (as the OOM killer does) once it has
    run `after_s` seconds; -> (killed while running, dvc's exit status)."""
    with pipeline.log.open("w") as log:
        dvc = subprocess.Popen([str(Path(sys.executable).parent / "dvc"), "repro", stage], cwd=pipeline.root,
                               env=pipeline.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    killed, deadline = False, time.monotonic() + 900
    while dvc.poll() is None and not killed and time.monotonic() < deadline:
        process = stage_process(pipeline.root, stage)
        if process is not None and time.time() - process.create_time() >= after_s:
            try:
                process.kill()
                killed = True
            except psutil.NoSuchProcess:
                pass
        time.sleep(0.02)
    return killed, dvc.wait(timeout=900)


OUTPUTS = ("reports/metrics.json", "reports/export.json", "reports/complexity.json", "models/student_int8.onnx",
           "models/teacher.pt", "models/student.pt")


@fault("kill-9-each-stage", fast=False)
def kill_each_stage(scratch: Scratch) -> Row:
    """kill -9 of each stage's process while it runs under `dvc repro <stage>`, then `dvc repro
    <stage>` again; at the end the outputs must be those of an uninterrupted `dvc repro --force`."""
    pipeline = Pipeline(scratch)
    root = pipeline.root
    stages = list(yaml.safe_load((root / "dvc.yaml").read_text())["stages"])
    row = Row(f"kill -9 of the stage's process while each of the {len(stages)} stages runs under `dvc repro "
              "<stage>`, then `dvc repro <stage>` again; then `dvc repro --force` from scratch to compare")
    hit, recover = [], 0.0
    for stage in stages:
        killed, status = kill_stage(pipeline, stage)
        if killed:
            hit.append(stage)
            row.expect(status != 0, f"{stage}: dvc repro reported success for a killed stage")
        rerun = pipeline.repro(stage)
        recover += rerun.seconds
        if not row.expect(rerun.returncode == 0, f"{stage}: the rerun failed: "
                                                 f"{(rerun.stderr or rerun.stdout).strip()[-300:]}"):
            return row
    leftovers = [str(p.relative_to(root)) for p in root.rglob(".*.tmp") if ".dvc" not in p.parts]
    row.expect(not leftovers, f"scratch folders left behind: {', '.join(leftovers)}")
    status = subprocess.run([str(Path(sys.executable).parent / "dvc"), "status", "-q", "--with-deps", "evaluate"],
                            cwd=root, env=pipeline.env)  # every stage but track, which always runs
    row.expect(status.returncode == 0, "dvc status: the pipeline is not up to date")
    after_kills = {name: (root / name).read_bytes() for name in OUTPUTS}
    shutil.rmtree(root / ".dvc" / "cache" / "runs", ignore_errors=True)  # DVC would restore, not run
    reference = pipeline.repro("--force")
    row.expect(reference.returncode == 0, "the uninterrupted run failed")
    differ = [name for name in OUTPUTS if (root / name).read_bytes() != after_kills[name]]
    row.expect(not differ, f"outputs differ from an uninterrupted run's: {', '.join(differ)}")
    row.saw = f"(killed) {len(hit)} of {len(stages)} stages while running ({', '.join(hit)}; the others ended " \
              "first); every rerun ended with exit status 0, the outputs those of an uninterrupted run"
    row.recover_s = recover
    return row


SUMMARY_RUNS = ("SELECT runs.status, runs.lifecycle_stage FROM runs JOIN tags USING (run_uuid) "
                "WHERE tags.key = 'summary' AND tags.value = 'true'")


@fault("kill-9-during-track", fast=False)
def kill_during_track(scratch: Scratch) -> Row:
    pipeline = Pipeline(scratch)
    root = pipeline.root
    store = root / "mlflow.db"
    row = Row("kill -9 of `dvc repro` (every stage) while stage track logs the summary run to MLflow, "
              "then `dvc repro` again")
    hit, family = pipeline.kill_repro_when(lambda: ("RUNNING", "active") in store_query(store, SUMMARY_RUNS))
    log = pipeline.log.read_text()
    row.expect(hit and "Running stage 'track'" in log, "the kill did not land during track: "
               + ("the run ended first" if not hit else "track had not started"))
    row.saw = f"(killed) summary runs in the store: {store_query(store, SUMMARY_RUNS)}"
    start = time.perf_counter()
    while running(family) and time.perf_counter() - start < GONE_WITHIN_S:
        time.sleep(0.05)
    left = running(family)
    row.expect(not left, f"left running: {', '.join(str(p.pid) for p in left)}")
    rerun = pipeline.repro()
    row.recover_s = rerun.seconds
    if not row.expect(rerun.returncode == 0, f"the rerun failed: {(rerun.stderr or rerun.stdout).strip()[-300:]}"):
        return row
    ran = re.findall(r"Running stage '([^']+)'", rerun.stdout)
    row.expect(ran == ["track"], f"the rerun ran {ran}, not track alone")
    active = [status for status, stage in store_query(store, SUMMARY_RUNS) if stage == "active"]
    row.saw += f"; rerun ran {ran}, active summary runs after it: {active}"
    row.expect(active == ["FINISHED"], "the store does not hold exactly one FINISHED summary run")
    return row


# --- download ----------------------------------------------------------------------------

PIECE = 1 << 14  # bytes a slow answer sends at a time


class ArchiveServer:
    """Files on 127.0.0.1 with HTTP range requests, as Zenodo and GitHub serve them
    (`publish` adds one). `ranges` logs each request's (name, Range header). A `slow` file
    is sent in small pieces, so that a client can be killed halfway; a `failing` name is
    answered 503; a `stalled` name sends the first 2 of 1000 promised bytes, then nothing
    until `release` is set."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.slow: set[str] = set()
        self.failing: set[str] = set()
        self.stalled: set[str] = set()
        self.release = threading.Event()
        self.ranges: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                name = self.path.lstrip("/")
                server.ranges.append((name, self.headers.get("Range")))
                if name in server.stalled:
                    self.send_response(200)
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    self.wfile.write(b"PK")
                    self.wfile.flush()
                    server.release.wait(10)
                    return
                if name in server.failing or name not in server.files:
                    self.send_error(503 if name in server.failing else 404)
                    return
                data = server.files[name]
                start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-")) if self.headers["Range"] else 0
                if start >= len(data):
                    self.send_error(416)
                    return
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                step = PIECE if name in server.slow else len(data)
                try:
                    for offset in range(start, len(data), step):
                        self.wfile.write(data[offset:offset + step])
                        self.wfile.flush()
                        if name in server.slow:
                            time.sleep(0.02)
                except (BrokenPipeError, ConnectionResetError):  # the client was killed
                    pass

            def log_message(self, *args) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http.daemon_threads = True
        threading.Thread(target=self.http.serve_forever, args=(0.05,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/{{name}}"

    def publish(self, name: str, data: bytes) -> str:
        """Serve `data` as `name`; returns its md5, as a checksum list holds it."""
        self.files[name] = data
        return hashlib.md5(data).hexdigest()

    def close(self) -> None:
        self.release.set()
        self.http.shutdown()
        self.http.server_close()


def zip_of(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


# `python -m mobileast download DEST` with the archive list and address of the local server
DOWNLOAD = ("import runpy, sys, json\n"
            "from mobileast.data import download\n"
            "download.URL, download.ARCHIVES = sys.argv[1], json.loads(sys.argv[2])\n"
            "sys.argv = ['mobileast', 'download', *sys.argv[3:]]\n"
            "runpy.run_module('mobileast', run_name='__main__')\n")


def download_args(server: ArchiveServer, archives: dict[str, bytes], dest: Path) -> list[str]:
    md5 = {name: server.publish(name, data) for name, data in archives.items()}
    return ["-c", DOWNLOAD, server.url, json.dumps(md5), str(dest)]


@fault("zip-slip-archive", fast=True)
def zip_slip(scratch: Scratch) -> Row:
    server = ArchiveServer()
    try:
        dest = scratch.folder / "downloads" / "tau22"
        row = Row("python -m mobileast download of an archive with a member ../../../evil")
        evil = zip_of({"TAU/meta.csv": b"filename\n", "../../../evil": b"owned"})
        run = scratch.run(download_args(server, {"evil.zip": evil}, dest), scratch.folder)
        row.saw = run.first_line
        row.expect(run.returncode == 1 and "would be written outside" in run.first_line,
                   f"exit status {run.returncode}, message {run.first_line!r}")
        no_traceback(row, run)
        escaped = [str(p) for p in scratch.folder.rglob("evil")]
        row.expect(not escaped, f"written outside the destination: {', '.join(escaped)}")
        row.expect(not (dest / "TAU").exists() and not (dest / download.SCRATCH / "evil.zip.done").exists(),
                   "members of the refused archive were unpacked")
        return row
    finally:
        server.close()


@fault("interrupted-download", fast=True)
def interrupted_download(scratch: Scratch) -> Row:
    server = ArchiveServer()
    try:
        dest = scratch.folder / "tau22"
        audio = np.random.default_rng(0).bytes(1 << 21)  # incompressible: the archive is as large
        archives = {"x.meta.zip": zip_of({"TAU/meta.csv": b"filename\n"}), "x.audio.1.zip": zip_of({"TAU/a.wav": audio})}
        server.slow.add("x.audio.1.zip")
        args = download_args(server, archives, dest)
        part = dest / download.SCRATCH / "x.audio.1.zip.part"
        row = Row("kill -9 of python -m mobileast download halfway through its second archive, then run again")
        proc = scratch.popen(args, scratch.folder, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while not (part.exists() and part.stat().st_size > len(archives["x.audio.1.zip"]) // 4):
            if time.monotonic() > deadline or proc.poll() is not None:
                break
            time.sleep(0.02)
        proc.kill()
        row.saw = (proc.communicate()[1].strip().splitlines() or ["(nothing: killed)"])[0]
        kept = part.stat().st_size if part.exists() else 0
        row.expect(0 < kept < len(archives["x.audio.1.zip"]), "the kill did not land halfway through the archive")
        server.ranges.clear()
        rerun = scratch.run(args, scratch.folder)
        row.recover_s = rerun.seconds
        row.expect(rerun.returncode == 0 and (dest / "TAU" / "a.wav").read_bytes() == audio,
                   f"the resumed download failed: {rerun.first_line}")
        row.expect(server.ranges == [("x.audio.1.zip", f"bytes={kept}-")],
                   f"the rerun fetched {server.ranges}, not the rest of the partial archive alone")
        return row
    finally:
        server.close()


# --- torchrun ----------------------------------------------------------------------------

GLOO_STAGE = """
import os, sys, time
from pathlib import Path
from mobileast.launch import prepare
status = prepare(2, __spec__.name)
if status is not None:
    raise SystemExit(status)
import torch, torch.distributed as dist
dist.init_process_group("gloo")
Path(sys.argv[1], f"worker{os.getpid()}").touch()
gradient = torch.ones(10000)
while True:  # as data-parallel training: the workers wait for each other in every all-reduce
    dist.all_reduce(gradient)
    time.sleep(0.01)
"""


def running(processes: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.NoSuchProcess:
            pass
    return alive


def torchrun_stage(scratch: Scratch, signum: signal.Signals) -> Row:
    """A stage with nproc 2 (gloo on CPU, through mobileast.launch) gets `signum` once both
    workers exchange tensors."""
    (scratch.folder / "gloo_stage.py").write_text(GLOO_STAGE)
    scratch.env["PYTHONPATH"] = os.pathsep.join([str(scratch.folder), scratch.env["PYTHONPATH"]])
    row = Row(f"{signum.name} to a stage running torchrun with nproc: 2 (gloo on CPU), both workers in all-reduce")
    stage = scratch.popen(["-m", "gloo_stage", str(scratch.folder)], scratch.folder,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    family: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 60
        while len(list(scratch.folder.glob("worker*"))) < 2:
            if time.monotonic() > deadline or stage.poll() is not None:
                row.problems.append("the workers did not start")
                return row
            time.sleep(0.05)
        family = psutil.Process(stage.pid).children(recursive=True)  # torchrun and its two workers
        start = time.perf_counter()
        stage.send_signal(signum)
        row.saw = (stage.communicate(timeout=60)[1].strip().splitlines() or ["(nothing: killed)"])[0]
        if signum != signal.SIGKILL:
            row.expect(not running(family[:1]), "torchrun outlived the stage (and its GPU locks)")
        while running(family) and time.perf_counter() - start < GONE_WITHIN_S:
            time.sleep(0.05)
        row.recover_s = time.perf_counter() - start
        left = running(family)
        row.expect(not left, f"left running: {', '.join(str(p.pid) for p in left)}")
        return row
    finally:
        stage.kill()
        stage.wait()
        for process in running(family):
            process.kill()


@fault("torchrun-SIGINT", fast=False)
def torchrun_sigint(scratch: Scratch) -> Row:
    return torchrun_stage(scratch, signal.SIGINT)


@fault("torchrun-SIGKILL", fast=False)
def torchrun_sigkill(scratch: Scratch) -> Row:
    return torchrun_stage(scratch, signal.SIGKILL)


# --- the table ---------------------------------------------------------------------------

def run_fault(item: Fault) -> Row:
    """Run one row in a scratch folder of its own; an exception is a failed row."""
    with tempfile.TemporaryDirectory(prefix=f"fault-{item.name}-") as folder:
        try:
            return item.run(Scratch(Path(folder)))
        except Exception as error:  # a row that breaks is reported as FAILED, not as a crash of the matrix
            lines = traceback.format_exception_only(error)
            return Row("(the row itself failed)", problems=[lines[-1].strip()])


def table_line(cells: list[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|").replace("\n", " ") for cell in cells) + " |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fast", action="store_true", help="only the fast rows (those `make test` runs)")
    parser.add_argument("--only", nargs="+", metavar="FAULT", choices=[f.name for f in FAULTS],
                        help="only these rows")
    args = parser.parse_args(argv)
    chosen = [f for f in FAULTS if (not args.fast or f.fast) and (not args.only or f.name in args.only)]
    print(table_line(["fault", "what was done", "what the user saw", "lost or left running",
                      "time to recover", "result"]))
    print(table_line(["---"] * 6))
    failed = 0
    for item in chosen:
        row = run_fault(item)
        failed += bool(row.problems)
        recover = "none needed" if row.recover_s is None else f"{row.recover_s:.1f} s"
        print(table_line([item.name, row.done, row.saw, "; ".join(row.problems) or NOTHING_LOST, recover,
                          "FAILED" if row.problems else "passed"]), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
