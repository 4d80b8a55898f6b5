"""Stage student_train: MobileAST_Light distilled from the teacher logits -> models/student.pt."""
from pathlib import Path

from mobileast.params import stage_params
from mobileast.data import RECORDINGS_DIR, RESAMPLED_DIR
from mobileast.launch import prepare
from mobileast.plots import plot_history
from mobileast.recipes import train_student
from mobileast.tracking import is_main_process
from mobileast.train import Outputs, resume_path
from stages import run

PARAMS = ["seed", "features", "student", "train", "distill", "dkd", "augment", "logits.hop_s", "data.split"]
HISTORY = Path("reports/student_history.csv")


def main() -> None:
    params = stage_params(PARAMS)
    status = prepare(int(params["train"]["nproc"]), __spec__.name)  # GPUs; torchrun when nproc > 1
    if status is not None:
        raise SystemExit(status)
    train_student(params, RECORDINGS_DIR, RESAMPLED_DIR, Path("data/teacher_logits"),
                  Outputs(model=Path("models/student.pt"), resume=resume_path("student_train"), history=HISTORY))
    if is_main_process():
        plot_history(HISTORY, HISTORY.with_suffix(".png"), "student")


if __name__ == "__main__":
    run(main)
