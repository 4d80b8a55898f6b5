"""Metric functions against sklearn.metrics and obvious loops on random data."""
import json

import numpy as np
import pytest
import sklearn.metrics as skm
import torch

from mobileast import metrics
from mobileast.labels import SCENES

N_CLASSES = len(SCENES)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    n = 500
    labels = rng.integers(0, N_CLASSES, n)
    logits = rng.normal(size=(n, N_CLASSES)) * 3
    logits[np.arange(n), labels] += 2.0  # better than chance, not perfect
    devices = rng.choice(["a", "b", "s4", "c", "s6", "x9"], size=n)
    return logits, labels, devices


def test_softmax_matches_torch(data):
    logits = data[0]
    torch.testing.assert_close(torch.from_numpy(metrics.softmax(logits)),
                               torch.softmax(torch.from_numpy(logits), dim=1))
    big = np.array([[1000.0, 0.0, -1000.0]])
    assert np.isfinite(metrics.softmax(big)).all()


def test_accuracy_confusion_macro_against_sklearn(data):
    logits, labels, _ = data
    pred = logits.argmax(1)
    assert metrics.accuracy(labels, pred) == pytest.approx(skm.accuracy_score(labels, pred))
    np.testing.assert_array_equal(metrics.confusion_matrix(labels, pred, N_CLASSES),
                                  skm.confusion_matrix(labels, pred, labels=range(N_CLASSES)))
    assert metrics.macro_accuracy(labels, pred, N_CLASSES) == pytest.approx(
        skm.balanced_accuracy_score(labels, pred))
    np.testing.assert_allclose(metrics.class_accuracy(labels, pred, N_CLASSES),
                               skm.recall_score(labels, pred, average=None))


def test_macro_accuracy_ignores_absent_class():
    labels = np.array([0, 0, 1, 1, 1])
    pred = np.array([0, 2, 1, 1, 0])  # class 2 predicted but never true
    per_class = metrics.class_accuracy(labels, pred, 3)
    assert np.isnan(per_class[2])
    with pytest.warns(UserWarning):
        expected = skm.balanced_accuracy_score(labels, pred)
    assert metrics.macro_accuracy(labels, pred, 3) == pytest.approx(expected)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_log_loss_against_sklearn(data, dtype):
    logits, labels, _ = data
    probs = metrics.softmax(logits).astype(dtype)
    expected = skm.log_loss(labels, probs, labels=range(N_CLASSES))
    assert metrics.log_loss(labels, probs) == pytest.approx(expected, rel=1e-6)


def test_log_loss_clips_zero_probability():
    probs = np.array([[1.0, 0.0], [0.5, 0.5]])
    labels = np.array([1, 0])
    expected = skm.log_loss(labels, probs, labels=[0, 1])
    assert metrics.log_loss(labels, probs) == pytest.approx(expected)
    assert np.isfinite(expected)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="equal length"):
        metrics.accuracy(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="0..2"):
        metrics.confusion_matrix(np.array([0, 3]), np.array([0, 1]), 3)


def test_evaluate_predictions(data):
    logits, labels, devices = data
    train_devices = ["a", "b", "c", "s1"]
    result = metrics.evaluate_predictions(logits, labels, devices, train_devices, SCENES)
    json.loads(json.dumps(result, allow_nan=False))  # strict JSON
    pred = logits.argmax(1)
    probs = metrics.softmax(logits)
    assert result["n_clips"] == len(labels)
    assert result["accuracy"] == pytest.approx(skm.accuracy_score(labels, pred))
    assert result["macro_accuracy"] == pytest.approx(skm.balanced_accuracy_score(labels, pred))
    assert result["log_loss"] == pytest.approx(skm.log_loss(labels, probs))
    assert result["seen_devices"] == ["a", "b", "c"]
    assert result["unseen_devices"] == ["s4", "s6", "x9"]  # config order, unknown after
    assert list(result["per_device"]) == ["a", "b", "c", "s4", "s6", "x9"]
    for d, r in result["per_device"].items():  # slow obvious reference
        idx = [i for i in range(len(labels)) if devices[i] == d]
        assert r["n_clips"] == len(idx)
        assert r["accuracy"] == pytest.approx(sum(pred[i] == labels[i] for i in idx) / len(idx))
        assert r["log_loss"] == pytest.approx(skm.log_loss(labels[idx], probs[idx], labels=range(N_CLASSES)))
        assert r["seen"] == (d in train_devices)
    seen = np.isin(devices, ["a", "b", "c"])
    assert result["accuracy_seen"] == pytest.approx(skm.accuracy_score(labels[seen], pred[seen]))
    assert result["accuracy_unseen"] == pytest.approx(skm.accuracy_score(labels[~seen], pred[~seen]))
    assert list(result["per_class"]) == list(SCENES)
    recall = skm.recall_score(labels, pred, average=None)
    for i, c in enumerate(SCENES):
        assert result["per_class"][c]["accuracy"] == pytest.approx(recall[i])
        assert result["per_class"][c]["n_clips"] == int((labels == i).sum())
    np.testing.assert_array_equal(result["confusion_matrix"], skm.confusion_matrix(labels, pred))


def test_evaluate_predictions_without_unseen_devices_or_some_classes():
    logits = np.eye(3)[[0, 0, 1]] * 5
    result = metrics.evaluate_predictions(logits, [0, 1, 1], ["a", "a", "b"], ["a", "b"], ["x", "y", "z"])
    assert result["unseen_devices"] == [] and result["accuracy_unseen"] is None
    assert result["per_class"]["z"] == {"n_clips": 0, "accuracy": None}
    assert result["accuracy"] == pytest.approx(2 / 3)
    assert result["macro_accuracy"] == pytest.approx((1 + 0.5) / 2)
    with pytest.raises(ValueError, match="differ in length"):
        metrics.evaluate_predictions(logits, [0, 1], ["a", "a", "b"], ["a"], ["x", "y", "z"])


# --- reports written from the metrics dicts (mobileast.evaluate) ---

def three_models(data):
    logits, labels, devices = data
    rng = np.random.default_rng(1)
    return {name: metrics.evaluate_predictions(logits + noise * rng.normal(size=logits.shape), labels,
                                               devices, ["a", "b", "c"], SCENES)
            for name, noise in (("student_float", 1.0), ("student_int8", 1.2), ("teacher", 0.0))}


def test_write_reports(data, tmp_path):
    import csv
    from collections import Counter
    from matplotlib.image import imread
    from mobileast import evaluate

    results = three_models(data)
    written = evaluate.write_reports(results, tmp_path / "reports", tmp_path / "metrics" / "evaluate.json")
    summary = json.loads((tmp_path / "metrics" / "evaluate.json").read_text())
    assert list(summary) == ["student_float", "student_int8", "teacher"]
    assert set(summary["teacher"]) == {*metrics.SUMMARY_KEYS, "per_device_accuracy"}
    assert summary["teacher"]["accuracy"] == pytest.approx(results["teacher"]["accuracy"], abs=1e-5)
    per_device = results["student_int8"]["per_device"]
    assert summary["student_int8"]["per_device_accuracy"] == {
        d: pytest.approx(v["accuracy"], abs=1e-5) for d, v in per_device.items()}
    for name, result in results.items():
        with open(written[f"confusion_{name}_csv"]) as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == len(data[1])
        counts = Counter((r["actual"], r["predicted"]) for r in rows)
        cm = [[counts[(a, p)] for p in SCENES] for a in SCENES]
        assert cm == result["confusion_matrix"]
        assert imread(written[f"confusion_{name}_png"]).shape[2] in (3, 4)
    md = written["results_md"].read_text()
    assert "| student_float | " in md and "## Accuracy per device" in md
    assert "| s4 (unseen) | " in md and "| **all unseen** | " in md and "| x9 (unseen) | " in md
    assert f"| {100 * results['teacher']['accuracy']:.1f} % |" in md
    assert "![teacher](confusion_teacher.png)" in md
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == sorted(
        [f"confusion_{n}.{e}" for n in results for e in ("csv", "png")] + ["results.md"])


def test_write_reports_writes_the_metrics_last(data, tmp_path, monkeypatch):
    """A failure while writing a confusion matrix leaves no new metrics file: DVC and users
    take a new metrics.json for a finished evaluation."""
    from mobileast import evaluate

    def broken_plot(result, path, title):
        if title == "student_int8":
            raise OSError(28, "No space left on device")
        plot(result, path, title)

    plot = evaluate.plot_confusion
    monkeypatch.setattr(evaluate, "plot_confusion", broken_plot)
    metrics_path = tmp_path / "metrics.json"
    with pytest.raises(OSError, match="No space left"):
        evaluate.write_reports(three_models(data), tmp_path / "reports", metrics_path)
    assert not metrics_path.exists()
    metrics_path.write_text('{"previous": {}}\n')
    with pytest.raises(OSError, match="No space left"):
        evaluate.write_reports(three_models(data), tmp_path / "reports", metrics_path)
    assert metrics_path.read_text() == '{"previous": {}}\n'


def test_summary_omits_missing_figures():
    from mobileast import evaluate

    result = metrics.evaluate_predictions(np.eye(2) * 3, [0, 1], ["a", "a"], ["a"], ["x", "y"])
    assert metrics.summary({"m": result}) == {"m": {"accuracy": 1.0, "macro_accuracy": 1.0,
                                                     "log_loss": pytest.approx(0.04859, abs=1e-5),
                                                     "accuracy_seen": 1.0, "per_device_accuracy": {"a": 1.0}}}
    assert "unseen" not in evaluate.results_markdown({"m": result}).split("## Accuracy per device")[1]


def test_plot_history(tmp_path):
    from matplotlib.image import imread
    from mobileast import plots

    csv_path = tmp_path / "history.csv"
    csv_path.write_text("epoch,lr,train_loss,train_kd,val_loss,val_accuracy\n"
                        "1,0.001,2.3,0.5,2.2,0.2\n2,0.0009,2.0,0.4,2.1,0.3\n")
    plots.plot_history(csv_path, tmp_path / "curves.png")
    assert imread(tmp_path / "curves.png").ndim == 3
    (tmp_path / "empty.csv").write_text("epoch,loss\n")
    with pytest.raises(ValueError, match="empty.csv: empty training history"):
        plots.plot_history(tmp_path / "empty.csv", tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
