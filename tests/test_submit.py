"""`submit` in the 2023, 2024 and 2025 formats on a tiny trained model: the files, their
names and the required fields of the organisers' validators (tests/submission_checks.py),
the development results, and the 2025 inference package run on WAV files."""
from __future__ import annotations

import csv
import importlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
import yaml

from mobileast import deploy, metrics, predict, submit
from mobileast.complexity import onnx_param_memory_bytes
from mobileast.data.crops import ClipSource
from mobileast.evaluate import fold_logits
from mobileast.labels import DEVICES, SCENES
from mobileast.submission import common, dcase2024
from mobileast.submission import inference_package as api
from submission_checks import meta_errors, output_errors
from test_export import TRAINED_WITH, project, write_wav  # noqa: F401 (module fixture)
from test_quantize import one_thread  # noqa: F401 (autouse fixture)

PARAMS = Path(__file__).parents[1] / "params.yaml"
N_DEV = 18  # evaluate clips: every class and every TAU22 device at least once


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A resampled store whose evaluate fold holds every class and device."""
    root = tmp_path_factory.mktemp("store")
    clips = (np.random.default_rng(3).standard_normal((N_DEV, 32000)) * 3000).astype(np.int16)
    pd.DataFrame({"filename": [f"c{i}.wav" for i in range(N_DEV)],
                  "scene_label": [SCENES[i % 10] for i in range(N_DEV)], "slice": 0,
                  "device": [DEVICES[i % 9] for i in range(N_DEV)], "fold": "evaluate",
                  "offset": np.arange(N_DEV) * 32000, "length": 32000}).to_csv(root / "index.csv", index=False)
    np.save(root / "evaluate.npy", clips.reshape(-1))
    return root


@pytest.fixture(scope="module")
def audio(tmp_path_factory) -> Path:
    """An evaluation-style audio folder: numbered 1 s WAV files, one unreadable."""
    folder = tmp_path_factory.mktemp("eval") / "audio"
    folder.mkdir()
    for i, (rate, channels) in enumerate([(44100, 1), (48000, 2), (32000, 1)]):
        write_wav(folder / f"{i}.wav", rate, channels)
    (folder / "3.wav").write_bytes(b"RIFF-not-audio")
    return folder


def run(args: list[str]) -> int:
    return submit.main([*args, "--params", str(PARAMS)])


def test_results_block_follows_a_slow_reference():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((40, 10)) * 3
    labels = rng.integers(0, 9, 40)  # class 9 absent
    devices = np.array(["a", "b", "s4", "x"])[rng.integers(0, 4, 40)]
    block = common.results_block(logits, labels, devices)

    def reference(rows):
        if not rows:
            return {"accuracy": "FILL IN", "logloss": "FILL IN"}
        right = sum(int(np.argmax(logits[r]) == labels[r]) for r in rows)
        nll = [-(logits[r][labels[r]] - np.log(np.sum(np.exp(logits[r])))) for r in rows]
        return {"accuracy": round(100 * right / len(rows), 2), "logloss": round(float(np.mean(nll)), 4)}

    assert block["overall"] == reference(list(range(40)))
    assert block["class_wise"] == {c: reference([r for r in range(40) if labels[r] == i]) for i, c in enumerate(SCENES)}
    assert list(block["device_wise"]) == [*DEVICES, "x"]
    assert block["device_wise"] == {d: reference([r for r in range(40) if devices[r] == d]) for d in [*DEVICES, "x"]}


def test_2023_package_passes_the_validator_checks(project, store, audio, tmp_path, capsys):
    out = tmp_path / "out"
    status = run(["--model", str(project / "student_int8.onnx"), "--audio-dir", str(audio), "--out", str(out),
                  "--label", "Doe_XYZ_task1_1", "--resampled", str(store)])
    assert status == 1  # the unreadable file
    assert "3.wav" in capsys.readouterr().err
    assert output_errors(out / "Doe_XYZ_task1_1.output.csv", "Doe_XYZ_task1_1", n_files=3) == []
    with open(out / "Doe_XYZ_task1_1.output.csv") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    assert [r[0] for r in rows[1:]] == ["audio/0.wav", "audio/1.wav", "audio/2.wav"]
    for row in rows[1:]:
        scores = np.array(row[2:], float)
        assert row[1] == SCENES[int(scores.argmax())] and scores.sum() == pytest.approx(1, abs=1e-4)
    bad = (out / "Doe_XYZ_task1_1.bad_files.tsv").read_text().splitlines()
    assert bad[0] == "filename\treason" and bad[1].startswith("audio/3.wav\t") and len(bad) == 2
    meta = yaml.safe_load((out / "Doe_XYZ_task1_1.meta.yaml").read_text())
    assert meta_errors(meta, "2023") == []
    complexity = json.loads((out / "Doe_XYZ_task1_1.complexity.json").read_text())
    memory = onnx_param_memory_bytes(project / "student_int8.onnx")
    assert complexity["param_memory_bytes"] == memory and complexity["params"] == 66_114
    assert meta["system"]["complexity"]["total_model_size"] == memory
    assert meta["system"]["complexity"]["total_parameters"] == 66_114
    assert 0 < meta["system"]["complexity"]["total_parameters_non_zero"] <= 66_114
    description = meta["system"]["description"]
    assert description["input_sampling_rate"] == "32kHz"
    assert description["complexity_management"].startswith("int8 post-training quantization")
    # what the model was trained with (carried through the int8 and ONNX models), not params.yaml;
    # the teacher, which the model does not know, from params.yaml (the cnn teacher: no external data)
    assert meta["pipeline_params"] == TRAINED_WITH and meta["pipeline_params_source"].startswith("the model")
    assert description["knowledge_distillation"] == "DKD (alpha 5, beta 10, T 4) from a cnn teacher"
    assert description["data_augmentation"] == "mixup"
    assert meta["system"]["external_datasets"] == []
    # the development results: the model on the store's evaluate fold, as the evaluate stage runs it
    model = common.load(project / "student_int8.onnx")
    clips = ClipSource(store, "evaluate")
    logits = fold_logits(model.module, model.meta, clips, 64, "fp32").numpy()
    expected = common.results_block(logits, clips.labels, clips.table["device"].to_numpy())
    assert meta["results"]["development_dataset"] == expected
    probs = metrics.softmax(logits)
    assert expected["overall"]["logloss"] == round(metrics.log_loss(clips.labels, probs), 4)


def test_2023_without_a_store_says_fill_in_and_passt_teacher_names_audioset(project):
    model = common.load(project / "student_int8.pt")
    assert common.development_results(model, None, 8)["overall"] == {"accuracy": "FILL IN", "logloss": "FILL IN"}
    params = yaml.safe_load(PARAMS.read_text())
    params["teacher"]["arch"] = "passt"
    assert common.external_datasets(model.meta, params)[0]["name"] == "AudioSet"
    fallback = common.pipeline_params(model.meta.replace(params=None), params)
    assert fallback["pipeline_params"] == params and fallback["pipeline_params_source"].startswith("params.yaml")


def test_nonzero_parameters_agree_between_torch_and_onnx(project):
    counts = {name: common.model_complexity(common.load(project / name))["params_nonzero"]
              for name in ("student.pt", "student.onnx", "student_int8.pt", "student_int8.onnx")}
    assert counts["student.pt"] == counts["student.onnx"] == 66_114  # a trained float model: no exact zeros
    assert counts["student_int8.pt"] < 66_114  # small weights round to int8 zero
    # the ONNX converter stores biases as int32 and re-quantizes the dynamically quantized
    # classifier statically: a few more elements round to zero there, never fewer
    assert 0 <= counts["student_int8.pt"] - counts["student_int8.onnx"] <= 66


def test_2024_package_one_output_per_split_and_per_split_results(project, store, audio, tmp_path):
    out = tmp_path / "out"
    models = [f"split{n}={project / 'student_int8.onnx'}" for n in (5, 10, 25, 50)]
    status = run(["--format", "2024", *sum([["--model", m] for m in models], []),
                  "--model", f"split100={project / 'student_int8.pt'}", "--audio-dir", str(audio),
                  "--out", str(out), "--label", "Doe_XYZ_task1_2", "--resampled", str(store)])
    assert status == 1
    for n in dcase2024.SPLITS:
        assert output_errors(out / f"Doe_XYZ_task1_2.output.split_{n}.csv", "Doe_XYZ_task1_2", n_files=3) == []
    assert not (out / "Doe_XYZ_task1_2.output.csv").exists()
    meta = yaml.safe_load((out / "Doe_XYZ_task1_2.meta.yaml").read_text())
    assert meta_errors(meta, "2024") == []
    dev = meta["results"]["development_dataset"]
    assert dev["split_5"] == dev["split_50"] and set(dev) == {f"split_{n}" for n in dcase2024.SPLITS}
    description = meta["system"]["description"]
    assert description["split_adaptations"].startswith("none") and description["system_adaptations"].startswith("none")
    complexity = json.loads((out / "Doe_XYZ_task1_2.complexity.json").read_text())
    assert meta["system"]["complexity"]["total_model_size"] == max(c["param_memory_bytes"] for c in complexity.values())


def test_2024_split_differences_and_model_flags():
    diffs = dcase2024.differences({5: {"data": {"split": 5}, "dkd": {"alpha": 1, "T": 2}},
                                   100: {"data": {"split": 100}, "dkd": {"alpha": 3, "T": 2}}},
                                  ignore=(dcase2024.SPLIT_KEY,))
    assert diffs == {"dkd.alpha": {5: 1, 100: 3}}
    assert dcase2024.describe_differences(diffs, "none") == "dkd.alpha: split 5 1, split 100 3"
    with pytest.raises(ValueError, match="missing: split50=PATH, split100=PATH"):
        dcase2024.parse_split_models(["split5=a", "10=b", "split25=c"])
    with pytest.raises(ValueError, match="split<N>=PATH"):
        dcase2024.parse_split_models(["split7=a"])


@pytest.mark.parametrize("args,message", [
    (["--label", "../x"], "not a DCASE submission label"),
    (["--label", "Doe_XYZ_task1_1/../../y"], "not a DCASE submission label"),
    (["--label", "Doe_XYZ_task2_1"], "not a DCASE submission label"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--format", "2024"], "split<N>=PATH"),
    (["--device-model", "a=m.onnx"], "--device-model is for --format 2025"),
])
def test_bad_flags_are_clear_errors_and_write_nothing(project, audio, tmp_path, capsys, args, message):
    out = tmp_path / "sub" / "out"
    status = run(["--model", str(project / "student_int8.onnx"), "--audio-dir", str(audio), "--out", str(out), *args])
    assert status == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "sub").exists()


def test_2025_package_routes_devices_and_runs_without_the_project(project, tmp_path):
    out = tmp_path / "pkg"
    status = run(["--format", "2025", "--model", str(project / "student_int8.onnx"),
                  "--device-model", f"a={project / 'student.onnx'}", "--out", str(out), "--label", "Doe_XYZ_task1_3"])
    assert status == 0
    package = out / "Doe_XYZ_task1"
    resources = package / "resources" / "Doe_XYZ_task1_3"
    routing = json.loads((resources / "routing.json").read_text())
    assert routing["general"] == "general.onnx" and routing["devices"] == {"a": "a.onnx"}
    complexity = json.loads((resources / "complexity.json").read_text())
    assert list(complexity["per_device"]) == list(DEVICES)
    assert complexity["max_Params"] == 66_114
    for name in ("general", "a"):
        assert json.loads((resources / f"{name}.complexity.json").read_text())["params"] == 66_114
    assert (out / "setup.py").is_file() and (out / "requirements.txt").is_file()
    files = []
    for i in range(3):
        files.append(tmp_path / f"{i}.wav")
        sf.write(files[-1], np.random.default_rng(i).uniform(-0.3, 0.3, 32000), 32000, subtype="PCM_16")
    sys.path.insert(0, str(out))
    try:
        package = importlib.import_module("Doe_XYZ_task1.Doe_XYZ_task1_3")
        logits, classes = package.predict([str(f) for f in files], ["a", "s9", "a"])
        model = package.load_model()
        assert package.get_model_for_device(model, "a") is model.devices["a"]
        assert package.get_model_for_device(model, "unknown") is model.general
    finally:
        sys.path.remove(str(out))
    assert classes == list(SCENES) and [tuple(x.shape) for x in logits] == [(10,)] * 3
    for f, device, got in zip(files, ["a", "s9", "a"], logits):
        module, meta = deploy.load_model_any(project / ("student.onnx" if device == "a" else "student_int8.onnx"))
        clip = predict.file_logits(f, module, deploy.frontend_for(meta), meta).logits
        torch.testing.assert_close(torch.softmax(got.double(), 0), torch.softmax(clip[0].double(), 0),
                                   rtol=0, atol=1e-5)
    stereo = tmp_path / "long.wav"
    sf.write(stereo, np.random.default_rng(9).uniform(-0.3, 0.3, (66150, 2)), 44100, subtype="PCM_24")
    script = ("import sys; from Doe_XYZ_task1 import Doe_XYZ_task1_3 as api; "
              f"logits, classes = api.predict([{str(stereo)!r}], ['s7']); "
              "assert logits[0].shape == (10,) and bool(logits[0].isfinite().all()); "
              "assert not [m for m in sys.modules if m.startswith('mobileast')]; print('ok')")
    done = subprocess.run([sys.executable, "-c", script], cwd=out, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "ok", done.stderr


def test_2025_package_reads_pcm_wav_as_soundfile_does(tmp_path):
    samples = np.random.default_rng(1).uniform(-0.9, 0.9, (500, 2))
    for subtype in ("PCM_16", "PCM_24", "PCM_32", "PCM_U8"):
        sf.write(tmp_path / "x.wav", samples, 16000, subtype=subtype)
        expected, rate = sf.read(tmp_path / "x.wav", dtype="float32")
        got, got_rate = api.read_wav(str(tmp_path / "x.wav"))
        assert got_rate == rate == 16000
        torch.testing.assert_close(torch.from_numpy(got), torch.from_numpy(expected.mean(axis=1)), rtol=0, atol=1e-6)
    tone = np.sin(2 * np.pi * 440 * np.arange(44100) / 44100).astype(np.float32)
    resampled = api.resample(tone, 44100, 32000)
    assert len(resampled) == 32000
    torch.testing.assert_close(torch.from_numpy(resampled),
                               torch.from_numpy(np.sin(2 * np.pi * 440 * np.arange(32000) / 32000).astype(np.float32)),
                               rtol=0, atol=1e-4)


def test_2025_refuses_training_checkpoints(project, tmp_path, capsys):
    status = run(["--format", "2025", "--model", str(project / "student.pt"), "--out", str(tmp_path / "p")])
    assert status == 2 and "deployed models" in capsys.readouterr().err
