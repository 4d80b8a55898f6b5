"""Stage teacher_train: train the teacher (demo CNN, or fine-tune PaSST) with cross-entropy
-> models/teacher.pt, per-epoch history -> reports/teacher_history.csv (and .png)."""
from pathlib import Path
from typing import Any, Mapping

from mobileast import tracking
from mobileast.data import RECORDINGS_DIR, RESAMPLED_DIR
from mobileast.data.crops import train_crops
from mobileast.distill import DistillLoss
from mobileast.errors import ParamsError
from mobileast.launch import prepare
from mobileast.params import stage_params
from mobileast.plots import plot_history
from mobileast.teachers import build_teacher
from mobileast.training.checkpoint import Outputs, resume_path, stage_code
from mobileast.training.distributed import runtime
from mobileast.training.engine import EpochCallback
from mobileast.training.supervised import rate_key, train_supervised
from stages import run

PARAMS = ["seed", "features", "teacher.split", "teacher.arch", "teacher.cnn", "teacher.passt", "teacher.train",
          "teacher.augment"]
HISTORY = Path("reports/teacher_history.csv")
SPECTROGRAM_AUGMENTS = ("mixstyle", "cutmix", "masking")


def train_teacher(params: Mapping[str, Any], recordings: Path, resampled: Path, outputs: Outputs,
                  on_epoch: EpochCallback | None = None) -> None:
    """Train (or fine-tune) the teacher with cross-entropy on the crops of the train
    recordings (hop teacher.train.crop_hop_s), validating on the evaluate clips.
    `params`: exactly the keys the stage declares in dvc.yaml."""
    teacher = params["teacher"]
    augment, section = teacher["augment"], teacher["train"]
    if teacher["arch"] == "passt" and any(augment[name]["enabled"] for name in SPECTROGRAM_AUGMENTS):
        raise ParamsError("teacher.augment: PaSST applies its own SpecAugment; disable "
                          f"{', '.join(SPECTROGRAM_AUGMENTS)}")
    with runtime(params["seed"]) as rt:
        model, meta = build_teacher(teacher, params["features"])
        rate = meta.sample_rate
        data = train_crops(recordings, resampled, rate, section["crop_hop_s"], "teacher.train.crop_hop_s",
                           rate_key(meta), int(section["crops_per_recording"]), params["seed"], teacher["split"])
        train_supervised(model, meta, "teacher.", params, DistillLoss.cross_entropy(), resampled, data, outputs, rt,
                         (recordings, resampled), stage_code(__spec__.name), drop_logs=("kd",), on_epoch=on_epoch)


def main() -> None:
    params = stage_params(PARAMS)
    status = prepare(int(params["teacher"]["train"]["nproc"]), __spec__.name)  # GPUs; torchrun when nproc > 1
    if status is not None:
        raise SystemExit(status)
    outputs = Outputs(model=Path("models/teacher.pt"), resume=resume_path("teacher_train"), history=HISTORY)
    with tracking.start_run("teacher_train", params):
        train_teacher(params, RECORDINGS_DIR, RESAMPLED_DIR, outputs, on_epoch=tracking.log_metrics)
    if tracking.is_main_process():
        plot_history(HISTORY, HISTORY.with_suffix(".png"), "teacher")
        outputs.discard_resume()  # the stage's outputs are all written


if __name__ == "__main__":
    run(main)
