"""Gravity against pytorch-optimizer and the paper's algorithm written out."""

from __future__ import annotations

import pytest
import pytorch_optimizer as po
import torch

import gradkit
from gradkit.optim.gravity import Gravity
from optimizer_checks import compare, one_step, resume_is_bit_exact, state_buffers


@pytest.mark.parametrize("problem", ["mlp", "quadratic"])
def test_matches_pytorch_optimizer(problem):
    # both draw V_0 from the global generator, parameter by parameter, on the first step
    lr = 0.05 if problem == "mlp" else 0.01
    assert (
        compare(lambda p: Gravity(p, lr=lr), lambda p: po.Gravity(p, lr=lr), problem, rng_seed=5)
        < 1e-5
    )


def test_written_out_algorithm():
    torch.manual_seed(0)
    p0 = torch.randn(6, 4)
    grads = [torch.randn(6, 4) for _ in range(120)]
    lr, alpha, beta = 0.1, 0.01, 0.9
    p = p0.clone().requires_grad_()
    opt = Gravity([p], lr=lr, alpha=alpha, beta=beta)
    torch.manual_seed(7)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    torch.manual_seed(7)
    v = torch.empty(6, 4).normal_(0.0, alpha / lr).double()
    x = p0.double()
    for t, g in enumerate(grads, start=1):
        g = g.double()
        m = 1.0 / g.abs().max()
        zeta = g / (1 + (g / m) ** 2)
        b = (beta * t + 1) / (t + 2)
        v = b * v + (1 - b) * zeta
        x = x - lr * v
    torch.testing.assert_close(p.detach().double(), x, rtol=1e-5, atol=1e-6)


def test_resume_is_bit_exact(tmp_path):
    assert resume_is_bit_exact(lambda p: Gravity(p, lr=0.05), tmp_path)


def test_registry_entry():
    info = gradkit.optim.registry.get_info("gravity")
    assert (info.arxiv_id, info.cls) == ("2101.09192", Gravity)


def test_state_memory():
    assert state_buffers(*one_step(Gravity)) == (1, 0)  # the velocity


def test_runs_on_flat_buffers_with_tensor_segments():
    """Per-tensor maximum: the flat path hands the rule the tensor boundaries."""
    opt = Gravity([torch.zeros(3, 2, requires_grad=True)])
    assert opt.transform.flat_ok is True and opt.transform.segments == "tensors"
