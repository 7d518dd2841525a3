"""Per-class normalized gradients (PCNGD) against the rule written out, and the paper's claim.

The reference is the closed-form gradient of a linear softmax classifier, ``(p_i - e_{y_i})
[x_i, 1]``, summed per class, divided by its norm and summed over classes, all in float64: the
same numbers by another route, so the tolerance is ``1e-12`` relative.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradkit.multigrad import PerClassNormalized, per_class_backward, per_class_losses


def _imbalanced(seed: int, n_per_class: tuple[int, ...], shift: float = 0.5):
    gen = torch.Generator().manual_seed(seed)
    d = 5
    mu = torch.zeros(d, dtype=torch.float64)
    mu[0] = 1.0
    xs, ys = [], []
    for c, n in enumerate(n_per_class):
        offset = mu if c == 0 else shift * c * mu
        xs.append(torch.randn(n, d, generator=gen, dtype=torch.float64) + offset)
        ys.append(torch.full((n,), c, dtype=torch.long))
    return torch.cat(xs), torch.cat(ys)


def _linear(d: int, k: int, seed: int | None) -> nn.Linear:
    model = nn.Linear(d, k).double()
    with torch.no_grad():
        if seed is None:
            model.weight.zero_()
            model.bias.zero_()
        else:
            gen = torch.Generator().manual_seed(seed)
            model.weight.copy_(torch.randn(k, d, generator=gen, dtype=torch.float64))
            model.bias.copy_(torch.randn(k, generator=gen, dtype=torch.float64))
    return model


def _pcngd_written_out(w, b, x, y, num_classes, reduction="sum"):
    """sum_l g_l / ||g_l|| with g_l the closed-form gradient of (1/n) sum_{i in l} CE_i."""
    n = x.shape[0]
    p = torch.softmax(x @ w.T + b, dim=1)
    r = p - nn.functional.one_hot(y, num_classes).double()  # dCE/dlogits per example
    dw, db = torch.zeros_like(w), torch.zeros_like(b)
    present = [c for c in range(num_classes) if (y == c).any()]
    for c in present:
        m = y == c
        gw, gb = r[m].T @ x[m] / n, r[m].sum(0) / n
        norm = torch.sqrt((gw**2).sum() + (gb**2).sum())
        dw += gw / norm
        db += gb / norm
    if reduction == "mean":
        dw, db = dw / len(present), db / len(present)
    return dw, db


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("counts", [(45, 5), (40, 7, 3), (30, 0, 4)])  # a class may be absent
def test_gradient_is_the_rule_written_out(counts, reduction) -> None:
    x, y = _imbalanced(1, counts)
    k = len(counts)
    for seed in range(3):
        model = _linear(x.shape[1], k, seed)
        losses = nn.functional.cross_entropy(model(x), y, reduction="none")
        info = per_class_backward(
            losses, y, model.parameters(), PerClassNormalized(reduction=reduction)
        )
        dw, db = _pcngd_written_out(model.weight.detach(), model.bias.detach(), x, y, k, reduction)
        torch.testing.assert_close(model.weight.grad, dw, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(model.bias.grad, db, rtol=1e-12, atol=1e-14)
        assert info.num_gradients == sum(c > 0 for c in counts)


def test_sgd_trajectory_follows_the_rule_over_many_steps() -> None:
    x, y = _imbalanced(2, (60, 10, 5))
    model = _linear(x.shape[1], 3, 0)
    w, b = model.weight.detach().clone(), model.bias.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(50):
        opt.zero_grad()
        per_class_backward(
            nn.functional.cross_entropy(model(x), y, reduction="none"), y, model.parameters()
        )
        opt.step()
        dw, db = _pcngd_written_out(w, b, x, y, 3)
        w, b = w - 0.05 * dw, b - 0.05 * db
    torch.testing.assert_close(model.weight.detach(), w, rtol=1e-11, atol=1e-12)
    torch.testing.assert_close(model.bias.detach(), b, rtol=1e-11, atol=1e-12)


def test_each_class_gradient_has_unit_weight_and_losses_sum_to_the_mean() -> None:
    x, y = _imbalanced(3, (30, 6))
    model = _linear(x.shape[1], 2, 1)
    per_example = nn.functional.cross_entropy(model(x), y, reduction="none")
    losses, classes = per_class_losses(per_example, y)
    assert classes.tolist() == [0, 1]
    torch.testing.assert_close(sum(losses), per_example.mean(), rtol=1e-14, atol=0)
    info = per_class_backward(per_example, y, model.parameters())
    params = list(model.parameters())
    class_losses, _ = per_class_losses(
        nn.functional.cross_entropy(model(x), y, reduction="none"), y
    )
    grads = []
    for loss in class_losses:
        parts = torch.autograd.grad(loss, params, retain_graph=True)
        grads.append(torch.cat([g.reshape(-1) for g in parts]))
    torch.testing.assert_close(
        info.weights, torch.stack([1 / g.norm() for g in grads]), rtol=1e-12, atol=0
    )


def _per_class_trajectory(method: str, x, y, steps: int = 100, lr: float = 0.05):
    model = _linear(x.shape[1], 2, None)  # zero init: both classes start at log 2
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    history = []
    for _ in range(steps):
        opt.zero_grad()
        losses = nn.functional.cross_entropy(model(x), y, reduction="none")
        history.append(torch.stack([losses[y == 0].mean(), losses[y == 1].mean()]).detach())
        if method == "gd":
            losses.mean().backward()
        else:
            per_class_backward(losses, y, model.parameters())
        opt.step()
    return torch.stack(history)


def test_gd_raises_the_minority_loss_where_pcngd_lowers_every_class_loss() -> None:
    """The paper's claim on a 9:1 imbalanced linear problem: full-batch GD increases the minority
    class's loss (the minority initial drop), PCNGD decreases the loss of both classes at every
    step (for a small enough learning rate)."""
    x, y = _imbalanced(0, (90, 10))
    gd = _per_class_trajectory("gd", x, y)
    pc = _per_class_trajectory("pcngd", x, y)
    gd_steps, pc_steps = gd[1:] - gd[:-1], pc[1:] - pc[:-1]
    assert (gd_steps[:, 1] > 0).all()  # GD: the minority loss rises at every one of 99 steps
    assert gd[-1, 1] > gd[0, 1] + 0.5
    assert (pc_steps < 0).all()  # PCNGD: both classes' losses fall at every step
    assert pc[-1, 1] < pc[0, 1] - 0.2 and pc[-1, 0] < pc[0, 0] - 0.2


def test_two_class_direction_is_a_descent_direction_for_each_class() -> None:
    """With two classes the normalized sum bisects the class gradients: ``<d, g_l> >= 0``."""
    gen = torch.Generator().manual_seed(0)
    agg = PerClassNormalized()
    plain_conflicts = 0
    for _ in range(200):
        jac = torch.randn(2, 7, generator=gen, dtype=torch.float64)
        jac[1] -= 3.0 * jac[0]  # conflicting, and of very different sizes
        d = agg([jac])[0]
        assert (jac @ d >= -1e-12).all()
        plain_conflicts += int((jac @ jac.sum(0) < 0).any())
    assert plain_conflicts > 100  # the plain sum conflicts with a class in most of these sets


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="reduction"):
        PerClassNormalized(reduction="max")
    with pytest.raises(ValueError, match="1-D"):
        per_class_losses(torch.zeros(3, 2), torch.zeros(3))
    with pytest.raises(ValueError, match="labels has 2 entries"):
        per_class_losses(torch.zeros(3), torch.zeros(2))


def test_docstring_examples() -> None:
    import doctest

    import gradkit.multigrad.per_class as module

    result = doctest.testmod(module)
    assert result.attempted >= 2 and result.failed == 0
