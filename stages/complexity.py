"""Stage complexity: params, MACs (DCASE and full counts) and parameter memory of the
student (BN folded; memory as stored in the int8 model; input: the 1 s log-mel of the
checkpoint's features, 1 x 1 x 256 x 64 by default) -> reports/complexity.json (the
headline figures and verdicts, a DVC metric), reports/complexity_details.json (per block,
transformer share, verdict bases) and reports/complexity.md."""
from pathlib import Path

from mobileast.complexity import complexity_report, headline, write_report
from mobileast.files import write_json
from mobileast.deploy import input_shape, load_checkpoint_model, load_deployed
from stages import run

PARAMS: list[str] = []


def main() -> None:
    model, meta = load_checkpoint_model(Path("models/student.pt"))
    quantized, _ = load_deployed(Path("models/student_int8.pt"))
    report = complexity_report(model, (1, *input_shape(meta)), stored=quantized)
    write_report(report, Path("reports/complexity_details.json"), Path("reports/complexity.md"),
                 "Complexity of the deployed student (models/student_int8.pt)")
    write_json(Path("reports/complexity.json"), headline(report))
    print(f"params {report['params']:,}, macs_dcase {report['macs_dcase']:,}, macs_full {report['macs_full']:,}, "
          f"int8 parameter memory {report['param_memory_bytes']:,} bytes; DCASE limits met: {report['dcase_pass']}")


if __name__ == "__main__":
    run(main)
