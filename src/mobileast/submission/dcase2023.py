"""The DCASE2023 Task 1 package of one model.

Files in the output folder:
- `<label>.output.csv`: the system output (common.write_output);
- `<label>.complexity.json`: parameters, MACs (the DCASE convention and the full count),
  parameter memory as stored, and the verdicts against the limits;
- `<label>.meta.yaml`: the system information, filled with what the pipeline knows: the
  description (architecture, features, augmentation, distillation, quantization,
  complexity management), external datasets, complexity (total model size = parameter
  memory in bytes), the development results computed on the evaluate fold (overall,
  class-wise and device-wise accuracy and log loss) and the DVC params; the fields only
  the authors know say FILL IN;
- `<label>.bad_files.tsv` (only if any): the files that could not be classified.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from mobileast.files import write_json
from mobileast.submission import common
from mobileast.submission.common import FILL_IN, Model

HEADER = ("DCASE2023 Task 1 system information, written by `python -m mobileast submit` from the\n"
          "model and the pipeline's params. Replace every FILL IN before submitting.")


def metadata(label: str, model: Model, complexity: Mapping[str, Any], params: Mapping[str, Any] | None,
             results: Mapping[str, Any]) -> dict[str, Any]:
    """The meta.yaml content."""
    return {"submission": common.submission_block(label),
            "system": {"description": common.system_description(model.meta, params),
                       "complexity": common.system_complexity(complexity),
                       "energy_consumption": {"training": FILL_IN, "inference": FILL_IN,
                                              "baseline_inference": FILL_IN},
                       "external_datasets": common.external_datasets(model.meta, params),
                       "source_code": FILL_IN},
            "results": {"development_dataset": dict(results)},
            **common.pipeline_params(model.meta, params)}


def write(model_path: Path, audio_dir: Path, out_dir: Path, label: str, params: Mapping[str, Any] | None,
          store: Path | None, batch_size: int) -> tuple[int, list[dict[str, str]]]:
    """Write the package; returns (files classified, bad files)."""
    model = common.load(model_path)
    rows, bad = common.classify(model, audio_dir, batch_size)
    out_dir.mkdir(parents=True, exist_ok=True)
    common.write_output(rows, out_dir / f"{label}.output.csv")
    complexity = common.model_complexity(model)
    write_json(out_dir / f"{label}.complexity.json", complexity)
    results = common.development_results(model, store, batch_size)
    common.write_meta(out_dir / f"{label}.meta.yaml", HEADER, metadata(label, model, complexity, params, results))
    common.write_bad_files(bad, out_dir / f"{label}.bad_files.tsv")
    return len(rows), bad
