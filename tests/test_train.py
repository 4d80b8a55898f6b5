"""Training engine: schedules, determinism, exact resume, learning, distributed run."""
from __future__ import annotations

import dataclasses
import json
import math
import warnings
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from mobileast.deploy import ModelMeta
from mobileast.errors import ParamsError
from mobileast.labels import SCENES

from mobileast.params import load_params
from mobileast.data.crops import ClipSource, RecordingCrops
from mobileast.features import LogMel
from mobileast.training.checkpoint import Outputs, file_identity
from mobileast.training.distributed import runtime
from mobileast.training.engine import NonFiniteLoss, check_finite_state, classification_validator, fit
from mobileast.training.schedule import Schedule, decay_end
from mobileast.training.settings import TrainSettings
from test_crops import make_clip_store, make_recordings_store

REPO = Path(__file__).resolve().parents[1]
CLIP = 800
FEATURES = {"sample_rate": 8000, "n_fft": 128, "win_length": 128, "hop_length": 100, "n_mels": 16}
META = ModelMeta(features=FEATURES, classes=list(SCENES), arch="tiny", config={"width": 8})


def tiny_model() -> nn.Module:
    """Small CNN with BatchNorm (buffers) and dropout (global RNG), to exercise both."""
    return nn.Sequential(nn.BatchNorm2d(1), nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d((FEATURES["n_mels"], 1)), nn.Flatten(), nn.Dropout(0.2),
                         nn.Linear(4 * FEATURES["n_mels"], len(SCENES)))


def ce_step(frontend: nn.Module, fail_at_epoch: int | None = None, nan_at: tuple[int, int] | None = None):
    """Cross-entropy step with generator-drawn noise; raises at `fail_at_epoch` (a crash);
    its loss is NaN at the (epoch, step) `nan_at` (a diverged run)."""
    calls = []

    def step(model, batch, epoch, generator):
        if epoch == fail_at_epoch:
            raise KeyboardInterrupt
        calls.append(epoch)
        wave = batch.wave + 0.01 * torch.randn(batch.wave.shape, generator=generator, device=batch.wave.device)
        logits = model(frontend(wave))
        loss = nn.functional.cross_entropy(logits, batch.label)
        if nan_at == (epoch, calls.count(epoch) - 1):
            loss = loss * float("nan")
        return loss, {"accuracy": (logits.argmax(1) == batch.label).float().mean().item()}
    return step


def make_stores(root: Path) -> tuple[Path, Path]:
    """Recordings store (20 train recordings, one with a missing slice) and an evaluate clip store."""
    recordings = root / "recordings"
    recordings.mkdir()
    train = [[0, 1, 2, 3]] * 19 + [[0, 2, 3]]
    make_recordings_store(recordings, {"train": train, "evaluate": [[0, 1, 2]] * 10}, CLIP)
    table = pd.read_csv(recordings / "recordings.csv")
    evaluate = table[table.fold == "evaluate"]
    clips = root / "resampled"
    clips.mkdir()
    make_clip_store(clips, "evaluate", np.load(recordings / "evaluate.npy").reshape(-1, CLIP),
                    list(np.repeat(evaluate.scene_label.to_numpy(), 3)))
    return recordings, clips


def train_settings(epochs=4, **schedule) -> TrainSettings:
    return TrainSettings(epochs=epochs, batch_size=16, lr=0.01, weight_decay=1e-4, optimizer="adamw", seed=3,
                         schedule=Schedule(**({"warmup": "exp", "warmup_epochs": 1, "decay": "cosine",
                                               "decay_end_epoch": epochs, "min_lr": 1e-4} | schedule)))


def train(stores, out: Path, settings: TrainSettings, fail_at_epoch=None, resume_key=None, nan_at=None,
          discard=True, **fit_args):
    """One tiny training run writing to `out`, as a stage runs it (the resume checkpoint
    discarded after the outputs unless not `discard`); returns (history rows, final state_dict)."""
    recordings, clips = stores
    outputs = Outputs(out / "model.pt", out / "last.pt", out / "history.csv")
    with runtime(settings.seed) as rt:
        model = tiny_model()
        frontend = LogMel(**FEATURES).to(rt.device)
        data = RecordingCrops(recordings, "train", CLIP, 200, crops_per_recording=4, seed=settings.seed)
        validate = classification_validator(ClipSource(clips, "evaluate"), frontend, 8, rt.device)
        history = fit(model, ce_step(frontend, fail_at_epoch, nan_at), data, settings, outputs, META, rt,
                      validate_fn=validate, resume_key=resume_key, inputs=stores, **fit_args)
        if discard and rt.is_main:
            outputs.discard_resume()
    return history, model.state_dict()


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    return make_stores(tmp_path_factory.mktemp("stores"))


@pytest.fixture(scope="module")
def reference_run(stores, tmp_path_factory):
    """An uninterrupted 4-epoch run, shared by the tests that compare against it."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("reference")
    calls = []
    history, state = train(stores, out, train_settings(), on_epoch=lambda metrics, epoch: calls.append((epoch, metrics)),
                           on_checkpoint=lambda path: calls.append((path.name, torch.load(path)["epoch"])))
    return history, state, out, calls


def test_schedule_tau22_student_recipe():
    schedule = Schedule(warmup="exp", warmup_epochs=30, decay="linear", decay_end_epoch=400, min_lr=1e-5)
    peak = 1e-3
    expected = {0: peak * math.exp(-5), 15: peak * math.exp(-1.25), 30: peak, 215: (peak + 1e-5) / 2,
                400: 1e-5, 599.5: 1e-5}
    for epoch, lr in expected.items():
        assert schedule.lr(peak, epoch) == pytest.approx(lr, rel=1e-12), epoch


def test_schedule_linear_warmup_cosine_and_constant():
    cosine = Schedule(warmup="linear", warmup_epochs=4, decay="cosine", decay_end_epoch=12, min_lr=0.1)
    assert [cosine.lr(1.0, e) for e in (0, 1, 4, 8, 12, 20)] == pytest.approx([0, 0.25, 1, 0.55, 0.1, 0.1])
    assert cosine.lr(1.0, 6) == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi / 4)) / 2)
    constant = Schedule(warmup="none", decay="constant")
    assert [constant.lr(0.5, e) for e in (0, 3, 100)] == [0.5, 0.5, 0.5]
    no_warmup = Schedule(decay="linear", decay_end_epoch=10, min_lr=0.0)
    assert no_warmup.lr(1.0, 0) == 1.0 and no_warmup.lr(1.0, 2.5) == pytest.approx(0.75)
    for bad in ({"warmup": "cubic"}, {"warmup": "exp", "warmup_epochs": 0},
                {"warmup": "linear", "warmup_epochs": 5, "decay": "linear", "decay_end_epoch": 3}):
        with pytest.raises(ValueError):
            Schedule(**bad)


def test_decay_end_follows_the_epochs():
    assert decay_end(None, 12) == 12 and decay_end(-2, 12) == 10 and decay_end(10, 12) == 10
    assert decay_end(-200, 600, 30) == 400 and decay_end(-2.5, 12) == 9.5 and decay_end(12, 12) == 12
    assert type(decay_end(-2, 12)) is int  # the arithmetic of the absolute integer it stands for
    for bad in (-12, -20, 0, "10", True):
        with pytest.raises(ParamsError, match="train.schedule.decay_end_epoch"):
            decay_end(bad, 12, 0.0, "train.schedule.decay_end_epoch")


def test_a_stale_absolute_decay_end_is_warned_about():
    """`-S train.epochs=40` with the demo's old absolute end 10: 30 of 40 epochs at min_lr."""
    section = {**load_params(REPO / "params.yaml")["train"], "epochs": 40}
    section["schedule"] = {**section["schedule"], "decay_end_epoch": 10}
    with pytest.warns(UserWarning, match=r"train.schedule.decay_end_epoch 10 leaves 30 of the 40 epochs at min_lr"):
        assert TrainSettings.from_params(section, 0, "train").schedule.decay_end_epoch == 10
    section["schedule"]["decay_end_epoch"] = 50
    with pytest.warns(UserWarning, match=r"train.schedule.decay_end_epoch 50 is past the last of the 40 epochs"):
        TrainSettings.from_params(section, 0, "train")
    for fine in (None, -2, 20, 40):  # relative, or at least half of the run decaying
        section["schedule"]["decay_end_epoch"] = fine
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            TrainSettings.from_params(section, 0, "train")
    for value in (5, None):  # a constant schedule has no decay to end
        section["schedule"] = {**section["schedule"], "decay": "constant", "decay_end_epoch": value}
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert TrainSettings.from_params(section, 0, "train").schedule.lr(1.0, 39) == 1.0


def test_a_relative_decay_end_inside_the_warm_up_ends_with_it():
    """A one-epoch trial of a long recipe (warm-up over 30 epochs) runs the recipe's warm-up."""
    section = load_params(REPO / "params.yaml")["train"]
    section = {**section, "epochs": 1,
               "schedule": {**section["schedule"], "warmup_epochs": 30, "decay_end_epoch": -200}}
    with pytest.warns(UserWarning, match=r"train.schedule.decay_end_epoch -200 resolves to epoch -199 of 1, inside "
                                         r"the warm-up \(to epoch 30\)"):
        settings = TrainSettings.from_params(section, 0, "train")
    recipe = Schedule(warmup="exp", warmup_epochs=30, decay="linear", decay_end_epoch=400, min_lr=1e-5)
    assert settings.schedule.decay_end_epoch == 30
    assert [settings.schedule.lr(1e-3, t / 10) for t in range(10)] == [recipe.lr(1e-3, t / 10) for t in range(10)]
    section["schedule"] = {**section["schedule"], "warmup": "none", "decay_end_epoch": -1}
    with pytest.raises(ParamsError, match=r"section 'train': train.schedule.decay_end_epoch -1 counts back to "
                                          r"epoch 0, not after the start of the 1 epochs"):
        TrainSettings.from_params(section, 0, "train")


PROJECT_SCHEDULES = [  # (params section, profile or None, the absolute decay end these runs always had)
    ("train", None, 10), ("teacher.train", None, 30), ("train", "tau22-sub1", 400), ("teacher.train", "tau22-passt", 250)]


@pytest.mark.parametrize("key, profile, absolute", PROJECT_SCHEDULES)
def test_project_schedules_are_the_absolute_ones_they_replace(key, profile, absolute):
    """The relative decay ends of params.yaml and the profiles give exactly the learning
    rates (and settings, hence resume fingerprints) of the absolute values they replaced."""
    from mobileast import profiles

    params = load_params(REPO / "params.yaml")
    if profile is not None:
        params = profiles.apply(params, profiles.load_profile(profile, profiles.profiles_dir(REPO)).overrides)
    section = params["teacher"]["train"] if key == "teacher.train" else params["train"]
    settings = TrainSettings.from_params(section, params["seed"], key)
    old = TrainSettings.from_params({**section, "schedule": {**section["schedule"], "decay_end_epoch": absolute}},
                                    params["seed"], key)
    assert settings == old and json.dumps(dataclasses.asdict(settings)) == json.dumps(dataclasses.asdict(old))
    steps = 7  # fractional epochs as the engine sets them (epoch + step / steps)
    progress = [epoch + step / steps for epoch in range(settings.epochs) for step in range(steps)]
    assert [settings.schedule.lr(settings.lr, t) for t in progress] == [old.schedule.lr(old.lr, t) for t in progress]
    assert settings.schedule.lr(settings.lr, absolute) == section["schedule"]["min_lr"]


def test_settings_from_project_params():
    params = load_params(REPO / "params.yaml")
    for section in (params["teacher"]["train"], params["train"]):
        settings = TrainSettings.from_params(section, params["seed"])
        assert settings.epochs == section["epochs"] and settings.schedule.warmup == section["schedule"]["warmup"]
        assert settings.make_optimizer(nn.Linear(2, 2)).defaults["weight_decay"] == section["weight_decay"]


def test_tiny_training_learns_and_writes_outputs(reference_run):
    history, state, out, calls = reference_run
    assert [row["epoch"] for row in history] == [1, 2, 3, 4]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["val_accuracy"] > 0.3  # chance is 0.1
    assert history[0]["lr"] == pytest.approx(0.01 * math.exp(-5))
    pd.testing.assert_frame_equal(pd.read_csv(out / "history.csv"), pd.DataFrame(history), check_dtype=False)
    assert not (out / "last.pt").exists()  # the resume checkpoint goes once the run is complete
    last = torch.load(out / "model.pt")
    assert {k: last[k] for k in META.to_checkpoint()} == META.to_checkpoint() and last["epoch"] == 4 and last["history"] == history
    for key, value in state.items():
        torch.testing.assert_close(last["state_dict"][key], value, rtol=0, atol=0)
    # the callbacks: every epoch's checkpoint (already written) and row, then the final model
    expected = [call for row in history
                for call in (("last.pt", row["epoch"]), (row["epoch"], {k: v for k, v in row.items() if k != "epoch"}))]
    assert calls == expected + [("model.pt", 4)]


def test_same_seed_gives_identical_runs(stores, reference_run, tmp_path):
    result, state = train(stores, tmp_path, train_settings())
    assert result == reference_run[0]
    for key, value in state.items():
        torch.testing.assert_close(value, reference_run[1][key], rtol=0, atol=0)


def test_resumed_run_equals_uninterrupted_run(stores, reference_run, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        train(stores, tmp_path, train_settings(), fail_at_epoch=2, resume_key={"dkd": 1})
    assert torch.load(tmp_path / "last.pt")["epoch"] == 2 and not (tmp_path / "model.pt").exists()
    result, state = train(stores, tmp_path, train_settings(), resume_key={"dkd": 1})
    assert result == reference_run[0]
    for key, value in state.items():
        torch.testing.assert_close(value, reference_run[1][key], rtol=0, atol=0)
    ref_last, last = torch.load(reference_run[2] / "model.pt"), torch.load(tmp_path / "model.pt")
    torch.testing.assert_close(last["optimizer"], ref_last["optimizer"], rtol=0, atol=0)
    train(stores, tmp_path / "uninterrupted", train_settings(), resume_key={"dkd": 1})
    assert (tmp_path / "model.pt").read_bytes() == (tmp_path / "uninterrupted" / "model.pt").read_bytes()  # DVC's md5


def test_complete_resume_checkpoint_gives_the_outputs_without_training(stores, reference_run, tmp_path):
    """Killed after the last epoch's checkpoint, before the stage's last output was written;
    DVC deletes a stage's outputs before running it again."""
    train(stores, tmp_path, train_settings(), discard=False)
    assert torch.load(tmp_path / "last.pt")["epoch"] == 4  # fit leaves it to the stage
    for output in ("model.pt", "history.csv"):
        (tmp_path / output).unlink()
    result, state = train(stores, tmp_path, train_settings(), fail_at_epoch=0)  # any epoch would raise
    assert result == reference_run[0] and not (tmp_path / "last.pt").exists()
    for key, value in state.items():
        torch.testing.assert_close(value, reference_run[1][key], rtol=0, atol=0)
    for output in ("model.pt", "history.csv"):
        assert (tmp_path / output).read_bytes() == (reference_run[2] / output).read_bytes(), output


def test_checkpoint_made_by_other_code_is_not_resumed(stores, reference_run, tmp_path):
    code = tmp_path / "step.py"
    code.write_text("LOSS = 'ce'\n")
    with pytest.raises(KeyboardInterrupt):
        train(stores, tmp_path / "out", train_settings(), fail_at_epoch=2, code=[code])
    code.write_text("LOSS = 'ce'  # fixed\n")
    with pytest.raises(KeyboardInterrupt):  # starts afresh: epoch 0 is trained again
        train(stores, tmp_path / "out", train_settings(), fail_at_epoch=0, code=[code])
    assert torch.load(tmp_path / "out" / "last.pt")["epoch"] == 2  # kept, not overwritten
    result, _ = train(stores, tmp_path / "out", train_settings(), code=[code])
    assert result == reference_run[0]


def test_unreadable_resume_checkpoint_is_moved_aside(stores, reference_run, tmp_path):
    tmp_path.joinpath("last.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.warns(UserWarning, match=r"last.pt: unreadable resume checkpoint .* moved to .*last.pt.unreadable"):
        result, _ = train(stores, tmp_path, train_settings())
    assert result == reference_run[0]
    assert (tmp_path / "last.pt.unreadable").read_bytes() == b"PK\x03\x04 truncated"


def test_a_non_finite_loss_stops_the_run_keeping_the_last_good_checkpoint(stores, tmp_path):
    with pytest.raises(NonFiniteLoss, match=r"epoch 3, step 2 of \d+: the training loss is not finite .*"
                                            r"the checkpoint of epoch 2 is kept in .*last.pt"):
        train(stores, tmp_path, train_settings(), nan_at=(2, 1))
    last = torch.load(tmp_path / "last.pt")
    assert last["epoch"] == 2 and len(pd.read_csv(tmp_path / "history.csv")) == 2
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())
    assert not (tmp_path / "model.pt").exists()
    with pytest.raises(NonFiniteLoss, match=r"epoch 1, step 1 of \d+: .*nothing of this run was checkpointed"):
        train(stores, tmp_path / "first", train_settings(), nan_at=(0, 0))


def test_weights_or_statistics_that_overflow_under_a_finite_loss_stop_the_run():
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    check_finite_state(model, 0)
    model[1].running_var[1] = float("inf")
    with pytest.raises(NonFiniteLoss, match=r"^epoch 3: 1.running_var of the model are not finite after the epoch "
                                            r"\(the run diverged: .*\); the checkpoint of epoch 2 is kept in r.pt$"):
        check_finite_state(model, 2, Path("r.pt"))
    model[0].weight.data[0] = float("nan")
    with pytest.raises(NonFiniteLoss, match=r"^epoch 1: 0.weight, 1.running_var of .*nothing of this run"):
        check_finite_state(model, 0, Path("r.pt"))


def test_checkpoint_of_other_settings_is_not_resumed(stores, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        train(stores, tmp_path, train_settings(epochs=3), fail_at_epoch=1, resume_key={"dkd": 1})
    result, _ = train(stores, tmp_path, train_settings(epochs=3), fail_at_epoch=None, resume_key={"dkd": 2})
    assert [row["epoch"] for row in result] == [1, 2, 3]
    fresh, _ = train(stores, tmp_path / "fresh", train_settings(epochs=3), resume_key={"dkd": 2})
    assert result == fresh



def test_checkpoint_made_before_the_input_data_changed_is_not_resumed(stores, tmp_path):
    """An upstream stage re-ran after the interruption: the run starts afresh on the new data."""
    copies = [Path(shutil.copytree(store, tmp_path / store.name)) for store in stores]
    with pytest.raises(KeyboardInterrupt):
        train(copies, tmp_path / "out", train_settings(epochs=3), fail_at_epoch=1)
    train_audio = copies[0] / "train.npy"
    np.save(train_audio, 0.5 * np.load(train_audio))
    result, _ = train(copies, tmp_path / "out", train_settings(epochs=3))
    fresh, _ = train(copies, tmp_path / "fresh", train_settings(epochs=3))
    assert [row["epoch"] for row in result] == [1, 2, 3] and result == fresh


def test_final_model_bytes_do_not_depend_on_the_inputs_file_times(stores, reference_run, tmp_path):
    """DVC records the model's md5: a fresh clone's rewritten (same-bytes) stores must give it again."""
    copies = [Path(shutil.copytree(store, tmp_path / store.name)) for store in stores]
    for path in copies[0].rglob("*"):
        os.utime(path, ns=(1, 1))
    train(copies, tmp_path / "out", train_settings())
    assert (tmp_path / "out" / "model.pt").read_bytes() == (reference_run[2] / "model.pt").read_bytes()


def test_file_identity_sees_a_rewritten_or_added_file(tmp_path):
    store, table = tmp_path / "store", tmp_path / "table.csv"
    (store / "sub").mkdir(parents=True)
    (store / "sub" / "a.npy").write_bytes(b"1234")
    table.write_text("x")
    before = file_identity([store, table])
    assert file_identity([store, table]) == before and set(before) == {str(store / "sub" / "a.npy"), str(table)}
    os.utime(store / "sub" / "a.npy", ns=(1, 1))  # rewritten (same size)
    assert file_identity([store, table]) != before
    (store / "b.npy").write_bytes(b"")
    assert set(file_identity([store])) == {str(store / "sub" / "a.npy"), str(store / "b.npy")}


DISTRIBUTED_SCRIPT = """
import os, sys, torch
from pathlib import Path
torch.set_num_threads(1)
from test_train import train, train_settings
recordings, clips, out = map(Path, sys.argv[1:4])
_, state = train((recordings, clips), out, train_settings(epochs=2))
torch.save(state, out / f"state{os.environ['RANK']}.pt")
"""

VALIDATION_SCRIPT = """
import sys, torch
from pathlib import Path
torch.set_num_threads(1)
from mobileast.data.crops import ClipSource
from mobileast.features import LogMel
from mobileast.training.distributed import runtime
from mobileast.training.engine import classification_validator
from test_train import FEATURES, tiny_model
clips, out = map(Path, sys.argv[1:3])
with runtime() as rt:  # every rank validates its share of an odd number of batches
    torch.manual_seed(7)
    validate = classification_validator(ClipSource(clips, "evaluate"), LogMel(**FEATURES), 7, rt)
    torch.save(validate(tiny_model().eval()), out / f"validation{rt.rank}.pt")
"""


def torchrun(script: Path, *args) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}  # gloo processes on the CPU, GPU or not
    command = Path(sys.executable).with_name("torchrun")
    proc = subprocess.run([str(command), "--standalone", "--nproc_per_node", "2", str(script), *map(str, args)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_torchrun_two_processes_agree_on_weights(stores, tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(textwrap.dedent(DISTRIBUTED_SCRIPT))
    torchrun(script, *stores, tmp_path)
    states = [torch.load(tmp_path / f"state{rank}.pt") for rank in (0, 1)]
    for key, value in states[0].items():
        torch.testing.assert_close(states[1][key], value, rtol=0, atol=0)
    checkpoint = torch.load(tmp_path / "model.pt")
    assert checkpoint["epoch"] == 2 and len(pd.read_csv(tmp_path / "history.csv")) == 2
    for key, value in states[0].items():
        torch.testing.assert_close(checkpoint["state_dict"][key], value, rtol=0, atol=0)


def test_torchrun_validation_is_sharded_and_gathered_to_the_single_process_one(stores, tmp_path):
    script = tmp_path / "ddp_validate.py"
    script.write_text(textwrap.dedent(VALIDATION_SCRIPT))
    torchrun(script, stores[1], tmp_path)
    torch.manual_seed(7)
    single = classification_validator(ClipSource(stores[1], "evaluate"), LogMel(**FEATURES), 7,
                                      torch.device("cpu"))(tiny_model().eval())
    for rank in (0, 1):
        assert torch.load(tmp_path / f"validation{rank}.pt") == pytest.approx(single, rel=1e-6)


def test_fit_logs_every_epoch_to_the_active_mlflow_run(stores, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from mobileast import tracking
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with tracking.start_run("teacher_train", {"teacher": {"train": {"epochs": 2}}}) as run:
        history, _ = train(stores, tmp_path, train_settings(epochs=2), on_epoch=tracking.log_metrics)
    client = MlflowClient(uri)
    logged = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert [(m.step, m.value) for m in logged] == [(row["epoch"], row["val_accuracy"]) for row in history]
    for key in ("lr", "train_loss", "train_accuracy", "val_loss"):
        assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)] == \
            [(row["epoch"], row[key]) for row in history], key
    assert "epoch" not in client.get_run(run.info.run_id).data.metrics
    assert client.get_run(run.info.run_id).data.params == {"teacher.train.epochs": "2"}


def test_validate_every_validates_on_its_epochs_and_the_last(stores, tmp_path):
    from mobileast.plots import plot_history

    history, _ = train(stores, tmp_path, dataclasses.replace(train_settings(epochs=5), validate_every=2))
    assert [("val_accuracy" in row) for row in history] == [False, True, False, True, True]
    history = pd.read_csv(tmp_path / "history.csv")
    assert history["val_loss"].isna().tolist() == [True, False, True, False, False]
    plot_history(tmp_path / "history.csv", tmp_path / "history.png")
    with pytest.raises(ValueError, match="validate_every"):
        dataclasses.replace(train_settings(), validate_every=0)
