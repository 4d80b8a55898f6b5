"""Stage quantize: models/student.pt -> models/student_int8.pt (int8 TorchScript, PTSQ calibrated
on train crops), reports/quantize.json (parameter memory, agreement with the float model)."""
from pathlib import Path

from mobileast import tracking
from mobileast.files import write_json
from mobileast.params import flatten, stage_params
from mobileast.data import RECORDINGS_DIR, RESAMPLED_DIR
from mobileast.quantize import quantize_student
from stages import run

PARAMS = ["seed", "quant", "logits.hop_s", "data.split"]
REPORT = Path("reports/quantize.json")


def main() -> None:
    params = stage_params(PARAMS)
    with tracking.start_run("quantize", params):
        summary = quantize_student(Path("models/student.pt"), RECORDINGS_DIR, RESAMPLED_DIR,
                                   Path("models/student_int8.pt"), params["quant"], params["logits"]["hop_s"],
                                   params["seed"], params["data"]["split"])
        tracking.log_metrics({k: v for k, v in flatten(summary).items()
                              if isinstance(v, (int, float)) and not isinstance(v, bool)})
    write_json(REPORT, summary)
    a = summary["evaluate_agreement"]
    print(f"quantize: int8 parameter memory {summary['param_memory_bytes']:,} bytes "
          f"({'within' if summary['param_memory_pass'] else 'OVER'} the 128,000 limit; float32 "
          f"{summary['param_memory_bytes_float32']:,}); kept float: {summary['float_modules'] or 'none'}, "
          f"float output: {summary['dynamic_modules'] or 'none'}; "
          f"on {a['n']} evaluate clips int8 and float agree on {100 * a['top1_agreement']:.1f} % of top-1 "
          f"classes (logit correlation {a['logit_correlation']:.4f})")


if __name__ == "__main__":
    run(main)
