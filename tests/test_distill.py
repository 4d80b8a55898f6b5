"""Distillation losses against slow references written from the formulas with loops, and
against mdistiller's DKD code."""
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from mobileast.params import load_params
from mobileast.distill import DistillLoss, dkd_parts, kd_per_sample, warmup_factor


def dkd_loss(zs, zt, y, alpha, beta, temperature):
    """Batch means of alpha * TCKD + beta * NCKD (total) and of its parts, from dkd_parts."""
    tckd, nckd = dkd_parts(zs, zt, y, temperature)
    return SimpleNamespace(total=(alpha * tckd + beta * nckd).mean(), tckd=tckd.mean(), nckd=nckd.mean())


def kd_loss(zs, zt, temperature):
    """Batch-mean Hinton KD, from kd_per_sample."""
    return kd_per_sample(zs, zt, temperature).mean()


def softmax_list(z, T):
    m = max(z)
    e = [math.exp((v - m) / T) for v in z]
    s = sum(e)
    return [v / s for v in e]


def kl_list(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def slow_dkd(zs, zt, y, T):
    """Per-sample (tckd, nckd) lists written from the DKD paper's formulas with loops."""
    tckd, nckd = [], []
    for s, t, c in zip(zs.tolist(), zt.tolist(), y.tolist()):
        ps, pt = softmax_list(s, T), softmax_list(t, T)
        tckd.append(kl_list([pt[c], 1 - pt[c]], [ps[c], 1 - ps[c]]) * T * T)
        others = [k for k in range(len(s)) if k != c]
        hat_s = softmax_list([s[k] for k in others], T)
        hat_t = softmax_list([t[k] for k in others], T)
        nckd.append(kl_list(hat_t, hat_s) * T * T)
    return torch.tensor(tckd, dtype=torch.float64), torch.tensor(nckd, dtype=torch.float64)


def slow_kd(zs, zt, T):
    return torch.tensor([kl_list(softmax_list(t, T), softmax_list(s, T)) * T * T
                         for s, t in zip(zs.tolist(), zt.tolist())], dtype=torch.float64)


def mdistiller_dkd(logits_student, logits_teacher, target, alpha, beta, temperature):
    """mdistiller/distillers/DKD.py dkd_loss, verbatim except `size_average=False`
    spelled as its equivalent `reduction="sum"` (the deprecated form warns)."""
    gt_mask = torch.zeros_like(logits_student).scatter_(1, target.unsqueeze(1), 1).bool()
    other_mask = torch.ones_like(logits_student).scatter_(1, target.unsqueeze(1), 0).bool()

    def cat_mask(t, mask1, mask2):
        t1 = (t * mask1).sum(dim=1, keepdims=True)
        t2 = (t * mask2).sum(1, keepdims=True)
        return torch.cat([t1, t2], dim=1)

    pred_student = F.softmax(logits_student / temperature, dim=1)
    pred_teacher = F.softmax(logits_teacher / temperature, dim=1)
    pred_student = cat_mask(pred_student, gt_mask, other_mask)
    pred_teacher = cat_mask(pred_teacher, gt_mask, other_mask)
    log_pred_student = torch.log(pred_student)
    tckd_loss = (F.kl_div(log_pred_student, pred_teacher, reduction="sum")
                 * (temperature ** 2) / target.shape[0])
    pred_teacher_part2 = F.softmax(logits_teacher / temperature - 1000.0 * gt_mask, dim=1)
    log_pred_student_part2 = F.log_softmax(logits_student / temperature - 1000.0 * gt_mask, dim=1)
    nckd_loss = (F.kl_div(log_pred_student_part2, pred_teacher_part2, reduction="sum")
                 * (temperature ** 2) / target.shape[0])
    return alpha * tckd_loss + beta * nckd_loss


def random_batch(n, c, scale=3.0, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    zs = torch.randn(n, c, generator=g, dtype=dtype) * scale
    zt = torch.randn(n, c, generator=g, dtype=dtype) * scale
    y = torch.randint(c, (n,), generator=g)
    return zs, zt, y


@pytest.mark.parametrize("T", [0.5, 1.0, 4.0, 10.0])
@pytest.mark.parametrize("c", [3, 10])
def test_dkd_matches_slow_reference(T, c):
    zs, zt, y = random_batch(16, c, seed=c)
    tckd, nckd = slow_dkd(zs, zt, y, T)
    got = dkd_loss(zs, zt, y, alpha=1.5, beta=8.0, temperature=T)
    assert_close(got.tckd, tckd.mean())
    assert_close(got.nckd, nckd.mean())
    assert_close(got.total, (1.5 * tckd + 8.0 * nckd).mean())
    got32 = dkd_loss(zs.float(), zt.float(), y, alpha=1.5, beta=8.0, temperature=T)
    assert_close(got32.total, (1.5 * tckd + 8.0 * nckd).mean().float(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_dkd_matches_mdistiller_value_and_gradient(T):
    zs, zt, y = random_batch(32, 10, seed=1)
    ours_in, ref_in = zs.clone().requires_grad_(), zs.clone().requires_grad_()
    ours = dkd_loss(ours_in, zt, y, alpha=1.0, beta=8.0, temperature=T).total
    ref = mdistiller_dkd(ref_in, zt, y, 1.0, 8.0, T)
    assert_close(ours, ref)
    ours.backward()
    ref.backward()
    assert_close(ours_in.grad, ref_in.grad)


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0])
def test_dkd_recombines_to_kd(T):
    """DKD paper, eq. 5: KD = TCKD + (1 - p_t^teacher) * NCKD per sample."""
    zs, zt, y = random_batch(16, 10, seed=2)
    p_t = F.softmax(zt / T, dim=1).gather(1, y[:, None]).squeeze(1)
    got = dkd_loss(zs, zt, y, alpha=1.0, beta=1.0 - p_t, temperature=T).total
    assert_close(got, kd_loss(zs, zt, T))


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_kd_matches_slow_reference(T):
    zs, zt, _ = random_batch(16, 10, seed=3)
    assert_close(kd_loss(zs, zt, T), slow_kd(zs, zt, T).mean())


def test_nckd_ignores_target_logit_exactly():
    """The target class is removed from NCKD, not damped by mdistiller's -1000 offset."""
    zs, zt, y = random_batch(8, 10, seed=4)
    boosted = zs.scatter(1, y[:, None], 5e3)
    _, nckd = dkd_parts(zs, zt, y, 1.0)
    _, nckd_boosted = dkd_parts(boosted, zt, y, 1.0)
    assert_close(nckd_boosted, nckd)


@pytest.mark.parametrize("c", [3, 10, 100])
@pytest.mark.parametrize("T", [1.0, 4.0])
@pytest.mark.parametrize("method", ["dkd", "kd"])
def test_extreme_logits_finite(c, T, method):
    g = torch.Generator().manual_seed(c)
    zs = ((torch.rand(8, c, generator=g) > 0.5).float() * 2 - 1) * 1e4
    zt = ((torch.rand(8, c, generator=g) > 0.5).float() * 2 - 1) * 1e4
    y = torch.randint(c, (8,), generator=g)
    zs.requires_grad_()
    loss_fn = DistillLoss(method=method, alpha=1.0, beta=8.0, temperature=T, warmup_epochs=1, ce_weight=1.0)
    lam = torch.rand(8, generator=g)
    perm = torch.randperm(8, generator=g)
    loss, logs = loss_fn(zs, zt, y, zt[perm], y[perm], lam, epoch=1)
    loss.backward()
    assert torch.isfinite(loss) and all(math.isfinite(float(v)) for v in logs.values())
    assert torch.isfinite(zs.grad).all()


def test_dkd_rejects_two_classes():
    zs, zt, y = random_batch(4, 2)
    with pytest.raises(ValueError):
        dkd_loss(zs, zt, y, 1.0, 8.0, 4.0)


def slow_mixed_loss(zs, zt_a, y_a, zt_b, y_b, lam, alpha, beta, T, ce_weight, weight):
    """Per-sample lam * loss(source a) + (1 - lam) * loss(source b), then the batch mean."""
    def per_source(zt, y):
        tckd, nckd = slow_dkd(zs, zt, y, T)
        ce = torch.tensor([-math.log(softmax_list(s, 1.0)[c]) for s, c in zip(zs.tolist(), y.tolist())],
                          dtype=torch.float64)
        return ce_weight * ce + weight * (alpha * tckd + beta * nckd)
    return (lam * per_source(zt_a, y_a) + (1 - lam) * per_source(zt_b, y_b)).mean()


def test_mixup_weighting_is_per_source():
    zs, zt, y = random_batch(16, 10, seed=5)
    g = torch.Generator().manual_seed(5)
    perm = torch.randperm(16, generator=g)
    lam = torch.rand(16, generator=g, dtype=torch.float64)
    loss_fn = DistillLoss(method="dkd", alpha=2.0, beta=6.0, temperature=3.0, warmup_epochs=4,
                          ce_weight=0.5)
    loss, logs = loss_fn(zs, zt, y, zt[perm], y[perm], lam, epoch=2)
    expected = slow_mixed_loss(zs, zt, y, zt[perm], y[perm], lam, 2.0, 6.0, 3.0, 0.5, 0.5)
    assert_close(loss, expected)
    assert_close(logs["loss"], expected)
    # lam = 1 (0) reduces to the unmixed loss on source a (b)
    plain_a, _ = loss_fn(zs, zt, y, epoch=2)
    plain_b, _ = loss_fn(zs, zt[perm], y[perm], epoch=2)
    ones = torch.ones(16, dtype=torch.float64)
    assert_close(loss_fn(zs, zt, y, zt[perm], y[perm], ones, epoch=2)[0], plain_a)
    assert_close(loss_fn(zs, zt, y, zt[perm], y[perm], 0 * ones, epoch=2)[0], plain_b)


def test_kd_and_none_methods():
    zs, zt, y = random_batch(16, 10, seed=6)
    ce = F.cross_entropy(zs, y)
    loss, logs = DistillLoss(method="kd", alpha=0.0, beta=0.0, temperature=2.0, warmup_epochs=1, ce_weight=0.3)(
        zs, zt, y, epoch=5)
    assert_close(loss, 0.3 * ce + kd_loss(zs, zt, 2.0))
    assert "tckd" not in logs
    loss, logs = DistillLoss.cross_entropy()(zs, None, y, epoch=5)
    assert_close(loss, ce)
    assert set(logs) == {"loss", "ce", "kd"} and logs["kd"] == 0  # no distillation term: kd is 0


def test_warmup_factor_scales_distillation_term():
    zs, zt, y = random_batch(16, 10, seed=7)
    loss_fn = DistillLoss(method="dkd", alpha=1.0, beta=8.0, temperature=4.0, warmup_epochs=4,
                          ce_weight=1.0)
    ce = F.cross_entropy(zs, y)
    full = dkd_loss(zs, zt, y, 1.0, 8.0, 4.0).total
    for epoch, factor in [(0, 0.0), (1, 0.25), (2.5, 0.625), (4, 1.0), (30, 1.0)]:
        loss, logs = loss_fn(zs, zt, y, epoch=epoch)
        assert_close(loss, ce + factor * full)
        assert logs["kd_weight"] == pytest.approx(factor)  # a float: no device tensor per step
    assert warmup_factor(0, 0) == 1.0


def test_from_params_reads_project_params():
    params = load_params(Path(__file__).parents[1] / "params.yaml")
    loss_fn = DistillLoss.from_params(params)
    assert loss_fn.method == params["distill"]["method"]
    assert loss_fn.temperature == params["dkd"]["T"]
    assert (loss_fn.alpha, loss_fn.beta, loss_fn.warmup_epochs, loss_fn.ce_weight) == \
        (params["dkd"]["alpha"], params["dkd"]["beta"], params["dkd"]["warmup_epochs"], params["dkd"]["ce_weight"])
    with pytest.raises(TypeError):  # no defaults that could silently differ from params.yaml
        DistillLoss(method="dkd")
    with pytest.raises(ValueError):
        DistillLoss.from_params({"distill": {"method": "dkdd"}, "dkd": params["dkd"]})
