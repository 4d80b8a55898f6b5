"""Stage teacher_logits: raw teacher logits on the crop grid of every train recording and
for every evaluate clip -> data/teacher_logits/, teacher metrics -> reports/teacher_metrics.json.
models/teacher.pt and the `teacher.ensemble` checkpoints (in models/ensemble/) are averaged."""
from pathlib import Path

from mobileast import tracking
from mobileast.files import write_json
from mobileast.params import flatten, stage_params
from mobileast.data import RECORDINGS_DIR, RESAMPLED_DIR
from mobileast.launch import prepare
from mobileast.metrics import summary
from mobileast.recipes import dump_teacher_logits, ensemble_checkpoints
from stages import run

PARAMS = ["data.sample_rate", "data.split", "logits", "teacher.ensemble"]
METRICS = Path("reports/teacher_metrics.json")
ENSEMBLE_DIR = Path("models/ensemble")  # teacher.ensemble checkpoints live here (a DVC dependency)


def main() -> None:
    params = stage_params(PARAMS)
    prepare(1, __spec__.name)  # a GPU of its own when several experiments share the machine
    checkpoints = ensemble_checkpoints(Path("models/teacher.pt"), params["teacher"]["ensemble"], ENSEMBLE_DIR)
    with tracking.start_run("teacher_logits", params):
        result = dump_teacher_logits(params, checkpoints, RECORDINGS_DIR, RESAMPLED_DIR,
                                     Path("data/teacher_logits"))
        metrics = summary({"teacher": result})
        tracking.log_metrics(flatten(metrics))
    write_json(METRICS, metrics)
    print(f"teacher on the evaluate fold: {metrics['teacher']}")


if __name__ == "__main__":
    run(main)
