"""Stage teacher_train: train the teacher (demo CNN, or fine-tune PaSST) -> models/teacher.pt."""
from pathlib import Path

from mobileast.params import stage_params
from mobileast.data import RECORDINGS_DIR, RESAMPLED_DIR
from mobileast.launch import prepare
from mobileast.plots import plot_history
from mobileast.recipes import train_teacher
from mobileast.tracking import is_main_process
from mobileast.train import Outputs, resume_path
from stages import run

PARAMS = ["seed", "features", "teacher.split", "teacher.arch", "teacher.cnn", "teacher.passt", "teacher.train", "teacher.augment"]
HISTORY = Path("reports/teacher_history.csv")


def main() -> None:
    params = stage_params(PARAMS)
    status = prepare(int(params["teacher"]["train"]["nproc"]), __spec__.name)  # GPUs; torchrun when nproc > 1
    if status is not None:
        raise SystemExit(status)
    train_teacher(params, RECORDINGS_DIR, RESAMPLED_DIR,
                  Outputs(model=Path("models/teacher.pt"), resume=resume_path("teacher_train"), history=HISTORY))
    if is_main_process():
        plot_history(HISTORY, HISTORY.with_suffix(".png"), "teacher")


if __name__ == "__main__":
    run(main)
