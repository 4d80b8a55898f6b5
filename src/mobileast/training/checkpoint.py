"""The files a training run writes, and resuming an interrupted run from them.

After every epoch the run writes its resume checkpoint (model, optimizer and GradScaler
state, history) and the history CSV, each atomically; after the last epoch, the final
model (the stage's DVC output), and the resume checkpoint goes. The resume checkpoint is
resumed only by a run of the same settings, model meta, resume key (the stage's params)
and input files; the epoch loop reseeds every RNG from (seed, epoch, rank), so a resumed
run ends with exactly the weights of an uninterrupted one and no RNG state is saved.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from mobileast.files import atomic_output
from mobileast.training.distributed import Runtime
from mobileast.training.settings import TrainSettings

RESUME_DIR = Path(".resume")  # git- and DVC-ignored, at the project root


def resume_path(stage: str) -> Path:
    """Where the training stage `stage` keeps its per-epoch checkpoint (RESUME_DIR/<stage>.pt)."""
    return RESUME_DIR / f"{stage}.pt"


@dataclass(frozen=True)
class Outputs:
    """Files `fit` writes.

    model: the final checkpoint, written once, after the last epoch (the stage's DVC output).
    resume: the checkpoint written after every epoch, from which an interrupted run resumes;
    deleted when the run completes. Keep it out of DVC's declared outputs (see
    `resume_path`): DVC's run cache, which restores a stage run before instead of training
    again, refuses stages with `persist: true` outputs.
    history: per-epoch rows as CSV (for DVC plots).
    """

    model: Path
    resume: Path | None = None
    history: Path | None = None


@dataclass
class State:
    """Progress carried in checkpoints: completed epochs and their history rows."""

    epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)

    def record(self, row: dict[str, float]) -> None:
        """Append a completed epoch's row."""
        self.epoch, self.history = int(row["epoch"]), self.history + [row]


def file_identity(paths: Sequence[Path]) -> dict[str, tuple[int, int]]:
    """(size, modification time in ns) of every file in `paths` (files or directories, recursively).

    A cheap identity of a run's input data, a few large files per store (hashing them would
    take minutes on large datasets). Rewriting a file with the same bytes counts as a
    change: the resumable run then starts afresh, which costs time, never correctness.
    """
    files = sorted(f for p in paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file())
    return {str(f): (stat.st_size, stat.st_mtime_ns) for f in files for stat in [f.stat()]}


def fingerprint(settings: TrainSettings, meta: Mapping[str, Any], key: Mapping[str, Any] | None) -> str:
    """Hash of what a run's result depends on besides its input files."""
    text = json.dumps({"settings": asdict(settings), "meta": meta, "key": key}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class Checkpoints:
    """The checkpoint files of one run (`outputs`) and what makes a resume checkpoint its own.

    meta: the model description written into every checkpoint (arch, config, features,
    classes). resume_key: anything else the run depends on (e.g. the stage's params).
    inputs: the data files or directories the run reads; a resume checkpoint made before
    one of them changed (an upstream stage ran again) is not resumed. The final model
    holds the fingerprint of settings, meta and key but not the inputs' file times, so its
    bytes do not depend on when the data was written.
    """

    def __init__(self, outputs: Outputs, settings: TrainSettings, meta: Mapping[str, Any],
                 resume_key: Mapping[str, Any] | None = None, inputs: Sequence[Path] = ()):
        self.outputs, self.settings, self.meta = outputs, settings, meta
        self.fingerprint = fingerprint(settings, meta, resume_key)
        self.identity = file_identity(inputs)

    def resume(self, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               rt: Runtime) -> State:
        """Load the resume checkpoint of the same run into model, optimizer and scaler, else
        start afresh. A checkpoint of all epochs (the final model was not written yet)
        resumes with no epoch left."""
        path = self.outputs.resume
        if path is None or not path.is_file():
            return State()
        checkpoint = torch.load(path, map_location=rt.device)
        if checkpoint.get("fingerprint") != self.fingerprint or checkpoint.get("inputs") != self.identity \
                or checkpoint["epoch"] > self.settings.epochs:
            return State()
        model.load_state_dict(checkpoint["state_dict"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        if checkpoint.get("grad_scaler"):
            scaler.load_state_dict(checkpoint["grad_scaler"])
        if rt.is_main:
            tqdm.write(f"resuming from {path} after epoch {checkpoint['epoch']}")
        return State(checkpoint["epoch"], checkpoint["history"])

    def save_epoch(self, state: State, model: nn.Module, optimizer: torch.optim.Optimizer,
                   scaler: torch.amp.GradScaler) -> Path | None:
        """Write the resume checkpoint (with the inputs' identity) and the history, each
        atomically; returns the resume checkpoint's path (None when the run keeps none)."""
        if self.outputs.resume is not None:
            _save(self.outputs.resume, {**self._checkpoint(state, model, optimizer, scaler), "inputs": self.identity})
        if self.outputs.history is not None:
            with atomic_output(self.outputs.history) as tmp:
                pd.DataFrame(state.history).to_csv(tmp, index=False)
        return self.outputs.resume

    def save_model(self, state: State, model: nn.Module, optimizer: torch.optim.Optimizer,
                   scaler: torch.amp.GradScaler) -> Path:
        """Write the final model, then delete the resume checkpoint; returns the model's path."""
        _save(self.outputs.model, self._checkpoint(state, model, optimizer, scaler))
        if self.outputs.resume is not None:
            self.outputs.resume.unlink(missing_ok=True)
        return self.outputs.model

    def _checkpoint(self, state: State, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler) -> dict[str, Any]:
        """A checkpoint in the project contract (meta keys, state_dict) with the engine's state."""
        checkpoint = {**self.meta, "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
                      "epoch": state.epoch, "history": state.history, "settings": asdict(self.settings),
                      "fingerprint": self.fingerprint}
        if scaler.is_enabled():
            checkpoint["grad_scaler"] = scaler.state_dict()
        return checkpoint


def _save(path: Path, checkpoint: Mapping[str, Any]) -> None:
    with atomic_output(path) as tmp:
        torch.save(checkpoint, tmp)
