"""Stage `demo_data`: write the built-in demo dataset (TAU22 layout) to data/demo.

How one dvc.yaml serves both sources (`data.source`):
- `demo`: this stage generates the dataset into data/demo, its DVC output. `resample`
  depends on that output, so any change of the demo params or generator re-runs it.
- `tau22`: this stage writes only a placeholder note into data/demo (instant), so the
  demo params cannot trigger a re-run of `resample` on the real data. `resample` reads
  the dataset at `data.root` in place and depends on `${data.root}/meta.csv` and
  `${data.root}/evaluation_setup` only: DVC never hashes its 230,350 audio files.
The stage always runs first and costs seconds, so the pipeline has one shape for both.
"""
from __future__ import annotations

import time

from mobileast.files import atomic_output, project_root

from mobileast.params import stage_params
from mobileast.data import DEMO_ROOT
from mobileast.data.demo import DemoConfig, generate
from stages import run

PARAMS = ["data.source", "demo"]
UNTRACKED = ["data.workers"]  # read, but no dependency: the bytes do not depend on the worker count
PLACEHOLDER = """data.source is not demo, so the demo dataset was not generated.
The pipeline reads the dataset at data.root (params.yaml) instead.
"""


def main() -> None:
    params = stage_params(PARAMS + UNTRACKED)
    source = params["data"]["source"]
    start = time.perf_counter()
    with atomic_output(project_root() / DEMO_ROOT) as tmp:
        if source == "demo":
            clips = generate(tmp, DemoConfig.from_params(params["demo"]), params["data"]["workers"])
            summary = f"wrote {len(clips)} clips ({clips.groupby('fold').size().to_dict()})"
        else:
            tmp.mkdir()
            (tmp / "README.txt").write_text(PLACEHOLDER)
            summary = f"data.source is {source}: wrote only a placeholder"
    print(f"demo_data: {summary} to {DEMO_ROOT} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    run(main)
