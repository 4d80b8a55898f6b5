"""What the training engine reads from a params section (`teacher.train` or `train`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

from mobileast.errors import params_errors
from mobileast.inference import PRECISIONS
from mobileast.training.schedule import Schedule, decay_end

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


@dataclass(frozen=True)
class TrainSettings:
    """The engine's settings; `schedule.decay_end_epoch` is absolute here (see from_params)."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 0.0
    optimizer: str = "adam"
    schedule: Schedule = field(default_factory=Schedule)
    seed: int = 0
    validate_every: int = 1  # epochs between validations; the last epoch always validates
    precision: str = "auto"  # auto | fp32 | bf16 | fp16, see mobileast.inference.resolve_precision
    compile: bool = False  # torch.compile the network for the training steps
    sync_bn: bool = False  # SyncBatchNorm across the processes of a multi-GPU run

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.validate_every < 1:
            raise ValueError(f"epochs, batch_size and validate_every must be >= 1, got {self.epochs}, "
                             f"{self.batch_size}, {self.validate_every}")

    @classmethod
    def from_params(cls, section: Mapping[str, Any], seed: int, name: str = "train") -> TrainSettings:
        """Settings from the params section `name` (`train` or `teacher.train`, checked against
        mobileast.schema by the stage); keys the engine does not use are left to the stage.

        `schedule.decay_end_epoch` (null, counted back from the end when negative, or
        absolute) is resolved against `epochs` here, once (mobileast.training.schedule.decay_end).
        A bad value raises ParamsError naming the section."""
        with params_errors(f"section '{name}'"):
            epochs = int(section["epochs"])
            schedule = {k: v for k, v in section.get("schedule", {}).items() if v is not None}
            if schedule.get("decay", "constant") != "constant":  # (a constant schedule has no decay to end)
                warmup = Schedule(**{k: v for k, v in schedule.items() if k.startswith("warmup")})
                schedule["decay_end_epoch"] = decay_end(section["schedule"].get("decay_end_epoch"), epochs,
                                                        warmup.warmup_length, f"{name}.schedule.decay_end_epoch")
            return cls(epochs=epochs, batch_size=int(section["batch_size"]),
                       lr=float(section["lr"]), weight_decay=float(section.get("weight_decay", 0.0)),
                       optimizer=section.get("optimizer", "adam"),
                       schedule=Schedule(**schedule), seed=int(seed),
                       validate_every=int(section.get("validate_every", 1)),
                       precision=str(section.get("precision", "auto")), compile=bool(section.get("compile", False)),
                       sync_bn=bool(section.get("sync_bn", False)))

    def validates(self, epoch: int) -> bool:
        """Whether the epoch with 0-based index `epoch` ends with a validation."""
        return (epoch + 1) % self.validate_every == 0 or epoch + 1 == self.epochs

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """Adam (L2 weight decay) or AdamW (decoupled weight decay)."""
        return OPTIMIZERS[self.optimizer](model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
