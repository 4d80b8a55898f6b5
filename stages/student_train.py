"""Stage student_train: MobileAST_Light distilled from the teacher logits -> models/student.pt."""
from pathlib import Path

from mobileast.config import stage_params
from mobileast.data import RECORDINGS_DIR, RESAMPLED_DIR
from mobileast.plots import plot_history
from mobileast.recipes import train_student
from mobileast.train import Outputs, resume_path
from stages import run

PARAMS = ["seed", "features", "student", "train", "distill", "dkd", "augment", "logits.hop_s"]
HISTORY = Path("reports/student_history.csv")


def main() -> None:
    train_student(stage_params(PARAMS), RECORDINGS_DIR, RESAMPLED_DIR,
                  Path("data/teacher_logits"), Outputs(model=Path("models/student.pt"), resume=resume_path("student_train"),
                          history=HISTORY))
    plot_history(HISTORY, HISTORY.with_suffix(".png"), "student")


if __name__ == "__main__":
    run(main)
