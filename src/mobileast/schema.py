"""The keys of params.yaml: every section, every key, its type, allowed values and meaning.

The one source of truth for params: mobileast.params checks files against it (unknown,
missing, wrong type, value out of range), `python -m mobileast dvc-deps` and
`python -m mobileast params-doc` read it, and docs/configuration.md is generated from it.
A section is a dict of its key names to nested sections or to `Param`s; a `mapping`
Param is a free mapping whose keys the code that uses it checks (the model config
fields of `student.custom` and `teacher.cnn.custom`). Plain data, importing nothing of
the project and only the standard library, so that every stage can check the whole file
without depending on the code of the others. It only accepts or rejects values, so it is
no stage's DVC dependency (mobileast.imports.UNTRACKED_CODE): editing it re-runs no stage by
itself (a new key re-runs the stages that declare it, through their params deps).

The choices below equal lists kept in the code that acts on them (optimizers, precisions,
presets, ...); tests/test_params_checks.py asserts that they agree.
"""
from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from typing import Any

KINDS = ("int", "float", "bool", "str", "list of str", "mapping")
NO_DEFAULT = type("NoDefault", (), {"__repr__": lambda self: "NO_DEFAULT"})()


@dataclass(frozen=True)
class Param:
    """One key: `kind` (KINDS; a float key accepts ints, as DVC writes `-S dkd.alpha=5`),
    its allowed values (`choices`, strings or numbers; for a list, of its items) or range [low, high]
    (`low_open`: low itself excluded), whether null is allowed, and a one-line meaning.
    `default`: the value `python -m mobileast dvc-deps --write` writes into a params.yaml
    that lacks the key (params.yaml's value is the one in use; docs/configuration.md
    shows it), so a new key is added by its schema entry alone."""

    kind: str
    meaning: str
    _: KW_ONLY
    choices: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    nullable: bool = False
    default: Any = NO_DEFAULT

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown kind {self.kind!r} (kinds: {', '.join(KINDS)})")

    def allowed(self) -> str:
        """The allowed values in words, e.g. `one of adam, adamw`, `>= 0`, `in (0, 1]`."""
        parts = []
        if self.choices:
            parts.append(("a list of items from " if self.kind == "list of str" else "one of ")
                         + ", ".join(map(str, self.choices)))
        if self.low is not None and self.high is not None:
            parts.append(f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}]")
        elif self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        elif self.high is not None:
            parts.append(f"<= {self.high:g}")
        if self.nullable:
            parts.append("or null")
        return " ".join(parts) if parts else "any"


def number(kind: str, meaning: str, low: float | None = None, high: float | None = None, *,
           low_open: bool = False, nullable: bool = False, default: Any = NO_DEFAULT) -> Param:
    return Param(kind, meaning, low=low, high=high, low_open=low_open, nullable=nullable, default=default)


def choice(meaning: str, *choices: str, default: Any = NO_DEFAULT) -> Param:
    return Param("str", meaning, choices=choices, default=default)


def flag(meaning: str, *, default: Any = NO_DEFAULT) -> Param:
    return Param("bool", meaning, default=default)


def text(meaning: str, *, default: Any = NO_DEFAULT) -> Param:
    return Param("str", meaning, default=default)


def names(meaning: str, *choices: str, default: Any = NO_DEFAULT) -> Param:
    return Param("list of str", meaning, choices=choices, default=default)


def positive(meaning: str, *, default: Any = NO_DEFAULT) -> Param:
    return number("int", meaning, 1, default=default)


def probability(meaning: str, *, default: Any = NO_DEFAULT) -> Param:
    return number("float", meaning, 0, 1, default=default)


# The lists of the code that acts on these values (tests/test_params_checks.py keeps them equal).
SOURCES = ("demo", "tau22")                         # mobileast.data.SOURCES
ON_BAD_FILE = ("error", "skip")                     # mobileast.data.tau22.ON_BAD_FILE
DEVICES = ("a", "b", "c", "s1", "s2", "s3", "s4", "s5", "s6")  # mobileast.labels.DEVICES
PRECISIONS = ("auto", "fp32", "bf16", "fp16")       # mobileast.inference.PRECISIONS
OPTIMIZERS = ("adam", "adamw")                      # mobileast.training.settings.OPTIMIZERS
WARMUPS = ("none", "linear", "exp")                 # mobileast.training.schedule.WARMUPS
DECAYS = ("cosine", "linear", "constant")           # mobileast.training.schedule.DECAYS
TEACHER_ARCHS = ("cnn", "passt")                    # mobileast.teachers.build_teacher
CNN_PRESETS = ("teacher_cnn",)                      # mobileast.models.cnn.PRESETS
STUDENT_PRESETS = ("sub1", "sub2", "sub3", "sub4")  # mobileast.models.mobileast.PRESETS
CUSTOM = "custom"                                   # student.preset: the preset-free config of student.custom
METHODS = ("dkd", "kd", "none")                     # mobileast.distill.METHODS
SPLITS = (5, 10, 25, 50, 100)                       # mobileast.data.store.SPLITS

PRECISION = ("autocast of {what}: auto (bf16 on a GPU that has it, else fp32), fp32, bf16 "
             "or fp16 (with a GradScaler in training)")


def schedule() -> dict[str, Any]:
    return {
        "warmup": choice("warm-up of the learning rate: none, linear (from 0) or exp (exponential ramp-up)",
                         *WARMUPS),
        "warmup_epochs": number("float", "epochs of the warm-up (> 0 unless warmup is none)", 0),
        "decay": choice("decay after the warm-up, down to min_lr (constant: stay at lr)", *DECAYS),
        "decay_end_epoch": number("float", "epoch where the decay reaches min_lr: null = the last epoch, a "
                                  "negative number counts from the end (-2 = two epochs before the last)",
                                  nullable=True),
        "min_lr": number("float", "learning rate at and after decay_end_epoch", 0),
    }


def training(what: str) -> dict[str, Any]:
    return {
        "epochs": positive(f"epochs of {what} training"),
        "batch_size": positive("crops per optimizer step (over all processes)"),
        "crops_per_recording": positive("random 1 s crops drawn per 10 s train recording and epoch"),
        "optimizer": choice("adam (L2 weight decay) or adamw (decoupled weight decay)", *OPTIMIZERS),
        "lr": number("float", "peak learning rate", 0, low_open=True),
        "weight_decay": number("float", "weight decay of the optimizer", 0),
        "validate_every": positive("epochs between validations on the evaluate fold (the last epoch always "
                                   "validates)"),
        "precision": Param("str", PRECISION.format(what="the training steps"), choices=PRECISIONS),
        "compile": flag(f"torch.compile the {what} for training"),
        "nproc": positive("processes (GPUs): > 1 runs the stage under torchrun (DistributedDataParallel)"),
        "sync_bn": flag("SyncBatchNorm across the processes (CUDA only)"),
        "schedule": schedule(),
    }


def mixing(what: str) -> dict[str, Any]:
    return {"enabled": flag(f"apply {what}"),
            "alpha": number("float", "alpha of the Beta(alpha, alpha) distribution of the mixing weight", 0,
                            low_open=True),
            "p": probability(f"probability that a batch gets {what}")}


def augmentations() -> dict[str, Any]:
    return {
        "time_shift": {"enabled": flag("circular time shift of the waveform"),
                       "max_s": number("float", "largest shift in seconds (either direction)", 0)},
        "pitch_shift": {"enabled": flag("pitch shift of the waveform"),
                        "max_semitones": number("float", "largest shift in semitones (either direction)", 0)},
        "noise": {"enabled": flag("add Gaussian noise at a random SNR"),
                  "snr_db_min": number("float", "lowest SNR in dB"),
                  "snr_db_max": number("float", "highest SNR in dB")},
        "mixup": mixing("waveform mixup (exclusive with cutmix per batch)"),
        "masking": {"enabled": flag("time and frequency masking of the log-mel"),
                    "freq_width": number("int", "largest width of a frequency mask (mel bins)", 0),
                    "time_width": number("int", "largest width of a time mask (frames)", 0),
                    "n_freq": number("int", "frequency masks per example", 0),
                    "n_time": number("int", "time masks per example", 0)},
        "cutmix": mixing("CutMix of the log-mel"),
        "mixstyle": mixing("frequency MixStyle of the log-mel (mixes statistics, not labels)"),
        "dir": {"enabled": flag("device impulse response augmentation: convolve clips with a recorded "
                                "microphone impulse response (simulates other devices)", default=False),
                "p": probability("probability that a clip of one of `devices` is convolved", default=0.4),
                "ir_dir": text("folder searched recursively for the impulse responses (.wav, any sample rate; "
                               "a DVC dependency of the training stage even while disabled)", default="data/irs"),
                "devices": names("recording devices whose clips may be convolved", *DEVICES, default=["a"])},
    }


TRAIN = training("student")
AUGMENT = augmentations()
SCHEMA: dict[str, Any] = {
    "profile": text("the profiles last applied (python -m mobileast profile --apply); a record, read by no stage"),
    "seed": number("int", "seed of model initialisation, crops, augmentation and calibration", 0),
    "data": {
        "source": choice("where the dataset comes from: demo (generated by stage demo_data) or tau22 (read in "
                         "place from data.root)", *SOURCES),
        "root": text("dataset in TAU22 layout: for tau22 the unpacked development set; for demo data/demo"),
        "on_bad_file": choice("a bad audio file stops resample (error), or is left out and listed in its report "
                              "(skip)", *ON_BAD_FILE),
        "sample_rate": positive("sample rate (Hz) of the resampled stores"),
        "workers": number("int", "processes of demo_data and resample; 0 = one per CPU core", 0),
        "split": Param("int", "percent of the train fold (DCASE 2024's nested data-efficient splits) the student "
                       "trains on, the teacher logits are dumped for and quantization calibrates on: the official "
                       "split<N>.csv of data.split_dir, else a split drawn by recording (mobileast.data.splits)",
                       choices=SPLITS, default=100),
        "split_dir": text("folder of the official split5.csv .. split100.csv, relative to data.root (e.g. "
                          "split_setup); without them the splits are drawn, per scene and device",
                          default="evaluation_setup"),
        "split_seed": number("int", "seed of the drawn splits (unused with official split files)", 0, default=0),
    },
    "demo": {
        "seed": number("int", "seed of the demo generator", 0),
        "cities": names("cities of the demo layout"),
        "locations_per_city": positive("locations per scene and city"),
        "train_recordings_per_class": positive("10 s device-a recordings per scene in the train fold"),
        "parallel_devices_train": names("devices that also record a share of the train recordings", *DEVICES),
        "parallel_fraction": probability("share of train recordings also rendered on each parallel device"),
        "eval_recordings_per_class": positive("evaluate recordings per scene, each at its own location"),
        "eval_devices": names("devices of the evaluate fold", *DEVICES),
        "eval_devices_per_recording": positive("devices per evaluate recording, balanced over eval_devices"),
        "missing_slice_fraction": probability("share of 1 s slices left out of the layout (as in TAU22)"),
        "location_spread_db": number("float", "how much locations of a scene differ (dB): the main difficulty "
                                     "knob", 0),
    },
    "features": {
        "sample_rate": positive("sample rate (Hz) the student's log-mel frontend expects (= data.sample_rate)"),
        "n_fft": positive("FFT size"),
        "win_length": positive("STFT window length (samples)"),
        "hop_length": positive("STFT hop (samples); sample_rate / hop_length frames per second"),
        "n_mels": positive("mel bins"),
        "preemphasis": probability("pre-emphasis coefficient (0 = none)"),
        "f_min": number("float", "lowest mel filter frequency (Hz)", 0),
        "f_max": number("float", "highest mel filter frequency (Hz); null = sample_rate / 2", 0, low_open=True,
                        nullable=True),
    },
    "teacher": {
        "arch": choice("teacher architecture: cnn (the CPU demo teacher) or passt", *TEACHER_ARCHS),
        "cnn": {"preset": choice("preset of the CNN teacher", *CNN_PRESETS),
                "custom": Param("mapping", "fields of CNNConfig that override the preset ({} or null for none)",
                                 nullable=True)},
        "passt": {
            "checkpoint": text("the AudioSet-pretrained PaSST checkpoint to fine-tune"),
            "fstride": positive("patch stride along frequency"),
            "tstride": positive("patch stride along time"),
            "patchout_f": number("int", "frequency rows of patches dropped in training", 0),
            "patchout_t": number("int", "time columns of patches dropped in training", 0),
            "specaug_freq": number("int", "SpecAugment: largest frequency mask (mel bins)", 0),
            "specaug_time": number("int", "SpecAugment: largest time mask (frames)", 0),
        },
        "split": Param("int", "percent of the train fold the teacher trains on (a data.split; 100 = all of it); "
                       "DCASE 2024 counts the teacher as part of the system: set it to data.split there",
                       choices=SPLITS, default=100),
        "ensemble": names("extra trained teacher checkpoints (in models/ensemble) whose logits are averaged with "
                          "models/teacher.pt"),
        "train": {**training("teacher"),
                  "crop_hop_s": number("float", "grid (s) of the teacher's random 1 s training crops", 0, 1,
                                       low_open=True)},
        "augment": augmentations(),
    },
    "logits": {
        "hop_s": number("float", "grid (s) of 1 s crop offsets of the logit dump and of the student's crops", 0, 1,
                        low_open=True),
        "batch_size": positive("crops per batch of the logit dump"),
        "precision": Param("str", PRECISION.format(what="the logit dump"), choices=PRECISIONS),
    },
    "student": {
        "preset": choice("MobileAST_Light preset, or custom (the MobileASTConfig defaults with student.custom "
                         "applied)",
                         *STUDENT_PRESETS, CUSTOM),
        "custom": Param("mapping", "fields of MobileASTConfig that override the preset ({} or null for none)",
                         nullable=True),
    },
    "train": TRAIN,
    "distill": {"method": choice("distillation loss: dkd (decoupled KD), kd (Hinton KD) or none (CE only)",
                                 *METHODS)},
    "dkd": {
        "alpha": number("float", "weight of the target-class term (TCKD) of DKD", 0),
        "beta": number("float", "weight of the non-target-class term (NCKD) of DKD", 0),
        "T": number("float", "distillation temperature (DKD and KD)", 0, low_open=True),
        "warmup_epochs": number("float", "epochs over which the distillation term ramps up linearly", 0),
        "ce_weight": number("float", "weight of the cross-entropy with the labels", 0),
    },
    "augment": AUGMENT,
    "quant": {
        "calib_batches": positive("calibration batches of random 1 s train crops"),
        "batch_size": positive("crops per calibration batch"),
        "float_modules": names("submodule name patterns kept in float (e.g. attn, norm*)"),
        "dynamic_modules": names("Linear layers with int8 weights but float output (e.g. the classifier)"),
    },
    "device_models": {
        "enabled": flag("fine-tune, quantize and export one copy of the student per training device (stage "
                        "device_models); evaluate then routes each clip to its device's model", default=False),
        "devices": names("devices that get their own model (those without train recordings are skipped); the "
                         "others use the general model", *DEVICES, default=["a", "b", "c", "s1", "s2", "s3"]),
        "epochs": positive("epochs of fine-tuning per device", default=3),
        "lr": number("float", "learning rate of the fine-tuning (constant, no warm-up)", 0, low_open=True,
                     default=0.0002),
        "batch_size": positive("crops per optimizer step of the fine-tuning", default=32),
        "crops_per_recording": positive("random 1 s crops drawn per 10 s recording of the device and epoch",
                                        default=8),
    },
    "evaluate": {
        "batch_size": positive("clips per batch of the evaluation"),
        "precision": Param("str", PRECISION.format(what="float models on a GPU (int8 and ONNX models run on the "
                                                   "CPU)"), choices=PRECISIONS),
    },
    "tracking": {
        "register_model": flag("also register each experiment's int8 model in the MLflow model registry"),
        "model_name": text("registered model name (one version per experiment state)"),
    },
}


def leaves(node: Any = None, prefix: str = "") -> dict[str, Param]:
    """{dotted key: Param} of every key at and below `node` (default: the whole schema), in order."""
    node = SCHEMA if node is None else node
    if isinstance(node, Param):
        return {prefix: node}
    return {key: param for name, child in node.items()
            for key, param in leaves(child, f"{prefix}.{name}" if prefix else name).items()}
