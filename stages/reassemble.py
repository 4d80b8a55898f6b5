"""Stage `reassemble`: 1 s clips (data/resampled) -> 10 s recordings (data/recordings)."""
from __future__ import annotations

from mobileast.config import atomic_output, project_root, write_json
from mobileast.data import RECORDINGS_DIR, RESAMPLED_DIR
from mobileast.data.reassemble import build_store
from mobileast.data.store import read_report

PARAMS: list[str] = []  # reads no params: the clip size comes from the resampled store's report


def main() -> None:
    project = project_root()
    resampled = project / RESAMPLED_DIR
    with atomic_output(project / RECORDINGS_DIR) as tmp:
        report = build_store(resampled, tmp, read_report(resampled / "report.json")["clip_samples"])
        write_json(tmp / "report.json", report)
    folds = {fold: f"{s['recordings']} recordings ({s['incomplete']} incomplete)" for fold, s in report["folds"].items()}
    print(f"reassemble: {folds} to {RECORDINGS_DIR} (incomplete ones listed in {RECORDINGS_DIR}/report.json)")


if __name__ == "__main__":
    main()
