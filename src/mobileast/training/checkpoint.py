"""The files a training run writes, and resuming an interrupted run from them.

After every epoch the run writes its resume checkpoint (model, optimizer and GradScaler
state, history) and the history CSV, each atomically; after the loop it writes the
history and the final model (the stage's DVC outputs) from that state again, and the
stage deletes the resume checkpoint only once its last output is written
(`Outputs.discard_resume`). So a crash at any point costs at most the epoch under way: a
run killed after its last epoch resumes with no epoch left and writes the outputs that
DVC deleted before re-running the stage.

The resume checkpoint is resumed only by a run of the same settings, model meta, resume
key (the stage's params), input files and code; the epoch loop reseeds every RNG from
(seed, epoch, rank), so a resumed run ends with exactly the weights of an uninterrupted
one and no RNG state is saved. One that cannot be read is moved aside with a warning.
"""
from __future__ import annotations

import hashlib
import json
import sys
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from mobileast.imports import code_closure
from mobileast.deploy import ModelMeta
from mobileast.files import atomic_output, project_root
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

    def discard_resume(self) -> None:
        """Delete the resume checkpoint: the stage calls this once its last output is written."""
        if self.resume is not None:
            self.resume.unlink(missing_ok=True)


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


def code_identity(files: Sequence[Path]) -> str:
    """Hash of the names and contents of the code files a run depends on, in their order."""
    digest = hashlib.sha256()
    for path in map(Path, files):
        content = path.read_bytes()
        digest.update(f"{path.name}\0{len(content)}\0".encode() + content)
    return digest.hexdigest()


def stage_code(module: str) -> list[Path]:
    """The code files whose change makes a stage's resume checkpoint stale: the stage
    module's import closure, exactly the code deps dvc.yaml lists for it (mobileast.imports)."""
    root = project_root()
    return [root / name for name in sorted(code_closure(module, root))]


def fingerprint(settings: TrainSettings, meta: Mapping[str, Any], key: Mapping[str, Any] | None) -> str:
    """Hash of what a run's result depends on besides its input files."""
    text = json.dumps({"settings": asdict(settings), "meta": meta, "key": key}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class Checkpoints:
    """The checkpoint files of one run (`outputs`) and what makes a resume checkpoint its own.

    meta: the model description written into every checkpoint (arch, config, features,
    classes). resume_key: anything else the run depends on (e.g. the stage's params).
    inputs: the data files or directories the run reads; a resume checkpoint made before
    one of them changed (an upstream stage ran again) is not resumed. code: the code files
    the run depends on (`stage_code`); a resume checkpoint made by other code is not
    resumed. The final model holds the fingerprint of settings, meta and key but neither
    the inputs' file times nor the code hash, so its bytes do not depend on when the data
    was written, and a code change that does not change the weights leaves it as it was
    (DVC then re-runs no later stage).
    """

    def __init__(self, outputs: Outputs, settings: TrainSettings, meta: ModelMeta,
                 resume_key: Mapping[str, Any] | None = None, inputs: Sequence[Path] = (),
                 code: Sequence[Path] = ()):
        self.outputs, self.settings, self.meta = outputs, settings, meta
        self.fingerprint = fingerprint(settings, meta.to_checkpoint(), resume_key)
        self.identity = {"inputs": file_identity(inputs), "code": code_identity(code)}

    def resume(self, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               rt: Runtime) -> State:
        """Load the resume checkpoint of the same run into model, optimizer and scaler, else
        start afresh. A checkpoint of all epochs (the outputs were not all written yet)
        resumes with no epoch left. One that cannot be read (truncated, or not a checkpoint)
        is moved aside (`<name>.unreadable`) by rank 0, with a warning."""
        path = self.outputs.resume
        if path is None or not path.is_file():
            return State()
        try:
            checkpoint = torch.load(path, map_location=rt.device, weights_only=True)
            epoch, history = int(checkpoint["epoch"]), list(checkpoint["history"])
        except Exception as error:  # any reason it cannot be read means the same: start afresh
            if rt.is_main:
                aside = path.with_name(path.name + ".unreadable")
                path.replace(aside)
                warnings.warn(f"{path}: unreadable resume checkpoint ({type(error).__name__}: {error}), moved to "
                              f"{aside}; training starts afresh", stacklevel=2)
            return State()
        if checkpoint.get("fingerprint") != self.fingerprint or epoch > self.settings.epochs or \
                {k: checkpoint.get(k) for k in self.identity} != self.identity:
            if rt.is_main:
                tqdm.write(f"{path} is the checkpoint of another run (settings, params, input data or code "
                           "changed since): training starts afresh")
            return State()
        model.load_state_dict(checkpoint["state_dict"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        if checkpoint.get("grad_scaler"):
            scaler.load_state_dict(checkpoint["grad_scaler"])
        if rt.is_main:
            tqdm.write(f"resuming from {path} after epoch {epoch}")
        return State(epoch, history)

    def save_epoch(self, state: State, model: nn.Module, optimizer: torch.optim.Optimizer,
                   scaler: torch.amp.GradScaler) -> Path | None:
        """Write the resume checkpoint (with the inputs' and the code's identity) and the
        history, each atomically; returns the resume checkpoint's path (None when the run
        keeps none)."""
        if self.outputs.resume is not None:
            _save(self.outputs.resume, {**self._checkpoint(state, model, optimizer, scaler), **self.identity})
        self._save_history(state)
        return self.outputs.resume

    def save_outputs(self, state: State, model: nn.Module, optimizer: torch.optim.Optimizer,
                     scaler: torch.amp.GradScaler) -> Path:
        """Write the history and the final model from the run's state (also when the loop had
        no epoch left); returns the model's path. The resume checkpoint stays
        (Outputs.discard_resume)."""
        self._save_history(state)
        _save(self.outputs.model, self._checkpoint(state, model, optimizer, scaler))
        return self.outputs.model

    def _save_history(self, state: State) -> None:
        if self.outputs.history is not None:
            with atomic_output(self.outputs.history) as tmp:
                pd.DataFrame(state.history).to_csv(tmp, index=False)

    def _checkpoint(self, state: State, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler) -> dict[str, Any]:
        """A checkpoint in the project contract (meta keys, state_dict) with the engine's state."""
        checkpoint = {**self.meta.to_checkpoint(), "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
                      "epoch": state.epoch, "history": state.history, "settings": asdict(self.settings),
                      "fingerprint": self.fingerprint}
        if scaler.is_enabled():
            checkpoint["grad_scaler"] = scaler.state_dict()
        return checkpoint


def _save(path: Path, checkpoint: Mapping[str, Any]) -> None:
    with atomic_output(path) as tmp:
        torch.save(_interned_keys(checkpoint), tmp)


def _interned_keys(value: Any) -> Any:
    """`value` with the string keys of its plain dicts (and those of the lists, tuples and
    dicts in them) interned. Pickle writes a string once per object and refers back to it
    after, so keys unpickled from a resume checkpoint (the optimizer state, the history)
    would give other bytes than the same keys made by the code: interned, a resumed run's
    final model has the bytes of an uninterrupted run's (DVC records its md5)."""
    if type(value) is dict:
        return {(sys.intern(k) if type(k) is str else k): _interned_keys(v) for k, v in value.items()}
    if type(value) in (list, tuple):
        return type(value)(_interned_keys(v) for v in value)
    return value
