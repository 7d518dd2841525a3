"""fused="compile": the per-tensor chain under torch.compile, against the eager path."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

import gradkit
from gradkit.optim.registry import get_info

#: chains with per-tensor reductions (not flat_ok) and no closure; Muon's family has its own
#: compiled update under its own ``fused`` hyperparameter
NAMES = [
    n
    for n in ("adamp", "sgdp", "novograd", "mars", "stable_spam", "ranger21", "gravity", "adago")
    if n in {i.name for i in gradkit.list_optimizers()}
]


def _model(dtype: torch.dtype = torch.float32, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    # the batch norm makes the first layer scale-invariant, so AdamP/SGDP's projection fires
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)


def _train(model, opt, steps: int, start: int = 0, scheduler=None) -> None:
    dtype = next(model.parameters()).dtype
    for t in range(start, start + steps):
        g = torch.Generator().manual_seed(t)
        x, y = torch.randn(16, 6, generator=g), torch.randn(16, 3, generator=g)
        torch.manual_seed(100 + t)  # methods that draw noise (Gravity's init) draw the same
        opt.zero_grad()
        nn.functional.mse_loss(model(x.to(dtype)), y.to(dtype)).backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()


def _pair(name: str, backend: str, dtype=torch.float32, **hp):
    a, b = _model(dtype), _model(dtype)
    oa = gradkit.create_optimizer(a, name, fused=False, **hp)
    ob = gradkit.create_optimizer(b, name, fused="compile", **hp)
    ob._compile_backend = backend
    return a, oa, b, ob


@pytest.mark.parametrize("name", NAMES)
def test_traced_chain_is_bit_exact(name: str) -> None:
    """aot_eager traces the chain exactly as the compiler sees it but runs ATen ops: the result
    must be identical to the eager path, bit for bit, with an lr schedule running."""
    torch._dynamo.reset()
    a, oa, b, ob = _pair(name, "aot_eager")
    _train(a, oa, 15, scheduler=torch.optim.lr_scheduler.StepLR(oa, 4, 0.5))
    _train(b, ob, 15, scheduler=torch.optim.lr_scheduler.StepLR(ob, 4, 0.5))
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q), name


def test_inductor_matches_in_float64() -> None:
    """The real compiler (inductor, C++ on CPU) fuses and reorders reductions: float64 agrees
    to rounding. (In float32 Adam-type steps on elements with near-zero gradients amplify
    rounding differences to ~1e-3 within tens of steps, as on the flat path; the bit-exact
    trace test above is what checks the logic.)"""
    torch._dynamo.reset()
    a, oa, b, ob = _pair("adamp", "inductor", torch.float64)
    _train(a, oa, 6)
    _train(b, ob, 6)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12)


def test_no_recompile_per_step() -> None:
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    a, oa, b, ob = _pair("adamp", "aot_eager")
    _train(b, ob, 30, scheduler=torch.optim.lr_scheduler.StepLR(ob, 3, 0.7))
    graphs = counters["stats"]["unique_graphs"]
    assert graphs == 1, f"{graphs} graphs for 30 steps: a hyperparameter is baked in"


def test_resume_is_bit_exact() -> None:
    torch._dynamo.reset()
    ref = _model()
    opt = gradkit.create_optimizer(ref, "adamp", fused="compile")
    opt._compile_backend = "aot_eager"
    _train(ref, opt, 12)
    first = _model()
    opt1 = gradkit.create_optimizer(first, "adamp", fused="compile")
    opt1._compile_backend = "aot_eager"
    _train(first, opt1, 6)
    buf = io.BytesIO()
    torch.save({"model": first.state_dict(), "opt": opt1.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf)
    resumed = _model(seed=123)  # a different init: everything must come from the checkpoint
    resumed.load_state_dict(ckpt["model"])
    opt2 = gradkit.create_optimizer(resumed, "adamp", fused="compile")
    opt2._compile_backend = "aot_eager"
    opt2.load_state_dict(ckpt["opt"])
    _train(resumed, opt2, 6, start=6)
    for p, q in zip(ref.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


def test_bad_fused_values_are_refused() -> None:
    with pytest.raises(ValueError, match="fused"):
        gradkit.create_optimizer(_model(), "adamw", fused="compiled")
    with pytest.raises(ValueError, match="flat_ok"):  # per-matrix preconditioners
        gradkit.create_optimizer(_model(), "shampoo", fused=True)
    assert not get_info("shampoo").needs_closure


def test_second_optimizer_reuses_the_compiled_step() -> None:
    """A second optimizer of the same chain on same-shaped parameters (the next trial of a
    comparison) compiles nothing: the compiled step is shared per chain structure, dtype,
    device kind and number of tensors, and its state is allocated by an eager first step."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    a, oa, b, ob = _pair("adamp", "aot_eager")
    _train(b, ob, 8, scheduler=torch.optim.lr_scheduler.StepLR(ob, 3, 0.7))
    first = counters["stats"]["unique_graphs"]
    assert first >= 1
    c = _model(seed=5)
    oc = gradkit.create_optimizer(c, "adamp", fused="compile", lr=3e-3)
    oc._compile_backend = "aot_eager"
    _train(c, oc, 8, scheduler=torch.optim.lr_scheduler.StepLR(oc, 3, 0.7))
    assert counters["stats"]["unique_graphs"] == first
    ref = _model(seed=5)
    oref = gradkit.create_optimizer(ref, "adamp", fused=False, lr=3e-3)
    _train(ref, oref, 8, scheduler=torch.optim.lr_scheduler.StepLR(oref, 3, 0.7))
    for p, q in zip(ref.parameters(), c.parameters()):
        assert torch.equal(p, q)
