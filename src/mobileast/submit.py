"""`python -m mobileast submit`: a DCASE Task 1 submission from trained models, in the
format of the 2023, 2024 or 2025 challenge (mobileast.submission, one module per year).

    python -m mobileast submit --model models/student_int8.onnx --audio-dir /data/eval/audio --out submission/
    python -m mobileast submit --format 2024 --model split5=m5.onnx ... --model split100=m100.onnx \
        --audio-dir /data/eval/audio --out submission/
    python -m mobileast submit --format 2025 --model models/student_int8.onnx \
        --device-model a=models/device/a_int8.onnx --out submission/

The development results of the meta.yaml (2023, 2024) are computed on the evaluate fold of
the pipeline's resampled store (--resampled, default data/resampled) when there is one,
the way the evaluate stage runs the model; without it they say FILL IN.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from mobileast.errors import InputError
from mobileast.files import project_root
from mobileast.params import read_params
from mobileast.submission import common, dcase2023, dcase2024, dcase2025

FORMATS = ("2023", "2024", "2025")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mobileast submit", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="A DCASE Task 1 submission from trained models, written into --out, in the format of\n"
                    "--format 2023 (default): <label>.output.csv (tab-separated filename, scene_label and one\n"
                    "  probability column per class), <label>.complexity.json and <label>.meta.yaml;\n"
                    "2024: one --model per training split (split5=PATH ... split100=PATH), one\n"
                    "  <label>.output.split_<N>.csv each and a meta.yaml with the results of every split;\n"
                    "2025: an inference package (load_model, load_inputs, get_model_for_device, predict)\n"
                    "  with the general --model, one --device-model per device, and their complexity.json.\n"
                    "The meta.yaml is filled with what the pipeline knows (development results from the\n"
                    "evaluate fold of --resampled when it exists), the rest marked FILL IN. Files that cannot\n"
                    "be read are listed in <label>.bad_files.tsv and on stderr, and the exit status is 1.",
        epilog="examples:\n"
               "  python -m mobileast submit --model models/student_int8.onnx --audio-dir /data/eval/audio \\\n"
               "      --out submission/ --label Lastname_INST_task1_1\n"
               "  python -m mobileast submit --format 2024 --model split5=m5.onnx --model split10=m10.onnx \\\n"
               "      --model split25=m25.onnx --model split50=m50.onnx --model split100=m100.onnx \\\n"
               "      --audio-dir /data/eval/audio --out submission/ --label Lastname_INST_task1_1\n"
               "  python -m mobileast submit --format 2025 --model models/student_int8.onnx \\\n"
               "      --device-model a=models/device/a_int8.onnx --out submission/ --label Lastname_INST_task1_1")
    parser.add_argument("--format", choices=FORMATS, default="2023", help="challenge year (default: %(default)s)")
    parser.add_argument("--model", action="append", required=True,
                        help="int8 TorchScript, int8 ONNX or a float checkpoint (2023); split<N>=PATH for each "
                             "N of 5, 10, 25, 50, 100 (2024, repeated); the general model (2025, deployed models only)")
    parser.add_argument("--device-model", action="append", default=[], metavar="DEV=PATH",
                        help="2025: the model of recording device DEV (repeatable); other devices use --model")
    parser.add_argument("--audio-dir", type=Path,
                        help="folder of WAV files to classify, searched recursively (2023 and 2024)")
    parser.add_argument("--out", required=True, type=Path, help="folder to write the submission into")
    parser.add_argument("--label", default="Lastname_INST_task1_1",
                        help="submission label, <Lastname>_<INST>_task1_<1-4> (default: %(default)s)")
    parser.add_argument("--params", type=Path, help="params.yaml of the run (default: the project's, if any)")
    parser.add_argument("--resampled", type=Path,
                        help="resampled store whose evaluate fold gives the development results "
                             "(default: the project's data/resampled, if any)")
    parser.add_argument("--batch-size", type=int, default=64, help="clips per model call (default 64)")
    args = parser.parse_args(argv)
    try:
        label = common.check_label(args.label)
        batch_size = common.check_batch_size(args.batch_size)
        if args.format == "2025":
            return _package(args, label)
        if args.device_model:
            raise InputError("--device-model is for --format 2025")
        if args.audio_dir is None:
            raise InputError(f"--format {args.format} needs --audio-dir, the folder of audio files to classify")
        root = _project()
        params_path = args.params or (root / "params.yaml" if root else None)
        params = read_params(params_path) if params_path and params_path.is_file() else None
        store = args.resampled or (root / "data/resampled" if root else None)
        if args.format == "2024":
            models = dcase2024.parse_split_models(args.model)
            done, bad = dcase2024.write(models, args.audio_dir, args.out, label, params, store, batch_size)
            written = f"{label}.output.split_<N>.csv"
        else:
            if len(args.model) > 1:
                raise InputError("--format 2023 takes one --model")
            done, bad = dcase2023.write(Path(args.model[0]), args.audio_dir, args.out, label, params, store,
                                        batch_size)
            written = f"{label}.output.csv"
    except (InputError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"submit: {done} files classified into {args.out / written}"
          + (f"; {len(bad)} bad files listed in {args.out / (label + '.bad_files.tsv')}" if bad else ""))
    return 1 if bad else 0


def _package(args: argparse.Namespace, label: str) -> int:
    if len(args.model) > 1:
        raise InputError("--format 2025 takes one --model (the general model) and --device-model DEV=PATH per device")
    resources = dcase2025.write(Path(args.model[0]), dcase2025.parse_device_models(args.device_model), args.out, label)
    print(f"submit: inference package {resources.parents[1]} (module {label}), models in {resources}")
    return 0


def _project() -> Path | None:
    try:
        return project_root()
    except FileNotFoundError:
        return None
