"""benchmarks/check_ui.py: what it accepts as the summary runs of `make repro` + one experiment."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "check_ui.py"
spec = importlib.util.spec_from_file_location("check_ui", SCRIPT)
check_ui = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_ui)


def rest_run(experiment: str, alpha: str, status: str = "FINISHED", drop_metric: str | None = None,
             state: str | None = None, logged_models: int = 1, stages=("teacher_train", "student_train")) -> dict:
    """A summary run as `runs/search` returns it."""
    metrics = {key: 0.5 for key in check_ui.HEADLINE} | {
        f"{prefix}{device}": 0.5 for prefix in check_ui.PER_DEVICE for device in ("a", "s4")}
    metrics.pop(drop_metric, None)
    return {"info": {"run_id": f"id-{experiment}", "run_name": experiment, "status": status},
            "data": {"tags": [{"key": "dvc_experiment", "value": experiment}, {"key": "summary", "value": "true"},
                              {"key": "dvc_state", "value": state or f"state-of-alpha-{alpha}"}],
                     "params": [{"key": "dkd.alpha", "value": alpha}],
                     "metrics": [{"key": k, "value": v} for k, v in metrics.items()]},
            "inputs": {"dataset_inputs": [{"dataset": {"name": f"demo/{stage}", "digest": "d"}} for stage in stages]},
            "outputs": {"model_outputs": [{"model_id": f"m-{experiment}", "step": "0"}] * logged_models}}


def problems(runs: list[dict], models=check_ui.MODELS, expect: int = 2, alphas=("1", "5")) -> list[str]:
    found = [check_ui.describe(run, lambda run_id: sorted(models)) for run in runs]
    return check_ui.problems(found, expect, list(alphas) if alphas else None)


def test_the_baseline_and_one_experiment_pass():
    assert problems([rest_run("workspace", "1"), rest_run("exp-a", "5")]) == []
    assert problems([rest_run("workspace", "1"), rest_run("exp-a", "5")], alphas=None) == []
    # `make repro` after the experiment: the workspace's second state
    assert problems([rest_run("workspace", "1"), rest_run("exp-a", "5"), rest_run("workspace", "5")],
                    expect=3, alphas=("1", "5", "5")) == []


@pytest.mark.parametrize("runs, expected", [
    ([rest_run("workspace", "1")], "1 summary runs, expected 2"),
    ([rest_run("workspace", "1"), rest_run("workspace", "5", state="state-of-alpha-1")],
     "2 summary runs of DVC experiment workspace in state state-of-alpha-1"),
    ([rest_run("workspace", "1"), rest_run("exp-a", "1")], "dkd.alpha values ['1', '1']"),
    ([rest_run("workspace", "1"), rest_run("exp-a", "4")], "dkd.alpha values ['1', '4']"),
    ([rest_run("workspace", "1"), rest_run("exp-a", "5", status="FAILED")], "exp-a: status FAILED"),
    ([rest_run("workspace", "1"), rest_run("exp-a", "5", drop_metric="teacher.accuracy")],
     "exp-a: no metric teacher.accuracy"),
    ([rest_run("workspace", "1", drop_metric="student_int8.per_device_accuracy.s4"), rest_run("exp-a", "5")],
     "workspace: per-device accuracy"),
    ([rest_run("workspace", "1", logged_models=0), rest_run("exp-a", "5")],
     "workspace: 0 logged models (Model column)"),
    ([rest_run("workspace", "1"), rest_run("exp-a", "5", stages=("student_train",))],
     "exp-a: datasets ['demo/student_train'] (Dataset column)"),
])
def test_a_missing_duplicate_or_incomplete_run_is_a_problem(runs, expected):
    found = problems(runs)
    assert found and found[0].startswith(expected), found


def test_missing_models_are_a_problem():
    found = problems([rest_run("workspace", "1"), rest_run("exp-a", "5")], models={"model/student.pt"})
    assert len(found) == 2 and all("model artifacts ['model/student.pt']" in p for p in found)
