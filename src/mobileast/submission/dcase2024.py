"""The DCASE2024 Task 1 package: one model per training split (data-efficient task).

The 2024 task trains the system five times, on the nested 5, 10, 25, 50 and 100 % splits
of the development train set (split5.csv ... split100.csv). Files in the output folder:
- `<label>.output.split_<N>.csv` for each split N: the system output of that split's model;
- `<label>.complexity.json`: the complexity figures of every split's model;
- `<label>.meta.yaml`: the system information; `system.complexity` holds the largest
  figures over the split models, `results.development_dataset.split_<N>` the overall,
  class-wise and device-wise accuracy and log loss of each split's model on the evaluate
  fold, `system.description.split_adaptations` / `system_adaptations` what differs between
  the split models' training params / architectures, as their metas record them;
- `<label>.bad_files.tsv` (only if any).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from mobileast.data.store import SPLITS
from mobileast.errors import InputError
from mobileast.files import write_json
from mobileast.params import flatten
from mobileast.submission import common
from mobileast.submission.common import FILL_IN, Model

SPLIT_KEY = "data.split"  # the params key that selects the split: differs by design
HEADER = ("DCASE2024 Task 1 system information, written by `python -m mobileast submit --format 2024`\n"
          "from the split models and the pipeline's params. Replace every FILL IN before submitting.")


def parse_split_models(specs: list[str]) -> dict[int, Path]:
    """{split: model path} of `--model split<N>=PATH` (or `<N>=PATH`) flags, one per split of SPLITS."""
    models: dict[int, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        number = name.removeprefix("split")
        if not sep or not path or not number.isdigit() or int(number) not in SPLITS:
            raise InputError(f"--model {spec!r}: --format 2024 takes split<N>=PATH with N one of "
                             f"{', '.join(map(str, SPLITS))}")
        if int(number) in models:
            raise InputError(f"--model: split {number} given twice")
        models[int(number)] = Path(path)
    missing = [n for n in SPLITS if n not in models]
    if missing:
        raise InputError(f"--format 2024 needs a model for every split; missing: "
                         f"{', '.join(f'split{n}=PATH' for n in missing)}")
    return dict(sorted(models.items()))


def differences(values: Mapping[int, Mapping[str, Any]], ignore: tuple[str, ...] = ()) -> dict[str, dict[int, Any]]:
    """{dotted key: {split: value}} of the keys whose values differ between the splits' trees."""
    flat = {split: flatten(tree) for split, tree in values.items()}
    keys = sorted({k for tree in flat.values() for k in tree} - set(ignore))
    return {k: {s: tree.get(k) for s, tree in flat.items()} for k in keys
            if len({repr(tree.get(k)) for tree in flat.values()}) > 1}


def describe_differences(diffs: Mapping[str, Mapping[int, Any]], same: str) -> str:
    if not diffs:
        return same
    return "; ".join(f"{key}: " + ", ".join(f"split {s} {v}" for s, v in by_split.items())
                     for key, by_split in diffs.items())


def metadata(label: str, models: Mapping[int, Model], complexities: Mapping[int, Mapping[str, Any]],
             params: Mapping[str, Any] | None, results: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """The meta.yaml content (the description from the largest split's model)."""
    main = models[max(models)]
    description = common.system_description(main.meta, params)
    trained = {s: m.meta.params for s, m in models.items()}
    description["split_adaptations"] = FILL_IN if not all(trained.values()) else describe_differences(
        differences(trained, ignore=(SPLIT_KEY,)), "none: every split's model was trained with the same params")
    description["system_adaptations"] = describe_differences(
        differences({s: {"arch": m.meta.arch, "config": m.meta.config or {}} for s, m in models.items()}),
        "none: the same architecture for every split")
    figures = [common.system_complexity(c) for c in complexities.values()]
    complexity = {key: max(f[key] for f in figures) for key in figures[0]}
    return {"submission": common.submission_block(label),
            "system": {"description": description, "complexity": complexity,
                       "external_datasets": common.external_datasets(main.meta, params),
                       "source_code": FILL_IN},
            "results": {"development_dataset": {f"split_{s}": dict(r) for s, r in results.items()}},
            **common.pipeline_params(main.meta, params)}


def write(model_paths: Mapping[int, Path], audio_dir: Path, out_dir: Path, label: str,
          params: Mapping[str, Any] | None, store: Path | None, batch_size: int) -> tuple[int, list[dict[str, str]]]:
    """Write the package; returns (files classified per split, bad files of any split)."""
    models = {s: common.load(p) for s, p in model_paths.items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    bad: dict[str, dict[str, str]] = {}
    done = 0
    for split, model in models.items():
        rows, split_bad = common.classify(model, audio_dir, batch_size)
        common.write_output(rows, out_dir / f"{label}.output.split_{split}.csv")
        bad.update((b["filename"], b) for b in split_bad)
        done = len(rows)
    complexities = {s: common.model_complexity(m) for s, m in models.items()}
    write_json(out_dir / f"{label}.complexity.json", {f"split_{s}": c for s, c in complexities.items()})
    results = {s: common.development_results(m, store, batch_size) for s, m in models.items()}
    common.write_meta(out_dir / f"{label}.meta.yaml", HEADER, metadata(label, models, complexities, params, results))
    common.write_bad_files(list(bad.values()), out_dir / f"{label}.bad_files.tsv")
    return done, list(bad.values())
