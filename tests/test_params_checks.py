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

from mobileast.params import read_params
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
