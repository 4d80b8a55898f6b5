"""How a stage takes its GPUs and its processes, from the stage command itself.

`prepare(nproc, module)` at the start of a stage that uses a GPU (training with `nproc`
processes; the logit dump and evaluation with 1):
- GPUs: on a machine with several GPUs, when CUDA_VISIBLE_DEVICES is not set, the stage
  claims `nproc` free GPUs and sets CUDA_VISIBLE_DEVICES to them (before CUDA starts). A
  GPU is claimed with an exclusive lock on `<project root>/.dvc/tmp/gpu-locks/gpu<i>.lock`
  held for the life of the stage process (and so of its torchrun workers), so that the
  workers of `dvc queue start -j N` (one DVC experiment each, in copies of the
  repository under the same root) take different GPUs; a stage that finds too few free
  waits for them. A set CUDA_VISIBLE_DEVICES is respected as it is.
- Processes: with `nproc` > 1, a stage not yet under torchrun runs itself under
  `python -m torch.distributed.run --standalone --nproc_per_node nproc -m <module> [args]` and
  exits with its status, so `dvc repro` / `dvc exp run` run (and record) multi-GPU training
  like any other stage; a SIGTERM to the stage (`dvc queue kill`) is passed on to torchrun,
  which stops its workers. On CPU, nproc > 1 runs gloo processes (for tests; slower).
"""
from __future__ import annotations

import fcntl
import glob
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from mobileast.errors import ParamsError
from mobileast.tracking import store_root

LOCK_DIR = Path(".dvc") / "tmp" / "gpu-locks"
WAIT_SECONDS = 5.0
_held: list[IO[str]] = []  # the locks of this process's GPUs, released when it exits


def gpu_count() -> int:
    """GPUs of this machine, counted without starting CUDA (it must not start before
    CUDA_VISIBLE_DEVICES is set): the driver's /proc entries, else nvidia-smi."""
    entries = glob.glob("/proc/driver/nvidia/gpus/*")
    if entries:
        return len(entries)
    if shutil.which("nvidia-smi"):
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
        return sum(line.startswith("GPU ") for line in listing.stdout.splitlines())
    return 0


def claim_gpus(n: int, count: int, lock_dir: Path, wait: float = WAIT_SECONDS) -> list[int]:
    """Lock `n` of the `count` GPUs (the lowest free ones), waiting until enough are free."""
    if n > count:
        raise ValueError(f"nproc {n} exceeds the {count} GPUs of this machine")
    lock_dir.mkdir(parents=True, exist_ok=True)
    announced = False
    while True:
        claimed: list[tuple[int, IO[str]]] = []
        for index in range(count):
            handle = open(lock_dir / f"gpu{index}.lock", "w")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            claimed.append((index, handle))
            if len(claimed) == n:
                _held.extend(h for _, h in claimed)
                return [i for i, _ in claimed]
        for _, handle in claimed:
            handle.close()
        if not announced:
            print(f"waiting for {n} free GPU(s) of {count} (locks in {lock_dir})", file=sys.stderr, flush=True)
            announced = True
        time.sleep(wait)


def under_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ


def prepare(nproc: int, module: str) -> int | None:
    """Take GPUs and processes for a training stage (module docstring); returns the exit
    status of the torchrun launch when this process started one, else None (go on training)."""
    if nproc < 1:
        raise ParamsError(f"params.yaml: nproc must be >= 1, got {nproc}")
    if under_torchrun():
        return None
    count = gpu_count()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    usable = count if visible is None else len([d for d in visible.split(",") if d.strip()])
    if usable and nproc > usable:  # (CUDA_VISIBLE_DEVICES="" hides the GPUs: a CPU run)
        raise ParamsError(f"params.yaml: nproc {nproc} exceeds the {usable} GPU(s) this stage can use"
                          + ("" if visible is None else f" (CUDA_VISIBLE_DEVICES={visible})"))
    if count > 1 and visible is None:
        gpus = claim_gpus(nproc, count, store_root() / LOCK_DIR)
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpus))
        print(f"{module}: using GPU(s) {os.environ['CUDA_VISIBLE_DEVICES']}", file=sys.stderr, flush=True)
    if nproc == 1:
        return None
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", module, *sys.argv[1:]]
    launcher = subprocess.Popen(command, env=os.environ.copy())
    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: launcher.send_signal(signum))
    try:
        return launcher.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
