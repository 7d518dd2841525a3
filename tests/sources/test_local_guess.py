"""Forward gradient with local-loss guesses (reconstructed from Fournier et al., arXiv
2306.06968): the rule written out for one batch, and the abstract's claim that a local loss's
gradient is a far better direction than random noise, measured as alignment with the true
gradient."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.functional import cross_entropy

from gradkit.sources import Backprop, ForwardGradient, LocalGuessForwardGradient


def _model():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 7), nn.Tanh(), nn.Linear(7, 3)
    ).double()
    heads = [nn.Linear(8, 3).double(), nn.Linear(7, 3).double()]
    return model, heads


def test_matches_rule_written_out() -> None:
    model, heads = _model()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(10, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (10,), generator=g)
    Backprop().compute(model, cross_entropy, (x, y))
    true = [p.grad.clone() for p in model.parameters()]

    # the guesses: gradients of each block's local loss, with the block's input held constant
    l1, l2 = model[0], model[2]
    h1 = torch.tanh(l1(x))
    local1 = cross_entropy(heads[0](h1), y)
    guess1 = torch.autograd.grad(local1, [l1.weight, l1.bias, *heads[0].parameters()])
    h1c = h1.detach()
    h2 = torch.tanh(l2(h1c))
    local2 = cross_entropy(heads[1](h2), y)
    guess2 = torch.autograd.grad(local2, [l2.weight, l2.bias, *heads[1].parameters()])

    def project(target, guess):
        dot = sum((t * q).sum() for t, q in zip(target, guess))
        norm2 = sum((q * q).sum() for q in guess)
        return [q * dot / norm2 for q in guess]

    expected = project(true[0:2], guess1[:2]) + project(true[2:4], guess2[:2]) + true[4:6]
    source = LocalGuessForwardGradient(model, heads)
    source.compute(model, cross_entropy, (x, y))
    for p, e in zip(model.parameters(), expected):
        torch.testing.assert_close(p.grad, e, rtol=1e-10, atol=1e-13)
    for p, e in zip([*heads[0].parameters(), *heads[1].parameters()], [*guess1[2:], *guess2[2:]]):
        torch.testing.assert_close(p.grad, e, rtol=1e-10, atol=1e-13)
    c = source.last_cost
    assert (c.forward, c.backward, c.jvp) == (3, 1, 2)


def _cosine(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    dot = sum((u * v).sum() for u, v in zip(a, b))
    na = sum((u * u).sum() for u in a).sqrt()
    nb = sum((v * v).sum() for v in b).sqrt()
    return float(dot / (na * nb))


def test_local_guess_aligns_far_better_than_random_direction() -> None:
    """Train an MLP (and its heads) on a random teacher with this source, then compare, per
    hidden block, the cosine between the estimate and the true gradient: local guess vs a
    random-direction forward gradient (whose cosine is about sqrt(2 / (pi d)) ~ 0.03 here).
    Measured: local guesses 0.31 (first block) and 0.68 (second); random directions 0.014 and
    0.003. Required: local > 0.2, random < 0.1, local > 5 x random."""
    torch.manual_seed(0)
    x = torch.randn(256, 10)
    teacher = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 4))
    y = teacher(x).argmax(1).detach()
    model = nn.Sequential(
        nn.Linear(10, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 4)
    )
    heads = [nn.Linear(64, 4), nn.Linear(64, 4)]
    source = LocalGuessForwardGradient(model, heads)
    params = [*model.parameters(), *heads[0].parameters(), *heads[1].parameters()]
    opt = torch.optim.Adam(params, lr=3e-3)
    for _ in range(150):
        source.compute(model, cross_entropy, (x, y))
        opt.step()
    Backprop().compute(model, cross_entropy, (x, y))
    true = [p.grad.clone() for p in model.parameters()]
    source.compute(model, cross_entropy, (x, y))
    local = [p.grad.clone() for p in model.parameters()]
    ForwardGradient(generator=torch.Generator().manual_seed(0)).compute(
        model, cross_entropy, (x, y)
    )
    rand = [p.grad.clone() for p in model.parameters()]
    for blk in (slice(0, 2), slice(2, 4)):
        c_local = _cosine(true[blk], local[blk])
        c_rand = abs(_cosine(true[blk], rand[blk]))
        assert c_local > 0.2, c_local
        assert c_rand < 0.1, c_rand
        assert c_local > 5 * c_rand


def test_invalid() -> None:
    model, heads = _model()
    with pytest.raises(ValueError, match="heads"):
        LocalGuessForwardGradient(model, heads[:1])
    with pytest.raises(ValueError, match="another model"):
        LocalGuessForwardGradient(model, heads).compute(
            _model()[0], cross_entropy, (torch.zeros(2, 6), torch.zeros(2, dtype=torch.long))
        )
