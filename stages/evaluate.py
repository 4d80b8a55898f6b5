"""Stage evaluate: float student, int8 student (torch and ONNX) and teacher on the evaluate fold ->
reports/metrics.json (DVC metrics, per-device accuracy included), confusion matrices (DVC
plots + PNG) and reports/results.md; the general int8 ONNX student versus the per-device
models routed by recording device -> reports/device_models.json ({"enabled": false} when the
device_models stage is off). The experiment's MLflow summary run is the `track` stage's."""
from pathlib import Path

from mobileast import tracking
from mobileast.params import flatten, stage_params
from mobileast.data import RECORDINGS_DIR, RESAMPLED_DIR
from mobileast.launch import prepare
from mobileast.evaluate import evaluate_models, evaluate_routed, write_reports
from mobileast.files import write_json
from mobileast.metrics import summary
from stages import run

PARAMS = ["evaluate"]
REPORTS = Path("reports")
MODELS = {"student_float": Path("models/student.pt"), "student_int8": Path("models/student_int8.pt"),
          "student_int8_onnx": Path("models/student_int8.onnx")}
DEVICE_MODELS = Path("models/device")


def main() -> None:
    params = stage_params(PARAMS)
    prepare(1, __spec__.name)  # a GPU of its own when several experiments share the machine
    with tracking.start_run("evaluate", params):
        results = evaluate_models(MODELS, RESAMPLED_DIR, RECORDINGS_DIR,
                                  Path("data/teacher_logits/evaluate.npy"), int(params["evaluate"]["batch_size"]),
                                  params["evaluate"]["precision"])
        write_reports(results, REPORTS, REPORTS / "metrics.json")
        tracking.log_metrics(flatten(summary(results)))
        routed = evaluate_routed(DEVICE_MODELS, MODELS["student_int8_onnx"], RESAMPLED_DIR, RECORDINGS_DIR,
                                 int(params["evaluate"]["batch_size"]))
        write_json(REPORTS / "device_models.json", routed)
        if routed["enabled"]:
            tracking.log_metrics({f"device_models.{k}": v for k, v in flatten(routed).items()
                                  if isinstance(v, (int, float)) and not isinstance(v, bool)})
    for name, metrics in summary(results).items():
        print(f"{name:>14}: " + ", ".join(f"{k}={v}" for k, v in metrics.items() if k != "per_device_accuracy"))
    for device, row in routed.get("per_device", {}).items():
        print(f"{device:>4} ({row['n_clips']} clips, {row['model']} model): general {row['general']}, "
              f"routed {row['routed']}")


if __name__ == "__main__":
    run(main)
