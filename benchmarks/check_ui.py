"""`make ui` as a user sees it: start it, ask its REST API for the experiments' summary runs.

Starts `make ui` on a free port (the same command a user runs, on the project's store),
waits until the server answers, lists the summary runs (one per DVC experiment state)
with their headline metrics, per-device accuracy of the int8 student and model
artifacts, and stops the server. Exits 1 if fewer than `--expect` summary runs are
there or one lacks its metrics or models.

    python benchmarks/check_ui.py [--expect 2]
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADLINE = ("student_float.accuracy", "student_int8.accuracy", "student_int8.macro_accuracy", "teacher.accuracy",
            "complexity.param_memory_bytes")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(base: str, path: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(f"{base}{path}", data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"{}")


def wait_until_up(base: str, server: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"make ui exited with status {server.returncode}")
        try:
            urllib.request.urlopen(f"{base}/health", timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    sys.exit(f"make ui did not answer on {base} within {timeout:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--expect", type=int, default=2, help="summary runs that must be there (default 2)")
    args = parser.parse_args()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(["make", "-s", "ui", f"UI_PORT={port}"], cwd=ROOT, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        started = time.monotonic()
        wait_until_up(base, server)
        print(f"make ui answered on {base} after {time.monotonic() - started:.1f} s")
        experiment = call(base, "/api/2.0/mlflow/experiments/get-by-name?experiment_name=mobileast")["experiment"]
        runs = call(base, "/api/2.0/mlflow/runs/search", {
            "experiment_ids": [experiment["experiment_id"]], "filter": "tags.summary = 'true'",
            "max_results": 1000}).get("runs", [])
        problems = [] if len(runs) >= args.expect else [f"{len(runs)} summary runs, expected {args.expect}"]
        print(f"| run | dkd.alpha | distill.method | " + " | ".join(HEADLINE) + " | int8 per device | models |")
        print("|---" * (len(HEADLINE) + 5) + "|")
        for run in runs:
            data = run["data"]
            metrics = {m["key"]: m["value"] for m in data.get("metrics", [])}
            params = {p["key"]: p["value"] for p in data.get("params", [])}
            devices = {k.rsplit(".", 1)[1]: v for k, v in metrics.items()
                       if k.startswith("student_int8.per_device_accuracy.")}
            models = [f["path"] for f in call(base, "/api/2.0/mlflow/artifacts/list", {
                "run_id": run["info"]["run_id"], "path": "model"}).get("files", [])]
            name = run["info"]["run_name"]
            missing = [k for k in HEADLINE if k not in metrics]
            if missing or not devices or len(models) < 2:
                problems.append(f"{name}: missing metrics {missing}, per-device {bool(devices)}, models {models}")
            print(f"| {name} | {params.get('dkd.alpha')} | {params.get('distill.method')} | "
                  + " | ".join(f"{metrics.get(k, float('nan')):.4g}" for k in HEADLINE)
                  + " | " + ", ".join(f"{d} {v:.2f}" for d, v in devices.items()) + f" | {', '.join(models)} |")
        for problem in problems:
            print(f"PROBLEM: {problem}")
        return 1 if problems else 0
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
