"""The data stages as DVC runs them (`python -m stages.<name>` in a project directory)."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def run_stage(project: Path, name: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "src")])}  # this checkout's code
    return subprocess.run([sys.executable, "-m", f"stages.{name}"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def project(tmp_path, make_demo_config):
    """A project directory with the repository's dvc.yaml and a tiny params.yaml."""
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    demo = {key: list(value) if isinstance(value, tuple) else value
            for key, value in dataclasses.asdict(make_demo_config()).items()}
    params = {"data": {"source": "demo", "root": "data/demo", "on_bad_file": "error", "sample_rate": 16000,
                       "workers": 2, "split": 100, "split_dir": "evaluation_setup", "split_seed": 0},
              "demo": demo}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path


def set_data_params(project: Path, **values) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"].update(values)
    (project / "params.yaml").write_text(yaml.safe_dump(params))


def test_demo_pipeline(project):
    for stage in ("demo_data", "resample", "reassemble"):
        result = run_stage(project, stage)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"{stage}: ")
    report = json.loads((project / "data/resampled/report.json").read_text())
    assert report["source"] == "demo" and report["sample_rate"] == 16000 and report["skipped"] == []
    recordings = json.loads((project / "data/recordings/report.json").read_text())
    assert recordings["clips"] == report["folds"]["train"]["clips"]
    assert recordings["splits"]["source"] == "drawn"  # the demo has no split files
    assert recordings["splits"]["recordings"]["100"] == recordings["recordings"]
    assert sorted(p.name for p in (project / "data").iterdir()) == ["demo", "recordings", "resampled"]
    assert sorted(p.name for p in (project / "data/recordings").iterdir()) == ["recordings.csv", "report.json",
                                                                               "splits.csv"]


def test_tau22_source_with_a_bad_file_fails_cleanly(project, tiny_dataset):
    missing = sorted((tiny_dataset / "audio").iterdir())[3]
    missing.unlink()
    set_data_params(project, source="tau22", root=str(tiny_dataset))
    assert run_stage(project, "demo_data").returncode == 0
    assert [p.name for p in (project / "data/demo").iterdir()] == ["README.txt"]
    result = run_stage(project, "resample")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"audio/{missing.name} (file not found)" in result.stderr
    assert sorted(p.name for p in (project / "data").iterdir()) == ["demo"]


def test_demo_source_requires_the_demo_root(project):
    set_data_params(project, root="elsewhere")
    result = run_stage(project, "resample")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "resample: data.source is demo, so data.root must be data/demo" in result.stderr


def test_moving_the_dataset_or_changing_workers_leaves_the_store_unchanged(project, tiny_dataset, tmp_path):
    """The resampled store (DVC's hash of it) depends on the audio, not on where it lies, also
    when a skipped unreadable file's reason is in the report (libsndfile quotes its path)."""
    unreadable = sorted((tiny_dataset / "audio").iterdir())[5]
    unreadable.write_bytes(b"RIFF\x10\x00\x00\x00WAVEnot audio")
    digests = []
    for workers in (1, 2):
        root = tiny_dataset if workers == 1 else tiny_dataset.rename(tmp_path / "moved")
        set_data_params(project, source="tau22", root=str(root), workers=workers, on_bad_file="skip")
        assert run_stage(project, "resample").returncode == 0
        digests.append({p.name: p.read_bytes() for p in (project / "data/resampled").iterdir()})
    assert digests[0] == digests[1]
    report = json.loads(digests[0]["report.json"])
    assert [(s["filename"], s["reason"].split(":")[0]) for s in report["skipped"]] == \
        [(f"audio/{unreadable.name}", "unreadable")]
    assert f"'audio/{unreadable.name}'" in report["skipped"][0]["reason"]  # libsndfile's message, relative name
    assert str(tmp_path) not in digests[0]["report.json"].decode()


def test_a_typo_in_params_stops_the_stage_naming_it(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"]["on_bad_fle"] = params["data"].pop("on_bad_file")
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    result = run_stage(project, "demo_data")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "unknown key 'on_bad_fle' in section 'data' (known keys: on_bad_file, root, sample_rate, source, " \
           "split, split_dir, split_seed, workers)" in result.stderr


def test_a_killed_stage_leaves_a_scratch_directory_that_the_next_run_removes(project):
    script = ("import os, signal\nfrom mobileast.files import atomic_output\n"
              "with atomic_output('data/resampled') as tmp:\n    tmp.mkdir()\n    (tmp / 'part').write_text('x')\n"
              "    os.kill(os.getpid(), signal.SIGKILL)\n")
    subprocess.run([sys.executable, "-c", script], cwd=project, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert (project / "data/.resampled.tmp").is_dir()
    for stage in ("demo_data", "resample"):
        assert run_stage(project, stage).returncode == 0
    assert sorted(p.name for p in (project / "data").iterdir()) == ["demo", "resampled"]
