"""Stage `resample`: the dataset's fold clips -> int16 at data.sample_rate (data/resampled).

Validates the dataset first (mobileast.data.tau22), then resamples in parallel; the
store is written to a temporary directory renamed into place when complete.
`data.workers` is read but is no DVC dependency: the output does not depend on it.
"""
from __future__ import annotations

import time

from mobileast.files import atomic_output, project_root, write_json

from mobileast.params import stage_params
from mobileast.data import RESAMPLED_DIR, dataset_root
from mobileast.data.resample import build_store
from stages import run

PARAMS = ["data.source", "data.root", "data.on_bad_file", "data.sample_rate"]
UNTRACKED = ["data.workers"]  # read, but no dependency: the store is the same for any worker count


def main() -> None:
    data = stage_params(PARAMS + UNTRACKED)["data"]
    project = project_root()
    start = time.perf_counter()
    with atomic_output(project / RESAMPLED_DIR) as tmp:
        report = build_store(dataset_root(data, project), tmp, sample_rate=data["sample_rate"],
                             workers=data["workers"], on_bad_file=data["on_bad_file"])
        write_json(tmp / "report.json", {"source": data["source"], **report})
    clips = {fold: summary["clips"] for fold, summary in report["folds"].items()}
    print(f"resample: {clips} clips at {data['sample_rate']} Hz to {RESAMPLED_DIR} in "
          f"{time.perf_counter() - start:.1f} s; downmixed {report['downmixed']['count']}, "
          f"other rates {report['other_rates']['count']}, skipped {len(report['skipped'])} "
          f"(see {RESAMPLED_DIR}/report.json)")


if __name__ == "__main__":
    run(main)
