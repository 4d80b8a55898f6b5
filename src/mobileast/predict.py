"""`python -m mobileast predict --model MODEL file.wav ...`: acoustic scene of audio files.

Each file is streamed: read with soundfile in blocks (any sample rate from 1 kHz to
768 kHz and any format libsndfile reads; stereo and multichannel are downmixed by
averaging channels: mobileast.data.audio.AudioReader), resampled block by block to the
model's rate with soxr's streaming resampler (HQ; the same samples as resampling the
whole file), cut into the 1 s clips the model was trained on as they come, and
classified in batches of clips (mobileast.inference, on the CPU), so memory stays
bounded whatever the file's length. The file's prediction is the mean of its clips'
class probabilities (a confident wrong clip then weighs no more than one clip, unlike a
mean of logits).

Clips: consecutive 1 s clips from the start; a remaining tail of at least 0.5 s adds one
more clip, the last 1 s of the file (overlapping the previous clip rather than padding
with silence the model never heard in real recordings); a shorter tail is dropped. A
file shorter than 1 s is zero-padded to 1 s, the way missing slices are zero-filled in
the training recordings.

A missing, empty, corrupt or unreadable file, one with an absurd sample rate or
non-finite samples, or one the host runs out of memory on, gets an error line on stderr
naming the file and the problem; the other files are still predicted (and `--json`
still printed, with the file's error). Exit status: 0 if every
file was predicted, 1 if any file failed, 2 if the model cannot be loaded.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple, Sequence

import numpy as np
import torch
from torch import nn

from mobileast.data.audio import AudioReader, resample_blocks
from mobileast.data.crops import Batch
from mobileast.deploy import ModelMeta, frontend_for, load_model_any
from mobileast.inference import clip_batches, predict

MIN_TAIL_SECONDS = 0.5


class ClipCutter:
    """Cuts a waveform given in blocks into the module docstring's clips as the blocks come:
    consecutive `clip_samples` clips, then the last `clip_samples` if at least `min_tail`
    samples remain, or the whole waveform zero-padded if it is shorter than one clip.
    After `clips` is exhausted, `starts` holds each clip's start sample and `samples` the
    waveform's length."""

    def __init__(self, clip_samples: int, min_tail: int):
        self.clip_samples, self.min_tail = clip_samples, min_tail
        self.starts: list[int] = []
        self.samples = 0

    def clips(self, blocks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        size = self.clip_samples
        pending = np.zeros(0, dtype=np.float32)  # the samples after the last whole clip
        last = None  # the last whole clip, for the tail clip
        for block in blocks:
            self.samples += len(block)
            pending = np.concatenate([pending, block])
            whole = len(pending) // size
            for i in range(whole):
                last = pending[i * size:(i + 1) * size]
                self.starts.append(self.samples - len(pending) + i * size)
                yield last
            pending = pending[whole * size:].copy()
        if last is None:
            self.starts.append(0)
            yield np.pad(pending, (0, size - len(pending)))
        elif len(pending) >= self.min_tail:
            self.starts.append(self.samples - size)
            yield np.concatenate([last[len(pending):], pending])


def clip_groups(clips: Iterable[np.ndarray], batch_size: int) -> Iterator[Batch]:
    """`clips` in `predict`'s batches of `batch_size` (the last one shorter), in order."""
    group: list[np.ndarray] = []
    row = 0
    for clip in clips:
        group.append(clip)
        if len(group) == batch_size:
            yield from clip_batches(np.stack(group), batch_size, first_row=row)
            row, group = row + batch_size, []
    if group:
        yield from clip_batches(np.stack(group), batch_size, first_row=row)


class FileLogits(NamedTuple):
    """A file's clip logits (n, classes) float32 and where they come from."""

    logits: torch.Tensor
    starts: np.ndarray  # start sample of each clip, at the model's rate
    samples: int  # the file's length at the model's rate
    file_rate: int
    channels: int


def file_logits(path: str | Path, model: nn.Module, frontend: nn.Module, meta: ModelMeta,
                batch_size: int = 64) -> FileLogits:
    """The logits of an audio file's 1 s clips (module docstring), streamed from the file
    and computed on the CPU in batches of `batch_size` by mobileast.inference; `frontend` is
    deploy.frontend_for(meta) of the model."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive number of clips, got {batch_size}")
    audio = AudioReader(path)
    rate = meta.sample_rate
    cutter = ClipCutter(rate, int(MIN_TAIL_SECONDS * rate))
    clips = cutter.clips(resample_blocks(audio.blocks(), audio.rate, rate))
    logits = predict(model, frontend, clip_groups(clips, batch_size), torch.device("cpu"))
    return FileLogits(logits, np.array(cutter.starts, dtype=np.int64), cutter.samples, audio.rate, audio.channels)


def predict_file(path: str | Path, model: nn.Module, frontend: nn.Module, meta: ModelMeta,
                 batch_size: int = 64) -> dict[str, Any]:
    """Scene prediction of one audio file: file-level and per-clip labels and probabilities.
    A file the host runs out of memory on is a ValueError naming it, as an unreadable one is,
    so that a caller skips it and goes on with the others."""
    try:
        result = file_logits(path, model, frontend, meta, batch_size)
    except MemoryError:
        raise ValueError(f"{path}: out of memory") from None
    rate, n = meta.sample_rate, result.samples
    probs = torch.softmax(result.logits.double(), dim=1).numpy()
    classes = list(meta.classes)
    out = {"file": str(path), **_labelled(probs.mean(axis=0), classes),
           "duration_s": round(n / rate, 3), "sample_rate": result.file_rate, "channels": result.channels}
    out["seconds"] = [{"start_s": round(s / rate, 3), "end_s": round(min(s + rate, n) / rate, 3),
                       **_labelled(p, classes)} for s, p in zip(result.starts, probs)]
    return out


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


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
    parser.add_argument("--batch-size", type=positive_int, default=64, help="clips per model call (default 64)")
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
            message = str(e)
            print(f"error: {message}", file=sys.stderr)
            results.append({"file": path, "error": message})
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
