"""Profiles: every profile applies to params.yaml and yields params every stage accepts;
--apply keeps the file's comments; --dvc-args round-trips; the README shows them verbatim."""
from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
import yaml

from mobileast import profiles
from mobileast.augment import Augmenter
from mobileast.config import ParamsError, check_params, read_params, read_yaml, select
from mobileast.distill import DistillLoss
from mobileast.models import build_preset, build_student
from mobileast.models.passt import PaSSTConfig
from mobileast.train import TrainSettings

REPO = Path(__file__).resolve().parents[1]
DIRECTORY = REPO / "profiles"
NAMES = profiles.available(DIRECTORY)
SUBMISSIONS = [name for name in NAMES if name.startswith("tau22-sub")]
ROOT = {"data.root": "/datasets/tau22"}
PIPELINE = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def test_the_five_profiles_exist():
    assert NAMES == ["tau22-passt", "tau22-sub1", "tau22-sub2", "tau22-sub3", "tau22-sub4"]


@pytest.mark.parametrize("names", [[name] for name in NAMES] + [["tau22-passt", name] for name in SUBMISSIONS])
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
    assert params["data"] == {**read_params(REPO / "params.yaml")["data"], "source": "tau22",
                              "root": "/datasets/tau22"}


def test_submission_profiles_set_the_report_setting():
    for name in SUBMISSIONS:
        number = int(name[-1])
        o = profiles.load_profile(name, DIRECTORY).overrides
        assert o["student.preset"] == f"sub{number}"
        assert (o["dkd.alpha"], o["dkd.beta"], o["dkd.T"]) == (5, 10, 4)
        assert o["augment.mixup.alpha"] == o["augment.mixstyle.alpha"] == 0.3
        assert o["augment.mixstyle.p"] == (0.6 if number in (1, 3) else 0.5)
        assert o["train.epochs"] == 600 and o["train.schedule.decay_end_epoch"] == 400


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
    assert read_params(target) == profiles.apply(read_params(REPO / "params.yaml"), overrides)
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
    assert parsed == expected


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


def readme_blocks() -> dict[str, str]:
    """The README's fenced blocks introduced by `<!-- profile output: NAMES -->`."""
    text = (REPO / "README.md").read_text()
    blocks = {}
    for names, indent, block in re.findall(r"<!-- profile output: ([\w\- ]+) -->\n( *)```yaml\n(.*?)\n\2```", text, re.S):
        blocks[names] = "".join(line.removeprefix(indent) + "\n" for line in block.split("\n"))
    return blocks


def test_readme_shows_the_profiles_as_the_command_prints_them(capsys):
    blocks = readme_blocks()
    assert set(blocks) >= {"tau22-sub1", "tau22-passt"}
    for names, block in blocks.items():
        assert profiles.main(names.split()) == 0
        assert block == capsys.readouterr().out, f"README block of {names} is out of date"
