"""Params that cannot silently be wrong: a typo in any section stops its stage naming the key,
the section and the known keys; values that must agree are checked with a clear error; bad
values are ParamsErrors (a stage ends with the message, no traceback)."""
from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mobileast.errors import ParamsError

from mobileast.labels import SCENES

from mobileast import data, distill, inference, paramsdoc, profiles, schema
from mobileast.training import schedule as training_schedule, settings as training_settings
from mobileast.data import store, tau22
from mobileast.labels import DEVICES
from mobileast import models
from mobileast.models import cnn, mobileast as mobileast_models
from mobileast.params import check_params, load_params, read_params
from mobileast.data import dataset_root
from mobileast.data.crops import evaluate_clips, hop_samples, train_crops
from mobileast.data.parallel import worker_count
from mobileast.data.tau22 import load_dataset
from mobileast.models import build_student
from mobileast.teachers import build_teacher
from mobileast.schema import SCHEMA
from mobileast.inference import resolve_precision
from mobileast.training.settings import TrainSettings
from stages import run
from test_crops import make_clip_store, make_recordings_store

REPO = Path(__file__).resolve().parents[1]
PARAMS = read_params(REPO / "params.yaml")
FEATURES = PARAMS["features"]


def section_of(tree: dict, key: str) -> dict:
    for name in key.split("."):
        tree = tree[name]
    return tree


@pytest.mark.parametrize("stage, section, typo", [
    ("student_train", "train", "weight_decy"),
    ("teacher_train", "teacher.train", "epohcs"),
    ("quantize", "quant", "calib_batch"),
    ("teacher_logits", "logits", "hop"),
    ("evaluate", "evaluate", "batchsize"),
])
def test_a_typo_stops_the_stage_naming_key_section_and_known_keys(tmp_path, monkeypatch, stage, section, typo):
    params = read_params(REPO / "params.yaml")
    section_of(params, section)[typo] = 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    shutil.copy(REPO / "dvc.yaml", tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        run(importlib.import_module(f"stages.{stage}").main)
    known = ", ".join(sorted(section_of(SCHEMA, section)))
    assert str(stopped.value) == \
        f"{stage}: params.yaml: unknown key '{typo}' in section '{section}' (known keys: {known})"


@pytest.mark.parametrize("hop_s", [0.3, 0.00001, 0, 1.5])
def test_a_crop_hop_must_split_the_clip_into_whole_hops(hop_s):
    with pytest.raises(ParamsError, match=rf"logits.hop_s = {hop_s} s must divide the 1 s clip into whole hops of "
                                          r"whole samples at 32000 Hz"):
        hop_samples(hop_s, 32000, "logits.hop_s")
    assert [hop_samples(h, 32000, "logits.hop_s") for h in (0.25, 0.05, 1)] == [8000, 1600, 32000]


def test_the_features_rate_must_be_the_stores_rate(tmp_path):
    rate = 1600
    make_recordings_store(tmp_path, {"train": [[0, 1, 2]] * 2}, rate)
    make_clip_store(tmp_path, "evaluate", np.zeros((3, rate), np.int16), list(SCENES[:3]))
    assert train_crops(tmp_path, tmp_path, rate, 0.25, "logits.hop_s", "features.sample_rate").clip_samples == rate
    message = (rf"features.sample_rate is {2 * rate} Hz but {tmp_path} holds 1 s clips of {rate} samples "
               rf"\(written at data.sample_rate = {rate} Hz\): set both to the same rate")
    with pytest.raises(ParamsError, match=message):
        train_crops(tmp_path, tmp_path, 2 * rate, 0.25, "logits.hop_s", "features.sample_rate")
    with pytest.raises(ParamsError, match=message):
        evaluate_clips(tmp_path, 2 * rate, "features.sample_rate")


def test_the_student_input_follows_the_features():
    assert build_student({"preset": "sub1", "custom": {}}, FEATURES).cfg.input_size == (256, 64)
    assert build_student({"preset": "sub1", "custom": {}}, {**FEATURES, "n_mels": 128}).cfg.input_size == (128, 64)
    with pytest.raises(ParamsError, match=r"student.custom.input_size \[128, 64\] disagrees with the features "
                                          r"\(\[256, 64\] = features.n_mels, features.sample_rate / "
                                          r"features.hop_length\)"):
        build_student({"preset": "sub1", "custom": {"input_size": [128, 64]}}, FEATURES)
    with pytest.raises(ParamsError, match=r"student \(preset sub1, custom \{\}\) on the input 90 x 64 of the features "
                                          r"\(features.n_mels x .*\): feature map .* is not divisible"):
        build_student({"preset": "sub1", "custom": {}}, {**FEATURES, "n_mels": 90})


def test_model_sections_are_named_in_their_errors():
    with pytest.raises(ParamsError, match=r"student \(preset sub2, custom \{'width': 3\}\).*unknown MobileASTConfig "
                                          r"fields: \['width'\]"):
        build_student({"preset": "sub2", "custom": {"width": 3}}, FEATURES)
    with pytest.raises(ParamsError, match=r"student.preset must be 'custom' or one of sub1, sub2, sub3, sub4, got "
                                          r"'teacher_cnn'"):
        build_student({"preset": "teacher_cnn", "custom": {}}, FEATURES)
    teacher = {**PARAMS["teacher"], "cnn": {"preset": "teacher_cnn", "custom": {"width": 3}}}
    with pytest.raises(ParamsError, match=r"teacher.cnn \(preset teacher_cnn, custom \{'width': 3\}\): unknown "
                                          r"CNNConfig fields: \['width'\]"):
        build_teacher(teacher, FEATURES)
    with pytest.raises(ParamsError, match="teacher.cnn.preset must be one of teacher_cnn"):
        build_teacher({**teacher, "cnn": {"preset": "sub1", "custom": {}}}, FEATURES)
    with pytest.raises(ParamsError, match="teacher.arch must be cnn or passt, got 'vit'"):
        build_teacher({**teacher, "arch": "vit"}, FEATURES)


def test_bad_values_are_params_errors(tmp_path):
    with pytest.raises(ParamsError, match="data.source must be one of demo, tau22, got 'tua22'"):
        dataset_root({"source": "tua22", "root": "data/demo"}, tmp_path)
    with pytest.raises(ParamsError, match="data.on_bad_file must be one of error, skip, got 'ignore'"):
        load_dataset(tmp_path / "no dataset needed: the value is checked first", 1, "ignore")
    with pytest.raises(ParamsError, match=r"data.workers must be >= 0"):
        worker_count(-1)
    schedule = {**PARAMS["teacher"]["train"]["schedule"], "warmup": "cosine"}
    with pytest.raises(ParamsError, match=r"params.yaml, section 'teacher.train': schedule.warmup must be one of "
                                          r"none, linear, exp, got 'cosine'"):
        TrainSettings.from_params({**PARAMS["teacher"]["train"], "schedule": schedule}, 0, "teacher.train")
    with pytest.raises(ParamsError, match=r"section 'train': epochs, batch_size and validate_every must be >= 1"):
        TrainSettings.from_params({**PARAMS["train"], "validate_every": 0}, 0, "train")
    with pytest.raises(ParamsError, match="logits.precision must be one of auto, fp32, bf16, fp16, got 'fp8'"):
        resolve_precision("fp8", torch.device("cpu"), "logits.precision")


def with_value(key: str, value: object) -> dict:
    """params.yaml with the dotted `key` set to `value`."""
    params = read_params(REPO / "params.yaml")
    *parents, leaf = key.split(".")
    (section_of(params, ".".join(parents)) if parents else params)[leaf] = value
    return params


@pytest.mark.parametrize("key, value, message", [
    ("data.workers", "4", "data.workers must be an integer, got '4'"),  # an int key: no string of digits
    ("data.workers", 4.0, "data.workers must be an integer, got 4.0"),  # ... nor a float
    ("train.compile", "false", "train.compile must be true or false, got 'false'"),  # a bool: no string
    ("train.compile", 0, "train.compile must be true or false, got 0"),  # ... nor a number
    ("teacher.ensemble", "path/as/string", "teacher.ensemble must be a list of strings, got 'path/as/string'"),
    ("quant.float_modules", ["attn", 1], r"quant.float_modules must be a list of strings, got \['attn', 1\]"),
    ("dkd.alpha", "5", "dkd.alpha must be a number, got '5'"),  # a float key: no string
    ("dkd.alpha", True, "dkd.alpha must be a number, got True"),  # ... nor a bool
    ("dkd.alpha", float("nan"), "dkd.alpha must be a number, got nan"),
    ("data.root", 3, "data.root must be a string, got 3"),
    ("student.custom", [1], r"student.custom must be a mapping or null, got \[1\]"),
    ("train.lr", None, "train.lr must be a number, got None"),
    ("features.f_max", "8000", "features.f_max must be a number or null, got '8000'"),
    ("teacher.split", "25", "teacher.split must be an integer, got '25'"),
])
def test_a_value_of_the_wrong_type_is_named_with_its_key_and_section(key, value, message):
    with pytest.raises(ParamsError, match=f"^params.yaml: {message}$"):
        check_params(with_value(key, value))


@pytest.mark.parametrize("key, value, message", [
    ("train.optimizer", "sgd", "train.optimizer must be one of adam, adamw, got 'sgd'"),
    ("teacher.train.precision", "fp8", "teacher.train.precision must be one of auto, fp32, bf16, fp16, got 'fp8'"),
    ("train.schedule.warmup", "cosine", "train.schedule.warmup must be one of none, linear, exp, got 'cosine'"),
    ("student.preset", "teacher_cnn", "student.preset must be one of sub1, sub2, sub3, sub4, custom, got "
                                      "'teacher_cnn'"),
    ("demo.eval_devices", ["a", "s7"], r"demo.eval_devices must be a list of items from a, b, c, s1, s2, s3, s4, "
                                       r"s5, s6, got \['a', 's7'\]"),
    ("data.split", 20, "data.split must be one of 5, 10, 25, 50, 100, got 20"),  # a number with choices
])
def test_a_value_that_is_no_choice_is_named_with_the_choices(key, value, message):
    with pytest.raises(ParamsError, match=f"^params.yaml: {message}$"):
        check_params(with_value(key, value))


@pytest.mark.parametrize("key, value, message", [
    ("data.workers", -1, "data.workers must be >= 0, got -1"),
    ("train.epochs", 0, "train.epochs must be >= 1, got 0"),
    ("train.lr", 0, "train.lr must be > 0, got 0"),  # an open bound
    ("logits.hop_s", 1.5, r"logits.hop_s must be in \(0, 1\], got 1.5"),
    ("augment.mixup.p", -0.1, r"augment.mixup.p must be in \[0, 1\], got -0.1"),
    ("features.f_max", 0, "features.f_max must be > 0 or null, got 0"),
])
def test_a_value_out_of_range_is_named_with_the_range(key, value, message):
    with pytest.raises(ParamsError, match=f"^params.yaml: {message}$"):
        check_params(with_value(key, value))


@pytest.mark.parametrize("key, value", [
    ("dkd.alpha", 5), ("dkd.T", 4),  # ints for float keys, as `dvc exp run -S dkd.alpha=5` writes them
    ("features.f_max", None), ("features.f_max", 16000),
    ("train.schedule.decay_end_epoch", None), ("train.schedule.decay_end_epoch", -2),
    ("train.schedule.decay_end_epoch", 7.5), ("teacher.ensemble", []), ("student.custom", {"depth": 2}),
    ("student.custom", None), ("data.split", 25), ("teacher.split", 5),
])
def test_values_the_schema_allows_pass(key, value):
    check_params(with_value(key, value))


def test_a_bad_value_stops_the_stage_naming_it(tmp_path, monkeypatch):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(with_value("data.workers", "4")))
    shutil.copy(REPO / "dvc.yaml", tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        run(importlib.import_module("stages.quantize").main)  # the whole file is checked, not only quant
    assert str(stopped.value) == "quantize: params.yaml: data.workers must be an integer, got '4'"
    with pytest.raises(ParamsError, match="^params.yaml: data.workers must be an integer, got '4'$"):
        load_params(tmp_path / "params.yaml")


def test_profile_apply_refuses_a_bad_value(tmp_path):
    target = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", target)
    with pytest.raises(ParamsError, match="^params.yaml: train.compile must be true or false, got 'false'$"):
        profiles.apply_to_file(target, {"train.compile": "false"})
    assert target.read_text() == (REPO / "params.yaml").read_text()


def test_the_schema_choices_are_the_codes():
    """The schema imports nothing of the project: its lists must equal those of the code."""
    assert schema.SOURCES == data.SOURCES
    assert schema.ON_BAD_FILE == tau22.ON_BAD_FILE
    assert schema.SPLITS == store.SPLITS and store.FULL_SPLIT == max(store.SPLITS)
    assert schema.DEVICES == DEVICES
    assert schema.PRECISIONS == inference.PRECISIONS
    assert schema.OPTIMIZERS == tuple(training_settings.OPTIMIZERS)
    assert schema.WARMUPS == training_schedule.WARMUPS
    assert schema.DECAYS == training_schedule.DECAYS
    assert schema.METHODS == distill.METHODS
    assert schema.CNN_PRESETS == tuple(cnn.PRESETS)
    assert schema.STUDENT_PRESETS == tuple(mobileast_models.PRESETS)
    assert set(models.PRESETS) == {*schema.STUDENT_PRESETS, *schema.CNN_PRESETS}  # the registry's presets
    leaves = schema.leaves()
    assert leaves["student.preset"].choices == (*schema.STUDENT_PRESETS, "custom")
    assert leaves["teacher.cnn.preset"].choices == schema.CNN_PRESETS
    assert leaves["teacher.arch"].choices == schema.TEACHER_ARCHS
    with pytest.raises(ParamsError, match=f"teacher.arch must be {' or '.join(schema.TEACHER_ARCHS)}, got 'vit'"):
        build_teacher({**PARAMS["teacher"], "arch": "vit"}, FEATURES)
    assert {key for key, p in leaves.items() if p.choices == schema.PRECISIONS} == {
        "teacher.train.precision", "logits.precision", "train.precision", "evaluate.precision"}


def test_the_schema_augment_sections_are_the_augmenters():
    from mobileast.augment import SECTIONS
    assert {name: set(keys) for name, keys in schema.AUGMENT.items()} == SECTIONS
    assert schema.SCHEMA["teacher"]["augment"] == schema.AUGMENT


def test_the_configuration_reference_is_generated_from_the_schema(capsys):
    """docs/configuration.md is what `python -m mobileast params-doc` writes: every key, its
    type, allowed values, params.yaml's value and the stages reading it."""
    text = paramsdoc.render(REPO)
    assert (REPO / paramsdoc.DOC).read_text() == text, "stale: run python -m mobileast params-doc"
    assert paramsdoc.main(["--check", "--root", str(REPO)]) == 0
    rows = {line.split(" | ")[0].strip("| `"): line for line in text.splitlines() if line.startswith("| `")}
    assert list(rows) == list(schema.leaves())
    assert rows["dkd.alpha"] == ("| `dkd.alpha` | float | >= 0 | `1` | weight of the target-class term (TCKD) of DKD "
                                 "| student_train |")
    assert rows["train.optimizer"].split(" | ")[2] == "one of adam, adamw"
    assert rows["data.workers"].endswith("| demo_data (no dependency), resample (no dependency) |")
    assert "teacher_train" in rows["features.n_mels"] and "student_train" in rows["features.n_mels"]
