"""Profiles: every profile applies to params.yaml and yields params every stage accepts and
that do not depend on the workspace's values in what the profile defines; --apply keeps
the file's comments and records the profiles; --dvc-args round-trips; docs/tau22.md shows
them verbatim."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mobileast import profiles
from mobileast.augment import Augmenter
from mobileast.errors import InputError, ParamsError
from mobileast.params import check_params, read_params, read_yaml, select
from mobileast.distill import DistillLoss
from mobileast.models import build_preset, build_student
from mobileast.models.passt import PaSSTConfig
from mobileast.schema import AUGMENT, SCHEMA
from mobileast.training.settings import TrainSettings

REPO = Path(__file__).resolve().parents[1]
DIRECTORY = REPO / "profiles"
NAMES = profiles.available(DIRECTORY)
SUBMISSIONS = [name for name in NAMES if name.startswith("tau22-sub")]
SPLIT_PROFILES = [name for name in NAMES if name.startswith("tau22-split")]
ROOT = {"data.root": "/datasets/tau22"}
PIPELINE = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
COMBINATIONS = [[name] for name in NAMES] + [["tau22-passt", name] for name in SUBMISSIONS + SPLIT_PROFILES]


def test_the_profiles_exist():
    assert NAMES == ["tau22-passt", "tau22-split10", "tau22-split100", "tau22-split25", "tau22-split5", "tau22-split50",
                     "tau22-sub1", "tau22-sub2", "tau22-sub3", "tau22-sub4"]


@pytest.mark.parametrize("names", COMBINATIONS)
def test_profile_applied_to_params_builds_every_stage(names):
    loaded = [profiles.load_profile(name, DIRECTORY) for name in names]
    params = profiles.apply(read_params(REPO / "params.yaml"), profiles.resolve(loaded, ROOT))
    check_params(params)
    for stage, definition in PIPELINE.items():
        declared = [key for key in definition.get("params", []) if isinstance(key, str)]
        check_params(params, declared)
        select(params, declared)
    for section in (params["augment"], params["teacher"]["augment"]):
        Augmenter.from_params(section, params["features"]["sample_rate"])
    for section in (params["train"], params["teacher"]["train"]):
        TrainSettings.from_params(section, params["seed"])
    DistillLoss.from_params(params)
    student = build_student(params["student"], params["features"])
    assert student.cfg.input_size == (256, 64)
    teacher = params["teacher"]
    if teacher["arch"] == "passt":
        PaSSTConfig(**{k: v for k, v in teacher["passt"].items() if k != "checkpoint"})
    else:
        build_preset(teacher["cnn"]["preset"], **teacher["cnn"]["custom"])
    split = {"split": params["data"]["split"]} if any(name in SPLIT_PROFILES for name in names) else {}
    assert params["data"] == {**read_params(REPO / "params.yaml")["data"], "source": "tau22",
                              "root": "/datasets/tau22", **split}


def test_submission_profiles_set_the_report_setting():
    for name in SUBMISSIONS:
        number = int(name[-1])
        o = profiles.load_profile(name, DIRECTORY).overrides
        assert o["student.preset"] == f"sub{number}"
        assert (o["dkd.alpha"], o["dkd.beta"], o["dkd.T"]) == (5, 10, 4)
        assert o["augment.mixup.alpha"] == o["augment.mixstyle.alpha"] == 0.3
        assert o["augment.mixstyle.p"] == (0.6 if number in (1, 3) else 0.5)
        assert o["train.epochs"] == 600 and o["train.schedule.decay_end_epoch"] == -200  # epoch 400
        assert [name for name in AUGMENT if o[f"augment.{name}.enabled"]] == ["mixup", "mixstyle"]
        assert (o["features.n_mels"], o["features.hop_length"], o["logits.hop_s"]) == (256, 500, 0.25)


def test_split_profiles_train_submission_1_on_their_split_teacher_included():
    sub1 = profiles.load_profile("tau22-sub1", DIRECTORY).overrides
    for name in SPLIT_PROFILES:
        split = int(name.removeprefix("tau22-split"))
        o = profiles.load_profile(name, DIRECTORY).overrides
        assert o["data.split"] == o["teacher.split"] == split
        assert {key: value for key, value in o.items() if key not in ("data.split", "teacher.split")} == sub1
        profiles.resolve([profiles.load_profile(n, DIRECTORY) for n in ("tau22-passt", name)], ROOT)  # they combine


def get(params: dict[str, Any], key: str) -> Any:
    for name in key.split("."):
        params = params[name]
    return params


def other(value: Any) -> Any:
    """A different value of the same kind."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value * 2 + 1
    if isinstance(value, str):
        return value + "-other"
    if isinstance(value, (list, dict)):
        return [*value, "other"] if isinstance(value, list) else {**value, "other": 1}
    return 1  # None


@pytest.mark.parametrize("names", COMBINATIONS)
def test_what_a_profile_defines_does_not_depend_on_the_workspace(names):
    """Applied to params.yaml, and to a params.yaml whose every value (but data.root) is another,
    a profile gives the same value to every key it decides: none comes from the demo params."""
    loaded = [profiles.load_profile(name, DIRECTORY) for name in names]
    overrides = profiles.resolve(loaded, ROOT)
    workspace = read_params(REPO / "params.yaml")
    keys = [key for section in SCHEMA for key in profiles.schema_keys(section)]
    changed = profiles.apply(workspace, {key: other(get(workspace, key)) for key in keys if key != "data.root"})
    a, b = profiles.apply(workspace, overrides), profiles.apply(changed, overrides)
    defines = [key for profile in loaded for key in profile.defines]
    decided = profiles.decided_keys(defines, lambda key: get(a, key))
    assert decided == profiles.decided_keys(defines, lambda key: get(b, key))
    assert {key: get(a, key) for key in decided} == {key: get(b, key) for key in decided}
    assert get(a, "seed") != get(b, "seed")  # what no profile defines stays the workspace's
    if any(name in SUBMISSIONS for name in names):
        assert {"features.sample_rate", "features.f_max", "logits.hop_s", "augment.noise.enabled",
                "augment.time_shift.enabled", "augment.masking.enabled", "student.custom"} <= set(decided)
        assert "augment.noise.snr_db_min" not in decided and "train.nproc" not in decided
    if "tau22-passt" in names:
        assert {f"teacher.augment.{name}.enabled" for name in AUGMENT} <= set(decided)


def test_a_profile_must_set_what_it_defines(tmp_path):
    (tmp_path / "partial.yaml").write_text("defines: [augment]\noverrides:\n  augment.mixup.enabled: false\n")
    with pytest.raises(InputError, match=r"leaves augment\.time_shift\.enabled, augment\.time_shift\.max_s, "):
        profiles.load_profile("partial", tmp_path)
    (tmp_path / "_base.yaml").write_text("defines: [dkd]\noverrides:\n  dkd.alpha: 5\n")
    (tmp_path / "child.yaml").write_text("extends: _base\noverrides:\n  dkd.beta: 10\n")
    with pytest.raises(InputError, match=r"defines dkd but leaves dkd\.T, dkd\.warmup_epochs, dkd\.ce_weight "):
        profiles.load_profile("child", tmp_path)
    schedule = "".join(f"  train.schedule.{key}: 1\n" for key in SCHEMA["train"]["schedule"])
    (tmp_path / "train.yaml").write_text(f"defines: [train.schedule, distill]\noverrides:\n  distill.method: kd\n{schedule}")
    assert profiles.load_profile("train", tmp_path).defines == ("train.schedule", "distill")
    with pytest.raises(InputError, match="a base that profiles extend"):
        profiles.load_profile("_base", tmp_path)
    assert profiles.available(tmp_path) == ["child", "partial", "train"]


def test_apply_keeps_comments_and_every_other_key(tmp_path):
    target = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", target)
    before = target.read_text()
    assert profiles.main(["tau22-passt", "tau22-sub3", "--set", "data.root=/x", "--set", "train.epochs=1",
                          "--apply", "--params", str(target)]) == 0
    after = target.read_text()
    comments = [line.split("#", 1)[1] for line in before.splitlines() if "#" in line]
    assert all(comment in after for comment in comments)
    overrides = profiles.resolve([profiles.load_profile(n, DIRECTORY) for n in ("tau22-passt", "tau22-sub3")],
                                 {"data.root": "/x", "train.epochs": 1})
    assert read_params(target) == profiles.apply(read_params(REPO / "params.yaml"),
                                                 {**overrides, "profile": "tau22-passt v2 + tau22-sub3 v2"})
    assert re.search(r"^  f_max: null +#", after, re.M)  # not `f_max:`
    assert read_params(target)["teacher"]["train"]["schedule"]["min_lr"] == 1e-7  # a float, not '1e-07'
    assert re.search(r"min_lr: 1\.0e-07", after)


def test_dvc_args_read_back_as_the_overrides(capsys):
    assert profiles.main(["tau22-sub2", "--set", "data.root=/data/my tau22", "--dvc-args"]) == 0
    lines = capsys.readouterr().out.splitlines()
    parsed = {}
    for line in lines:
        flag, assignment = shlex.split(line)  # as xargs splits them
        key, value = assignment.split("=", 1)
        assert flag == "-S"
        parsed[key] = read_yaml(value)
    expected = profiles.resolve([profiles.load_profile("tau22-sub2", DIRECTORY)], {"data.root": "/data/my tau22"})
    assert parsed == {**expected, "profile": "tau22-sub2 v2"}


def test_bad_profiles_and_overrides_are_refused(tmp_path, capsys):
    (tmp_path / "typo.yaml").write_text("version: 1\noverrides:\n  train.weight_decy: 0.1\n")
    with pytest.raises(ParamsError, match="unknown key 'weight_decy' in section 'train'"):
        profiles.load_profile("typo", tmp_path)
    (tmp_path / "section.yaml").write_text("overrides:\n  train.schedule: {}\n")
    with pytest.raises(ParamsError, match="is a section"):
        profiles.load_profile("section", tmp_path)
    (tmp_path / "other.yaml").write_text("overrides:\n  dkd.alpha: 2\n")
    sub1 = profiles.load_profile("tau22-sub1", DIRECTORY)
    with pytest.raises(ParamsError, match="disagree on dkd.alpha"):
        profiles.resolve([sub1, profiles.load_profile("other", tmp_path)], ROOT)
    assert profiles.main(["tau22-sub1", "--apply", "--params", str(tmp_path / "x.yaml")]) == 2
    assert "needs --set data.root" in capsys.readouterr().err


def doc_blocks() -> dict[str, str]:
    """docs/tau22.md's fenced blocks introduced by `<!-- profile output: NAMES -->`."""
    text = (REPO / "docs/tau22.md").read_text()
    blocks = {}
    for names, indent, block in re.findall(r"<!-- profile output: ([\w\- ]+) -->\n( *)```yaml\n(.*?)\n\2```", text, re.S):
        blocks[names] = "".join(line.removeprefix(indent) + "\n" for line in block.split("\n"))
    return blocks


def test_docs_show_the_profiles_as_the_command_prints_them(capsys):
    blocks = doc_blocks()
    assert set(blocks) >= {"tau22-sub1", "tau22-passt"}
    for names, block in blocks.items():
        assert profiles.main(names.split()) == 0
        assert block == capsys.readouterr().out, f"docs/tau22.md block of {names} is out of date"


def test_output_cut_short_by_the_reader_is_no_error():
    """`python -m mobileast profile ... --dvc-args | head -1`: the closed pipe ends the command quietly."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    command = [sys.executable, "-m", "mobileast", "profile", "tau22-passt", "tau22-sub1", "--set", "data.root=/x",
               "--dvc-args"]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # before the command writes (it takes a second to start)
    assert process.wait(timeout=120) == 0
    assert process.stderr.read() == b""


def test_a_profile_may_define_a_top_level_key():
    decided = profiles.decided_keys(["seed", "augment.noise"], lambda key: False)
    assert decided == ["seed", "augment.noise.enabled"]  # a switched-off augmentation: only its switch
