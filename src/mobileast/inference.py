"""Logits from a model: the one inference loop, its precision policy, device placement
and batch prefetching.

Every path that turns audio into logits runs `predict` here: validation during
training, the teacher-logit dump, evaluation, quantization and export agreement,
`predict` and `submit`. It takes any model the project makes (a float checkpoint's
nn.Module, an int8 TorchScript module, an ONNX model behind deploy.OnnxModel) with the
frontend of its meta (deploy.frontend_for) and an iterable of waveform `Batch`es: a
fold's (data.crops) or a file's clips (`clip_batches`). Where the model runs is
`device_for`'s policy.
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Iterable, Iterator

import numpy as np
import torch
from torch import nn

from mobileast.data.crops import Batch
from mobileast.deploy import ModelMeta
from mobileast.errors import ParamsError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device, key: str = "precision") -> str:
    """`auto`: bf16 on a CUDA device that supports it, else fp32 (CPU training stays fp32,
    so CPU results are those of the fp32 code). fp32, bf16 and fp16 are taken as given
    (bf16 and fp16 also on CPU, where autocast runs them, slowly). `key`: the params key
    it comes from, for the error."""
    if precision not in PRECISIONS:
        raise ParamsError(f"{key} must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False) else "fp32"


def autocast(precision: str, device: torch.device) -> Any:
    """The autocast context of a resolved precision on `device` (a no-op for fp32)."""
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES.get(precision, torch.float32),
                          enabled=precision in AUTOCAST_DTYPES)


def device_for(meta: ModelMeta) -> torch.device:
    """Where a model runs: int8 models and ONNX models on the CPU (PyTorch's int8 kernels are
    CPU-only; onnxruntime runs with its CPU provider), float torch models on the GPU when
    there is one."""
    return torch.device("cpu" if meta.quantized or meta.is_onnx or not torch.cuda.is_available() else "cuda")


def predict(model: nn.Module, frontend: nn.Module, batches: Iterable[Batch],
            device: torch.device, precision: str = "fp32") -> torch.Tensor:
    """Logits (N, classes) float32 of every batch, in order, on the CPU (model in eval mode).

    The frontend runs in fp32, the model under autocast of `precision` (resolved). Batches
    are gathered one ahead in a background thread (`prefetch`)."""
    was_training = model.training
    model.eval()
    logits = []
    with torch.no_grad():
        for batch in prefetch(batches, device):
            spec = frontend(batch.wave)
            with autocast(precision, device):
                out = model(spec)
            logits.append(out.float().cpu())
    model.train(was_training)
    return torch.cat(logits) if logits else torch.zeros(0)


def clip_batches(clips: np.ndarray, batch_size: int, first_row: int = 0) -> Iterator[Batch]:
    """`predict`'s batches of 1 s clips (n, samples), in order, without labels (-1); the
    rows are numbered from `first_row` (clips of a stream given a group at a time).

    `clips` may be float in [-1, 1] or int16 (divided by 32768, the store convention),
    e.g. a file's clips (mobileast.predict) or a memory-mapped fold reshaped to
    (n_clips, clip_samples).
    """
    if len(clips) == 0:
        raise ValueError("no clips to classify")
    scale = 1 / 32768 if clips.dtype == np.int16 else 1.0
    for begin in range(0, len(clips), batch_size):
        wave = torch.from_numpy(np.asarray(clips[begin:begin + batch_size], dtype=np.float32) * scale)
        rows = torch.arange(first_row + begin, first_row + begin + len(wave))
        yield Batch(wave, torch.full_like(rows, -1), rows)


def logit_agreement(reference: torch.Tensor, other: torch.Tensor) -> dict[str, float]:
    """How closely the logits `other` (N, classes) follow `reference` (same inputs), e.g.
    an int8 model's a float model's.

    `top1_agreement`: share of inputs with the same top class. `logit_correlation`:
    Pearson correlation of the logits with each class's mean over the inputs removed,
    i.e. of their input-dependent part (a class bias shared by all inputs, large in an
    untrained model, cannot inflate it). `max_abs_diff_rel`: largest absolute logit
    difference over the reference's logit range.
    """
    a, b = reference.double(), other.double()
    centered = torch.stack([(a - a.mean(0)).flatten(), (b - b.mean(0)).flatten()])
    return {"n": len(a),
            "top1_agreement": (a.argmax(1) == b.argmax(1)).double().mean().item(),
            "logit_correlation": torch.corrcoef(centered)[0, 1].item(),
            "max_abs_diff_rel": ((a - b).abs().max() / (a.max() - a.min())).item()}


def prefetch(batches: Iterable[Batch], device: torch.device, depth: int = 2) -> Iterator[Batch]:
    """`batches` moved to `device`, the next ones gathered in a background thread (Prefetcher)."""
    return iter(Prefetcher(batches, device, depth))


class Prefetcher:
    """Iterate `batches` with the next one gathered (and, for CUDA, pinned) in a background
    thread while the caller works on the current one; each is moved to `device`
    (non-blocking from pinned memory). Yields exactly the batches of `batches`, in order;
    an exception in the producer is raised in the caller."""

    _DONE = object()

    def __init__(self, batches: Iterable[Batch], device: torch.device, depth: int = 2):
        self.device, self.pin = torch.device(device), torch.device(device).type == "cuda"
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._produce, args=(iter(batches),), daemon=True)
        self.thread.start()

    def _produce(self, batches: Iterator[Batch]) -> None:
        try:
            for batch in batches:
                if not self._put(batch.pin_memory() if self.pin else batch):
                    return
            self._put(self._DONE)
        except BaseException as error:  # handed to the consumer
            self._put(error)

    def _put(self, item: Any) -> bool:
        """Queue `item` unless the consumer has gone (then False: never block on a full queue)."""
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[Batch]:
        try:
            while True:
                item = self.queue.get()
                if item is self._DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item.to(self.device, non_blocking=self.pin)
        finally:
            self.stop.set()
