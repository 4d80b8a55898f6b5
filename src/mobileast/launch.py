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
  like any other stage. torchrun and its workers die with the stage: SIGINT, SIGTERM and
  SIGHUP to the stage (`dvc queue kill`, Ctrl-C, a closed terminal) are passed on to
  torchrun, which stops its workers, and the stage waits for it, so its GPU locks are held
  until the workers are gone; a stage killed outright (SIGKILL: an OOM kill,
  `dvc queue kill --force`) takes torchrun with it, and torchrun its workers, by the
  parent-death signal of Linux (prctl PR_SET_PDEATHSIG; not available elsewhere). On CPU,
  nproc > 1 runs gloo processes (for tests; slower).
"""
from __future__ import annotations

import ctypes
import fcntl
import glob
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Callable

from mobileast.errors import ParamsError
from mobileast.tracking import store_root

LOCK_DIR = Path(".dvc") / "tmp" / "gpu-locks"
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # passed on to torchrun
STAGE_PID = "MOBILEAST_STAGE_PID"  # set for torchrun: the pid of the stage process that started it
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
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


def _prctl() -> Callable[..., int] | None:
    """libc's prctl (Linux), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def die_with_parent(parent: int | None = None) -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux; a no-op elsewhere).

    A parent that died before the call is not noticed by the kernel, so the parent is
    checked after it: `parent` is the expected parent's pid, when known; a torchrun worker
    instead checks that its parent is still the torchrun that the stage (STAGE_PID) started.
    Runs between fork and exec too (preexec_fn), so it only uses the pre-resolved prctl.
    """
    if _PRCTL is None:
        return
    _PRCTL(ctypes.c_int(PR_SET_PDEATHSIG), ctypes.c_ulong(signal.SIGKILL))  # prctl(int, unsigned long, ...)
    if parent is not None:
        orphaned = os.getppid() != parent
    else:
        stage = os.environ.get(STAGE_PID)
        orphaned = stage is not None and _parent_of(os.getppid()) != int(stage)
    if orphaned:
        os.kill(os.getpid(), signal.SIGKILL)


def _parent_of(pid: int) -> int | None:
    """The parent pid of process `pid` (from /proc), None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rpartition(")")[2].split()[1])  # after "pid (comm) state"
    except (OSError, ValueError, IndexError):
        return None


_PRCTL = _prctl()


def prepare(nproc: int, module: str) -> int | None:
    """Take GPUs and processes for a training stage (module docstring); returns the exit
    status of the torchrun launch when this process started one, else None (go on training)."""
    if nproc < 1:
        raise ParamsError(f"params.yaml: nproc must be >= 1, got {nproc}")
    if under_torchrun():
        die_with_parent()  # a worker: dies with its torchrun
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
    return run_torchrun([sys.executable, "-m", "torch.distributed.run", "--standalone",
                         f"--nproc_per_node={nproc}", "-m", module, *sys.argv[1:]])


def run_torchrun(command: list[str]) -> int:
    """Run the torchrun `command` tied to this process (module docstring) -> its exit status.

    torchrun gets a process group of its own, so a Ctrl-C in the terminal reaches it once,
    through this process, and not twice.
    """
    stage = os.getpid()
    launcher = subprocess.Popen(command, env={**os.environ, STAGE_PID: str(stage)}, process_group=0,
                                preexec_fn=lambda: die_with_parent(stage))
    previous = {signum: signal.signal(signum, lambda signum, _frame: launcher.send_signal(signum))
                for signum in FORWARDED}
    try:
        return launcher.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
