"""The fast rows of the fault matrix (benchmarks/faults.py): each fault is stopped with a
message and leaves nothing lost or running."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "faults.py"
spec = importlib.util.spec_from_file_location("faults", SCRIPT)
faults = importlib.util.module_from_spec(spec)
sys.modules["faults"] = faults  # its dataclasses look their module up
spec.loader.exec_module(faults)


@pytest.mark.parametrize("item", [f for f in faults.FAULTS if f.fast], ids=lambda f: f.name)
def test_fast_fault_row_passes(item):
    row = faults.run_fault(item)
    assert row.problems == [], f"{item.name}: {row.done}; saw {row.saw!r}"
    assert row.saw and row.saw != "(nothing)"
