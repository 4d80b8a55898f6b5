"""Stage evaluate: float student, int8 student and teacher on the evaluate fold ->
reports/metrics.json (DVC metrics), confusion matrices (DVC plots + PNG), reports/results.md,
and one MLflow summary run per experiment (all params, final metrics, complexity, figures).

Depends on the whole params.yaml: the summary run records every parameter."""
import json
from pathlib import Path

from mobileast import tracking
from mobileast.config import flatten, load_params
from mobileast.data import RECORDINGS_DIR, RESAMPLED_DIR
from mobileast.evaluate import evaluate_models, write_reports
from mobileast.metrics import summary

REPORTS = Path("reports")
COMPLEXITY_KEYS = ("params", "transformer_params", "macs_dcase", "macs_full", "param_memory_bytes",
                   "param_memory_bytes_float32")
MODELS = {"student_float": Path("models/student.pt"), "student_int8": Path("models/student_int8.pt")}


def main() -> None:
    params = load_params()
    results = evaluate_models(MODELS, RESAMPLED_DIR, RECORDINGS_DIR,
                              Path("data/teacher_logits/evaluate.npy"), int(params["evaluate"]["batch_size"]))
    written = write_reports(results, REPORTS, REPORTS / "metrics.json")
    complexity = json.loads((REPORTS / "complexity.json").read_text())
    with tracking.start_run("evaluate", params, tags={"summary": "true"}):
        tracking.log_metrics(flatten(summary(results)))
        tracking.log_metrics({f"complexity.{k}": complexity[k] for k in COMPLEXITY_KEYS})
        for path in [*written.values(), REPORTS / "complexity.md", REPORTS / "student_history.png"]:
            tracking.log_artifact(path)
    for name, metrics in summary(results).items():
        print(f"{name:>14}: " + ", ".join(f"{k}={v}" for k, v in metrics.items()))


if __name__ == "__main__":
    main()
