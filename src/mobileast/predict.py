"""`python -m mobileast predict --model MODEL file.wav ...`: acoustic scene of audio files.

Each file is read with soundfile (any sample rate and format libsndfile reads; stereo
and multichannel are downmixed by averaging channels: mobileast.data.audio.read_audio),
resampled to the model's rate with soxr (HQ), cut into the 1 s clips the model was
trained on, and classified clip by clip (mobileast.inference, on the CPU). The file's prediction is the mean of its clips' class probabilities (a confident
wrong clip then weighs no more than one clip, unlike a mean of logits).

Clips: consecutive 1 s clips from the start; a remaining tail of at least 0.5 s adds one
more clip, the last 1 s of the file (overlapping the previous clip rather than padding
with silence the model never heard in real recordings); a shorter tail is dropped. A
file shorter than 1 s is zero-padded to 1 s, the way missing slices are zero-filled in
the training recordings.

A missing, empty, corrupt or unreadable file gets an error line on stderr naming the
file and the problem; the other files are still predicted. Exit status: 0 if every
file was predicted, 1 if any file failed, 2 if the model cannot be loaded.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch
from torch import nn

from mobileast.data.audio import read_audio, resample
from mobileast.deploy import ModelMeta, frontend_for, load_model_any
from mobileast.inference import clip_batches, predict

MIN_TAIL_SECONDS = 0.5


def split_clips(wave: np.ndarray, clip_samples: int,
                min_tail: int) -> tuple[np.ndarray, np.ndarray]:
    """(clips (n, clip_samples), start sample of each clip) per the module docstring's rule."""
    n_full = len(wave) // clip_samples
    if n_full == 0:
        return np.pad(wave, (0, clip_samples - len(wave)))[None], np.zeros(1, dtype=np.int64)
    starts = np.arange(n_full, dtype=np.int64) * clip_samples
    if len(wave) - n_full * clip_samples >= min_tail:
        starts = np.append(starts, len(wave) - clip_samples)
    return np.stack([wave[s:s + clip_samples] for s in starts]), starts


class FileLogits(NamedTuple):
    """A file's clip logits (n, classes) float32 and where they come from."""

    logits: torch.Tensor
    starts: np.ndarray  # start sample of each clip, at the model's rate
    samples: int  # the file's length at the model's rate
    file_rate: int
    channels: int


def file_logits(path: str | Path, model: nn.Module, frontend: nn.Module, meta: ModelMeta,
                batch_size: int = 64) -> FileLogits:
    """The logits of an audio file's 1 s clips (module docstring), computed on the CPU in
    batches by mobileast.inference; `frontend` is deploy.frontend_for(meta) of the model."""
    wave, file_rate, channels = read_audio(path)
    rate = meta.sample_rate
    wave = resample(wave, file_rate, rate)
    clips, starts = split_clips(wave, rate, int(MIN_TAIL_SECONDS * rate))
    logits = predict(model, frontend, clip_batches(clips, batch_size), torch.device("cpu"))
    return FileLogits(logits, starts, len(wave), file_rate, channels)


def predict_file(path: str | Path, model: nn.Module, frontend: nn.Module, meta: ModelMeta,
                 batch_size: int = 64) -> dict[str, Any]:
    """Scene prediction of one audio file: file-level and per-clip labels and probabilities."""
    result = file_logits(path, model, frontend, meta, batch_size)
    rate, n = meta.sample_rate, result.samples
    probs = torch.softmax(result.logits.double(), dim=1).numpy()
    classes = list(meta.classes)
    out = {"file": str(path), **_labelled(probs.mean(axis=0), classes),
           "duration_s": round(n / rate, 3), "sample_rate": result.file_rate, "channels": result.channels}
    out["seconds"] = [{"start_s": round(s / rate, 3), "end_s": round(min(s + rate, n) / rate, 3),
                       **_labelled(p, classes)} for s, p in zip(result.starts, probs)]
    return out


def format_result(result: dict[str, Any], per_second: bool) -> str:
    """Human-readable lines for one file's result (probabilities highest first)."""
    ranked = sorted(result["probabilities"].items(), key=lambda kv: -kv[1])
    lines = [f"{result['file']}: {result['label']} ({ranked[0][1]:.3f})  "
             f"[{result['duration_s']:.2f} s, {result['sample_rate']} Hz, {result['channels']} ch]",
             "  " + "  ".join(f"{c} {p:.3f}" for c, p in ranked)]
    if per_second:
        lines += [f"  {s['start_s']:.2f}-{s['end_s']:.2f} s  {s['label']} "
                  f"({s['probabilities'][s['label']]:.3f})" for s in result["seconds"]]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mobileast predict", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Acoustic scene and class probabilities of audio files. Any sample rate, mono or\n"
                    "stereo (downmixed); each file is resampled to the model's rate, cut into 1 s clips and\n"
                    "its prediction is the mean of its clips' class probabilities. A file that cannot be\n"
                    "read gets an error line on stderr and the others are still predicted.\n"
                    "Exit status: 0 if every file was predicted, 1 if any failed, 2 if the model cannot load.",
        epilog="examples:\n"
               "  python -m mobileast predict --model models/student_int8.pt some.wav other.flac\n"
               "  python -m mobileast predict --model models/student_int8.onnx --per-second --json some.wav")
    parser.add_argument("--model", required=True,
                        help="deployed model (TorchScript from the quantize stage, or ONNX from export) "
                             "or a training checkpoint")
    parser.add_argument("files", nargs="+", help="audio files (WAV, FLAC, ...)")
    parser.add_argument("--per-second", action="store_true", help="also print the prediction of every 1 s clip")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    parser.add_argument("--batch-size", type=int, default=64, help="clips per model call (default 64)")
    args = parser.parse_args(argv)
    try:
        model, meta = load_model_any(args.model)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    frontend = frontend_for(meta)
    results = []
    for path in args.files:
        try:
            result = predict_file(path, model, frontend, meta, args.batch_size)
        except (FileNotFoundError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            results.append({"file": path, "error": str(e)})
            continue
        if not args.per_second:
            del result["seconds"]
        results.append(result)
        if not args.json:
            print(format_result(result, args.per_second), flush=True)
    if args.json:
        json.dump({"model": args.model, "classes": list(meta.classes), "files": results},
                  sys.stdout, indent=2)
        print()
    return 1 if any("error" in r for r in results) else 0


def _labelled(probs: np.ndarray, classes: list[str]) -> dict[str, Any]:
    return {"label": classes[int(np.argmax(probs))],
            "probabilities": {c: round(float(p), 6) for c, p in zip(classes, probs)}}
