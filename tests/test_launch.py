"""torchrun and its workers die with the stage that launched them (mobileast.launch): on
the signals that `dvc queue kill`, Ctrl-C and a closed terminal send, and when the stage
itself is killed outright (an OOM kill, `dvc queue kill --force`)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from mobileast import launch

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")

SLEEPING_STAGE = """
import os, sys, time
from pathlib import Path
from mobileast.launch import prepare
status = prepare(2, __spec__.name)
if status is not None:
    Path(sys.argv[1], "stage-exit").write_text(str(status))
    raise SystemExit(status)
Path(sys.argv[1], f"worker{os.getpid()}").touch()
time.sleep(120)
"""


def start_stage(tmp_path: Path) -> tuple[subprocess.Popen, list[psutil.Process]]:
    """A stage with nproc 2 (gloo on CPU) -> (the stage, [torchrun, worker, worker]) once both workers run."""
    (tmp_path / "sleeping_stage.py").write_text(SLEEPING_STAGE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}  # CPU processes, GPU or not
    stage = subprocess.Popen([sys.executable, "-m", "sleeping_stage", str(tmp_path)], cwd=tmp_path, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("worker*"))) < 2:
        if time.monotonic() > deadline or stage.poll() is not None:
            stage.kill()
            pytest.fail("the workers did not start")
        time.sleep(0.1)
    return stage, psutil.Process(stage.pid).children(recursive=True)


def gone(processes: list[psutil.Process], timeout: float) -> bool:
    """Whether every process has exited (a zombie counts as exited) within `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(_running(p) for p in processes):
            return True
        time.sleep(0.1)
    return False


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _cleanup(stage: subprocess.Popen, processes: list[psutil.Process]) -> None:
    stage.kill()
    stage.wait()
    for process in processes:
        if _running(process):
            process.kill()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGHUP])
def test_a_signal_to_the_stage_stops_torchrun_and_the_stage_waits_for_it(tmp_path, signum):
    """The stage exits only after torchrun (its GPU locks outlive torchrun's workers)."""
    stage, processes = start_stage(tmp_path)
    try:
        names = [" ".join(p.cmdline()) for p in processes]
        assert len(processes) == 3 and "torch.distributed.run" in names[0], names
        stage.send_signal(signum)
        assert stage.wait(timeout=30) != 0
        assert (tmp_path / "stage-exit").exists()  # prepare() returned: the stage ended normally
        assert not _running(processes[0])  # torchrun ended before the stage
        assert gone(processes, timeout=10)
    finally:
        _cleanup(stage, processes)


def test_sigterm_to_the_stage_stops_its_torchrun_workers(tmp_path):
    """`dvc queue kill` sends SIGTERM to the stage command: its workers must not live on
    (holding GPUs whose locks died with the stage)."""
    stage, processes = start_stage(tmp_path)
    try:
        stage.send_signal(signal.SIGTERM)
        assert stage.wait(timeout=60) != 0
        assert gone(processes[1:], timeout=30)  # the workers (processes[0] is torchrun)
    finally:
        _cleanup(stage, processes)


def test_a_killed_stage_takes_torchrun_and_its_workers_with_it(tmp_path):
    """SIGKILL cannot be forwarded: the parent-death signal ends torchrun, and then its workers."""
    stage, processes = start_stage(tmp_path)
    try:
        stage.kill()
        stage.wait()
        assert gone(processes, timeout=10)
    finally:
        _cleanup(stage, processes)


def test_a_worker_whose_torchrun_is_already_gone_kills_itself(tmp_path):
    """The race the parent-death signal leaves open: a worker whose torchrun died before the
    worker set it. Its parent is then no longer a child of the stage (STAGE_PID)."""
    code = "from mobileast import launch; launch.die_with_parent(); print('alive')"
    env = {**os.environ, launch.STAGE_PID: str(os.getpid())}
    orphan = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert orphan.returncode == -signal.SIGKILL and orphan.stdout == ""
    wrapped = [sys.executable, "-c", "import subprocess, sys; sys.exit(subprocess.run(sys.argv[1:]).returncode)",
               sys.executable, "-c", code]
    child = subprocess.run(wrapped, env=env, capture_output=True, text=True)  # its parent's parent: this process
    assert child.returncode == 0 and child.stdout == "alive\n"
