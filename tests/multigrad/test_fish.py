"""Fish against its rule written out (a deep-copied model and torch's SGD, as the paper's
Algorithm 1 reads), and the paper's first-order claim checked by double backprop.

Exactness: the same float64 operations in another order of calls, so ``1e-12`` relative after
10 iterations. The expansion: ``theta_tilde - theta`` minus its second-order Taylor expansion
must shrink like ``alpha^3`` (halving ``alpha`` divides it by ~8), while dropping the
second-order term leaves an ``alpha^2`` error (divided by ~4): the claim has content.
"""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch import nn

from gradkit.multigrad import Fish, fish_backward, fish_inner_loop


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2)).double()


def _domains(seed: int, num: int = 3):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for d in range(num):
        x = torch.randn(10, 4, generator=gen, dtype=torch.float64) + 0.5 * d
        y = torch.randn(10, 2, generator=gen, dtype=torch.float64) * (1 + d)
        out.append((x, y))
    return out


LOSS = nn.functional.mse_loss


def _fish_written_out(model, domains, order, inner_lr, meta_lr):
    clone = copy.deepcopy(model)
    inner = torch.optim.SGD(clone.parameters(), lr=inner_lr)
    for i in order:
        x, y = domains[i]
        inner.zero_grad()
        LOSS(clone(x), y).backward()
        inner.step()
    with torch.no_grad():
        for p, q in zip(model.parameters(), clone.parameters()):
            p.add_(meta_lr * (q - p))


def test_fish_equals_the_rule_written_out_over_10_iterations() -> None:
    model, ref = _model(0), _model(0)
    fish = Fish(model, LOSS, inner_lr=0.05, meta_lr=0.3, seed=3)
    orders = torch.Generator().manual_seed(3)
    for it in range(10):
        domains = _domains(it)
        fish.step(domains)
        _fish_written_out(ref, domains, torch.randperm(3, generator=orders).tolist(), 0.05, 0.3)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


def test_fish_backward_with_sgd_is_the_outer_update() -> None:
    model, ref = _model(1), _model(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.4)
    for it in range(5):
        domains = _domains(10 + it, num=4)
        opt.zero_grad()
        losses = fish_backward(model, LOSS, domains, 0.02, order=[3, 0, 2, 1])
        opt.step()
        _fish_written_out(ref, domains, [3, 0, 2, 1], 0.02, 0.4)
        assert losses.shape == (4,)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


def test_params_given_as_an_iterator_select_those_parameters() -> None:
    """``params=model.parameters()`` (a one-shot iterator) and a subset both work: only the
    selected parameters take the inner steps and get ``theta - theta_tilde`` in ``.grad``."""
    model, ref = _model(2), _model(2)
    domains = _domains(7)
    fish_backward(model, LOSS, domains, 0.05, params=model.parameters(), order=[0, 1, 2])
    fish_backward(ref, LOSS, domains, 0.05, order=[0, 1, 2])
    for p, q in zip(model.parameters(), ref.parameters()):
        assert p.grad is not None and p.grad.abs().sum() > 0
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0)
    head = _model(2)
    fish_backward(head, LOSS, domains, 0.05, params=iter(head[2].parameters()), order=[0, 1, 2])
    assert head[0].weight.grad is None and head[2].weight.grad is not None


def _grads(model, domain, create_graph=False):
    x, y = domain
    return torch.autograd.grad(
        LOSS(model(x), y), list(model.parameters()), create_graph=create_graph
    )


def _flat(ts):
    return torch.cat([t.reshape(-1) for t in ts])


def _expansion_fixed_order(model, domains, order, alpha):
    """-alpha sum_i g_i + alpha^2 sum_{j before i} H_i g_j, by double backprop."""
    params = list(model.parameters())
    g = {i: _flat(_grads(model, domains[i])).detach() for i in order}
    first = -alpha * sum(g.values())
    second = torch.zeros_like(first)
    for pos, i in enumerate(order):
        before = sum((g[j] for j in order[:pos]), torch.zeros_like(first))
        if pos == 0:
            continue
        gi = _grads(model, domains[i], create_graph=True)
        hvp = torch.autograd.grad(_flat(gi) @ before, params)
        second += _flat(hvp)
    return first, alpha**2 * second


def _fish_delta(model, domains, order, alpha):
    tilde, _ = fish_inner_loop(model, LOSS, domains, alpha, order=order)
    return _flat([tilde[n] - p.detach() for n, p in model.named_parameters()])


def test_inner_loop_matches_its_second_order_expansion() -> None:
    model, domains, order = _model(2), _domains(5), [2, 0, 1]
    errors, first_only = [], []
    for alpha in (1e-2, 5e-3, 2.5e-3):
        delta = _fish_delta(model, domains, order, alpha)
        first, second = _expansion_fixed_order(model, domains, order, alpha)
        errors.append(float((delta - first - second).norm()))
        first_only.append(float((delta - first).norm()))
    for a, b in zip(errors, errors[1:]):
        assert 6.0 < a / b < 10.0  # O(alpha^3)
    for a, b in zip(first_only, first_only[1:]):
        assert 3.0 < a / b < 5.0  # without the second-order term: O(alpha^2)
    assert errors[-1] < 0.05 * first_only[-1]


def test_order_averaged_update_follows_the_gradient_matching_objective() -> None:
    """Averaged over all orders, ``theta_tilde - theta = -alpha grad[sum_i L_i -
    (alpha/2) sum_{i<j} <g_i, g_j>] + O(alpha^3)`` (gradient inner products by double backprop)."""
    model, domains = _model(3), _domains(7)
    params = list(model.parameters())
    gs = [_grads(model, d, create_graph=True) for d in domains]
    total = sum(LOSS(model(x), y) for x, y in domains)
    inner = sum(_flat(gs[i]) @ _flat(gs[j]) for i, j in itertools.combinations(range(3), 2))
    g_total = _flat(torch.autograd.grad(total, params, retain_graph=True)).detach()
    g_inner = _flat(torch.autograd.grad(inner, params)).detach()
    errors, without = [], []
    for alpha in (1e-2, 5e-3):
        mean = (
            sum(
                _fish_delta(model, domains, list(o), alpha)
                for o in itertools.permutations(range(3))
            )
            / 6
        )
        predicted = -alpha * (g_total - alpha / 2 * g_inner)
        errors.append(float((mean - predicted).norm()))
        without.append(float((mean + alpha * g_total).norm()))
    assert 6.0 < errors[0] / errors[1] < 10.0
    assert 3.0 < without[0] / without[1] < 5.0
    assert errors[1] < 0.05 * without[1]


def test_fish_state_and_bad_input() -> None:
    model = _model(4)
    a = Fish(model, LOSS, inner_lr=0.01, seed=1)
    saved = a.state_dict()
    first = torch.randperm(3, generator=a.generator).tolist()
    b = Fish(model, LOSS, inner_lr=0.01)
    b.load_state_dict(saved)
    assert torch.randperm(3, generator=b.generator).tolist() == first
    with pytest.raises(ValueError, match="inner_lr"):
        Fish(model, LOSS, inner_lr=0.0)
    with pytest.raises(ValueError, match="meta_lr"):
        Fish(model, LOSS, meta_lr=-1.0)
    with pytest.raises(ValueError, match="permutation"):
        fish_inner_loop(model, LOSS, _domains(0), 0.1, order=[0, 0, 1])
    with pytest.raises(ValueError, match="at least one"):
        fish_inner_loop(model, LOSS, [], 0.1)
    with pytest.raises(ValueError, match="unknown keys"):
        b.load_state_dict({"generator": saved["generator"], "order": [0, 1, 2]})


def test_docstring_examples() -> None:
    import doctest

    import gradkit.multigrad.fish as module

    result = doctest.testmod(module)
    assert result.attempted >= 1 and result.failed == 0
