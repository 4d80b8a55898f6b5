"""mobileast.files.write_json: strict JSON only."""
from __future__ import annotations

import json

import numpy as np
import pytest

from mobileast.files import write_json
from mobileast.metrics import evaluate_predictions, summary


@pytest.mark.parametrize("value, shown", [(float("nan"), "nan"), (float("inf"), "inf"), (np.float64("-inf"), "-inf")])
def test_write_json_refuses_a_non_finite_number_naming_the_file_and_its_key_path(tmp_path, value, shown):
    path = tmp_path / "metrics.json"
    path.write_text('{"old": 1}\n')
    obj = {"student": {"accuracy": 0.5, "per_device": [{"a": 1.0}, {"b": value}]}, "later": float("nan")}
    with pytest.raises(ValueError, match=rf"^{path}: refusing to write the non-finite number {shown} "
                                         rf"at student\.per_device\[1\]\.b$"):
        write_json(path, obj)
    assert path.read_text() == '{"old": 1}\n'  # the previous output stays
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]  # no scratch left
    with pytest.raises(ValueError, match="at the top level$"):
        write_json(path, float("nan"))


def test_write_json_writes_finite_numbers_and_nulls_as_before(tmp_path):
    obj = {"a": [1, 2.5, None, True], "b": {"c": "x", "d": np.float64(0.25)}, "e": (3, 4)}
    write_json(tmp_path / "out.json", obj)
    assert (tmp_path / "out.json").read_text() == json.dumps(obj, indent=2) + "\n"


def test_metrics_without_clips_are_written_as_null_or_left_out(tmp_path):
    """Undefined metrics (no clip of an unseen device) stay what they were: null in the
    full metrics, absent from the summary; both are written."""
    classes = ["x", "y"]
    result = evaluate_predictions(np.array([[2.0, 0.0], [0.0, 1.0]]), np.array([0, 1]), np.array(["a", "a"]),
                                  train_devices=["a"], classes=classes)
    assert result["accuracy_unseen"] is None
    write_json(tmp_path / "full.json", result)
    write_json(tmp_path / "summary.json", summary({"model": result}))
    assert "accuracy_unseen" not in json.loads((tmp_path / "summary.json").read_text())["model"]
