"""The learning-rate schedule: a pure function of the fractional epoch, so a resumed run
needs no saved scheduler state."""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

from mobileast.errors import ParamsError

WARMUPS = ("none", "linear", "exp")
DECAYS = ("cosine", "linear", "constant")


@dataclass(frozen=True)
class Schedule:
    """Learning-rate schedule: warm-up to the peak LR, decay to min_lr, then constant.

    warmup: none | linear (from 0) | exp (exp(-5 (1 - t)^2), t = epoch / warmup_epochs:
    the exponential ramp-up of the CP-JKU DCASE systems, from exp(-5) of the peak).
    decay, from warmup_epochs to decay_end_epoch (absolute here; params give it relative
    to the run's end, see `decay_end`): cosine | linear | constant (stay at the peak;
    then min_lr and decay_end_epoch are unused). E.g. the TAU22 student: exp over 30
    epochs to 1e-3, linear to 1e-5 at epoch 400, constant to epoch 600.
    """

    warmup: str = "none"
    warmup_epochs: float = 0.0
    decay: str = "constant"
    decay_end_epoch: float = 0.0
    min_lr: float = 0.0

    def __post_init__(self) -> None:
        if self.warmup not in WARMUPS:
            raise ValueError(f"schedule.warmup must be one of {', '.join(WARMUPS)}, got {self.warmup!r}")
        if self.decay not in DECAYS:
            raise ValueError(f"schedule.decay must be one of {', '.join(DECAYS)}, got {self.decay!r}")
        if self.warmup != "none" and self.warmup_epochs <= 0:
            raise ValueError("schedule.warmup needs schedule.warmup_epochs > 0")
        if self.decay != "constant" and self.decay_end_epoch < self.warmup_length:
            raise ValueError("schedule.decay_end_epoch must not come before the end of the warm-up")

    @property
    def warmup_length(self) -> float:
        return 0.0 if self.warmup == "none" else self.warmup_epochs

    def lr(self, peak: float, epoch: float) -> float:
        """The learning rate at a fractional epoch (0 = start of training)."""
        warmup_end = self.warmup_length
        if epoch < warmup_end:
            t = epoch / warmup_end
            return peak * (t if self.warmup == "linear" else math.exp(-5.0 * (1.0 - t) ** 2))
        if self.decay == "constant":
            return peak
        if epoch >= self.decay_end_epoch:
            return self.min_lr
        t = (epoch - warmup_end) / (self.decay_end_epoch - warmup_end)
        if self.decay == "linear":
            return peak + (self.min_lr - peak) * t
        return self.min_lr + (peak - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))


def decay_end(value: float | None, epochs: int, warmup_end: float = 0.0,
              key: str = "schedule.decay_end_epoch") -> float:
    """The absolute epoch at which the decay ends, from the params value `key`, so that the
    schedule follows `epochs` when a run is made longer or shorter:

    null: the last epoch (the decay spans the whole run after the warm-up); a negative
    number: counted back from the end (-2 with 12 epochs: epoch 10); a positive number:
    that epoch, as given. An integer value gives an integer, so the schedule's arithmetic
    is that of the absolute value it stands for.

    A relative end that falls inside the warm-up (`warmup_end`, e.g. a short trial run of
    a long recipe) moves to the warm-up's end, with a warning: the run's learning rates
    are then those of the warm-up, as the recipe has them. A positive value that leaves
    more than half of the epochs at min_lr, or one past the last epoch (min_lr is never
    reached), is kept but warned about: both are what a stale absolute value looks like
    after `epochs` was changed.
    """
    if isinstance(value, bool) or not (value is None or isinstance(value, (int, float))) or value == 0:
        raise ParamsError(f"{key} must be null (the last epoch), a negative number of epochs before the end or "
                          f"a positive epoch, got {value!r}")
    if value is not None and value > 0:
        if value > epochs:
            warnings.warn(f"{key} {value} is past the last of the {epochs} epochs: the learning rate never decays "
                          "to min_lr (null ends the decay at the last epoch)", stacklevel=2)
        elif epochs - value > epochs / 2:
            warnings.warn(f"{key} {value} leaves {epochs - value:g} of the {epochs} epochs at min_lr (null ends "
                          "the decay at the last epoch, a negative value counts back from it)", stacklevel=2)
        return value
    end = epochs if value is None else epochs + value
    if end < warmup_end or end <= 0:
        if warmup_end <= 0:
            raise ParamsError(f"{key} {value} counts back to epoch {end:g}, not after the start of the {epochs} epochs")
        warnings.warn(f"{key} {value} resolves to epoch {end:g} of {epochs}, inside the warm-up (to epoch "
                      f"{warmup_end:g}): the decay ends with the warm-up instead", stacklevel=2)
        return warmup_end
    return end
