"""The flat fast path (gradkit.core.flat) against the eager multi-tensor path."""

from __future__ import annotations

import copy

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
    # two groups of different sizes, static then dynamic ints, an lr exponent change: a handful
    assert graphs <= 8, f"{graphs} graphs compiled for 40 steps: a hyperparameter is baked in"


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
