"""Disruption Masking with normalization against its rule written out, and its claim.

Reference: the rule element by element in Python floats (float64 inputs), so the tolerance is
``1e-15`` relative. The claim (arXiv 2506.12484): the masked update has a non-negative inner
product with the retain gradient, so a small step never increases the retain loss to first
order; the unmasked normalized step does, on the same problems (so the check can fail).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gradkit.multigrad import DisruptionMask, disruption_mask_backward, disruption_masked_update


def _sign(v: float) -> int:
    return (v > 0) - (v < 0)


def _written_out(us, rs, normalize=True):
    norm = math.sqrt(sum(v * v for u in us for v in u.reshape(-1).tolist()))
    scale = (0.0 if norm == 0 else 1.0 / norm) if normalize else 1.0
    out = []
    for u, r in zip(us, rs):
        vals = [
            a * scale if _sign(a) == _sign(b) else 0.0
            for a, b in zip(u.reshape(-1).tolist(), r.reshape(-1).tolist())
        ]
        out.append(torch.tensor(vals, dtype=torch.float64).reshape(u.shape))
    return out


def _pairs(seed: int):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(3, 4), (4,), (2, 2, 3)]
    us = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    rs = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    us[1][0] = 0.0  # zeros on either side are masked out unless both are zero
    rs[1][1] = 0.0
    return us, rs


@pytest.mark.parametrize("normalize", [True, False])
def test_update_is_the_rule_written_out(normalize: bool) -> None:
    for seed in range(10):
        us, rs = _pairs(seed)
        for got, want in zip(
            disruption_masked_update(us, rs, normalize=normalize), _written_out(us, rs, normalize)
        ):
            torch.testing.assert_close(got, want, rtol=1e-15, atol=0)
        jac = [torch.stack([u, r]) for u, r in zip(us, rs)]
        agg = DisruptionMask(normalize=normalize)
        for got, want in zip(agg(jac), _written_out(us, rs, normalize)):
            torch.testing.assert_close(got, want, rtol=1e-15, atol=0)
        assert 0.0 < agg.last_kept < 1.0


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 4)).double()


def _batches(seed: int):
    gen = torch.Generator().manual_seed(100 + seed)
    xf, xr = (torch.randn(24, 6, generator=gen, dtype=torch.float64) for _ in range(2))
    yf, yr = (torch.randint(0, 4, (24,), generator=gen) for _ in range(2))
    return xf, yf, xr, yr


def _losses(model, xf, yf, xr, yr):
    # unlearning: push the forget set's cross-entropy up (minimise its negation)
    return -nn.functional.cross_entropy(model(xf), yf), nn.functional.cross_entropy(model(xr), yr)


def test_backward_writes_the_rule_into_grad_and_accumulates() -> None:
    model = _model(0)
    params = list(model.parameters())
    data = _batches(0)
    unlearn, retain = _losses(model, *data)
    us = torch.autograd.grad(unlearn, params, retain_graph=True)
    rs = torch.autograd.grad(retain, params, retain_graph=True)
    info = disruption_mask_backward(unlearn, retain, params)
    assert info.num_gradients == 2
    want = _written_out(us, rs)
    for p, w in zip(params, want):
        torch.testing.assert_close(p.grad, w, rtol=1e-15, atol=0)
    unlearn, retain = _losses(model, *data)
    disruption_mask_backward(unlearn, retain, params)  # adds, as backward() does
    for p, w in zip(params, want):
        torch.testing.assert_close(p.grad, 2 * w, rtol=1e-15, atol=0)


def test_masked_step_never_increases_the_retain_loss_to_first_order() -> None:
    lr = 1e-4
    unmasked_increases = 0
    for seed in range(30):
        model = _model(seed)
        params = list(model.parameters())
        data = _batches(seed)
        unlearn, retain = _losses(model, *data)
        us = torch.autograd.grad(unlearn, params, retain_graph=True)
        rs = torch.autograd.grad(retain, params)
        d = disruption_masked_update(us, rs)
        inner = sum(float((a * b).sum()) for a, b in zip(d, rs))
        assert inner >= 0.0
        plain = disruption_masked_update(us, us)  # mask of all ones: u / ||u||
        base = float(retain.detach())
        for direction, is_masked in ((d, True), (plain, False)):
            with torch.no_grad():
                for p, step in zip(params, direction):
                    p.sub_(lr * step)
                after = float(_losses(model, *data)[1])
                for p, step in zip(params, direction):
                    p.add_(lr * step)
            if is_masked:  # first order: -lr <d, r> <= 0; second order: lr^2 ||d||^2 ||H|| / 2
                assert after - base <= 1e-9
            else:
                unmasked_increases += int(after - base > 1e-7)
    assert unmasked_increases >= 5  # without the mask, unlearning disrupts the retain loss


def test_retain_momentum_masks_with_the_running_average_and_checkpoints() -> None:
    beta = 0.8
    agg = DisruptionMask(retain_momentum=beta)
    avg = None
    for step in range(6):
        us, rs = _pairs(step)
        avg = (
            [(1 - beta) * r for r in rs]
            if avg is None
            else [beta * a + (1 - beta) * r for a, r in zip(avg, rs)]
        )
        got = agg([torch.stack([u, r]) for u, r in zip(us, rs)])
        for g, w in zip(got, _written_out(us, avg)):
            torch.testing.assert_close(g, w, rtol=1e-15, atol=0)
        if step == 2:
            saved = agg.state_dict()
    other = DisruptionMask(retain_momentum=beta)
    other.load_state_dict(saved)
    for step in range(3, 6):
        us, rs = _pairs(step)
        other([torch.stack([u, r]) for u, r in zip(us, rs)])
    for a, b in zip(other.retain_average, agg.retain_average):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_zero_unlearning_gradient_gives_zero_and_bad_input_is_refused() -> None:
    out = disruption_masked_update([torch.zeros(3)], [torch.ones(3)])
    assert out[0].tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="retain_momentum"):
        DisruptionMask(retain_momentum=1.0)
    with pytest.raises(ValueError, match="exactly two gradients"):
        DisruptionMask()([torch.zeros(3, 4)])
    with pytest.raises(ValueError, match="shape"):
        disruption_masked_update([torch.zeros(3)], [torch.zeros(4)])


def test_docstring_examples() -> None:
    import doctest

    import gradkit.multigrad.disruption_mask as module

    result = doctest.testmod(module)
    assert result.attempted >= 1 and result.failed == 0
