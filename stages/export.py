"""Stage export: models/student_int8.pt -> models/student_int8.onnx (int8 QDQ converted with
the torch model's qparams on the same calibration crops, mobileast.export) and
reports/export.json: its parameter memory counted from the ONNX initializers (it must
equal the complexity report's figure, counted on the torch int8 model) and its top-1
agreement with the torch int8 (target: at least 95 %) and float models on the evaluate
clips (1 s each, so per clip is per file as `predict` sees them)."""
from pathlib import Path

import torch

from mobileast.complexity import onnx_param_memory_bytes, param_memory_bytes
from mobileast.errors import InputError
from mobileast.files import write_json
from mobileast.data import RECORDINGS_DIR, RESAMPLED_DIR
from mobileast.data.crops import evaluate_clips
from mobileast.deploy import frontend_for, load_checkpoint_model, load_deployed, load_onnx
from mobileast.export import export_int8
from mobileast.inference import logit_agreement, predict
from stages import run

PARAMS: list[str] = []  # the calibration crops come from the int8 model's meta
INT8 = Path("models/student_int8.pt")
ONNX = Path("models/student_int8.onnx")
REPORT = Path("reports/export.json")
MIN_AGREEMENT = 0.95  # the share of evaluate clips on which both int8 models (torch, ONNX) give the same scene


def main() -> None:
    export_int8(INT8, ONNX, RECORDINGS_DIR, RESAMPLED_DIR)
    torch_int8, meta = load_deployed(INT8)
    onnx_int8, _ = load_onnx(ONNX)
    float_model, _ = load_checkpoint_model(Path(meta.source["checkpoint"]))
    memory, expected = onnx_param_memory_bytes(ONNX), param_memory_bytes(torch_int8)
    if memory != expected:
        raise InputError(f"{ONNX}: its parameters count {memory:,} bytes but the torch int8 model's "
                         f"(the complexity report's figure) {expected:,}")
    clips = evaluate_clips(RESAMPLED_DIR, meta.sample_rate, "the student's features.sample_rate")
    batches, frontend, cpu = list(clips.batches(256)), frontend_for(meta), torch.device("cpu")
    onnx_logits = predict(onnx_int8, frontend, batches, cpu)  # once, compared with both
    with_torch = logit_agreement(predict(torch_int8, frontend, batches, cpu), onnx_logits)
    report = {"param_memory_bytes": memory, "matches_complexity_report": memory == expected,
              "evaluate_agreement_with_torch_int8": with_torch,
              "evaluate_agreement_with_float": logit_agreement(predict(float_model, frontend, batches, cpu), onnx_logits),
              "agreement_with_torch_int8_pass": with_torch["top1_agreement"] >= MIN_AGREEMENT}
    write_json(REPORT, report)
    print(f"export: {ONNX} ({memory:,} bytes of parameters, as the torch int8 model); top-1 agreement on "
          f"{len(clips)} evaluate clips: {100 * with_torch['top1_agreement']:.1f} % with torch int8 "
          f"({'at least' if report['agreement_with_torch_int8_pass'] else 'BELOW'} {100 * MIN_AGREEMENT:.0f} %), "
          f"{100 * report['evaluate_agreement_with_float']['top1_agreement']:.1f} % with float")


if __name__ == "__main__":
    run(main)
