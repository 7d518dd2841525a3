"""Trajectory checks for optimizer tests: two small float64 problems (an MLP with a batch norm, a
random SPD quadratic), runs of an optimizer, a written-out update or an optax transformation over
them, comparisons of the recorded trajectories, and a save/resume check."""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

from helpers import single_thread

Factory = Callable[[list[torch.Tensor]], torch.optim.Optimizer]
GradFn = Callable[[list[torch.Tensor]], list[torch.Tensor]]
#: a written-out update: ``step_fn(params, grads, state) -> new params``
StepFn = Callable[[list[torch.Tensor], list[torch.Tensor], dict], list[torch.Tensor]]


def mlp_problem(seed: int = 0, dtype: torch.dtype = torch.float64) -> tuple[nn.Module, Callable]:
    """A small MLP regression; the first layer feeds a batch norm, so its rows are scale-invariant."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(6, 12, bias=False),
        nn.BatchNorm1d(12, affine=False),
        nn.Tanh(),
        nn.Linear(12, 3),
    ).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5)
    # drawn in float64 and cast, so every dtype sees the same problem
    x = torch.randn(48, 6, generator=g, dtype=torch.float64).to(dtype)
    y = torch.randn(48, 3, generator=g, dtype=torch.float64).to(dtype)

    def loss_fn(m: nn.Module) -> torch.Tensor:
        return nn.functional.mse_loss(m(x), y)

    return model, loss_fn


def quadratic_problem(
    seed: int = 1, dtype: torch.dtype = torch.float64
) -> tuple[list[torch.Tensor], GradFn]:
    """``f(W, b) = 0.5 vec^T A vec - c^T vec`` with a random SPD ``A``; params a 4x5 matrix and a vector."""
    g = torch.Generator().manual_seed(seed)
    n = 25
    f64 = torch.float64
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=f64))
    a = (q @ torch.diag(torch.logspace(-1, 1, n, dtype=f64)) @ q.T).to(dtype)
    c = torch.randn(n, generator=g, dtype=f64).to(dtype)
    params = [
        torch.randn(4, 5, generator=g, dtype=f64).to(dtype),
        torch.randn(5, generator=g, dtype=f64).to(dtype),
    ]

    def grads(ps: list[torch.Tensor]) -> list[torch.Tensor]:
        vec = torch.cat([p.reshape(-1) for p in ps])
        gv = a @ vec - c
        return [gv[:20].reshape(4, 5), gv[20:]]

    return params, grads


def _trajectory(
    params: list[torch.Tensor], step: Callable[[], None], steps: int, record_every: int
) -> list[list[torch.Tensor]]:
    """Call ``step()`` ``steps`` times; snapshots of ``params`` every ``record_every`` steps."""
    snaps: list[list[torch.Tensor]] = []
    for t in range(steps):
        step()
        if (t + 1) % record_every == 0:
            snaps.append([p.detach().clone() for p in params])
    return snaps


def _problem(
    problem: str, dtype: torch.dtype
) -> tuple[list[torch.Tensor], Callable[[], list[torch.Tensor]]]:
    """The parameters of ``problem`` ("mlp" or "quadratic") and a function that returns the
    gradient at their current values."""
    if problem == "mlp":
        model, loss_fn = mlp_problem(dtype=dtype)
        params = list(model.parameters())

        def grads() -> list[torch.Tensor]:
            for p in params:
                p.grad = None
            loss_fn(model).backward()
            return [p.grad.detach().clone() for p in params]

        return params, grads
    init, grad_fn = quadratic_problem(dtype=dtype)
    params = [p.clone().requires_grad_(True) for p in init]

    def quadratic_grads() -> list[torch.Tensor]:
        return grad_fn([p.detach() for p in params])

    return params, quadratic_grads


@single_thread()
def run_torch(
    factory: Factory,
    steps: int = 120,
    problem: str = "mlp",
    dtype: torch.dtype = torch.float64,
    record_every: int = 10,
) -> list[list[torch.Tensor]]:
    """Train with a torch optimizer; return snapshots of all parameters every ``record_every`` steps."""
    params, grads = _problem(problem, dtype)
    opt = factory(params)

    def step() -> None:
        for p, g in zip(params, grads()):
            p.grad = g
        opt.step()

    return _trajectory(params, step, steps, record_every)


@single_thread()
def run_manual(
    step_fn: StepFn,
    steps: int = 120,
    problem: str = "mlp",
    dtype: torch.dtype = torch.float64,
    record_every: int = 10,
) -> list[list[torch.Tensor]]:
    """Train with a written-out update ``step_fn(params, grads, state) -> new params``."""
    params, grads = _problem(problem, dtype)
    state: dict = {}

    def step() -> None:
        gs = grads()
        with torch.no_grad():
            new = step_fn([p.detach().clone() for p in params], gs, state)
            for p, n in zip(params, new):
                p.copy_(n)

    return _trajectory(params, step, steps, record_every)


def run_optax(
    tx, steps: int = 120, problem: str = "mlp", record_every: int = 10
) -> list[list[torch.Tensor]]:
    """Train in float64 with an optax transformation; gradients come from torch."""
    jax = pytest.importorskip("jax")
    pytest.importorskip("optax")
    import optax

    with jax.enable_x64(True):
        import jax.numpy as jnp

        state_holder: dict = {}

        def step_fn(ps: list[torch.Tensor], gs: list[torch.Tensor], _: dict) -> list[torch.Tensor]:
            jp = [jnp.asarray(p.numpy()) for p in ps]
            jg = [jnp.asarray(g.numpy()) for g in gs]
            if "opt" not in state_holder:
                state_holder["opt"] = tx.init(jp)
            upd, state_holder["opt"] = tx.update(jg, state_holder["opt"], jp)
            new = optax.apply_updates(jp, upd)
            return [torch.from_numpy(np.asarray(n, dtype=np.float64).copy()) for n in new]

        return run_manual(step_fn, steps, problem, torch.float64, record_every)


def assert_trajectories_close(
    got: list[list[torch.Tensor]], want: list[list[torch.Tensor]], rtol: float, atol: float
) -> None:
    assert len(got) == len(want) and got
    for k, (a, b) in enumerate(zip(got, want)):
        for i, (x, y) in enumerate(zip(a, b)):
            torch.testing.assert_close(
                x, y, rtol=rtol, atol=atol, msg=lambda m, k=k, i=i: f"snapshot {k}, param {i}: {m}"
            )


def check_matches_written_out(
    factory: Factory,
    step_fn: StepFn,
    problem: str = "mlp",
    *,
    rtol: float,
    atol: float,
) -> None:
    """The optimizer's float64 trajectory moves and matches the written-out update ``step_fn``."""
    got = run_torch(factory, problem=problem)
    want = run_manual(step_fn, problem=problem)
    assert_moves(got, problem)
    assert_trajectories_close(got, want, rtol=rtol, atol=atol)


def check_matches_reference(
    factory: Factory, reference: Factory, problem: str = "mlp", *, rtol: float, atol: float
) -> None:
    """The optimizer's float64 trajectory matches a reference torch optimizer's (a library's)."""
    got = run_torch(factory, problem=problem)
    want = run_torch(reference, problem=problem)
    assert_trajectories_close(got, want, rtol=rtol, atol=atol)


def check_float32(
    factory: Factory,
    step_fn: StepFn,
) -> None:
    """The optimizer in float32 stays within float32 tolerance of the float64 written-out update."""
    got = run_torch(factory, dtype=torch.float32)
    want = run_manual(step_fn)
    assert_trajectories_close([[x.double() for x in s] for s in got], want, rtol=1e-4, atol=1e-5)


def assert_moves(snaps: list[list[torch.Tensor]], problem: str = "mlp") -> None:
    """Guard against a vacuous comparison: the parameters must have changed."""
    if problem == "mlp":
        model, _ = mlp_problem(dtype=snaps[0][0].dtype)
        init = [p.detach() for p in model.parameters()]
    else:
        init, _ = quadratic_problem(dtype=snaps[0][0].dtype)
    moved = max(float((a - b).abs().max()) for a, b in zip(snaps[-1], init))
    assert moved > 1e-3


@single_thread()
def check_resume(factory: Factory, steps: int = 30) -> None:
    """30 steps, save, load into a fresh optimizer and model copy, 30 more: bit-identical."""
    model, loss_fn = mlp_problem(dtype=torch.float32)
    ref = copy.deepcopy(model)
    opt_ref = factory(list(ref.parameters()))
    for _ in range(2 * steps):
        opt_ref.zero_grad()
        loss_fn(ref).backward()
        opt_ref.step()
    opt = factory(list(model.parameters()))
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(model).backward()
        opt.step()
    saved_opt = copy.deepcopy(opt.state_dict())
    saved_model = copy.deepcopy(model.state_dict())
    fresh, _ = mlp_problem(seed=5, dtype=torch.float32)
    fresh.load_state_dict(saved_model)
    opt2 = factory(list(fresh.parameters()))
    opt2.load_state_dict(saved_opt)
    for _ in range(steps):
        opt2.zero_grad()
        loss_fn(fresh).backward()
        opt2.step()
    for a, b in zip(fresh.parameters(), ref.parameters()):
        assert torch.equal(a, b)
