"""The checks of the DCASE Task 1 organisers' submission validators (2023 and 2024 meta.yaml
and system output files), reimplemented for the tests: required fields per block, the
submission label, one corresponding author, the abbreviation length, numeric values of the
results and the parameter count, the output file's header, rows, labels and names.
Each check returns a list of errors (empty: valid)."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Mapping

from mobileast.labels import DEVICES, SCENES

RESULT_BLOCK = {"overall": ["accuracy", "logloss"], "class_wise": list(SCENES), "device_wise": list(DEVICES)}
REQUIRED = {
    "2023": {
        "system": ["description", "complexity", "energy_consumption", "external_datasets", "source_code"],
        "system.description": ["input_sampling_rate", "acoustic_features", "embeddings", "data_augmentation",
                               "machine_learning_method", "ensemble_method_subsystem_count", "decision_making",
                               "external_data_usage", "complexity_management", "pipeline", "framework"],
        "system.complexity": ["total_model_size", "total_parameters", "total_parameters_non_zero", "memory_use",
                              "macs"],
        "system.energy_consumption": ["training", "inference", "baseline_inference"],
    },
    "2024": {
        "system": ["description", "complexity", "external_datasets", "source_code"],
        "system.description": ["input_sampling_rate", "acoustic_features", "data_augmentation",
                               "machine_learning_method", "external_data_usage", "complexity_management",
                               "pipeline", "framework", "split_adaptations", "system_adaptations"],
        "system.complexity": ["total_model_size", "total_parameters", "macs"],
    },
}
SPLITS_2024 = ("split_5", "split_10", "split_25", "split_50", "split_100")


def _missing(block: Any, fields: list[str], where: str) -> list[str]:
    if not isinstance(block, Mapping):
        return [f"{where}: not a block"]
    return [f"{where}: lacks {f}" for f in fields if f not in block]


def _is_float(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return not isinstance(value, bool)


def _result_errors(block: Any, where: str) -> list[str]:
    errors = _missing(block, list(RESULT_BLOCK), where)
    if errors:
        return errors
    errors += _missing(block["overall"], RESULT_BLOCK["overall"], f"{where}.overall")
    errors += [f"{where}.overall.{k} is not numeric" for k, v in block["overall"].items() if not _is_float(v)]
    for part in ("class_wise", "device_wise"):
        errors += _missing(block[part], RESULT_BLOCK[part], f"{where}.{part}")
        for item, figures in block[part].items():
            errors += _missing(figures, ["accuracy", "logloss"], f"{where}.{part}.{item}")
            errors += [f"{where}.{part}.{item}.{k} is not numeric" for k, v in figures.items() if not _is_float(v)]
    return errors


def meta_errors(meta: Mapping[str, Any], year: str) -> list[str]:
    """The validator's errors of a meta.yaml of `year` (2023 or 2024)."""
    errors = [f"top level: lacks {b}" for b in ("submission", "system", "results") if b not in meta]
    if errors:
        return errors
    submission, system = meta["submission"], meta["system"]
    errors += _missing(submission, ["label", "name", "abbreviation", "authors"], "submission")
    for i, author in enumerate(submission.get("authors") or []):
        errors += _missing(author, ["lastname", "firstname", "email", "affiliation"], f"submission.authors[{i}]")
    corresponding = sum(bool(a.get("corresponding")) for a in submission.get("authors") or [])
    if corresponding != 1:
        errors.append(f"submission.authors: {corresponding} corresponding authors, one required")
    parts = str(submission.get("label", "")).split("_")
    if len(parts) != 4 or parts[2] != "task1" or not parts[3].isdigit() or not 1 <= int(parts[3]) <= 4:
        errors.append(f"submission.label {submission.get('label')!r} is not <Lastname>_<INST>_task1_<1-4>")
    if len(str(submission.get("abbreviation", ""))) > 10:
        errors.append("submission.abbreviation longer than 10 characters")
    for where, fields in REQUIRED[year].items():
        block: Any = meta
        for key in where.split("."):
            block = block.get(key, {}) if isinstance(block, Mapping) else {}
        errors += _missing(block, fields, where)
    complexity = system.get("complexity", {})
    if not isinstance(complexity.get("total_parameters"), int):
        errors.append("system.complexity.total_parameters is not an integer")
    for i, dataset in enumerate(system.get("external_datasets") or []):
        errors += _missing(dataset, ["name", "url", "total_audio_length"], f"system.external_datasets[{i}]")
    dev = meta["results"].get("development_dataset")
    if year == "2023":
        errors += _result_errors(dev, "results.development_dataset")
    else:
        errors += _missing(dev, list(SPLITS_2024), "results.development_dataset")
        for split in SPLITS_2024:
            if isinstance(dev, Mapping) and split in dev:
                errors += _result_errors(dev[split], f"results.development_dataset.{split}")
    return errors


def output_errors(path: Path, label: str, n_files: int | None = None) -> list[str]:
    """The validator's errors of a system output file: its name starts with the label, the
    header is the official one, one row per file, each a .wav name (a number when the names
    are the evaluation set's), a known scene label and numeric scores."""
    errors = [] if path.name.split(".")[0] == label else [f"{path.name}: does not start with the label {label}"]
    rows = list(csv.reader(io.StringIO(path.read_text()), delimiter="\t"))
    if rows[0] != ["filename", "scene_label", *SCENES]:
        errors.append(f"{path.name}: header {rows[0]}")
    names = [Path(r[0]).name for r in rows[1:]]
    if len(set(names)) != len(names):
        errors.append(f"{path.name}: duplicate files")
    if n_files is not None and len(set(names)) != n_files:
        errors.append(f"{path.name}: {len(set(names))} files, {n_files} expected")
    for i, row in enumerate(rows[1:], 1):
        if len(row) != 2 + len(SCENES):
            errors.append(f"{path.name} row {i}: {len(row)} fields")
            continue
        if not row[0].endswith(".wav"):
            errors.append(f"{path.name} row {i}: {row[0]} is not a .wav file")
        if row[1] not in SCENES:
            errors.append(f"{path.name} row {i}: unknown scene {row[1]}")
        errors += [f"{path.name} row {i}: score {v!r} is not numeric" for v in row[2:] if not _is_float(v)]
    return errors
