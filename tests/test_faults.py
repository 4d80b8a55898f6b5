"""The fast rows of the fault matrix (benchmarks/faults.py): each fault is stopped with a
message and leaves nothing lost or running."""
from __future__ import annotations

import pytest

from benchmarks import faults


@pytest.mark.parametrize("item", [f for f in faults.FAULTS if f.fast], ids=lambda f: f.name)
def test_fast_fault_row_passes(item):
    row = faults.run_fault(item)
    assert row.problems == [], f"{item.name}: {row.done}; saw {row.saw!r}"
    assert row.saw and row.saw != "(nothing)"
