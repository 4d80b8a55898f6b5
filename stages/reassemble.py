"""Stage `reassemble`: the 10 s train recordings over data/resampled/train.npy, whose clips
the resample stage already placed by recording and slice index -> data/recordings/
(recordings.csv, splits.csv: each recording's smallest data-efficient split, and a report
listing the incomplete recordings and the split sizes; no copy of the audio)."""
from __future__ import annotations

from mobileast.files import atomic_output, project_root, write_json
from mobileast.params import stage_params
from mobileast.data import RECORDINGS_DIR, RESAMPLED_DIR, dataset_root
from mobileast.data.reassemble import build_table
from mobileast.data.splits import build_splits, split_folder
from mobileast.data.store import read_report
from stages import run

PARAMS = ["data.source", "data.root", "data.split_dir", "data.split_seed"]  # the clip size: the store's report


def main() -> None:
    data = stage_params(PARAMS)["data"]
    project = project_root()
    resampled = project / RESAMPLED_DIR
    folder = split_folder(dataset_root(data, project), data["split_dir"])
    with atomic_output(project / RECORDINGS_DIR) as tmp:
        report = build_table(resampled, tmp, read_report(resampled / "report.json")["clip_samples"])
        report["splits"] = build_splits(resampled, tmp, folder, data["split_seed"])
        write_json(tmp / "report.json", report)
    sizes = ", ".join(f"{split} %: {n}" for split, n in report["splits"]["recordings"].items())
    print(f"reassemble: {report['recordings']} train recordings ({len(report['incomplete'])} incomplete) "
          f"to {RECORDINGS_DIR} (incomplete ones listed in {RECORDINGS_DIR}/report.json); "
          f"{report['splits']['source']} splits, recordings per split: {sizes}")


if __name__ == "__main__":
    run(main)
