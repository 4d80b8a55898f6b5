"""`make ui` as a user sees it: the experiments' summary runs, asked from the UI's REST API.

After `make repro` and `.venv/bin/dvc exp run -S dkd.alpha=5` (README, Running experiments):

    .venv/bin/python benchmarks/check_ui.py --alpha 1 5        # starts `make ui` on a free port
    .venv/bin/python benchmarks/check_ui.py --url http://127.0.0.1:5000 --alpha 1 5   # a UI already up

Prints the summary runs the server returns (DVC experiment, dkd.alpha, headline metrics,
per-device accuracy of the int8 student, model artifacts, the Model and Dataset columns)
and checks that they are exactly
the expected ones: as many as `--alpha` values (or `--runs`, default 2), one per DVC
experiment state, finished, with exactly those dkd.alpha values (without `--alpha`: distinct
ones), every headline metric, the float and int8 students' accuracy on the same devices,
the three model files under `model/`, one logged model (the Model column) and a dataset
per training stage (the Dataset column). Exits 1 naming each problem. The server
started here is stopped at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path
from typing import IO, Callable

from mobileast.summary import TRAINING_STAGES, PipelineFiles
from mobileast.tracking import EXPERIMENT, STATE_TAG

ROOT = Path(__file__).resolve().parents[1]
HEADLINE = ("student_float.accuracy", "student_int8.accuracy", "student_int8.macro_accuracy", "teacher.accuracy",
            "complexity.param_memory_bytes")
PER_DEVICE = ("student_float.per_device_accuracy.", "student_int8.per_device_accuracy.")
MODELS = frozenset(f"model/{path.name}" for path in (PipelineFiles.int8_model, PipelineFiles.onnx_model,
                                                     PipelineFiles.float_model))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(base: str, path: str, query: dict | None = None, body: dict | None = None) -> dict:
    """One REST call: GET with `query`, or POST of `body` as JSON."""
    url = f"{base}/api/2.0/mlflow/{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    request = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"{}")


def wait_until_up(base: str, server: subprocess.Popen, log: IO[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            log.seek(0)
            sys.exit(f"make ui exited with status {server.returncode}:\n{log.read().decode()[-2000:]}")
        try:
            urllib.request.urlopen(f"{base}/health", timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    sys.exit(f"make ui did not answer on {base} within {timeout:.0f} s")


def summary_runs(base: str) -> list[dict]:
    """The active summary runs of the project's MLflow experiment, as the REST API returns them
    (none when the store has no such experiment yet)."""
    try:
        experiment = call(base, "experiments/get-by-name", {"experiment_name": EXPERIMENT})["experiment"]
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return []
        raise
    return call(base, "runs/search", body={"experiment_ids": [experiment["experiment_id"]],
                                           "filter": "tags.summary = 'true'", "max_results": 1000}).get("runs", [])


def describe(run: dict, models: Callable[[str], list[str]]) -> dict:
    """What a summary run shows: name, DVC experiment and state, status, dkd.alpha, metrics, model files."""
    data = run["data"]
    tags = {t["key"]: t["value"] for t in data.get("tags", [])}
    params = {p["key"]: p["value"] for p in data.get("params", [])}
    return {"name": run["info"]["run_name"], "experiment": tags.get("dvc_experiment"), "state": tags.get(STATE_TAG),
            "status": run["info"]["status"], "alpha": params.get("dkd.alpha"),
            "metrics": {m["key"]: m["value"] for m in data.get("metrics", [])},
            "models": sorted(models(run["info"]["run_id"])),
            "logged_models": [output["model_id"] for output in run.get("outputs", {}).get("model_outputs", [])],
            "datasets": sorted(entry["dataset"]["name"] for entry in run.get("inputs", {}).get("dataset_inputs", []))}


def devices(metrics: dict[str, float], prefix: str) -> set[str]:
    return {key.removeprefix(prefix) for key in metrics if key.startswith(prefix)}


def problems(found: list[dict], runs: int, alphas: list[str] | None) -> list[str]:
    """What is wrong with the summary runs `found` (`describe`d), expecting `runs` of them."""
    wrong = [] if len(found) == runs else [f"{len(found)} summary runs, expected {runs}"]
    for (name, state), count in Counter((f["experiment"], f["state"]) for f in found).items():
        if count > 1:
            wrong.append(f"{count} summary runs of DVC experiment {name} in state {state}")
    values = sorted(f["alpha"] for f in found)
    as_expected = values == sorted(alphas) if alphas else len(set(values)) == len(values)
    if not as_expected:
        wrong.append(f"dkd.alpha values {values}, expected {sorted(alphas) if alphas else 'distinct ones'}")
    for f in found:
        missing = [key for key in HEADLINE if key not in f["metrics"]]
        seen = [devices(f["metrics"], prefix) for prefix in PER_DEVICE]
        if f["status"] != "FINISHED":
            wrong.append(f"{f['name']}: status {f['status']}")
        if missing:
            wrong.append(f"{f['name']}: no metric {', '.join(missing)}")
        if not seen[0] or seen[0] != seen[1]:
            wrong.append(f"{f['name']}: per-device accuracy on devices {[sorted(s) for s in seen]}")
        if set(f["models"]) != MODELS:
            wrong.append(f"{f['name']}: model artifacts {f['models']}, expected {sorted(MODELS)}")
        if len(f["logged_models"]) != 1:
            wrong.append(f"{f['name']}: {len(f['logged_models'])} logged models (Model column), expected 1")
        if sorted(name.rpartition("/")[2] for name in f["datasets"]) != sorted(TRAINING_STAGES):
            wrong.append(f"{f['name']}: datasets {f['datasets']} (Dataset column), expected one per "
                         f"training stage {list(TRAINING_STAGES)}")
    return wrong


def report(found: list[dict]) -> None:
    print("| run | DVC experiment | dkd.alpha | " + " | ".join(HEADLINE)
          + " | int8 accuracy per device | models | logged model | datasets |")
    print("|---" * (len(HEADLINE) + 7) + "|")
    for f in found:
        per_device = {d: f["metrics"][PER_DEVICE[1] + d] for d in sorted(devices(f["metrics"], PER_DEVICE[1]))}
        print(f"| {f['name']} | {f['experiment']} | {f['alpha']} | "
              + " | ".join(f"{f['metrics'].get(k, float('nan')):.4g}" for k in HEADLINE)
              + " | " + ", ".join(f"{d} {v:.3f}" for d, v in per_device.items())
              + f" | {', '.join(path.removeprefix('model/') for path in f['models'])}"
              + f" | {', '.join(f['logged_models'])} | {', '.join(f['datasets'])} |")


def check(base: str, runs: int, alphas: list[str] | None) -> int:
    def models(run_id: str) -> list[str]:
        return [f["path"] for f in call(base, "artifacts/list", {"run_id": run_id, "path": "model"}).get("files", [])]

    found = sorted((describe(run, models) for run in summary_runs(base)), key=lambda f: f["name"])
    report(found)
    wrong = problems(found, runs, alphas)
    for problem in wrong:
        print(f"PROBLEM: {problem}")
    if not wrong:
        print(f"OK: {len(found)} summary runs, one per DVC experiment state, with their metrics, per-device "
              "accuracy, models and datasets")
    return 1 if wrong else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--alpha", nargs="+", help="their dkd.alpha values, as logged (e.g. 1 5); "
                                                   "without it, they must be distinct")
    parser.add_argument("--runs", type=int, help="summary runs that must be there (default: as many as --alpha "
                                                 "values, else 2)")
    parser.add_argument("--url", help="check this running server instead of starting `make ui`")
    args = parser.parse_args()
    runs = args.runs or (len(args.alpha) if args.alpha else 2)
    if args.url:
        return check(args.url.rstrip("/"), runs, args.alpha)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tempfile.TemporaryFile()
    server = subprocess.Popen(["make", "-s", "ui", f"UI_PORT={port}"], cwd=ROOT, start_new_session=True,
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        started = time.monotonic()
        wait_until_up(base, server, log)
        print(f"make ui answered on {base} after {time.monotonic() - started:.1f} s")
        return check(base, runs, args.alpha)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()


if __name__ == "__main__":
    sys.exit(main())
