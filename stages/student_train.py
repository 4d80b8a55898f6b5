"""Stage student_train: MobileAST_Light distilled (DKD, KD or plain CE) from the teacher
logits -> models/student.pt, per-epoch history -> reports/student_history.csv (and .png).

Student crops come from the teacher-logit grid (RecordingCrops with hop logits.hop_s), so
the teacher logits of a crop are one array lookup: teacher_logits[batch.row]. The dump
saves its grid (train_index.npy) and the student checks it equals its own."""
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from mobileast import tracking
from mobileast.data import RECORDINGS_DIR, RESAMPLED_DIR
from mobileast.data.crops import RecordingCrops, train_crops
from mobileast.deploy import ModelMeta
from mobileast.distill import DistillLoss
from mobileast.errors import ParamsError, params_errors
from mobileast.labels import SCENES
from mobileast.launch import prepare
from mobileast.models import build_student, model_spec
from mobileast.params import stage_params
from mobileast.plots import plot_history
from mobileast.training.checkpoint import Outputs, resume_path, stage_code
from mobileast.training.distributed import runtime
from mobileast.training.engine import EpochCallback
from mobileast.training.supervised import train_supervised
from stages import run

PARAMS = ["seed", "features", "student", "train", "distill", "dkd", "augment", "logits.hop_s", "data.split"]
HISTORY = Path("reports/student_history.csv")
LOGITS = Path("data/teacher_logits")


def load_logits(logits_dir: Path, crops: RecordingCrops) -> torch.Tensor:
    """The dumped train logits, checked to be those of exactly this crop grid (same
    recordings, same crop starts), so that row r is the teacher's output on crop r."""
    grid = np.load(logits_dir / "train_index.npy")
    if not np.array_equal(grid, crops.grid()):
        raise ParamsError(f"{logits_dir}: the teacher logits were dumped on another crop grid "
                          f"({len(grid)} crops) than the student's ({crops.n_rows} crops of these recordings "
                          "at logits.hop_s): re-run the teacher_logits stage (dvc repro teacher_logits)")
    return torch.from_numpy(np.load(logits_dir / "train.npy"))


def train_student(params: Mapping[str, Any], recordings: Path, resampled: Path, logits_dir: Path,
                  outputs: Outputs, on_epoch: EpochCallback | None = None) -> None:
    """MobileAST_Light with DKD (or KD, or CE) from the teacher logits in `logits_dir`.
    `params`: exactly the keys the stage declares in dvc.yaml."""
    with params_errors("sections 'distill' and 'dkd'"):
        loss_fn = DistillLoss.from_params(params)
    features, section = params["features"], params["train"]
    data = train_crops(recordings, resampled, int(features["sample_rate"]), params["logits"]["hop_s"],
                       "logits.hop_s", "features.sample_rate", int(section["crops_per_recording"]), params["seed"],
                       params["data"]["split"])
    teacher_logits = None if loss_fn.method == "none" else load_logits(logits_dir, data)
    with runtime(params["seed"]) as rt:
        model = build_student(params["student"], features)
        arch, config = model_spec(model)
        meta = ModelMeta(features=dict(features), classes=list(SCENES), arch=arch, config=config,
                         params=dict(params))  # what it was trained with, for `submit`
        train_supervised(model, meta, "", params, loss_fn, resampled, data, outputs, rt,
                         (recordings, resampled, logits_dir), stage_code(__spec__.name), teacher_logits,
                         on_epoch=on_epoch)


def main() -> None:
    params = stage_params(PARAMS)
    status = prepare(int(params["train"]["nproc"]), __spec__.name)  # GPUs; torchrun when nproc > 1
    if status is not None:
        raise SystemExit(status)
    outputs = Outputs(model=Path("models/student.pt"), resume=resume_path("student_train"), history=HISTORY)
    with tracking.start_run("student_train", params):
        train_student(params, RECORDINGS_DIR, RESAMPLED_DIR, LOGITS, outputs, on_epoch=tracking.log_metrics)
    if tracking.is_main_process():
        plot_history(HISTORY, HISTORY.with_suffix(".png"), "student")
        outputs.discard_resume()  # the stage's outputs are all written


if __name__ == "__main__":
    run(main)
