"""The keys of params.yaml: every section, every key (mobileast.params checks files against it).

A section maps its key names to a nested section (dict), to LEAF (a value), or to FREE
(a mapping whose keys the code that uses it checks: the model config fields of
`student.custom` and `teacher.cnn.custom`). Plain data, importing nothing of the
project, so that every stage can check the whole file without depending on the code of
the others.
"""
from __future__ import annotations

from typing import Any

LEAF = "value"
FREE = "mapping"


def keys(*names: str) -> dict[str, Any]:
    return dict.fromkeys(names, LEAF)


SCHEDULE = keys("warmup", "warmup_epochs", "decay", "decay_end_epoch", "min_lr")
TRAIN = {**keys("epochs", "batch_size", "crops_per_recording", "optimizer", "lr", "weight_decay",
                "validate_every", "precision", "compile", "nproc", "sync_bn"), "schedule": SCHEDULE}
AUGMENT = {
    "time_shift": keys("enabled", "max_s"),
    "pitch_shift": keys("enabled", "max_semitones"),
    "noise": keys("enabled", "snr_db_min", "snr_db_max"),
    "mixup": keys("enabled", "alpha", "p"),
    "masking": keys("enabled", "freq_width", "time_width", "n_freq", "n_time"),
    "cutmix": keys("enabled", "alpha", "p"),
    "mixstyle": keys("enabled", "alpha", "p"),
}
SCHEMA: dict[str, Any] = {
    "profile": LEAF,
    "seed": LEAF,
    "data": keys("source", "root", "on_bad_file", "sample_rate", "workers"),
    "demo": keys("seed", "cities", "locations_per_city", "train_recordings_per_class", "parallel_devices_train",
                 "parallel_fraction", "eval_recordings_per_class", "eval_devices", "eval_devices_per_recording",
                 "missing_slice_fraction", "location_spread_db"),
    "features": keys("sample_rate", "n_fft", "win_length", "hop_length", "n_mels", "preemphasis", "f_min", "f_max"),
    "teacher": {
        "arch": LEAF,
        "cnn": {"preset": LEAF, "custom": FREE},
        "passt": keys("checkpoint", "fstride", "tstride", "patchout_f", "patchout_t", "specaug_freq",
                      "specaug_time"),
        "ensemble": LEAF,
        "train": {**TRAIN, "crop_hop_s": LEAF},
        "augment": AUGMENT,
    },
    "logits": keys("hop_s", "batch_size", "precision"),
    "student": {"preset": LEAF, "custom": FREE},
    "train": TRAIN,
    "distill": keys("method"),
    "dkd": keys("alpha", "beta", "T", "warmup_epochs", "ce_weight"),
    "augment": AUGMENT,
    "quant": keys("calib_batches", "batch_size", "float_modules", "dynamic_modules"),
    "evaluate": keys("batch_size", "precision"),
    "tracking": keys("register_model", "model_name"),
}
