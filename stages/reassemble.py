"""Stage `reassemble`: the 10 s train recordings over data/resampled/train.npy, whose clips
the resample stage already placed by recording and slice index -> data/recordings/
(recordings.csv and a report listing the incomplete recordings; no copy of the audio)."""
from __future__ import annotations

from mobileast.files import atomic_output, project_root, write_json
from mobileast.data import RECORDINGS_DIR, RESAMPLED_DIR
from mobileast.data.reassemble import build_table
from mobileast.data.store import read_report
from stages import run

PARAMS: list[str] = []  # reads no params: the clip size comes from the resampled store's report


def main() -> None:
    project = project_root()
    resampled = project / RESAMPLED_DIR
    with atomic_output(project / RECORDINGS_DIR) as tmp:
        report = build_table(resampled, tmp, read_report(resampled / "report.json")["clip_samples"])
        write_json(tmp / "report.json", report)
    print(f"reassemble: {report['recordings']} train recordings ({len(report['incomplete'])} incomplete) "
          f"to {RECORDINGS_DIR} (incomplete ones listed in {RECORDINGS_DIR}/report.json)")


if __name__ == "__main__":
    run(main)
