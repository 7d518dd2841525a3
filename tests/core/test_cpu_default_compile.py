"""The CPU default (``fused=None``): eager until the group's eager steps have cost what compiling
costs (``CPU_COMPILE_AFTER_ELEMENT_STEPS``), then the compiled flat step."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn

import gradkit
import gradkit.core.optimizer as core_optimizer
from gradkit.optim.adam import AdamW
from gradkit.optim.sgd import SGD


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def _numel(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _steps(model: nn.Module, opt, steps: int, seed: int = 1, sched=None) -> list[bool]:
    """Train ``steps`` steps; per step, whether the group ran on flat buffers."""
    gen = torch.Generator().manual_seed(seed)
    flat = []
    for _ in range(steps):
        x = torch.randn(16, 6, generator=gen)
        y = torch.randn(16, 3, generator=gen)
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
        if sched is not None:
            sched.step()
        flat.append(bool(opt._flat))
    return flat


class _CountingBackend:
    """A torch.compile backend that runs the traced graph as it is (bit-identical to eager)
    and counts the graphs it was given."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return gm.forward


@pytest.fixture
def switch_after_5_steps(monkeypatch):
    """Make the CPU default switch after 5 eager steps of ``_model()``'s parameters (and allow
    groups that small)."""
    monkeypatch.setattr(core_optimizer, "CPU_COMPILE_AFTER_ELEMENT_STEPS", 5 * _numel(_model()))
    monkeypatch.setattr(core_optimizer, "CPU_COMPILE_MIN_ELEMENTS", 0)


def test_below_the_threshold_the_cpu_default_is_the_eager_path(switch_after_5_steps) -> None:
    model = _model()
    ptrs = [p.data_ptr() for p in model.parameters()]
    opt = AdamW(model.parameters(), lr=1e-2)
    assert _steps(model, opt, 5) == [False] * 5
    # the parameters were never moved into flat buffers
    assert [p.data_ptr() for p in model.parameters()] == ptrs


def test_the_cpu_default_compiles_once_the_eager_steps_pay_for_it(
    switch_after_5_steps, caplog
) -> None:
    """Steps 1-5 eager; step 6 builds the flat buffers from the eager state and runs compiled at
    once (no eager first step: the state has every lazily made buffer), and says so in the log;
    one graph for the rest of a scheduled run; the trajectory is the eager path's (the counting
    backend runs the traced ops as they are, so bit for bit)."""
    caplog.set_level(logging.INFO, logger="gradkit.core.optimizer")
    model, ref = _model(), _model()
    backend = _CountingBackend()
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    opt._compile_backend = backend
    ref_opt = SGD(ref.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3, fused=False)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=20)
    ref_sched = torch.optim.lr_scheduler.CosineAnnealingLR(ref_opt, T_max=20)
    graphs_after = []
    for _ in range(20):
        _steps(model, opt, 1, seed=len(graphs_after), sched=sched)
        _steps(ref, ref_opt, 1, seed=len(graphs_after), sched=ref_sched)
        graphs_after.append(backend.graphs)
    assert graphs_after[:5] == [0] * 5, "compiled before the threshold"
    assert graphs_after[5] == 1, "step 6 did not run compiled"
    assert graphs_after[-1] == 1, "recompiled during the scheduled run"
    switches = [r.getMessage() for r in caplog.records if "eager steps" in r.getMessage()]
    assert switches == [
        "SGD: compiling the step of a group of 83 parameters after 5 eager steps "
        "(CPU default; fused=False keeps the eager path)"
    ]
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(
            opt.state[p]["momentum_buffer"], ref_opt.state[q]["momentum_buffer"], rtol=0, atol=0
        )


def test_the_switch_step_scales_with_the_group_size(monkeypatch) -> None:
    """The switch comes after ceil(threshold / elements) eager steps: a group of about twice
    the elements switches after about half the steps; parameters without a gradient (frozen)
    do not count."""
    threshold = 6 * _numel(_model())
    monkeypatch.setattr(core_optimizer, "CPU_COMPILE_AFTER_ELEMENT_STEPS", threshold)
    monkeypatch.setattr(core_optimizer, "CPU_COMPILE_MIN_ELEMENTS", 0)
    small = _model()
    big = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    frozen = nn.Linear(100, 100).requires_grad_(False)
    for model, extra in ((small, []), (big, []), (small, list(frozen.parameters()))):
        opt = AdamW(list(model.parameters()) + extra, lr=1e-2)
        opt._compile_backend = _CountingBackend()
        eager_steps = -(-threshold // _numel(model))
        assert eager_steps == (6 if model is small else 4)
        flags = _steps(model, opt, eager_steps + 2)
        assert flags == [False] * eager_steps + [True, True], (eager_steps, flags)


@pytest.mark.parametrize(("name", "hp"), [("adamp", {}), ("ranger21", {"num_iterations": 10})])
def test_the_cpu_default_does_not_compile_chains_that_reduce_per_tensor(name, hp, monkeypatch):
    """AdamP's compiled segmented form is slower than its eager per-tensor form on a CPU;
    Ranger21's chain is not compile_ok (its lr schedule branches on the step in Python)."""
    monkeypatch.setattr(core_optimizer, "CPU_COMPILE_AFTER_ELEMENT_STEPS", 0)
    monkeypatch.setattr(core_optimizer, "CPU_COMPILE_MIN_ELEMENTS", 0)
    model = _model()
    opt = gradkit.create_optimizer(model, name, lr=1e-2, **hp)
    assert _steps(model, opt, 4) == [False] * 4


def test_groups_below_the_minimum_size_never_switch(monkeypatch) -> None:
    """A group under ``CPU_COMPILE_MIN_ELEMENTS`` stays eager however long it runs (the
    compiled step's fixed host cost would eat the saving); one at the minimum switches."""
    monkeypatch.setattr(core_optimizer, "CPU_COMPILE_AFTER_ELEMENT_STEPS", 0)
    for minimum, expect in ((_numel(_model()) + 1, False), (_numel(_model()), True)):
        monkeypatch.setattr(core_optimizer, "CPU_COMPILE_MIN_ELEMENTS", minimum)
        model = _model()
        opt = AdamW(model.parameters(), lr=1e-2)
        opt._compile_backend = _CountingBackend()
        assert _steps(model, opt, 4)[1:] == [expect] * 3, minimum


def test_fused_false_never_switches(monkeypatch) -> None:
    monkeypatch.setattr(core_optimizer, "CPU_COMPILE_AFTER_ELEMENT_STEPS", 0)
    monkeypatch.setattr(core_optimizer, "CPU_COMPILE_MIN_ELEMENTS", 0)
    model = _model()
    opt = AdamW(model.parameters(), lr=1e-2, fused=False)
    assert _steps(model, opt, 4) == [False] * 4


def test_resuming_after_the_switch_is_bit_exact_with_inductor(switch_after_5_steps) -> None:
    """A run checkpointed after the switch and resumed in a new optimizer continues bit for bit
    like the uninterrupted run under the real compiler: the resumed optimizer's first step is
    compiled too (its loaded state has taken steps), not an eager step that rounds differently.
    """
    torch._dynamo.reset()
    model = _model()
    opt = AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    _steps(model, opt, 8, seed=0)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    _steps(model, opt, 6, seed=1)

    resumed = _model(seed=5)
    resumed.load_state_dict(saved_model)
    resumed_opt = AdamW(resumed.parameters(), lr=1e-2, weight_decay=0.1)
    resumed_opt.load_state_dict(saved_opt)
    assert _steps(resumed, resumed_opt, 6, seed=1) == [True] * 6
    for p, q in zip(model.parameters(), resumed.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_copies_do_not_carry_the_group_size_cache(switch_after_5_steps) -> None:
    """The cached group sizes are keyed by object identities, which a copy or an unpickled
    optimizer does not share: copies start without the cache (and switch at the same step)."""
    model = _model()
    opt = AdamW(model.parameters(), lr=1e-2)
    opt._compile_backend = _CountingBackend()
    _steps(model, opt, 3)
    assert opt._group_numel
    twin = copy.deepcopy((model, opt))
    assert twin[1]._group_numel == {}
    assert _steps(*twin, 4) == [False, False, True, True]
    assert _steps(model, opt, 4) == [False, False, True, True]


def test_an_optimizer_unpickled_without_the_caches_steps_like_the_original(monkeypatch) -> None:
    """A pickle made before the caches existed (simulated: ``__getstate__`` leaving them out)
    still steps, on the same trajectory as the original."""
    model = _model()
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    _steps(model, opt, 2)
    original_getstate = core_optimizer.ChainOptimizer.__getstate__

    def old_getstate(self):
        state = original_getstate(self)
        del state["_flat_possible"], state["_group_numel"]
        return state

    monkeypatch.setattr(core_optimizer.ChainOptimizer, "__getstate__", old_getstate)
    twin_model, twin = copy.deepcopy((model, opt))
    assert twin._group_numel == {} and twin._flat_possible is None
    _steps(model, opt, 3, seed=3)
    _steps(twin_model, twin, 3, seed=3)
    for p, q in zip(model.parameters(), twin_model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_a_user_compiled_step_still_follows_the_eager_rule(monkeypatch) -> None:
    """``torch.compile(opt.step)``, as torch.optim users compile their step, works with the
    CPU default after its switch (the flat path's bookkeeping runs between graph breaks) and
    follows the eager path's trajectory."""
    monkeypatch.setattr(core_optimizer, "CPU_COMPILE_AFTER_ELEMENT_STEPS", 0)
    monkeypatch.setattr(core_optimizer, "CPU_COMPILE_MIN_ELEMENTS", 0)
    torch._dynamo.reset()
    runs = []
    for fused in (None, False):
        model = _model()
        opt = AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, fused=fused)
        opt._compile_backend = _CountingBackend()
        step = torch.compile(opt.step, backend="aot_eager")
        gen = torch.Generator().manual_seed(7)
        for _ in range(6):
            x, y = torch.randn(16, 6, generator=gen), torch.randn(16, 3, generator=gen)
            opt.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            step()
        runs.append((model, opt))
    assert runs[0][1]._flat and not runs[1][1]._flat
    for p, q in zip(runs[0][0].parameters(), runs[1][0].parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
