"""The flat fast path (gradkit.core.flat) against the eager multi-tensor path."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from gradkit.optim.adam import Adam, AdamW
from gradkit.optim.sgd import SGD

CONFIGS = [
    (SGD, {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3}),
    (Adam, {"lr": 1e-2, "weight_decay": 1e-3}),
    (AdamW, {"lr": 1e-2, "weight_decay": 0.1}),
    (AdamW, {"lr": 1e-2, "weight_decay": 0.1, "amsgrad": True}),
]


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3), nn.Linear(3, 2))


def _groups(model: nn.Module) -> list[dict]:
    layers = list(model)
    return [
        {"params": list(layers[0].parameters()) + list(layers[2].parameters())},
        {"params": list(layers[3].parameters()), "lr": 3e-3},
    ]


def _run(cls, hp, fused, steps: int, model=None, opt_state=None, backend=None, freeze=True):
    model = model or _model()
    if freeze:  # a param that never gets a gradient
        model[3].bias.requires_grad_(False)
    opt = cls(_groups(model), fused=fused, **hp)
    if backend is not None:
        opt._compile_backend = backend
    if opt_state is not None:
        opt.load_state_dict(opt_state)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.7)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(16, 6, generator=gen)
        y = torch.randn(16, 2, generator=gen)
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
        sched.step()
    return model, opt


def _close(a: nn.Module, b: nn.Module, rtol: float = 1e-5) -> None:
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=rtol, atol=1e-6)


@pytest.mark.parametrize(("cls", "hp"), CONFIGS)
def test_eager_flat_matches_per_tensor(cls, hp) -> None:
    ref, ref_opt = _run(cls, hp, False, 120)
    got, opt = _run(cls, hp, "flat", 120)
    _close(ref, got)
    assert opt._flat, "flat path was not used"
    # state_dict looks like the eager one: per-param tensors, same keys and shapes
    s_ref, s_got = ref_opt.state_dict(), opt.state_dict()
    assert s_ref["state"].keys() == s_got["state"].keys()
    for pid, st in s_ref["state"].items():
        assert st.keys() == s_got["state"][pid].keys()
        for k, v in st.items():
            assert v.shape == s_got["state"][pid][k].shape, k
            torch.testing.assert_close(v, s_got["state"][pid][k], rtol=1e-5, atol=1e-6)


def test_flat_params_are_views_of_one_buffer() -> None:
    _, opt = _run(AdamW, {"lr": 1e-2}, "flat", 3)
    fg = next(iter(opt._flat.values()))
    for p in fg.params:
        assert p.untyped_storage().data_ptr() == fg.param_flat.untyped_storage().data_ptr()
        assert p.grad.untyped_storage().data_ptr() == fg.grad_flat.untyped_storage().data_ptr()
        st = opt.state[p]["exp_avg"]
        assert st.untyped_storage().data_ptr() == fg.state_flat["exp_avg"].data_ptr()


@pytest.mark.parametrize(("cls", "hp"), CONFIGS[:3])
def test_state_dict_round_trip_between_paths(cls, hp) -> None:
    """Save from the flat path, resume on the eager path (and back): same as uninterrupted."""
    ref, _ = _run(cls, hp, False, 60)
    first, opt = _run(cls, hp, "flat", 30)
    saved = copy.deepcopy(opt.state_dict())
    for fused in (False, "flat"):  # resume on the eager path and on the flat path
        model = copy.deepcopy(first)
        opt2 = cls(_groups(model), fused=fused, **hp)
        opt2.load_state_dict(saved)
        for group in opt2.param_groups:
            group.setdefault("initial_lr", group["lr"])
        sched = torch.optim.lr_scheduler.StepLR(opt2, step_size=7, gamma=0.7, last_epoch=29)
        gen = torch.Generator().manual_seed(1)
        for _ in range(30):  # skip the data of the first 30 steps
            torch.randn(16, 6, generator=gen), torch.randn(16, 2, generator=gen)
        for _ in range(30):
            x = torch.randn(16, 6, generator=gen)
            y = torch.randn(16, 2, generator=gen)
            opt2.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            opt2.step()
            sched.step()
        _close(ref, model)


def test_partial_grads_fall_back_and_recover() -> None:
    """A param without a grad on some steps: those steps (and, once the per-param step counts
    differ, the later ones) run on the eager path over the same state, with the same result."""
    torch.manual_seed(0)
    a = nn.Parameter(torch.randn(5))
    b = nn.Parameter(torch.randn(3))
    a2, b2 = nn.Parameter(a.detach().clone()), nn.Parameter(b.detach().clone())
    opt = AdamW([a, b], lr=0.1, fused="flat")
    ref = AdamW([a2, b2], lr=0.1, fused=False)
    for t in range(40):
        for o, (x, y) in ((opt, (a, b)), (ref, (a2, b2))):
            o.zero_grad()
            for q in (x, y):  # flat zero_grad leaves zero grads: emulate "no grad" explicitly
                q.grad = None
            loss = (x**2).sum() + ((y**3).sum() if t % 5 else 0.0)
            loss.backward()
            o.step()
    torch.testing.assert_close(a, a2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b, b2, rtol=1e-5, atol=1e-6)


def test_fused_true_refuses_non_flat_chain() -> None:
    from gradkit.core.optimizer import ChainOptimizer
    from gradkit.core.transform import GradientTransformation, chain

    class PerTensor(GradientTransformation):
        flat_ok = False

        def update(self, updates, state, params, ctx):
            return updates

    with pytest.raises(ValueError, match="flat_ok"):
        ChainOptimizer([nn.Parameter(torch.ones(2))], chain(PerTensor()), fused=True)
    with pytest.raises(ValueError, match="fused"):
        AdamW([nn.Parameter(torch.ones(2))], fused="yes")


def test_compiled_no_recompile_per_step() -> None:
    """Scheduled lr and the step count must not be baked in: few compiles over many steps."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    ref, _ = _run(AdamW, {"lr": 1e-2, "weight_decay": 0.1}, False, 40)
    got, opt = _run(AdamW, {"lr": 1e-2, "weight_decay": 0.1}, True, 40, backend="aot_eager")
    _close(ref, got)
    graphs = counters["stats"]["unique_graphs"]
    # two groups of different sizes, the step, lr changes: one graph (dynamic from the start)
    assert graphs == 1, f"{graphs} graphs compiled for 40 steps: a hyperparameter is baked in"


def test_compiled_inductor_cpu_matches() -> None:
    """The real compiler (inductor, C++ on CPU) on a short run."""
    torch._dynamo.reset()
    ref, _ = _run(AdamW, {"lr": 1e-2, "weight_decay": 0.1}, False, 4, freeze=False)
    got, _ = _run(AdamW, {"lr": 1e-2, "weight_decay": 0.1}, True, 4, freeze=False)
    _close(ref, got)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("cls", "hp"), CONFIGS[:3])
def test_cuda_auto_fast_path_matches(cls, hp) -> None:
    def run(fused):
        model = _model().cuda()
        opt = cls(model.parameters(), fused=fused, **hp)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.7)
        gen = torch.Generator().manual_seed(1)
        for _ in range(100):
            x = torch.randn(16, 6, generator=gen).cuda()
            y = torch.randn(16, 2, generator=gen).cuda()
            opt.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            opt.step()
            sched.step()
        return model, opt

    ref, _ = run(False)
    got, opt = run(None)
    assert opt._flat
    _close(ref, got, rtol=1e-4)


# ---------------------------------------------------------------------------- compile once
def _flat_params(n: int, seed: int, dtype=torch.float32) -> list[nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    shapes = [(n, 3), (n + 1,), (2, n)]
    return [nn.Parameter(torch.randn(s, generator=gen, dtype=dtype)) for s in shapes]


def _scheduled_run(opt, params, steps: int, seed: int, t_max: int) -> None:
    """``steps`` steps on fresh random gradients under a cosine schedule of period ``t_max``
    (past ``t_max`` the lr is exactly 0.0 once and climbs again)."""
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t_max)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
        opt.step()
        sched.step()


SHARED = [
    ("adamw", {"weight_decay": 0.1}),
    ("sgd", {"momentum": 0.9, "weight_decay": 1e-3}),
    ("lion", {"weight_decay": 0.1}),
    ("madgrad", {}),
]


@pytest.mark.parametrize(("name", "hp"), SHARED)
def test_one_graph_for_many_instances_sizes_and_lrs(name: str, hp: dict) -> None:
    """Ten optimizers of one chain structure, each on a group of another size, with its own lr,
    under a cosine schedule that reaches lr = 0.0: all share one compiled graph (without
    sharing, or with a size, the step, an lr or a zero lr baked in, there would be one graph
    per instance or more, and the recompile limit of 8 would be hit), and every instance
    matches its eager twin."""
    from torch._dynamo.utils import counters

    import gradkit

    torch._dynamo.reset()
    counters.clear()
    for i, n in enumerate([5, 7, 9, 11, 13, 40, 41, 100, 3, 6]):
        lr = 1e-3 * (i + 1)
        got, ref = _flat_params(n, i), _flat_params(n, i)
        opt = gradkit.create_optimizer(got, name, fused=True, lr=lr, **hp)
        opt._compile_backend = "aot_eager"
        ref_opt = gradkit.create_optimizer(ref, name, fused=False, lr=lr, **hp)
        _scheduled_run(opt, got, 14, seed=i, t_max=10)
        _scheduled_run(ref_opt, ref, 14, seed=i, t_max=10)
        assert opt._flat, "flat path was not used"
        for p, q in zip(got, ref):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])


def test_first_step_allocates_state_then_one_graph() -> None:
    """SGD's momentum buffer is allocated on the first step (which runs eagerly on the flat
    buffers); the compiled graph, made at step 2, is the only one of a 40-step scheduled run."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    params = _flat_params(8, 0)
    opt = SGD(params, lr=0.1, momentum=0.9, fused=True)
    opt._compile_backend = "aot_eager"
    _scheduled_run(opt, params, 1, seed=0, t_max=40)
    assert counters["stats"]["unique_graphs"] == 0
    for p in params:
        assert opt.state[p]["momentum_buffer"].shape == p.shape
    _scheduled_run(opt, params, 40, seed=1, t_max=25)
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])


def test_float_encoding_round_trips_exactly() -> None:
    from gradkit.core.compiled import _decode, _encode

    for x in (0.0, 1.0, -1.0, 1e-3, 0.999, 1e-8, 1 - 2**-53, 3e-21, -2.5e14, 1 / 3):
        enc = _encode(x)
        assert isinstance(enc, tuple), x
        assert all(isinstance(i, int) and i not in (0, 1) for i in enc[1:]), x  # not specialized
        assert all(abs(i) < 2**63 for i in enc[1:]), x  # int64
        assert _decode(enc) == x and str(_decode(enc)) == str(x), x
    # out of range or signed zero: plain (the denormal 5e-324 reads as 0.0 if a test before this
    # one left torch flushing denormals: tests/conftest.py fails such a test)
    for x in (5e-324, 1e-30, 3e300, -0.0, float("inf")):
        assert isinstance(_encode(x), float) and str(_encode(x)) == str(x), x
    assert math.copysign(1.0, _encode(-0.0)) == -1.0


def _fused_kernels(code: str) -> list[str]:
    """The C++ kernels of inductor's CPU output that loop over elements."""
    return [k for k in code.split('extern "C"')[1:] if "for(int64_t x0" in k]


def test_step_scalars_are_outside_the_per_element_loop() -> None:
    """Inductor (C++ on CPU): Adam's bias corrections ``1 - beta**t`` are computed once per
    step (a one-element kernel, then a kernel argument), not as ``pow(beta, t)`` per element,
    and so are the scalars made from the learning rate (its decoding divides by symbolic
    powers of two): no ``pow`` and no division by a kernel argument in the per-element loop.
    In float64 the bias corrections stay inline (inductor passes such kernel arguments as
    32-bit floats)."""
    import re

    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    for dtype, inline in ((torch.float32, False), (torch.float64, True)):
        params = _flat_params(8, 0, dtype)
        opt = AdamW(params, lr=1e-2, fused=True)
        _scheduled_run(opt, params, 1, seed=0, t_max=10)  # eager first step

        def step(opt=opt, params=params) -> None:
            _scheduled_run(opt, params, 1, seed=1, t_max=10)

        _, codes = run_and_get_code(step)
        loops = [k for c in codes for k in _fused_kernels(c)]
        assert loops, "no per-element kernel found"
        assert any("pow(" in k for k in loops) == inline, dtype
        divides_by_argument = [re.search(r"/ \(?static_cast<double>\(ks\d+\)", k) for k in loops]
        assert any(divides_by_argument) == inline, dtype


@pytest.mark.parametrize(
    ("name", "fused"), [("adamw", True), ("adamp", True), ("gravity", "compile")]
)
def test_a_failing_compiler_falls_back_to_the_eager_rule(name, fused, monkeypatch) -> None:
    """When compiling the step fails (no C++ compiler, no Triton, an unsupported op), the
    optimizer warns once and steps on the eager path, with the same trajectory as an optimizer
    that never compiled."""
    import warnings

    import gradkit
    from gradkit.core import optimizer as optimizer_module

    def failing_compiler(*args, **kwargs):
        def step(*a, **k):
            raise torch._dynamo.exc.BackendCompilerFailed(
                "inductor", RuntimeError("no working C++ compiler"), None
            )

        return step

    monkeypatch.setattr(optimizer_module, "shared_group_update", failing_compiler)
    ref_model, model = _model(), _model()
    ref = gradkit.create_optimizer(ref_model, name, fused=False, lr=1e-2)
    opt = gradkit.create_optimizer(model, name, fused=fused, lr=1e-2)
    gen = torch.Generator().manual_seed(3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(6):
            x, y = torch.randn(16, 6, generator=gen), torch.randn(16, 2, generator=gen)
            for m, o in ((ref_model, ref), (model, opt)):
                torch.manual_seed(0)  # Gravity draws its initial velocity
                o.zero_grad()
                ((m(x) - y) ** 2).mean().backward()
                o.step()
    failures = [w for w in caught if "compiling the optimizer step failed" in str(w.message)]
    assert len(failures) == 1 and failures[0].category is RuntimeWarning
    assert "no working C++ compiler" in str(failures[0].message)
    _close(ref_model, model)


@pytest.mark.parametrize("closure_patchers", [True, False])
def test_compile_settings_apply_inside_and_are_restored_after(closure_patchers, monkeypatch):
    """The dynamo settings of a compiled step hold inside ``compile_settings`` and are restored
    on exit, also when the step raises; with torch's low-overhead patchers and with the public
    ``config.patch`` fallback."""
    from gradkit.core import compiled

    if not closure_patchers:
        monkeypatch.setattr(compiled, "_PATCHERS", {True: None, False: None})
    elif compiled._PATCHERS[True] is None:
        pytest.skip("this torch has no _make_closure_patcher")

    def current():
        sources = getattr(torch.compiler.config, "dynamic_sources", None)
        return torch._dynamo.config.capture_scalar_outputs, sources

    before = current()
    for flat in (True, False):
        with compiled.compile_settings(flat=flat):
            capture, sources = current()
            assert capture is True
            if compiled._HAVE_DYNAMIC_SOURCES:
                assert "L\\['step'\\]" in sources
                assert ("L\\['grads'\\]" in sources) == flat
        assert current() == before
    with pytest.raises(RuntimeError, match="step failed"):
        with compiled.compile_settings(flat=True):
            raise RuntimeError("step failed")
    assert current() == before
