"""dvc.yaml stays exact: every stage depends on precisely the code it runs and the
params keys its script declares, so `dvc exp run -S key=value` re-runs what it must
and nothing else, and every stage but `track` can be restored from DVC's run cache."""
import importlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mobileast import dvcdeps, imports, schema
from mobileast.params import read_params

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


STAGE_COMMAND = "stages/python -m stages."  # stages/python: the venv's interpreter, found from any copy
STAGES = sorted(name for name, stage in PIPELINE.items() if stage["cmd"].startswith(STAGE_COMMAND))
CODE = {stage.name: set(stage.code) for stage in dvcdeps.expected(ROOT)}  # the generated code deps


def test_every_stage_runs_a_stage_script():
    assert STAGES == sorted(PIPELINE)


@pytest.mark.parametrize("stage", STAGES)
def test_code_deps_are_exactly_what_the_stage_imports(stage):
    module = PIPELINE[stage]["cmd"].split()[2]
    code_deps = {d for d in PIPELINE[stage]["deps"] if d.endswith(".py")}
    assert code_deps == imports.code_closure(module, ROOT, tuple(imports.UNTRACKED_CODE)) == CODE[stage]


@pytest.mark.parametrize("stage", STAGES)
def test_params_are_exactly_what_the_script_declares(stage):
    script = importlib.import_module(PIPELINE[stage]["cmd"].split()[2])
    declared = PIPELINE[stage].get("params", [])
    if getattr(script, "PARAMS", None) is None:  # reads the whole file
        assert declared == ["params.yaml"] or declared == [{"params.yaml": None}]
    else:
        assert declared == script.PARAMS
    # params read but declared as no dependency: outputs must not depend on them
    assert set(getattr(script, "UNTRACKED", [])) <= {"data.workers"}




def run_launcher(cwd: Path, bin_dir: Path) -> tuple[str, str]:
    """stages/python -c ... run from `cwd` with only `bin_dir` on PATH -> (the interpreter, its PYTHONPATH)."""
    for tool in ("dirname",):  # what the launcher calls besides the shell's builtins
        if not (bin_dir / tool).exists():
            (bin_dir / tool).symlink_to(shutil.which(tool))
    proc = subprocess.run([str(ROOT / "stages" / "python"), "-c",
                           "import os, sys; print(sys.executable); print(os.environ['PYTHONPATH'])"],
                          cwd=cwd, env={"PATH": str(bin_dir)}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    executable, pythonpath = proc.stdout.splitlines()
    return executable, pythonpath


def fake_venv(directory: Path) -> str:
    """A .venv in `directory` whose python is this one; the path stages/python would run."""
    (directory / ".venv" / "bin").mkdir(parents=True)
    (directory / ".venv" / "bin" / "python").symlink_to(sys.executable)
    return str(directory / ".venv" / "bin" / "python")


def fake_project(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "dvc.yaml").write_text("stages: {}\n")
    return directory


def test_stage_interpreter_is_the_venv_found_upwards(tmp_path):
    """From a DVC experiment copy inside the project: the project's .venv, the copy's src first."""
    venv = fake_venv(fake_project(tmp_path / "project"))
    copy = fake_project(tmp_path / "project" / ".dvc" / "tmp" / "exps" / "tmpx")
    (tmp_path / "bin").mkdir()
    assert run_launcher(copy, tmp_path / "bin") == (venv, str(copy / "src"))
    assert run_launcher(tmp_path / "project", tmp_path / "bin") == (venv, str(tmp_path / "project" / "src"))


def test_stage_interpreter_never_comes_from_above_the_project(tmp_path):
    """Another project's .venv in an ancestor directory is not run, from the checkout or from
    an experiment copy; the project's own .venv is, even with another one above it."""
    fake_venv(tmp_path)
    project = fake_project(tmp_path / "work" / "project")
    copy = fake_project(project / ".dvc" / "tmp" / "exps" / "tmpx")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python3").symlink_to(sys.executable)
    python3 = str(tmp_path / "bin" / "python3")
    assert run_launcher(project, tmp_path / "bin")[0] == python3
    assert run_launcher(copy, tmp_path / "bin")[0] == python3
    venv = fake_venv(project)
    assert run_launcher(copy, tmp_path / "bin")[0] == venv
    assert run_launcher(project, tmp_path / "bin")[0] == venv


def test_stage_interpreter_without_a_venv_is_python3_on_path(tmp_path):
    """No .venv: `python3` (many systems have no `python`)."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python3").symlink_to(sys.executable)
    assert run_launcher(tmp_path, tmp_path / "bin") == (str(tmp_path / "bin" / "python3"), str(tmp_path / "src"))

def declared_outs(stage: dict) -> dict[str, list[dict]]:
    """The stage's outs, metrics and plots as {kind: [{"path": ..., **flags}]}."""
    def entry(item: str | dict) -> dict:
        if isinstance(item, str):
            return {"path": item}
        [(path, flags)] = item.items()
        return {"path": path, **(flags or {})}

    return {kind: [entry(item) for item in stage.get(kind, [])] for kind in ("outs", "metrics", "plots")}


@pytest.mark.parametrize("stage", [name for name in STAGES if name != "track"])
def test_every_stage_but_track_can_be_restored_from_the_run_cache(stage):
    """DVC saves a stage run to its run cache only if the stage is not always_changed, has
    deps and outputs, no `persist` output and no plain out with `cache: false` (metrics and
    plots may have it): then `dvc exp run` back to params already tried restores, not reruns."""
    declared = declared_outs(PIPELINE[stage])
    assert not PIPELINE[stage].get("always_changed") and PIPELINE[stage]["deps"] and any(declared.values())
    assert not [out["path"] for entries in declared.values() for out in entries if out.get("persist")]
    assert not [out["path"] for out in declared["outs"] if out.get("cache") is False]


def test_track_runs_every_time():
    assert PIPELINE["track"]["always_changed"] is True


def test_dvc_deps_check_passes_on_the_project(capsys):
    assert dvcdeps.main(["--check", "--root", str(ROOT)]) == 0
    assert capsys.readouterr().out == ""


def project_copy(tmp_path: Path) -> Path:
    """dvc.yaml and the code of the project in tmp_path/project."""
    copy = tmp_path / "project"
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "src", copy / "src", ignore=ignore)
    shutil.copytree(ROOT / "stages", copy / "stages", ignore=ignore)
    shutil.copy(ROOT / "dvc.yaml", copy)
    shutil.copy(ROOT / "params.yaml", copy)
    shutil.copytree(ROOT / "docs", copy / "docs")
    return copy


def test_dvc_deps_check_names_stage_and_file_and_write_mends(tmp_path, capsys):
    copy = project_copy(tmp_path)
    dvc = copy / "dvc.yaml"
    text = dvc.read_text()
    reassemble = text.index("  reassemble:")
    store = text.index("      - src/mobileast/data/store.py\n", reassemble)
    text = text[:store] + text[store:].replace("      - src/mobileast/data/store.py\n", "", 1)  # a dep dropped
    text = text.replace("      - src/mobileast/evaluate.py\n", "      - src/mobileast/evaluate.py\n"
                        "      - src/mobileast/progress.py\n", 1)  # an untracked module listed
    text = text.replace("      - logits.hop_s\n", "", 1)  # a param dropped (the first: student_train's)
    dvc.write_text(text)
    script = copy / "stages" / "complexity.py"
    script.write_text(script.read_text().replace("from stages import run", "from stages import run\nimport mobileast.plots"))
    assert dvcdeps.main(["--check", "--root", str(copy)]) == 1
    assert capsys.readouterr().out.splitlines() == [
        "dvc.yaml: stage reassemble: deps lack src/mobileast/data/store.py (imported by stages/reassemble.py)",
        "dvc.yaml: stage student_train: params are [seed, features, student, train, distill, dkd, augment, data.split] "
        "but stages/student_train.py declares PARAMS [seed, features, student, train, distill, dkd, augment, "
        "logits.hop_s, data.split]",
        "dvc.yaml: stage complexity: deps lack src/mobileast/plots.py (imported by stages/complexity.py)",
        "dvc.yaml: stage evaluate: deps list src/mobileast/progress.py, which is no dependency of any stage "
        f"({imports.UNTRACKED_CODE['src/mobileast/progress.py']})",
    ]
    assert dvcdeps.main(["--write", "--root", str(copy)]) == 0
    assert dvcdeps.main(["--check", "--root", str(copy)]) == 0
    mended = (ROOT / "dvc.yaml").read_text().replace(
        "      - src/mobileast/models/passt.py\n      - stages/__init__.py\n      - stages/complexity.py\n",
        "      - src/mobileast/models/passt.py\n      - src/mobileast/plots.py\n      - stages/__init__.py\n"
        "      - stages/complexity.py\n")
    assert dvc.read_text() == mended  # only the import added changed; comments, outs, other deps kept
    assert yaml.safe_load(dvc.read_text())["stages"]["complexity"]["deps"][-2:] == ["models/student.pt",
                                                                                   "models/student_int8.pt"]


def test_dvc_deps_write_sets_and_drops_params_blocks(tmp_path):
    copy = project_copy(tmp_path)
    for name, params in (("reassemble", '["seed"]'), ("evaluate", "[]")):
        script = copy / "stages" / f"{name}.py"
        script.write_text(re.sub(r"(?m)^PARAMS.*$", f"PARAMS = {params}", script.read_text()))
    dvcdeps.write(copy)
    stages = yaml.safe_load((copy / "dvc.yaml").read_text())["stages"]
    assert stages["reassemble"]["params"] == ["seed"] and "params" not in stages["evaluate"]
    assert list(stages["reassemble"])[:3] == ["cmd", "params", "deps"]
    assert stages["track"]["params"] == [{"params.yaml": None}]
    text = (copy / "dvc.yaml").read_text()
    (copy / "dvc.yaml").write_text(text.replace("\nplots:\n", "\n  other:\n    cmd: stages/python -m stages.complexity\n"
                                                "    outs:\n      - x\n\nplots:\n"))
    dvcdeps.write(copy)  # a new stage without deps gets its code deps
    stages = yaml.safe_load((copy / "dvc.yaml").read_text())["stages"]
    assert stages["other"] == {"cmd": "stages/python -m stages.complexity", "deps": sorted(CODE["complexity"]),
                               "outs": ["x"]}


def test_a_new_schema_key_is_written_into_params_yaml_with_its_default(tmp_path, monkeypatch, capsys):
    """Adding a param is its schema entry (with a default) plus `dvc-deps --write`."""
    copy = project_copy(tmp_path)
    monkeypatch.setitem(schema.SCHEMA["train"], "clip_grad",
                        schema.number("float", "largest gradient norm (0 = no clipping)", 0, default=0.0))
    assert dvcdeps.main(["--check", "--root", str(copy)]) == 1
    assert capsys.readouterr().out.splitlines() == [
        "params.yaml: lacks train.clip_grad (--write adds the schema's default)",
        "docs/configuration.md: stale (python -m mobileast params-doc, or dvc-deps --write, rewrites it)"]
    assert dvcdeps.main(["--write", "--root", str(copy)]) == 0
    assert dvcdeps.main(["--check", "--root", str(copy)]) == 0
    assert read_params(copy / "params.yaml")["train"]["clip_grad"] == 0.0
    added = "  clip_grad: 0.0  # largest gradient norm (0 = no clipping)\n"
    text = (copy / "params.yaml").read_text()
    assert added in text and text.replace(added, "") == (ROOT / "params.yaml").read_text()
    assert text.index(added) > text.index("    min_lr:", text.index("\ntrain:"))  # after the schedule, as in the schema
    assert (copy / "dvc.yaml").read_text() == (ROOT / "dvc.yaml").read_text()  # student_train declares `train`
    assert "| `train.clip_grad` | float | >= 0 | `0.0` | largest gradient norm (0 = no clipping) | " \
           "student_train, device_models |" in (copy / "docs" / "configuration.md").read_text()


DATA_STAGES = ["demo_data", "resample", "reassemble"]
TRAINING_STAGES = ["teacher_train", "teacher_logits", "student_train", "quantize"]
BASICS = {f"src/mobileast/{name}.py" for name in ("__init__", "errors", "files", "labels", "params", "schema")}
# Not data/audio.py: the project's one audio reader, which training uses for augment.dir's impulse responses.
DATASET_CODE = {f"src/mobileast/data/{name}.py" for name in ("tau22", "parallel", "reassemble", "resample", "demo",
                                                             "download")}


@pytest.mark.parametrize("stage", DATA_STAGES)
def test_data_stages_run_no_model_training_inference_or_tracking_code(stage):
    """Only the data package, the basics (errors, files, labels, params) and the stage scripts."""
    other = {path for path in CODE[stage] if not path.startswith(("src/mobileast/data/", "stages/"))}
    assert other <= BASICS, other


@pytest.mark.parametrize("stage", TRAINING_STAGES)
def test_training_stages_do_not_run_the_dataset_validator_or_the_data_stages_code(stage):
    assert not CODE[stage] & DATASET_CODE
    assert "src/mobileast/data/store.py" in CODE[stage]  # what they read of the data


def test_evaluate_does_not_run_the_training_engine():
    assert not {f for f in CODE["evaluate"] if f.startswith("src/mobileast/training/")}
    assert "src/mobileast/teachers.py" not in CODE["evaluate"]
    assert {f for f in CODE["student_train"] if f.startswith("src/mobileast/training/")}  # the check can fail


def test_progress_schema_and_tracking_changes_re_run_no_stage_but_track():
    assert all(not CODE[stage] & set(imports.UNTRACKED_CODE) for stage in STAGES)
    assert set(imports.UNTRACKED_CODE) == {"src/mobileast/progress.py", "src/mobileast/schema.py",
                                           "src/mobileast/tracking.py"}
    assert PIPELINE["track"]["always_changed"] is True  # why tracking.py may be untracked
