"""M-FAC: the Woodbury product against the dense solve ``(lambda I + (1/m) sum g g^T)^-1 v``,
the ring buffer over many steps, and trajectories against the rule written out (Frantar,
Kurtic & Alistarh, arXiv 2107.03356)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradkit
from gradkit.transforms.mfac import mfac_inverse_product

DT = torch.float64


def _dense(window: list[torch.Tensor], m: int, damping: float, v: torch.Tensor) -> torch.Tensor:
    """``(damping I + (1/m) sum_i g_i g_i^T)^-1 v`` as a d x d solve."""
    d = v.numel()
    f = damping * torch.eye(d, dtype=DT)
    for g in window:
        f = f + torch.outer(g, g) / m
    return torch.linalg.solve(f, v)


@pytest.mark.parametrize(("m", "d"), [(1, 7), (5, 12), (12, 5)])
def test_woodbury_product_is_the_dense_solve(m: int, d: int) -> None:
    torch.manual_seed(m * 100 + d)
    w = torch.randn(m, d, dtype=DT)
    v = torch.randn(d, dtype=DT)
    for damping in (1e-3, 0.1, 10.0):
        got = mfac_inverse_product(w, w @ w.mT, v, damping)
        want = _dense(list(w), m, damping, v)
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10 / damping)


def test_one_gradient_closed_form() -> None:
    """With one gradient in the window, F^-1 g = g / (damping + |g|^2 / m)."""
    g = torch.tensor([3.0, -4.0], dtype=DT)
    w = torch.zeros(4, 2, dtype=DT)
    w[0] = g
    got = mfac_inverse_product(w, w @ w.mT, g, 0.5)
    torch.testing.assert_close(got, g / (0.5 + 25.0 / 4))


@pytest.mark.parametrize("blocks", ["group", "tensor"])
def test_ring_buffer_steps_match_the_dense_solve(blocks: str) -> None:
    """lr = 1, no momentum: each step is -F_t^-1 g_t with F_t from the last m gradients
    (zero-filled at first), over 3m steps so that the ring wraps twice."""
    torch.manual_seed(1)
    m, damping = 4, 0.05
    a = nn.Parameter(torch.randn(3, 2, dtype=DT))
    b = nn.Parameter(torch.randn(5, dtype=DT))
    opt = gradkit.create_optimizer(
        [a, b], "mfac", lr=1.0, damping=damping, num_gradients=m, blocks=blocks
    )
    history: list[list[torch.Tensor]] = []
    for _ in range(3 * m):
        grads = [torch.randn(3, 2, dtype=DT), torch.randn(5, dtype=DT)]
        history.append(grads)
        before = [a.detach().clone(), b.detach().clone()]
        a.grad, b.grad = grads[0].clone(), grads[1].clone()
        opt.step()
        recent = history[-m:]
        if blocks == "group":
            window = [torch.cat([g[0].reshape(-1), g[1]]) for g in recent]
            v = torch.cat([grads[0].reshape(-1), grads[1]])
            step = _dense(window, m, damping, v)
            want = [step[:6].reshape(3, 2), step[6:]]
        else:
            want = [
                _dense([g[k].reshape(-1) for g in recent], m, damping, grads[k].reshape(-1))
                for k in range(2)
            ]
            want[0] = want[0].reshape(3, 2)
        torch.testing.assert_close(before[0] - a.detach(), want[0], rtol=1e-8, atol=1e-9)
        torch.testing.assert_close(before[1] - b.detach(), want[1], rtol=1e-8, atol=1e-9)


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).to(DT)


def _data(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(200 + step)
    return torch.randn(8, 5, generator=g, dtype=DT), torch.randint(0, 3, (8,), generator=g)


def test_trajectory_matches_the_rule_written_out() -> None:
    """40 steps, m = 6: the rule (coupled L2, window, dense d x d solve, heavy-ball momentum,
    lr) written out on the flat parameter vector of an MLP."""
    hp = {"lr": 0.02, "damping": 0.1, "momentum": 0.9, "weight_decay": 1e-3}
    m, steps = 6, 40
    ref = _mlp()
    params = list(ref.parameters())
    window: list[torch.Tensor] = []
    buf = None
    for t in range(steps):
        x, y = _data(t)
        grads = torch.autograd.grad(nn.functional.cross_entropy(ref(x), y), params)
        with torch.no_grad():
            flat_p = torch.cat([p.reshape(-1) for p in params])
            g = torch.cat([q.reshape(-1) for q in grads]) + hp["weight_decay"] * flat_p
            window = (window + [g])[-m:]
            u = _dense(window, m, hp["damping"], g)
            buf = u if buf is None else hp["momentum"] * buf + u
            new = flat_p - hp["lr"] * buf
            k = 0
            for p in params:
                p.copy_(new[k : k + p.numel()].reshape(p.shape))
                k += p.numel()
    model = _mlp()
    opt = gradkit.create_optimizer(model, "mfac", num_gradients=m, **hp)
    for t in range(steps):
        x, y = _data(t)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-8, atol=1e-10)
    start = _mlp()
    assert (
        max(
            float((p - q).detach().abs().max())
            for p, q in zip(ref.parameters(), start.parameters())
        )
        > 1e-2
    )


def test_group_blocks_refuse_parameters_out_of_step() -> None:
    a = nn.Parameter(torch.ones(3, dtype=DT))
    b = nn.Parameter(torch.ones(2, dtype=DT))
    opt = gradkit.create_optimizer([a, b], "mfac")
    a.grad = torch.ones(3, dtype=DT)
    opt.step()  # b has no gradient: a is one step ahead
    a.grad, b.grad = torch.ones(3, dtype=DT), torch.ones(2, dtype=DT)
    with pytest.raises(ValueError, match="blocks='tensor'"):
        opt.step()
    opt2 = gradkit.create_optimizer([a, b], "mfac", blocks="tensor")
    a.grad = torch.ones(3, dtype=DT)
    b.grad = None
    opt2.step()
    a.grad, b.grad = torch.ones(3, dtype=DT), torch.ones(2, dtype=DT)
    opt2.step()


def test_invalid_options_are_refused() -> None:
    with pytest.raises(ValueError, match="Invalid num_gradients"):
        gradkit.create_optimizer(_mlp(), "mfac", num_gradients=0)
    with pytest.raises(ValueError, match="Invalid blocks"):
        gradkit.create_optimizer(_mlp(), "mfac", blocks="layer")
    with pytest.raises(ValueError, match="Invalid damping"):
        gradkit.create_optimizer(_mlp(), "mfac", damping=0.0)
