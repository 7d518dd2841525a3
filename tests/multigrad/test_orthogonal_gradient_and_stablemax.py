"""⊥Grad, ⊥AdamW and StableMax against their rules written out and the paper's claims.

References: the projection and StableMax written out in plain float64 arithmetic (the formulas
of the paper and of the authors' code, arXiv 2501.04697), and ``torch.optim.AdamW`` stepping on
the projected gradients (the authors' ⊥AdamW is their projection wrapped around torch's AdamW).
Tolerances: ``1e-12`` relative for one evaluation in float64; ``1e-10`` after 100 AdamW steps
(Adam's division amplifies rounding differences between the two code paths).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import gradkit
from gradkit import ChainOptimizer, chain
from gradkit.losses import log_stablemax, stablemax, stablemax_cross_entropy, stablemax_s
from gradkit.transforms import ScaleByLearningRate
from gradkit.transforms.orthogonal_gradient import OrthogonalGradient, orthogonal_to_weights


def _projected_written_out(g: torch.Tensor, w: torch.Tensor, rescale: bool) -> torch.Tensor:
    gf, wf = g.reshape(-1).tolist(), w.reshape(-1).tolist()
    wg = sum(a * b for a, b in zip(wf, gf))
    ww = sum(a * a for a in wf) + 1e-30
    perp = [b - wg / ww * a for a, b in zip(wf, gf)]
    if rescale:
        g_norm = math.sqrt(sum(b * b for b in gf))
        p_norm = math.sqrt(sum(b * b for b in perp))
        scale = g_norm / (p_norm + 1e-30) if p_norm > 16 * 2.0**-52 * g_norm else 0.0
        perp = [b * scale for b in perp]
    return torch.tensor(perp, dtype=torch.float64).reshape(g.shape)


def _tensors(seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    shapes = [(4, 3), (3,), (2, 3, 2), (1,)]
    ws = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    gs = [torch.randn(s, generator=gen, dtype=torch.float64) + 0.7 * w for s, w in zip(shapes, ws)]
    return gs, ws


@pytest.mark.parametrize("rescale", [True, False])
def test_projection_is_the_rule_written_out_per_tensor(rescale: bool) -> None:
    for seed in range(5):
        gs, ws = _tensors(seed)
        out = orthogonal_to_weights(gs, ws, rescale=rescale)
        for g, w, o in zip(gs, ws, out):
            torch.testing.assert_close(
                o, _projected_written_out(g, w, rescale), rtol=1e-12, atol=1e-14
            )


def test_the_update_is_orthogonal_to_each_weight_tensor_and_keeps_its_norm() -> None:
    for seed in range(5):
        gs, ws = _tensors(seed)
        for rescale in (True, False):
            for g, w, o in zip(gs, ws, orthogonal_to_weights(gs, ws, rescale=rescale)):
                assert abs(float((o * w).sum())) <= 1e-13 * float(g.norm() * w.norm())
                assert abs(float((g * w).sum())) > 1e-3  # the raw gradient was not orthogonal
        for g, o in zip(gs, orthogonal_to_weights(gs, ws, rescale=True)):
            if g.numel() > 1:
                torch.testing.assert_close(o.norm(), g.norm(), rtol=1e-13, atol=0)
            else:  # a one-element tensor has no direction orthogonal to its weight
                assert float(o.abs().max()) == 0.0


def test_zero_weights_leave_the_gradient_unchanged() -> None:
    g = [torch.tensor([1.0, -2.0, 3.0])]
    for rescale in (True, False):
        torch.testing.assert_close(
            orthogonal_to_weights(g, [torch.zeros(3)], rescale=rescale)[0], g[0]
        )


def test_sgd_step_grows_the_weight_norm_only_at_second_order() -> None:
    """``<g_perp, w> = 0`` makes ``||w - lr g_perp||^2 = ||w||^2 + lr^2 ||g_perp||^2`` exactly."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()
    opt = ChainOptimizer(
        model.parameters(),
        chain(OrthogonalGradient(rescale=False), ScaleByLearningRate()),
        {"lr": 0.3},
    )
    x, y = torch.randn(32, 5, dtype=torch.float64), torch.randint(0, 3, (32,))
    for _ in range(20):
        before = [p.detach().clone() for p in model.parameters()]
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        perp = orthogonal_to_weights([p.grad for p in model.parameters()], before, rescale=False)
        opt.step()
        for w0, p, d in zip(before, model.parameters(), perp):
            expected = (w0 * w0).sum() + 0.09 * (d * d).sum()
            torch.testing.assert_close((p.detach() ** 2).sum(), expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("rescale", [True, False])
def test_perp_adamw_is_adamw_on_projected_gradients_over_100_steps(rescale: bool) -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    ref = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    ref.load_state_dict(model.state_dict())
    hp = {"lr": 3e-3, "betas": (0.9, 0.99), "eps": 1e-8, "weight_decay": 0.05}
    opt = gradkit.create_optimizer(model, "perp_adamw", rescale=rescale, **hp)
    ref_opt = torch.optim.AdamW(ref.parameters(), foreach=False, **hp)
    gen = torch.Generator().manual_seed(2)
    for _ in range(100):
        x = torch.randn(16, 6, generator=gen, dtype=torch.float64)
        y = torch.randint(0, 3, (16,), generator=gen)
        for m, o in ((model, opt), (ref, ref_opt)):
            o.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
        with torch.no_grad():
            for p in ref.parameters():
                p.grad.copy_(_projected_written_out(p.grad, p, rescale))
        opt.step()
        ref_opt.step()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


def test_perp_adamw_rejects_a_bad_rescale_option() -> None:
    with pytest.raises((TypeError, ValueError), match="rescale"):
        gradkit.create_optimizer(nn.Linear(2, 2), "perp_adamw", rescale="yes")


# ---------------------------------------------------------------- StableMax


def _s_written_out(x: float) -> float:
    return x + 1.0 if x >= 0 else 1.0 / (1.0 - x)


def test_s_is_the_rule_written_out_and_smooth_at_zero() -> None:
    xs = torch.tensor(
        [-1e6, -37.5, -2.0, -1.0, -1e-9, 0.0, 1e-9, 0.5, 1.0, 3.0, 1e6], dtype=torch.float64
    )
    torch.testing.assert_close(
        stablemax_s(xs),
        torch.tensor([_s_written_out(v) for v in xs.tolist()], dtype=torch.float64),
        rtol=1e-15,
        atol=0,
    )
    x = torch.tensor([-1e-7, 0.0, 1e-7, 1.0], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(stablemax_s(x).sum(), x)
    # s'(x) = 1 for x >= 0, 1/(1-x)^2 for x < 0: continuous at 0; finite at x = 1
    torch.testing.assert_close(
        grad, torch.tensor([1 / (1 + 1e-7) ** 2, 1.0, 1.0, 1.0], dtype=torch.float64)
    )
    assert torch.autograd.gradcheck(
        stablemax_s, (torch.randn(20, dtype=torch.float64, requires_grad=True) * 3,)
    )


def test_cross_entropy_against_the_authors_formula() -> None:
    """``-log(s(z_y) / sum_j s(z_j))``, with the authors' ``s`` (``1/(1 - x + 1e-30)`` for
    ``x < 0``), element by element in Python floats."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(12, 5, generator=gen, dtype=torch.float64) * 4
    target = torch.randint(0, 5, (12,), generator=gen)
    rows = []
    for z, t in zip(logits.tolist(), target.tolist()):
        s = [1 / (1 - v + 1e-30) if v < 0 else v + 1 for v in z]
        rows.append(-math.log(s[t] / sum(s)))
    expected = torch.tensor(rows, dtype=torch.float64)
    torch.testing.assert_close(
        stablemax_cross_entropy(logits, target, reduction="none"), expected, rtol=1e-13, atol=0
    )
    torch.testing.assert_close(
        stablemax_cross_entropy(logits, target), expected.mean(), rtol=1e-13, atol=0
    )
    torch.testing.assert_close(
        stablemax_cross_entropy(logits, target, reduction="sum"), expected.sum(), rtol=1e-13, atol=0
    )
    torch.testing.assert_close(
        stablemax(logits).sum(1), torch.ones(12, dtype=torch.float64), rtol=1e-15, atol=0
    )
    torch.testing.assert_close(log_stablemax(logits).exp(), stablemax(logits), rtol=1e-13, atol=0)
    float32 = stablemax_cross_entropy(logits.float(), target, dtype=torch.float64)
    assert float32.dtype == torch.float64


@pytest.mark.parametrize("margin", [20.0, 60.0, 120.0])
def test_softmax_collapses_in_float32_where_stablemax_does_not(margin: float) -> None:
    """Correct logit ``margin/2``, the others ``-margin/2``, float32. Softmax cross-entropy: the
    loss and the correct logit's gradient are exactly 0 (and, past a margin of about 104, every
    gradient); StableMax: loss and every gradient nonzero."""
    z = torch.tensor([[margin / 2, -margin / 2, -margin / 2]] * 4, requires_grad=True)
    target = torch.zeros(4, dtype=torch.long)
    soft = nn.functional.cross_entropy(z, target)
    (g_soft,) = torch.autograd.grad(soft, z)
    assert float(soft.detach()) == 0.0 and (g_soft[:, 0] == 0).all()
    if margin > 104:
        assert (g_soft == 0).all()
    stable = stablemax_cross_entropy(z, target)
    (g_stable,) = torch.autograd.grad(stable, z)
    assert float(stable.detach()) > 0 and (g_stable != 0).all()
    assert (g_stable[:, 0] < 0).all()  # still pushes the correct logit up


def test_stablemax_bad_input() -> None:
    with pytest.raises(ValueError, match="reduction"):
        stablemax_cross_entropy(torch.zeros(2, 3), torch.zeros(2), reduction="max")
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        stablemax_cross_entropy(torch.zeros(3), torch.zeros(3))
    logits = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="integer class indices"):  # soft labels, not truncated
        stablemax_cross_entropy(logits, torch.tensor([0.7, 1.2]))
    with pytest.raises(ValueError, match=r"shape \[N\]"):
        stablemax_cross_entropy(logits, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        stablemax_cross_entropy(logits, torch.tensor([0, 3]))


def test_docstring_examples() -> None:
    import doctest

    import gradkit.losses as module

    result = doctest.testmod(module)
    assert result.attempted >= 1 and result.failed == 0
