"""Stage evaluate: float student, int8 student (torch and ONNX) and teacher on the evaluate fold ->
reports/metrics.json (DVC metrics, per-device accuracy included), confusion matrices (DVC
plots + PNG) and reports/results.md. The experiment's MLflow summary run is the `track`
stage's."""
from pathlib import Path

from mobileast import tracking
from mobileast.params import flatten, stage_params
from mobileast.data import RECORDINGS_DIR, RESAMPLED_DIR
from mobileast.launch import prepare
from mobileast.evaluate import evaluate_models, write_reports
from mobileast.metrics import summary
from stages import run

PARAMS = ["evaluate"]
REPORTS = Path("reports")
MODELS = {"student_float": Path("models/student.pt"), "student_int8": Path("models/student_int8.pt"),
          "student_int8_onnx": Path("models/student_int8.onnx")}


def main() -> None:
    params = stage_params(PARAMS)
    prepare(1, __spec__.name)  # a GPU of its own when several experiments share the machine
    with tracking.start_run("evaluate", params):
        results = evaluate_models(MODELS, RESAMPLED_DIR, RECORDINGS_DIR,
                                  Path("data/teacher_logits/evaluate.npy"), int(params["evaluate"]["batch_size"]),
                                  params["evaluate"]["precision"])
        write_reports(results, REPORTS, REPORTS / "metrics.json")
        tracking.log_metrics(flatten(summary(results)))
    for name, metrics in summary(results).items():
        print(f"{name:>14}: " + ", ".join(f"{k}={v}" for k, v in metrics.items() if k != "per_device_accuracy"))


if __name__ == "__main__":
    run(main)
