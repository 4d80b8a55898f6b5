"""Stage teacher_logits: raw teacher logits on the crop grid of every train recording and
for every evaluate clip -> data/teacher_logits/, teacher metrics -> reports/teacher_metrics.json."""
import json
from pathlib import Path

from mobileast import tracking
from mobileast.config import atomic_output, stage_params
from mobileast.recipes import dump_teacher_logits

PARAMS = ["data.sample_rate", "logits", "teacher.ensemble"]
METRICS = Path("reports/teacher_metrics.json")


def main() -> None:
    params = stage_params(PARAMS)
    checkpoints = [Path("models/teacher.pt"), *map(Path, params["teacher"]["ensemble"])]
    with tracking.start_run("teacher_logits", params):
        result = dump_teacher_logits(params, checkpoints, Path("data/recordings"), Path("data/resampled"),
                                     Path("data/teacher_logits"))
        summary = {k: result[k] for k in ("accuracy", "macro_accuracy", "log_loss",
                                           "accuracy_seen", "accuracy_unseen") if result[k] is not None}
        tracking.log_metrics({f"teacher_{k}": v for k, v in summary.items()})
    with atomic_output(METRICS) as tmp:
        tmp.write_text(json.dumps({"teacher": summary}, indent=2) + "\n")
    print(f"teacher on the evaluate fold: {summary}")


if __name__ == "__main__":
    main()
