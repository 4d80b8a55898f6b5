"""The predict command on a tiny deployed model: sample rates, channels, bad files, output."""
import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn

from mobileast import deploy, predict
from mobileast.data import audio
from mobileast.cli import main as cli_main
from mobileast.inference import clip_batches
from mobileast.inference import predict as infer

RATE = 16000
FEATURES = {"sample_rate": RATE, "n_fft": 512, "win_length": 400, "hop_length": 250, "n_mels": 30}
CLASSES = ["low", "mid", "high"]


class BandEnergy(nn.Module):
    """Logits = the loudest mel band (time-averaged log-mel) in each of the low, middle and
    high third of the bands: a model whose answer depends on the input's spectrum."""

    def forward(self, x):
        return x.mean(dim=3).reshape(x.shape[0], 3, 10).amax(dim=2)


def tone(seconds, rate, freq=440.0, channels=1):
    """An amplitude-modulated sine, shape (samples, channels): the same analytic signal
    at every sample rate."""
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * freq * t) * (1 + 0.5 * np.sin(2 * np.pi * 0.7 * t))
    return np.repeat(wave[:, None], channels, axis=1).astype(np.float32)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "band.pt"
    meta = deploy.ModelMeta(features=FEATURES, classes=CLASSES, arch="band")
    deploy.save_deployed(BandEnergy(), path, meta)
    return path


@pytest.fixture(scope="module")
def loaded(model_path):
    model, meta = deploy.load_deployed(model_path)
    return model, deploy.frontend_for(meta), meta


@pytest.mark.parametrize("block", [7, 100, 130, 1000])
def test_clip_cutter(block):
    clip, tail = 100, 50
    for n, expected in [(30, [0]), (300, [0, 100, 200]), (340, [0, 100, 200]), (350, [0, 100, 200, 250])]:
        wave = np.arange(1, n + 1, dtype=np.float32)
        cutter = predict.ClipCutter(clip, tail)
        clips = list(cutter.clips(wave[i:i + block] for i in range(0, n, block)))
        assert cutter.starts == expected and cutter.samples == n and len(clips) == len(expected)
        for c, s in zip(clips, cutter.starts):  # slow obvious reference
            want = [wave[i] if i < n else 0.0 for i in range(s, s + clip)]
            np.testing.assert_array_equal(c, want)


def test_file_is_streamed_in_blocks_with_whole_file_resampling(tmp_path, loaded, monkeypatch):
    """Read in blocks of 1 s (3.5 blocks), resampled 44.1 -> 16 kHz block by block: the
    clips are those of the whole file read at once and resampled in one go."""
    model, frontend, meta = loaded
    stereo = tone(3.5, 44100, 700.0, channels=2)
    stereo[:, 1] *= -0.3
    sf.write(tmp_path / "a.wav", stereo, 44100, subtype="FLOAT")
    monkeypatch.setattr(audio, "BLOCK_SECONDS", 1)
    reader = audio.AudioReader(tmp_path / "a.wav")
    blocks = list(reader.blocks())
    assert [len(b) for b in blocks] == [44100, 44100, 44100, 22050]
    whole = audio.resample(stereo.mean(axis=1, dtype=np.float32), 44100, RATE)
    streamed = np.concatenate(list(audio.resample_blocks(iter(blocks), 44100, RATE)))
    np.testing.assert_allclose(streamed, whole, rtol=0, atol=1e-6)
    seen = []

    def watched(model, frontend, batches, device):
        return infer(model, frontend, (seen.append(b) or b for b in batches), device)

    monkeypatch.setattr(predict, "predict", watched)
    result = predict.file_logits(tmp_path / "a.wav", model, frontend, meta, batch_size=2)
    assert [len(b) for b in seen] == [2, 2] and torch.cat([b.row for b in seen]).tolist() == [0, 1, 2, 3]
    assert result.starts.tolist() == [0, RATE, 2 * RATE, len(whole) - RATE] and result.samples == len(whole)
    clips = np.stack([whole[s:s + RATE] for s in result.starts])
    torch.testing.assert_close(result.logits, model(frontend(torch.from_numpy(clips))).detach(), rtol=0, atol=1e-5)


def test_absurd_sample_rate_and_batch_size_are_refused(tmp_path, model_path, capsys):
    sf.write(tmp_path / "one_hz.wav", np.zeros(100, np.int16), 1)  # a header claiming 1 Hz
    sf.write(tmp_path / "good.wav", tone(1.0, RATE), RATE)
    files = [str(tmp_path / "one_hz.wav"), str(tmp_path / "good.wav")]
    assert predict.main(["--model", str(model_path), "--json", *files]) == 1
    captured = capsys.readouterr()
    assert captured.err.strip() == (f"error: {files[0]}: sample rate 1 Hz is outside 1000..768000 Hz "
                                    "(a broken or mislabelled header)")
    doc = json.loads(captured.out)
    assert "error" in doc["files"][0] and doc["files"][1]["label"] in CLASSES
    for size in ("0", "-3", "x"):
        with pytest.raises(SystemExit):
            predict.main(["--model", str(model_path), "--batch-size", size, files[1]])
        assert "argument --batch-size: " in capsys.readouterr().err


def test_out_of_memory_on_one_file_does_not_stop_the_others(tmp_path, model_path, capsys, monkeypatch):
    sf.write(tmp_path / "a.wav", tone(1.0, RATE), RATE)
    sf.write(tmp_path / "b.wav", tone(1.0, RATE), RATE)
    real = predict.file_logits

    def file_logits(path, *args):
        if str(path).endswith("a.wav"):
            raise MemoryError
        return real(path, *args)

    monkeypatch.setattr(predict, "file_logits", file_logits)
    assert predict.main(["--model", str(model_path), "--json", str(tmp_path / "a.wav"), str(tmp_path / "b.wav")]) == 1
    captured = capsys.readouterr()
    assert captured.err.strip() == f"error: {tmp_path / 'a.wav'}: out of memory"
    doc = json.loads(captured.out)
    assert doc["files"][0]["error"] == f"{tmp_path / 'a.wav'}: out of memory" and "label" in doc["files"][1]


def test_clip_logits_int16_and_batches(loaded):
    model, frontend, _ = loaded
    clips = (np.random.default_rng(0).normal(size=(5, RATE)) * 3000).astype(np.int16)
    batches = list(clip_batches(clips, batch_size=2))
    assert [len(b) for b in batches] == [2, 2, 1] and torch.cat([b.row for b in batches]).tolist() == [0, 1, 2, 3, 4]
    torch.testing.assert_close(torch.cat([b.wave for b in batches]), torch.from_numpy(clips.astype(np.float32) / 32768),
                               rtol=0, atol=0)
    expected = model(frontend(torch.from_numpy(clips.astype(np.float32) / 32768))).detach()
    torch.testing.assert_close(infer(model, frontend, batches, torch.device("cpu")), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="no clips"):
        next(clip_batches(clips[:0], batch_size=2))


def test_file_result_is_mean_of_clip_probabilities(tmp_path, loaded):
    model, frontend, meta = loaded
    sf.write(tmp_path / "a.wav", tone(2.7, RATE, 440.0), RATE)
    result = predict.predict_file(tmp_path / "a.wav", model, frontend, meta)
    assert [s["start_s"] for s in result["seconds"]] == [0.0, 1.0, 1.7]
    assert result["duration_s"] == 2.7 and result["channels"] == 1 and result["sample_rate"] == RATE
    mean = np.mean([[s["probabilities"][c] for c in CLASSES] for s in result["seconds"]], axis=0)
    np.testing.assert_allclose([result["probabilities"][c] for c in CLASSES], mean, atol=1e-5)
    assert result["label"] == CLASSES[int(np.argmax(mean))]


@pytest.mark.parametrize("freq, label", [(440.0, "low"), (1500.0, "mid"), (5000.0, "high")])
def test_48k_stereo_matches_16k_mono(tmp_path, loaded, freq, label):
    model, frontend, meta = loaded
    sf.write(tmp_path / "mono16.wav", tone(3.0, RATE, freq), RATE)
    stereo = tone(3.0, 48000, freq, channels=2)
    stereo[:, 1] *= 0.5  # downmix = mean of channels = 0.75 x the tone
    sf.write(tmp_path / "stereo48.wav", stereo / 0.75, 48000, subtype="FLOAT")
    mono = predict.predict_file(tmp_path / "mono16.wav", model, frontend, meta)
    st = predict.predict_file(tmp_path / "stereo48.wav", model, frontend, meta)
    assert st["channels"] == 2 and st["sample_rate"] == 48000 and len(st["seconds"]) == 3
    assert mono["label"] == st["label"] == label  # a wrong rate would move the tone's band
    for c in CLASSES:  # same signal up to resampling error
        assert st["probabilities"][c] == pytest.approx(mono["probabilities"][c], abs=2e-3)


def test_main_reports_bad_files_and_predicts_the_others(tmp_path, model_path, capsys):
    sf.write(tmp_path / "good.wav", tone(2.0, 44100, channels=2), 44100)
    sf.write(tmp_path / "short.wav", tone(0.3, 22050), 22050)
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk")
    (tmp_path / "empty.wav").write_bytes(b"")
    sf.write(tmp_path / "silent.wav", np.zeros(0, dtype=np.float32), RATE)
    files = [tmp_path / n for n in ["good.wav", "corrupt.wav", "empty.wav", "missing.wav",
                                    "silent.wav", "short.wav"]]
    code = cli_main(["predict", "--model", str(model_path), *map(str, files), "--per-second"])
    out, err = capsys.readouterr()
    assert code == 1
    assert f"{files[1]}: not a readable audio file" in err
    assert f"{files[2]}: empty file (0 bytes)" in err
    assert f"{files[3]}: no such file" in err
    assert f"{files[4]}: no audio samples" in err
    assert len(err.strip().splitlines()) == 4
    assert out.startswith(f"{files[0]}: ")
    assert f"\n{files[5]}: " in out
    assert out.count(" s  ") == 2 + 1  # per-second lines: 2 for good.wav, 1 for short.wav


def test_main_json_and_exit_codes(tmp_path, model_path, capsys):
    sf.write(tmp_path / "a.wav", tone(3.2, 32000), 32000)
    assert predict.main(["--model", str(model_path), "--json", str(tmp_path / "a.wav")]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["classes"] == CLASSES
    (result,) = doc["files"]
    assert "seconds" not in result
    assert sum(result["probabilities"].values()) == pytest.approx(1, abs=1e-5)
    assert predict.main(["--model", str(model_path), "--json", "--per-second",
                         str(tmp_path / "a.wav"), str(tmp_path / "nope.wav")]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["files"][0]["seconds"]) == 3
    assert doc["files"][1] == {"file": str(tmp_path / "nope.wav"),
                               "error": f"{tmp_path / 'nope.wav'}: no such file"}
    assert predict.main(["--model", str(tmp_path / "none.pt"), str(tmp_path / "a.wav")]) == 2
    assert "none.pt: no such model file" in capsys.readouterr().err


def test_python_dash_m_entry_point(tmp_path, model_path):
    sf.write(tmp_path / "a.wav", tone(1.0, 8000), 8000)
    proc = subprocess.run([sys.executable, "-m", "mobileast", "predict", "--model", str(model_path),
                           "--json", str(tmp_path / "a.wav")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["files"][0]["label"] in CLASSES


def onnx_model(path, op: str, input_shape: list[int]) -> None:
    """A one-op ONNX model with the deployed meta, for onnxruntime's failure paths."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node(op, ["logmel"], ["logits"])], "g",
                              [helper.make_tensor_value_info("logmel", TensorProto.FLOAT, input_shape)],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    entry = proto.metadata_props.add()
    entry.key, entry.value = deploy.META_FILE, json.dumps({"features": FEATURES, "classes": CLASSES})
    onnx.save(proto, str(path))


def test_onnxruntime_errors_name_the_model(tmp_path, capsys):
    sf.write(tmp_path / "a.wav", tone(1.0, RATE), RATE)
    onnx_model(tmp_path / "unknown_op.onnx", "NoSuchOp", [None, 1, 30, 64])
    assert predict.main(["--model", str(tmp_path / "unknown_op.onnx"), str(tmp_path / "a.wav")]) == 2
    err = capsys.readouterr().err
    assert f"error: {tmp_path / 'unknown_op.onnx'}: onnxruntime cannot load this model (" in err
    assert "Traceback" not in err
    onnx_model(tmp_path / "other_input.onnx", "Identity", [1, 1, 30, 32])  # loads, rejects the 1 s log-mel
    assert predict.main(["--model", str(tmp_path / "other_input.onnx"), str(tmp_path / "a.wav")]) == 1
    err = capsys.readouterr().err
    assert f"error: {tmp_path / 'other_input.onnx'}: onnxruntime failed on input (1, 1, 30, 64) (" in err


def test_an_onnx_model_with_external_data_is_refused(tmp_path, capsys):
    """ONNX models are loaded from their one file: one that refers to external data files
    (which onnxruntime would read from beside it) is refused, naming the file."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((1, 30, 64), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Add", ["logmel", "w"], ["logits"])], "g",
                              [helper.make_tensor_value_info("logmel", TensorProto.FLOAT, [None, 1, 30, 64])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)], [weight])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    entry = proto.metadata_props.add()
    entry.key, entry.value = deploy.META_FILE, json.dumps({"features": FEATURES, "classes": CLASSES})
    onnx.save(proto, str(tmp_path / "ext.onnx"), save_as_external_data=True, location="ext.data", size_threshold=0)
    assert (tmp_path / "ext.data").is_file()
    with pytest.raises(ValueError, match="ext.onnx: the model refers to external data files"):
        deploy.load_model_any(tmp_path / "ext.onnx")
    assert predict.main(["--model", str(tmp_path / "ext.onnx"), str(tmp_path / "a.wav")]) == 2
    assert "external data" in capsys.readouterr().err


def test_non_finite_samples_are_counted_over_every_block(tmp_path, loaded, monkeypatch):
    model, frontend, meta = loaded
    wave = tone(2.5, RATE)[:, 0]
    wave[[RATE + 5, RATE + 6, 2 * RATE + 1]] = np.nan, np.inf, np.nan
    sf.write(tmp_path / "nan.wav", wave, RATE, subtype="FLOAT")
    monkeypatch.setattr(audio, "BLOCK_SECONDS", 1)
    with pytest.raises(audio.NonFiniteAudio, match=r"nan.wav: 3 non-finite samples \(NaN or inf\), the first at "
                                                   r"1.0003 s$"):
        predict.file_logits(tmp_path / "nan.wav", model, frontend, meta)
