"""Distillation losses: Decoupled KD (Zhao et al., CVPR 2022), classic KD (Hinton) and CE.

All KL terms are computed in log space from `log_softmax`, so they stay finite for any
finite logits (e.g. +-1e4) and any number of classes >= 3.

DKD (Zhao et al., Decoupled Knowledge Distillation, CVPR 2022), with p = softmax(z / T) and target class t:
  TCKD = KL(b_teacher || b_student) * T^2,   b = [p_t, 1 - p_t]
  NCKD = KL(p^_teacher || p^_student) * T^2, p^ = softmax of z / T over the classes != t
  DKD  = alpha * TCKD + beta * NCKD
KL is summed over classes and averaged over the batch, as in mdistiller
(`F.kl_div(..., size_average=False) / batch`). Differences from mdistiller's code, which
agree with it to float precision for ordinary logits (tested):
  - mdistiller drops the target class from NCKD by subtracting 1000 from its scaled logit;
    here it is removed exactly. The offset is wrong once the target's scaled logit
    exceeds the others by ~1000 (then NCKD -> 0).
  - mdistiller takes log(p_t) and log(1 - p_t) of probabilities, which become -inf (and
    the loss inf/NaN) when a probability underflows; here both are log-sum-exps of
    log-probabilities.

Mixup (waveform mixup or spectrogram CutMix): a mixed input
x = lam * x_a + (1 - lam) * x_b (lam per sample) has two targets and two teacher outputs:
the teacher logits dumped for crop a and for crop b (the teacher never saw the mixture).
Every per-sample loss term is the lam-weighted sum of the term for each source:
  CE  = lam * CE(z_s, y_a) + (1 - lam) * CE(z_s, y_b)
  DKD = lam * DKD(z_s, z_t,a, y_a) + (1 - lam) * DKD(z_s, z_t,b, y_b)
  KD  = lam * KD(z_s, z_t,a) + (1 - lam) * KD(z_s, z_t,b)
then averaged over the batch. This is what CP-JKU do for KD with mixup
(cpjku_dcase22 teachers_gang.py, EfficientAT ex_audioset.py, cpjku_dcase24
ex_audioset_kd.py). It is also the natural choice for DKD: TCKD/NCKD are defined relative
to one target class, so mixing teacher logits first would leave no single target to
decouple; each (teacher output, target) pair is used as it was produced. The result is
linear in lam, equals the expected loss when one source is drawn with probability lam,
and reduces to the unmixed loss at lam in {0, 1}.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

METHODS = ("dkd", "kd", "none")


def _kl_log(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p || q) summed over the last dim, from log-probabilities (0 log 0 = 0)."""
    return F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)


def dkd_parts(student_logits: Tensor, teacher_logits: Tensor, target: Tensor,
              temperature: float) -> tuple[Tensor, Tensor]:
    """Per-sample TCKD and NCKD, each (B,) and scaled by T^2."""
    n_classes = student_logits.shape[-1]
    if n_classes < 3:
        raise ValueError(f"DKD needs >= 3 classes, got {n_classes}")
    target = target[:, None]  # (B, 1)
    # The non-target classes of each row in class order, by index arithmetic: gather needs
    # no host sync on a GPU (masked_select and one_hot read values back to size their output).
    ranks = torch.arange(n_classes - 1, device=target.device)[None, :]  # (1, C - 1)
    non_target = ranks + (ranks >= target).long()  # (B, C - 1)

    def split(logits: Tensor) -> tuple[Tensor, Tensor]:
        """Log [p_t, 1 - p_t] (B, 2) and the non-target log-softmax (B, C - 1)."""
        scaled = logits / temperature
        log_p = F.log_softmax(scaled, dim=-1)
        log_pt = log_p.gather(-1, target)  # (B, 1)
        others = log_p.gather(-1, non_target)  # (B, C - 1)
        log_b = torch.cat([log_pt, others.logsumexp(-1, keepdim=True)], dim=-1)
        log_hat = F.log_softmax(scaled.gather(-1, non_target), dim=-1)
        return log_b, log_hat

    s_b, s_hat = split(student_logits)
    t_b, t_hat = split(teacher_logits)
    scale = temperature ** 2
    return _kl_log(t_b, s_b) * scale, _kl_log(t_hat, s_hat) * scale


def kd_per_sample(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Hinton KD per sample: KL(softmax(z_t / T) || softmax(z_s / T)) * T^2, shape (B,)."""
    log_s = F.log_softmax(student_logits / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits / temperature, dim=-1)
    return _kl_log(log_t, log_s) * temperature ** 2


def warmup_factor(epoch: float, warmup_epochs: float) -> float:
    """min(epoch / warmup, 1): the distillation term's ramp (epochs 1-based, as in mdistiller)."""
    return 1.0 if warmup_epochs <= 0 else min(epoch / warmup_epochs, 1.0)


@dataclass(frozen=True)
class DistillLoss:
    """Training loss w_ce * CE + min(epoch / warmup, 1) * distillation term.

    method: "dkd" (alpha * TCKD + beta * NCKD), "kd" (Hinton KD at temperature T) or
    "none" (CE only, teacher logits unused). With mixing (lam given) every term is the
    lam-weighted sum over the two sources, as described in the module docstring.
    No field has a default: the values come from params (`from_params`), or, for the
    teacher's plain cross-entropy, from `cross_entropy`.
    """
    method: str
    alpha: float
    beta: float
    temperature: float
    warmup_epochs: float
    ce_weight: float

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"distill.method must be one of {METHODS}, got {self.method!r}")
        if self.temperature <= 0:
            raise ValueError(f"dkd.T must be > 0, got {self.temperature}")

    @classmethod
    def cross_entropy(cls) -> "DistillLoss":
        """Plain cross-entropy (method "none"; the distillation fields are unused)."""
        return cls(method="none", alpha=0.0, beta=0.0, temperature=1.0, warmup_epochs=0.0, ce_weight=1.0)

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "DistillLoss":
        """Build from the whole params dict (sections `distill:` and `dkd:`)."""
        dkd = params["dkd"]
        return cls(method=params["distill"]["method"], alpha=float(dkd["alpha"]),
                   beta=float(dkd["beta"]), temperature=float(dkd["T"]),
                   warmup_epochs=float(dkd["warmup_epochs"]), ce_weight=float(dkd["ce_weight"]))

    def __call__(self, student_logits: Tensor, teacher_logits_a: Tensor | None, targets_a: Tensor,
                 teacher_logits_b: Tensor | None = None, targets_b: Tensor | None = None,
                 lam: Tensor | None = None, *, epoch: float) -> tuple[Tensor, dict[str, Tensor | float]]:
        """Loss (scalar, differentiable) and detached logs.

        Without mixing pass only the `_a` arguments. With mixing pass the partner's teacher
        logits and targets (e.g. `teacher[mix.perm]`, `targets[mix.perm]`) and `lam` (B,),
        the weight of source a. `epoch` is 1-based and may be fractional.
        Logs: loss, ce, kd (the warmed-up distillation term as added: 0 for method "none", so
        every method's history has the columns the plots name), and unless method is "none":
        kd_weight (a float: no device tensor from a Python number in the step), and for dkd
        also tckd, nckd (unweighted, lam-mixed batch means).
        """
        pairs = [(teacher_logits_a, targets_a)]
        weights: list[float | Tensor] = [1.0]
        if lam is not None:
            if targets_b is None or (self.method != "none" and teacher_logits_b is None):
                raise ValueError("mixing (lam) needs targets_b and, to distil, teacher_logits_b")
            lam = lam.to(student_logits.dtype)
            pairs.append((teacher_logits_b, targets_b))
            weights = [lam, 1 - lam]

        def mixed(values: list[Tensor]) -> Tensor:
            """Batch mean of the weighted sum over sources of per-sample values."""
            return sum(w * v for w, v in zip(weights, values)).mean()

        ce = mixed([F.cross_entropy(student_logits, y, reduction="none") for _, y in pairs])
        logs: dict[str, Tensor] = {"ce": ce}
        if self.method == "dkd":
            parts = [dkd_parts(student_logits, z_t, y, self.temperature) for z_t, y in pairs]
            logs["tckd"] = mixed([tckd for tckd, _ in parts])
            logs["nckd"] = mixed([nckd for _, nckd in parts])
            kd = self.alpha * logs["tckd"] + self.beta * logs["nckd"]
        elif self.method == "kd":
            kd = mixed([kd_per_sample(student_logits, z_t, self.temperature) for z_t, _ in pairs])
        else:
            loss = self.ce_weight * ce
            return loss, {"loss": loss.detach(), "ce": ce.detach(), "kd": torch.zeros_like(ce)}
        weight = warmup_factor(epoch, self.warmup_epochs)
        loss = self.ce_weight * ce + weight * kd
        logs.update(loss=loss, kd=weight * kd)
        return loss, {**{k: v.detach() for k, v in logs.items()}, "kd_weight": weight}
