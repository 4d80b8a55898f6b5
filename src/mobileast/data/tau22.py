"""Reader and validation for the TAU Urban Acoustic Scenes 2022 Mobile development layout.

Layout of the TAU22 development set, read as-is for the real dataset and for the demo:
- `meta.csv`: tab-separated `filename scene_label identifier source_label`;
- `audio/<scene>-<city>-<location>-<segment>-<slice>-<device>.wav`, 1 s clips, `slice`
  (0..9) being the clip's position in its 10 s recording;
- `evaluation_setup/fold1_train.csv`, `fold1_evaluate.csv` (`filename scene_label`) and
  `fold1_test.csv` (`filename`).

Everything is validated before any audio is processed, so a broken dataset fails in
seconds, not after an hour of resampling. Inconsistent metadata is always an error (it
means the wrong files or a damaged download); a bad audio file (missing, unreadable,
unsupported format, not 1 s long; NaN or infinite samples, found when it is decoded)
stops the stage or, with `data.on_bad_file: skip`, is left out and listed in the stage
report, unless that leaves a fold empty. Every message names the files and the count.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import soundfile as sf

from mobileast.errors import InputError, ParamsError

from mobileast.labels import SCENES

from mobileast.progress import progress
from mobileast.data.parallel import runner, shared
from mobileast.data.store import CHUNK_ROWS, FOLDS, compact, concat_compact, read_table

META_FILE = "meta.csv"
SETUP_DIR = "evaluation_setup"
FOLD_FILES = {"train": "fold1_train.csv", "evaluate": "fold1_evaluate.csv"}
TEST_FILE = "fold1_test.csv"
META_COLUMNS = ("filename", "scene_label", "identifier", "source_label")
FOLD_COLUMNS = ("filename", "scene_label")
SOURCE_RATE = 44100
CLIP_SECONDS = 1
SLICES_PER_RECORDING = 10
DURATION_TOLERANCE = 0.01  # s; clips at most this far from 1 s are padded/trimmed to 1 s
AUDIO_SUBTYPES = ("PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE")
ON_BAD_FILE = ("error", "skip")
NAME_PATTERN = (r"^audio/(?P<scene>[^-/]+)-(?P<city>[^-/]+)-(?P<location>[^-/]+)"
                r"-(?P<segment>[^-/]+)-(?P<slice>\d+)-(?P<device>[^-/]+)\.wav$")
CLIP_COLUMNS = ["filename", "scene_label", "identifier", "city", "location", "segment",
                "slice", "device", "fold"]
SHOWN = 5  # file names quoted per problem


class DatasetError(InputError):
    """The dataset does not match the TAU22 layout; the message names the files."""


@dataclass
class Dataset:
    """Validated fold clips of a dataset in TAU22 layout.

    `clips` has CLIP_COLUMNS plus the audio header fields samplerate, channels and
    frames, one row per clip of the train and evaluate folds in canonical order (fold,
    then file name), whatever the row order of the metadata files; filename is str, slice
    and the header fields integers, the other columns categorical (compact at TAU22's
    size). `skipped` lists the bad audio files left out under on_bad_file=skip, as
    {filename, fold, reason}.
    """

    root: Path
    clips: pd.DataFrame
    skipped: list[dict[str, str]]


def clip_filename(scene: str, city: str, location: str, segment: str, slice_: int, device: str) -> str:
    """The TAU22 file name (relative to the dataset root) of one 1 s clip."""
    return f"audio/{scene}-{city}-{location}-{segment}-{slice_}-{device}.wav"


def recording_key(scene: Any, city: Any, location: Any, segment: Any, device: Any) -> Any:
    """Recording key: the file stem without the slice field (of str, or of pandas Series, categorical too)."""
    scene, city, location, segment, device = (part.astype(str) if isinstance(part, pd.Series) else part
                                              for part in (scene, city, location, segment, device))
    return scene + "-" + city + "-" + location + "-" + segment + "-" + device


def describe(description: str, names: Sequence[str]) -> str:
    """'<count> <description>: name, name, ... (and n more)'."""
    shown = ", ".join(names[:SHOWN])
    more = f" (and {len(names) - SHOWN} more)" if len(names) > SHOWN else ""
    return f"{len(names)} {description}: {shown}{more}"


def write_metadata(root: Path, clips: pd.DataFrame) -> None:
    """Write meta.csv and the fold1 files for `clips` (filename, scene_label, identifier, device, fold)."""
    meta = clips.rename(columns={"device": "source_label"}).sort_values("filename")
    _write_table(meta[list(META_COLUMNS)], root / META_FILE)
    (root / SETUP_DIR).mkdir(parents=True, exist_ok=True)
    for fold, name in FOLD_FILES.items():
        _write_table(meta.loc[meta.fold == fold, list(FOLD_COLUMNS)], root / SETUP_DIR / name)
    _write_table(meta.loc[meta.fold == "evaluate", ["filename"]], root / SETUP_DIR / TEST_FILE)


def _write_table(table: pd.DataFrame, path: Path) -> None:
    table.to_csv(path, sep="\t", index=False, lineterminator="\n")


def _read_table(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    if not path.is_file():
        raise DatasetError(f"{path}: file not found (is data.root the TAU22 development set?)")
    table = read_table(path, sep="\t")
    missing = [column for column in columns if column not in table.columns]
    if missing:
        raise DatasetError(f"{path}: expected tab-separated columns {', '.join(columns)}; "
                           f"missing {', '.join(missing)} (found {', '.join(map(str, table.columns))})")
    return table[list(columns)]


def _parse_names(filenames: pd.Series) -> pd.DataFrame:
    """The NAME_PATTERN fields of each file name (missing where it does not match), the slice
    as a number and the others categorical, parsed CHUNK_ROWS names at a time."""
    return concat_compact(compact(filenames.iloc[start:start + CHUNK_ROWS].str.extract(NAME_PATTERN),
                                  {"slice": float}, text=())
                          for start in range(0, max(len(filenames), 1), CHUNK_ROWS))


def _differ(a: pd.Series, b: pd.Series) -> np.ndarray:
    """Rows where two categorical columns hold different values (compared by code: no string per row)."""
    categories = a.cat.categories.union(b.cat.categories)
    codes = [values.cat.set_categories(categories).cat.codes.to_numpy() for values in (a, b)]
    return codes[0] != codes[1]


def _identifier_part(identifier: pd.Series, part: int) -> pd.Series:
    """City (part 0) or location (part 2) of <city>-<location> identifiers, categorical."""
    return identifier.map(lambda value: value.partition("-")[part]).astype("category")


def _flagged(table: pd.DataFrame, mask: pd.Series, detail: str | None = None) -> list[str]:
    """File names of the flagged rows, each followed by the value of `detail` if given."""
    rows = table[mask]
    if detail is None:
        return rows.filename.tolist()
    return [f"{name} ({detail} {value!r})" for name, value in zip(rows.filename, rows[detail])]


def _meta_problems(meta: pd.DataFrame, names: pd.DataFrame) -> list[str]:
    """Problems of meta.csv: malformed names, duplicates, unknown or contradicting labels."""
    parsed = names.scene.notna()
    checks = [
        (~parsed, "rows of meta.csv whose filename is not "
                  "audio/<scene>-<city>-<location>-<segment>-<slice>-<device>.wav", None),
        (meta.filename.duplicated(keep=False), "rows of meta.csv repeat a filename", None),
        (~meta.scene_label.isin(SCENES),
         f"rows of meta.csv have an unknown scene_label (known: {', '.join(SCENES)})", "scene_label"),
        (parsed & meta.scene_label.isin(SCENES) & _differ(names.scene, meta.scene_label),
         "rows of meta.csv have a scene_label that disagrees with the file name", "scene_label"),
        (parsed & _differ(names.device, meta.source_label),
         "rows of meta.csv have a source_label (device) that disagrees with the file name", "source_label"),
        (parsed & (_differ(names.city, _identifier_part(meta.identifier, 0))
                   | _differ(names.location, _identifier_part(meta.identifier, 2))),
         "rows of meta.csv have an identifier that is not <city>-<location> of the file name", "identifier"),
        (parsed & ~names.slice.between(0, SLICES_PER_RECORDING - 1),
         f"rows of meta.csv have a slice index outside 0..{SLICES_PER_RECORDING - 1}", None),
    ]
    return [describe(text, _flagged(meta, mask, detail)) for mask, text, detail in checks if mask.any()]


def _fold_rows(meta: pd.DataFrame, tables: dict[str, pd.DataFrame]) -> dict[str, np.ndarray]:
    """Per fold file, the meta.csv row of each file it lists (-1: absent from meta.csv)."""
    first = ~meta.filename.duplicated()
    known, rows = pd.Index(meta.filename[first]), np.flatnonzero(first.to_numpy())
    found = {fold: known.get_indexer(table.filename) for fold, table in tables.items()}
    return {fold: np.where(found >= 0, rows[found], -1) for fold, found in found.items()}


def _fold_problems(meta: pd.DataFrame, tables: dict[str, pd.DataFrame], rows: dict[str, np.ndarray]) -> list[str]:
    """Problems of the fold files: unknown or repeated names, labels contradicting meta.csv."""
    problems = []
    for fold, table in tables.items():
        name = f"{SETUP_DIR}/{FOLD_FILES.get(fold, TEST_FILE)}"
        if table.empty and fold in FOLDS:
            problems.append(f"{name} lists no files")
        known = rows[fold] >= 0
        checks = [(~known, f"files in {name} are absent from meta.csv", None),
                  (table.filename.duplicated(keep=False), f"rows of {name} repeat a filename", None)]
        if "scene_label" in table:
            expected = meta.scene_label.iloc[np.where(known, rows[fold], 0)].reset_index(drop=True)
            checks.append((known & _differ(expected, table.scene_label),
                           f"rows of {name} have a scene_label that disagrees with meta.csv", "scene_label"))
        problems += [describe(text, _flagged(table, mask, detail)) for mask, text, detail in checks if mask.any()]
    listed = [rows[fold][rows[fold] >= 0] for fold in FOLDS]
    both = sorted(meta.filename.iloc[np.intersect1d(*listed)])
    if both:
        problems.append(describe(f"files are in both {FOLD_FILES['train']} and {FOLD_FILES['evaluate']}", both))
    return problems


def read_clips(root: Path) -> pd.DataFrame:
    """The validated clips (CLIP_COLUMNS) of the train and evaluate folds, in canonical order.

    Raises DatasetError listing every metadata problem found at once.
    """
    root = Path(root)
    meta = _read_table(root / META_FILE, META_COLUMNS)
    tables = {fold: _read_table(root / SETUP_DIR / FOLD_FILES[fold], FOLD_COLUMNS) for fold in FOLDS}
    if (root / SETUP_DIR / TEST_FILE).exists():
        tables["test"] = _read_table(root / SETUP_DIR / TEST_FILE, ["filename"])
    names = _parse_names(meta.filename)
    rows = _fold_rows(meta, tables)
    problems = _meta_problems(meta, names) + _fold_problems(meta, tables, rows)
    if problems:
        raise DatasetError(f"invalid dataset at {root}:\n  - " + "\n  - ".join(problems))
    by_name = [rows[fold][meta.filename.iloc[rows[fold]].argsort(kind="stable").to_numpy()] for fold in FOLDS]
    order = np.concatenate(by_name)
    clips = pd.concat([meta.iloc[order].reset_index(drop=True),
                       names.iloc[order].drop(columns=["scene", "device"]).reset_index(drop=True)], axis=1)
    clips = clips.rename(columns={"source_label": "device"}).astype({"slice": int})
    clips["fold"] = pd.Categorical.from_codes(np.repeat(np.arange(len(FOLDS)), [len(r) for r in by_name]),
                                              categories=FOLDS)
    return clips[CLIP_COLUMNS]


def name_array(filenames: pd.Series) -> np.ndarray:
    """File names as one array of UTF-8 bytes, what data-stage workers index into: a few tens
    of bytes per file, where a list of Python strings takes about a hundred."""
    chunks = [np.array([name.encode() for name in filenames.iloc[start:start + CHUNK_ROWS]], dtype=bytes)
              for start in range(0, len(filenames), CHUNK_ROWS)]
    return np.concatenate(chunks) if chunks else np.zeros(0, "S1")


def unreadable(error: Exception, path: str, name: str) -> str:
    """Why the file at `path` could not be read, naming it by `name` (relative to the dataset
    root): libsndfile's message quotes the absolute path, which must not reach the reports
    (moving the dataset would change the store and re-run every later stage)."""
    return f"unreadable: {str(error).replace(path, name)}"


def _probe_file(root: str, name: str) -> tuple[int, int, int, str]:
    """(samplerate, channels, frames, problem) of one audio file; problem is '' if usable."""
    path = os.path.join(root, name)
    try:
        with sf.SoundFile(path) as info:  # reads the header only; a quarter cheaper than sf.info
            rate, channels, frames, subtype = info.samplerate, info.channels, info.frames, info.subtype
    except RuntimeError as error:  # libsndfile: missing, truncated or not audio
        return 0, 0, 0, "file not found" if not os.path.exists(path) else unreadable(error, path, name)
    if subtype not in AUDIO_SUBTYPES:
        problem = f"unsupported sample format {subtype} (expected PCM WAV, e.g. 16- or 24-bit)"
    elif abs(frames / rate - CLIP_SECONDS) > DURATION_TOLERANCE:
        problem = f"duration {frames / rate:.3f} s, expected {CLIP_SECONDS} s"
    else:
        problem = ""
    return rate, channels, frames, problem


def _probe_task(task: tuple[int, int]) -> tuple[int, np.ndarray, list[tuple[int, str]]]:
    """Headers of the shared file names [start, stop) -> (start, (n, 3) samplerate/channels/frames, problems)."""
    start, stop = task
    root, names = shared()
    info = np.zeros((stop - start, 3), np.int64)
    problems = []
    for i, name in enumerate(names[start:stop]):
        rate, channels, frames, problem = _probe_file(root, name.decode())
        info[i] = rate, channels, frames
        if problem:
            problems.append((start + i, problem))
    return start, info, problems


def probe_audio(root: Path, filenames: pd.Series, workers: int) -> tuple[pd.DataFrame, dict[int, str]]:
    """Audio headers (samplerate, channels, frames) of `filenames` on `workers` processes, and
    the problems found {position in filenames: reason}."""
    info = np.zeros((len(filenames), 3), np.int64)
    problems: dict[int, str] = {}
    with runner(workers, shared=(str(root), name_array(filenames))) as run, \
            progress(total=len(filenames), desc="check audio headers", unit="file") as bar:
        for start, block, found in run.imap(_probe_task, run.chunks(len(filenames))):
            info[start:start + len(block)] = block
            problems.update(found)
            bar.update(len(block))
    return pd.DataFrame(info, columns=["samplerate", "channels", "frames"]), problems


def bad_files(clips: pd.DataFrame, problems: dict[int, str], on_bad_file: str, root: Path) -> list[dict[str, str]]:
    """Apply data.on_bad_file (checked by load_dataset) to bad audio files {row of clips: reason}.

    Raises DatasetError naming them for 'error'; returns the skip list for 'skip'.
    """
    skipped = [{"filename": clips.filename.iat[row], "fold": str(clips.fold.iat[row]), "reason": problems[row]}
               for row in sorted(problems)]
    if skipped and on_bad_file == "error":
        names = [f"{item['filename']} ({item['reason']})" for item in skipped]
        raise DatasetError(f"{root}: " + describe(
            "bad audio files (set data.on_bad_file: skip to leave them out and list them in the report)",
            names))
    return skipped


def check_folds_left(clips: pd.DataFrame, skipped: list[dict[str, str]], root: Path) -> None:
    """Raise DatasetError when on_bad_file: skip left a fold without clips (`clips`: those
    kept, `skipped`: those left out): every file it lists is bad, and no later stage can
    train or evaluate on nothing."""
    for fold in FOLDS:
        if not (clips.fold == fold).any():
            bad = [f"{item['filename']} ({item['reason']})" for item in skipped if item["fold"] == fold]
            raise DatasetError(f"{root}: every file of the {fold} fold ({SETUP_DIR}/{FOLD_FILES[fold]}) is bad, "
                               f"so data.on_bad_file: skip leaves it empty; " + describe("bad audio files", bad))


def load_dataset(root: Path, workers: int, on_bad_file: str = "error") -> Dataset:
    """Validate metadata and audio headers of a dataset in TAU22 layout (headers read on
    `workers` processes); see Dataset. `on_bad_file` is checked first, before any file is read."""
    if on_bad_file not in ON_BAD_FILE:
        raise ParamsError(f"data.on_bad_file must be one of {', '.join(ON_BAD_FILE)}, got {on_bad_file!r}")
    root = Path(root)
    clips = read_clips(root)
    info, problems = probe_audio(root, clips.filename, workers)
    skipped = bad_files(clips, problems, on_bad_file, root)
    keep = np.ones(len(clips), bool)
    keep[list(problems)] = False
    clips = pd.concat([clips, info], axis=1)[keep].reset_index(drop=True)
    check_folds_left(clips, skipped, root)
    return Dataset(root, clips, skipped)
