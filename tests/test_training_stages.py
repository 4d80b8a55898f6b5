"""Teacher-student wiring: the logits the student trains with are the teacher's logits of
exactly the crop it sees (and of its mixup partner), on exactly the dumped crop grid."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from mobileast.augment import Augmenter
from mobileast.errors import ParamsError
from mobileast.labels import SCENES
from mobileast.params import load_params
from mobileast.data.crops import train_crops
from mobileast.deploy import frontend_for, load_checkpoint_model
from mobileast.distill import DistillLoss
from mobileast.features import LogMel
from mobileast.models import build_preset, model_spec
from mobileast.training.checkpoint import Outputs
from mobileast.training.supervised import supervised_step
from stages.student_train import load_logits, train_student
from stages.teacher_logits import dump_teacher_logits, ensemble_checkpoints
from test_crops import make_clip_store, make_recordings_store

RATE = 1600  # the tiny stores' "1 s"
FEATURES = {"sample_rate": RATE, "n_fft": 128, "win_length": 128, "hop_length": 100, "n_mels": 16}
PARAMS = {"data": {"sample_rate": RATE, "split": 100}, "logits": {"hop_s": 0.25, "batch_size": 7}, "teacher": {"ensemble": []}}
AUGMENT = load_params(Path(__file__).parents[1] / "params.yaml")["augment"]
ONLY_MIXUP = {name: {**section, "enabled": name == "mixup"} for name, section in AUGMENT.items()}


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> tuple[Path, Path]:
    """Recordings table (with gaps) over resampled train audio, and evaluate clips."""
    root = tmp_path_factory.mktemp("stores")
    recordings, resampled = root / "recordings", root / "resampled"
    recordings.mkdir()
    resampled.mkdir()
    make_recordings_store(recordings, {"train": [[0, 1, 2], [0, 2, 3], [1, 2, 3, 4], [0, 1]] * 3}, RATE)
    (recordings / "train.npy").rename(resampled / "train.npy")
    clips = (np.random.default_rng(1).standard_normal((12, RATE)) * 3000).astype(np.int16)
    make_clip_store(resampled, "evaluate", clips, [SCENES[i % 10] for i in range(12)])
    return recordings, resampled


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_preset("teacher_cnn", stem_channels=4, channels=(8, 8), dropout=0.0).eval()
    arch, config = model_spec(model)
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    torch.save({"arch": arch, "config": config, "state_dict": model.state_dict(), "features": FEATURES,
                "classes": list(SCENES), "input": "logmel"}, path)
    return path


@pytest.fixture(scope="module")
def dumped(stores, teacher, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("logits") / "teacher_logits"
    dump_teacher_logits(PARAMS, [teacher], *stores, out)
    return out


def run_teacher(teacher: Path, wave: torch.Tensor) -> torch.Tensor:
    model, meta = load_checkpoint_model(teacher)
    with torch.no_grad():
        return model(frontend_for(meta)(wave))


def student_crops(stores, crops_per_recording: int = 2, hop_s: float = 0.25):
    return train_crops(*stores, RATE, hop_s, "logits.hop_s", "features.sample_rate", crops_per_recording, seed=3)


def test_student_batches_get_the_teacher_logits_of_their_own_crops(stores, teacher, dumped):
    crops = student_crops(stores)
    logits = load_logits(dumped, crops)
    assert len(logits) == crops.n_rows
    for batch in list(crops.epoch_batches(epoch=1, batch_size=8))[:3]:
        torch.testing.assert_close(logits[batch.row], run_teacher(teacher, batch.wave), rtol=1e-4, atol=1e-5)


class SpyLoss:
    """A DistillLoss that records what the step passes it."""

    def __init__(self):
        self.inner, self.calls = DistillLoss(method="kd", alpha=0.0, beta=0.0, temperature=2.0, warmup_epochs=0, ce_weight=1.0), []

    def __call__(self, logits, z_a, y_a, z_b=None, y_b=None, lam=None, *, epoch):
        self.calls.append((z_a, y_a, z_b, y_b, lam))
        return self.inner(logits, z_a, y_a, z_b, y_b, lam, epoch=epoch)


def test_the_mixup_partner_gets_the_partner_crops_logits(stores, teacher, dumped):
    crops = student_crops(stores)
    logits = load_logits(dumped, crops)
    augmenter = Augmenter.from_params(ONLY_MIXUP, RATE)
    spy = SpyLoss()
    step = supervised_step(LogMel(**FEATURES).eval(), augmenter, spy, logits)
    batch = next(crops.epoch_batches(epoch=0, batch_size=8))
    _, mix = augmenter.wave(batch.wave, torch.Generator().manual_seed(9))  # the draws the step will make
    step(build_preset("sub4", input_size=(16, 16)).eval(), batch, 0, torch.Generator().manual_seed(9))
    (z_a, y_a, z_b, y_b, lam), = spy.calls
    torch.testing.assert_close(z_a, run_teacher(teacher, batch.wave), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(z_b, run_teacher(teacher, batch.wave[mix.perm]), rtol=1e-4, atol=1e-5)
    assert torch.equal(y_b, batch.label[mix.perm]) and torch.equal(lam, mix.lam)
    assert not torch.equal(mix.perm, torch.arange(8))


def test_logits_of_another_crop_grid_are_refused(stores, dumped, tmp_path):
    with pytest.raises(ParamsError, match="another crop grid"):
        load_logits(dumped, student_crops(stores, hop_s=0.5))
    shifted = tmp_path / "shifted"
    shifted.mkdir()
    grid = np.load(dumped / "train_index.npy")
    grid[5, 1] += 1  # same number of rows, one crop elsewhere
    np.save(shifted / "train_index.npy", grid)
    np.save(shifted / "train.npy", np.load(dumped / "train.npy"))
    with pytest.raises(ParamsError, match="another crop grid"):
        load_logits(shifted, student_crops(stores))


def test_ensemble_checkpoints_must_be_in_the_tracked_directory(teacher, tmp_path):
    ensemble = tmp_path / "ensemble"
    ensemble.mkdir()
    (ensemble / "second.pt").write_bytes(teacher.read_bytes())
    assert ensemble_checkpoints(teacher, [ensemble / "second.pt"], ensemble) == [teacher, ensemble / "second.pt"]
    with pytest.raises(ParamsError, match="not in"):
        ensemble_checkpoints(teacher, [teacher], ensemble)
    with pytest.raises(ParamsError, match="no such checkpoint"):
        ensemble_checkpoints(teacher, [ensemble / "absent.pt"], ensemble)


def test_ensemble_logits_are_the_mean_of_the_teachers(stores, teacher, dumped, tmp_path):
    torch.manual_seed(1)
    other = build_preset("teacher_cnn", stem_channels=4, channels=(8, 8), dropout=0.0).eval()
    arch, config = model_spec(other)
    second = tmp_path / "second.pt"
    torch.save({"arch": arch, "config": config, "state_dict": other.state_dict(), "features": FEATURES,
                "classes": list(SCENES)}, second)
    dump_teacher_logits(PARAMS, [second], *stores, tmp_path / "alone")
    dump_teacher_logits(PARAMS, [teacher, second], *stores, tmp_path / "both")
    for name in ("train.npy", "evaluate.npy"):
        mean = (np.load(dumped / name) + np.load(tmp_path / "alone" / name)) / 2
        np.testing.assert_allclose(np.load(tmp_path / "both" / name), mean, rtol=1e-5, atol=1e-6)


def test_an_ensemble_teacher_at_another_sample_rate_is_refused(stores, teacher, tmp_path):
    checkpoint = torch.load(teacher, weights_only=True)
    other = tmp_path / "ensemble" / "16k.pt"
    other.parent.mkdir()
    torch.save({**checkpoint, "features": {**FEATURES, "sample_rate": 2 * RATE}}, other)
    with pytest.raises(ParamsError, match=f"16k.pt: this teacher takes {2 * RATE} Hz audio, but data.sample_rate "
                                          f"\\(the stores' rate\\) is {RATE} Hz"):
        dump_teacher_logits(PARAMS, [teacher, other], *stores, tmp_path / "logits")
    assert not (tmp_path / "logits").exists()


def test_a_batch_larger_than_an_epoch_names_what_to_change(stores, dumped, tmp_path):
    params = load_params(Path(__file__).parents[1] / "params.yaml")
    params = {**params, "features": FEATURES, "student": {"preset": "sub4", "custom": {}},
              "train": {**params["train"], "batch_size": 256, "crops_per_recording": 2}, "logits": PARAMS["logits"]}
    with pytest.raises(ParamsError, match=r"train.batch_size 256 is larger than the crops of one epoch \(12 train "
                                          r"recordings x train.crops_per_recording 2\): lower it"):
        train_student(params, *stores, dumped, Outputs(model=tmp_path / "student.pt"))
    assert not (tmp_path / "student.pt").exists()


def test_the_step_convolves_the_clips_of_the_dir_devices(stores, tmp_path):
    """The step hands each clip's recording device to the augmenter: with augment.dir on (p 1,
    devices [a], the stores' device) the frontend sees the convolved crops."""
    sf.write(tmp_path / "ir.wav", np.array([1.0, -0.9, 0.5]), RATE, subtype="FLOAT")
    only_dir = {name: {**section, "enabled": name == "dir"} for name, section in AUGMENT.items()}
    only_dir["dir"].update(p=1.0, ir_dir=str(tmp_path), devices=["a"])
    augmenter = Augmenter.from_params(only_dir, RATE)
    seen = []
    frontend = LogMel(**FEATURES).eval()
    loss = DistillLoss(method="none", alpha=0.0, beta=0.0, temperature=1.0, warmup_epochs=0, ce_weight=1.0)
    step = supervised_step(lambda wave: seen.append(wave) or frontend(wave), augmenter, loss)
    batch = next(student_crops(stores).epoch_batches(epoch=0, batch_size=8))
    assert set(batch.device.tolist()) == {0}  # device a
    step(build_preset("sub4", input_size=(16, 16)).eval(), batch, 0, torch.Generator().manual_seed(9))
    expected, _ = augmenter.wave(batch.wave, torch.Generator().manual_seed(9), batch.device)
    assert torch.equal(seen[0], expected) and not torch.equal(expected, batch.wave)


def test_dir_without_impulse_responses_stops_training_naming_the_key(stores, dumped, tmp_path):
    params = load_params(Path(__file__).parents[1] / "params.yaml")
    (tmp_path / "irs").mkdir()
    augment = {**params["augment"],
               "dir": {**params["augment"]["dir"], "enabled": True, "ir_dir": str(tmp_path / "irs")}}
    params = {**params, "features": FEATURES, "student": {"preset": "sub4", "custom": {}}, "augment": augment,
              "train": {**params["train"], "batch_size": 8, "crops_per_recording": 2}, "logits": PARAMS["logits"]}
    with pytest.raises(ParamsError, match=f"section 'augment': dir.ir_dir: no .wav files under {tmp_path / 'irs'}"):
        train_student(params, *stores, dumped, Outputs(model=tmp_path / "student.pt"))
    assert not (tmp_path / "student.pt").exists()
