"""Stage teacher_logits: raw teacher logits on the crop grid of every train recording of data.split and
for every evaluate clip -> data/teacher_logits/, teacher metrics -> reports/teacher_metrics.json.
models/teacher.pt and the `teacher.ensemble` checkpoints (in models/ensemble/) are averaged."""
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from mobileast import tracking
from mobileast.data import RECORDINGS_DIR, RESAMPLED_DIR
from mobileast.data.crops import evaluate_clips, train_crops
from mobileast.errors import ParamsError
from mobileast.files import atomic_output, write_json
from mobileast.inference import resolve_precision
from mobileast.labels import SCENES
from mobileast.launch import prepare
from mobileast.metrics import evaluate_predictions, summary
from mobileast.params import flatten, stage_params
from mobileast.teachers import ensemble_logits, load_teachers
from stages import run

PARAMS = ["data.sample_rate", "data.split", "logits", "teacher.ensemble"]
METRICS = Path("reports/teacher_metrics.json")
ENSEMBLE_DIR = Path("models/ensemble")  # teacher.ensemble checkpoints live here (a DVC dependency)


def ensemble_checkpoints(main: Path, ensemble: Sequence[str | Path], ensemble_dir: Path) -> list[Path]:
    """The teacher checkpoints: `main`, then `teacher.ensemble`, each of which must lie in
    `ensemble_dir` (a DVC dependency of the stage, so the logits follow their content)."""
    extra = [Path(p) for p in ensemble]
    outside = [str(p) for p in extra if ensemble_dir.resolve() not in p.resolve().parents]
    if outside:
        raise ParamsError(f"teacher.ensemble: {', '.join(outside)} not in {ensemble_dir}/: put the extra teacher "
                          f"checkpoints there, so that DVC tracks them as dependencies of teacher_logits")
    missing = [str(p) for p in extra if not p.is_file()]
    if missing:
        raise ParamsError(f"teacher.ensemble: no such checkpoint {', '.join(missing)}")
    return [main, *extra]


def dump_teacher_logits(params: Mapping[str, Any], checkpoints: Sequence[Path], recordings: Path,
                        resampled: Path, out_dir: Path) -> dict[str, Any]:
    """Raw logits of every grid crop of the train recordings of data.split (the student's
    split) and of every evaluate clip (ensemble mean over `checkpoints`); returns the
    teacher's evaluate-fold metrics. Writes train.npy (rows = grid crops), train_index.npy (the grid: recording, start
    sample) and evaluate.npy."""
    logits_params = params["logits"]
    batch_size = int(logits_params["batch_size"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = resolve_precision(logits_params.get("precision", "auto"), device, "logits.precision")
    sample_rate = int(params["data"]["sample_rate"])
    teachers = load_teachers(checkpoints, device, sample_rate)
    crops = train_crops(recordings, resampled, sample_rate, logits_params["hop_s"], "logits.hop_s",
                        "data.sample_rate", split=params["data"]["split"])
    clips = evaluate_clips(resampled, sample_rate, "data.sample_rate")
    train = ensemble_logits(teachers, lambda: crops.grid_batches(batch_size), -(-crops.n_rows // batch_size),
                            device, "teacher logits, train crops", precision)
    evaluate = ensemble_logits(teachers, lambda: clips.batches(batch_size), -(-len(clips) // batch_size),
                               device, "teacher logits, evaluate clips", precision)
    with atomic_output(out_dir) as tmp:
        tmp.mkdir()
        np.save(tmp / "train.npy", train)
        np.save(tmp / "train_index.npy", crops.grid())
        np.save(tmp / "evaluate.npy", evaluate)
    train_devices = sorted(set(crops.table["device"]))
    return evaluate_predictions(evaluate, clips.labels, clips.table["device"].to_numpy(), train_devices, list(SCENES))


def main() -> None:
    params = stage_params(PARAMS)
    prepare(1, __spec__.name)  # a GPU of its own when several experiments share the machine
    checkpoints = ensemble_checkpoints(Path("models/teacher.pt"), params["teacher"]["ensemble"], ENSEMBLE_DIR)
    with tracking.start_run("teacher_logits", params):
        result = dump_teacher_logits(params, checkpoints, RECORDINGS_DIR, RESAMPLED_DIR, Path("data/teacher_logits"))
        metrics = summary({"teacher": result})
        tracking.log_metrics(flatten(metrics))
    write_json(METRICS, metrics)
    print(f"teacher on the evaluate fold: {metrics['teacher']}")


if __name__ == "__main__":
    run(main)
