"""`python -m mobileast predict --model MODEL file.wav ...`: acoustic scene of audio files.

Each file is read with soundfile (any sample rate and format libsndfile reads; stereo
and multichannel are downmixed by averaging channels), resampled to the model's rate
with soxr (HQ), cut into the 1 s clips the model was trained on, and classified clip by
clip. The file's prediction is the mean of its clips' class probabilities (a confident
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
from typing import Any, Sequence

import numpy as np
import soundfile as sf
import torch
from torch import nn

from mobileast.data.audio import resample
from mobileast.deploy import feature_args, frontend_for, load_model_any

MIN_TAIL_SECONDS = 0.5


def read_audio(path: str | Path) -> tuple[np.ndarray, int, int]:
    """(mono float32 waveform in [-1, 1], sample rate, number of channels) of an audio file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if not path.is_file():
        raise ValueError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: empty file (0 bytes)")
    try:
        data, sample_rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError) as e:
        reason = getattr(e, "error_string", None) or str(e)
        raise ValueError(f"{path}: not a readable audio file ({reason})") from e
    if data.shape[0] == 0:
        raise ValueError(f"{path}: no audio samples")
    if not np.isfinite(data).all():
        raise ValueError(f"{path}: contains NaN or infinite samples")
    return data.mean(axis=1), int(sample_rate), data.shape[1]


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


def logits_for_clips(model: nn.Module, frontend: nn.Module, clips: np.ndarray,
                     batch_size: int = 64) -> np.ndarray:
    """Model logits (n, n_classes) float32 of 1 s clips (n, samples), in batches;
    `frontend` is deploy.frontend_for(meta) of the model.

    `clips` may be float in [-1, 1] or int16 (divided by 32768, the store convention),
    e.g. a memory-mapped evaluate fold reshaped to (n_clips, clip_samples).
    """
    if len(clips) == 0:
        raise ValueError("no clips to classify")
    scale = 1 / 32768 if clips.dtype == np.int16 else 1.0
    out = []
    with torch.no_grad():
        for i in range(0, len(clips), batch_size):
            wave = torch.from_numpy(np.asarray(clips[i:i + batch_size], dtype=np.float32) * scale)
            out.append(model(frontend(wave)).float().numpy())
    return np.concatenate(out)


def predict_file(path: str | Path, model: nn.Module, frontend: nn.Module, meta: dict[str, Any],
                 batch_size: int = 64) -> dict[str, Any]:
    """Scene prediction of one audio file: file-level and per-clip labels and probabilities."""
    wave, file_rate, channels = read_audio(path)
    rate = int(feature_args(meta["features"])["sample_rate"])
    wave = resample(wave, file_rate, rate)
    clips, starts = split_clips(wave, rate, int(MIN_TAIL_SECONDS * rate))
    logits = torch.from_numpy(logits_for_clips(model, frontend, clips, batch_size))
    probs = torch.softmax(logits.double(), dim=1).numpy()
    classes = list(meta["classes"])
    result = {"file": str(path), **_labelled(probs.mean(axis=0), classes),
              "duration_s": round(len(wave) / rate, 3), "sample_rate": file_rate, "channels": channels}
    result["seconds"] = [{"start_s": round(s / rate, 3), "end_s": round(min(s + rate, len(wave)) / rate, 3),
                          **_labelled(p, classes)} for s, p in zip(starts, probs)]
    return result


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
        json.dump({"model": args.model, "classes": list(meta["classes"]), "files": results},
                  sys.stdout, indent=2)
        print()
    return 1 if any("error" in r for r in results) else 0


def _labelled(probs: np.ndarray, classes: list[str]) -> dict[str, Any]:
    return {"label": classes[int(np.argmax(probs))],
            "probabilities": {c: round(float(p), 6) for c, p in zip(classes, probs)}}
