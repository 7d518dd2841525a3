"""The torch.optim contract, checked for every registered optimizer.

Each optimizer's own test file checks its update rule against a reference; this file checks that
every one of them behaves like a torch.optim optimizer: bit-exact resume from a state dict, lr
schedulers, bf16 parameters, parameters without gradients, add_param_group, sparse gradients
refused, a missing closure refused, and a bad learning rate refused at construction.
"""

from __future__ import annotations

import copy
import inspect
import io
import pydoc

import pytest
import torch
from torch import nn

import gradkit
from gradkit.optim.registry import get_info

NAMES = [info.name for info in gradkit.list_optimizers()]
#: optimizers whose rule is defined over one param group (a clear error on a second one)
SINGLE_GROUP = {"sania"}
#: Ranger21's built-in warmup makes the first steps ~1e-6, below bf16's resolution at weights of
#: ~0.3 (2^-9 relative): in bf16 they round away, as they would with torch.optim. Without its
#: schedule the step is lr-sized and must show.
BF16_OVERRIDES = {"ranger21": {"disable_lr_scheduler": True}}
STEPS = 12


def _model(dtype: torch.dtype = torch.float32, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3)
    ).to(dtype)


def _batch(step: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(16, 6, generator=g).to(dtype), torch.randn(16, 3, generator=g).to(dtype)


def _step(model: nn.Module, opt: torch.optim.Optimizer, step: int, dtype=torch.float32) -> float:
    x, y = _batch(step, dtype)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x).float(), y.float())
        loss.backward()
        return loss

    if get_info(_name_of(opt)).needs_closure:
        return float(opt.step(closure).detach())
    loss = closure()
    opt.step()
    return float(loss.detach())


_CLASS_TO_NAME = {info.cls: info.name for info in gradkit.list_optimizers()}


def _name_of(opt: torch.optim.Optimizer) -> str:
    return _CLASS_TO_NAME[type(opt)]


def _make(name: str, model, **hp) -> torch.optim.Optimizer:
    if "seed" in get_info(name).defaults:  # a fixed seed, so that two runs draw the same
        hp.setdefault("seed", 0)
    return gradkit.create_optimizer(model, name, **hp)


@pytest.mark.parametrize("name", NAMES)
def test_resume_from_state_dict_is_bit_exact(name: str) -> None:
    torch.manual_seed(7)
    ref = _model()
    opt = _make(name, ref)
    for t in range(2 * STEPS):
        _step(ref, opt, t)
    torch.manual_seed(7)
    first = _model()
    opt1 = _make(name, first)
    for t in range(STEPS):
        _step(first, opt1, t)
    buf = io.BytesIO()
    rng = torch.get_rng_state()  # methods that draw noise use the global generator
    torch.save({"model": first.state_dict(), "opt": opt1.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf)
    resumed = _model(seed=123)  # a different init: everything must come from the checkpoint
    resumed.load_state_dict(ckpt["model"])
    opt2 = _make(name, resumed)
    opt2.load_state_dict(ckpt["opt"])
    torch.set_rng_state(rng)
    for t in range(STEPS, 2 * STEPS):
        _step(resumed, opt2, t)
    for p, q in zip(ref.parameters(), resumed.parameters()):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("name", NAMES)
def test_lr_scheduler_drives_the_group_lr(name: str) -> None:
    model = _model()
    opt = _make(name, model)
    base = [g["lr"] for g in opt.param_groups]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5**s)
    for t in range(3):
        _step(model, opt, t)
        sched.step()
    for g, lr0 in zip(opt.param_groups, base):
        assert g["lr"] == pytest.approx(lr0 * 0.125)
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_bf16_parameters_train_and_keep_their_dtype(name: str) -> None:
    model = _model(torch.bfloat16)
    opt = _make(name, model, **BF16_OVERRIDES.get(name, {}))
    before = copy.deepcopy(model)
    for t in range(5):
        _step(model, opt, t, torch.bfloat16)
    for p in model.parameters():
        assert p.dtype == torch.bfloat16
        assert torch.isfinite(p).all()
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before.parameters()))


@pytest.mark.parametrize("name", NAMES)
def test_parameters_without_gradients_are_left_alone(name: str) -> None:
    model = _model()
    unused = nn.Linear(4, 4)  # in the optimizer, never in the loss
    holder = nn.ModuleDict({"net": model, "unused": unused})
    opt = _make(name, holder)
    frozen = copy.deepcopy(unused)
    for t in range(3):
        _step(model, opt, t)
    for p, q in zip(unused.parameters(), frozen.parameters()):
        assert torch.equal(p, q)
        assert p.grad is None


@pytest.mark.parametrize("name", NAMES)
def test_add_param_group(name: str) -> None:
    model = _model()
    opt = _make(name, model)
    _step(model, opt, 0)
    # not constant along rows: gradient centralization (Ranger21) would zero a row-constant gradient
    extra = nn.Parameter(torch.linspace(-0.5, 0.5, 24).reshape(3, 8))
    group = {"params": [extra]}
    if any("use_muon" in g for g in opt.param_groups):
        group["use_muon"] = True
    if name in SINGLE_GROUP:
        with pytest.raises(ValueError, match="single param group"):
            opt.add_param_group(group)
        return
    opt.add_param_group(group)
    start = extra.detach().clone()
    for t in range(1, 4):
        x, y = _batch(t)

        def closure(x=x, y=y) -> torch.Tensor:
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y) + (extra - 1).pow(2).mean()
            loss.backward()
            return loss

        if get_info(name).needs_closure:
            opt.step(closure)
        else:
            closure()
            opt.step()
    assert not torch.equal(extra, start)


@pytest.mark.parametrize("name", NAMES)
def test_sparse_gradients_are_refused(name: str) -> None:
    emb = nn.Embedding(10, 4, sparse=True)
    opt = _make(name, [emb.weight])

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = emb(torch.tensor([1, 2, 3])).pow(2).sum()
        loss.backward()
        return loss

    with pytest.raises((RuntimeError, ValueError, TypeError), match="(?i)sparse"):
        if get_info(name).needs_closure:
            opt.step(closure)
        else:
            closure()
            opt.step()


@pytest.mark.parametrize("name", [n for n in NAMES if get_info(n).needs_closure])
def test_missing_closure_is_a_clear_error(name: str) -> None:
    model = _model()
    opt = _make(name, model)
    nn.functional.mse_loss(model(_batch(0)[0]), _batch(0)[1]).backward()
    with pytest.raises((RuntimeError, ValueError, TypeError), match="(?i)closure"):
        opt.step()


@pytest.mark.parametrize("name", NAMES)
def test_negative_lr_is_refused_at_construction(name: str) -> None:
    with pytest.raises(ValueError, match="lr"):
        _make(name, _model(), lr=-1.0)


def _flat_ok(name: str) -> bool:
    opt = _make(name, _model())
    return (
        bool(getattr(getattr(opt, "transform", None), "flat_ok", False))
        and not get_info(name).needs_closure
    )


@pytest.mark.parametrize("name", [n for n in NAMES if _flat_ok(n)])
def test_flat_path_resumes_bit_exactly_and_counts_steps(name: str) -> None:
    """The flat buffers (fused="flat": the fast path's layout without compiling) resume exactly
    like the eager path, and every parameter's step counter is right."""
    ref = _model()
    opt = _make(name, ref, fused="flat")
    for t in range(2 * STEPS):
        _step(ref, opt, t)
    assert all(opt.state[p]["step"].item() == 2 * STEPS for p in ref.parameters())
    first = _model()
    opt1 = _make(name, first, fused="flat")
    for t in range(STEPS):
        _step(first, opt1, t)
    buf = io.BytesIO()
    torch.save({"model": first.state_dict(), "opt": opt1.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf)
    resumed = _model(seed=123)
    resumed.load_state_dict(ckpt["model"])
    opt2 = _make(name, resumed, fused="flat")
    opt2.load_state_dict(ckpt["opt"])
    for t in range(STEPS, 2 * STEPS):
        _step(resumed, opt2, t)
    for p, q in zip(ref.parameters(), resumed.parameters()):
        assert torch.equal(p, q), name
    eager = _model()
    opt3 = _make(name, eager, fused=False)
    for t in range(2 * STEPS):
        _step(eager, opt3, t)
    for p, q in zip(ref.parameters(), eager.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------- one declaration of settings
def _declaration(name: str) -> tuple[dict, dict]:
    """(group hyperparameter specs, construction option specs) of a registered optimizer."""
    cls = get_info(name).cls
    if hasattr(cls, "group_specs"):
        return cls.group_specs(), cls.option_specs()
    return {h.name: h for h in cls.wrapper_hyperparameters}, {}


RECIPES = [n for n in NAMES if hasattr(get_info(n).cls, "group_specs")]


@pytest.mark.parametrize("name", RECIPES)
def test_signature_shows_every_argument_with_its_default(name: str) -> None:
    cls = get_info(name).cls
    groups, options = _declaration(name)
    sig = inspect.signature(cls)
    assert list(sig.parameters)[0] == "params"
    shown = {k: v.default for k, v in list(sig.parameters.items())[1:]}
    assert shown == {n: s.default for n, s in {**groups, **options}.items()}
    assert {"lr", "fused", "nonfinite", "maximize"} <= set(shown)
    assert set(cls.hyperparameters) <= set(groups)  # no declared default the chain never reads


@pytest.mark.parametrize("name", NAMES)
def test_help_shows_the_settings(name: str) -> None:
    cls = get_info(name).cls
    text = pydoc.render_doc(cls, renderer=pydoc.plaintext)
    if hasattr(cls, "group_specs"):
        assert f"{cls.__name__}(params, *, lr=" in text


def _invalid_cases() -> list[tuple[str, str, object]]:
    cases = []
    for name in NAMES:
        groups, options = _declaration(name)
        for spec in [*groups.values(), *options.values()]:
            for bad in spec.invalid_examples():
                cases.append((name, spec.name, bad))
    return cases


@pytest.mark.parametrize(("name", "setting", "bad"), _invalid_cases())
def test_invalid_values_are_refused_at_construction_naming_the_setting(name, setting, bad) -> None:
    with pytest.raises(ValueError, match=rf"Invalid {setting}: .*; {setting} must be"):
        _make(name, _model(), **{setting: bad})


@pytest.mark.parametrize("name", [n for n in RECIPES if n not in SINGLE_GROUP])
def test_invalid_group_value_is_refused_in_add_param_group(name: str) -> None:
    opt = _make(name, _model())
    group = {"params": [nn.Parameter(torch.zeros(3, 8))], "lr": "0.01"}
    if any("use_muon" in g for g in opt.param_groups):
        group["use_muon"] = True
    with pytest.raises(ValueError, match="Invalid lr: '0.01'"):
        opt.add_param_group(group)


@pytest.mark.parametrize("name", RECIPES)
def test_construction_option_in_a_param_group_is_refused(name: str) -> None:
    _, options = _declaration(name)
    model = _model()
    for option, spec in options.items():
        groups = [{"params": list(model.parameters()), option: spec.default}]
        with pytest.raises(ValueError, match=f"{option} is a construction option"):
            _make(name, groups)


def test_a_per_group_kappa_is_refused_not_ignored() -> None:
    model = _model()
    with pytest.raises(ValueError, match="kappa is a construction option"):
        gradkit.create_optimizer([{"params": model.parameters(), "kappa": "l2"}], "lion_kappa")
    with pytest.raises(ValueError, match="Invalid kappa: 'bogus'"):
        gradkit.create_optimizer(model, "lion_kappa", kappa="bogus")


def test_amsgrad_group_cannot_turn_amsgrad_off() -> None:
    model = _model()
    with pytest.raises(ValueError, match="Invalid amsgrad: False"):
        gradkit.create_optimizer([{"params": model.parameters(), "amsgrad": False}], "amsgrad")


def test_options_are_not_copied_into_groups_or_state_dict() -> None:
    opt = gradkit.create_optimizer(_model(), "lion_kappa", kappa="huber", nonfinite="skip")
    sd = opt.state_dict()
    for group in [*opt.param_groups, *sd["param_groups"]]:
        assert not {"kappa", "nonfinite", "fused"} & set(group)
    assert opt.options["kappa"] == "huber"


# ---------------------------------------------------------------------- copies
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copied_optimizer_steps_like_the_original(name: str, how: str) -> None:
    torch.manual_seed(3)
    model = _model()
    opt = _make(name, model)
    for t in range(3):
        _step(model, opt, t)
    if how == "deepcopy":
        model2, opt2 = copy.deepcopy((model, opt))
    else:
        buf = io.BytesIO()
        torch.save((model, opt), buf)
        buf.seek(0)
        model2, opt2 = torch.load(buf, weights_only=False)
    rng = torch.get_rng_state()
    for t in range(3, 6):
        _step(model, opt, t)
    torch.set_rng_state(rng)
    for t in range(3, 6):
        _step(model2, opt2, t)
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q), name


# ---------------------------------------------------------------------- unusual input
@pytest.mark.parametrize("name", NAMES)
def test_zero_element_parameter_is_skipped(name: str) -> None:
    model = _model()
    empty = nn.Parameter(torch.zeros(0, 4))
    holder = nn.ModuleDict({"net": model})
    holder.register_parameter("empty", empty)
    opt = _make(name, holder)
    before = copy.deepcopy(model)
    for t in range(2):
        x, y = _batch(t)

        def closure(x=x, y=y) -> torch.Tensor:
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y) + empty.sum()
            loss.backward()
            return loss

        if get_info(name).needs_closure:
            opt.step(closure)
        else:
            closure()
            opt.step()
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before.parameters()))
    assert all(torch.isfinite(p).all() for p in model.parameters())


def _nan_step(model: nn.Module, opt: torch.optim.Optimizer, name: str) -> None:
    x, y = _batch(99)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        for p in model.parameters():  # every parameter: methods that sample some see one too
            p.grad.view(-1)[0] = float("nan")
        return loss

    if get_info(name).needs_closure:
        opt.step(closure)
    else:
        closure()
        opt.step()


@pytest.mark.parametrize("name", NAMES)
def test_nonfinite_skip_leaves_parameters_and_state_untouched(name: str) -> None:
    model = _model()
    opt = _make(name, model, nonfinite="skip")
    for t in range(2):
        _step(model, opt, t)
    params = copy.deepcopy(list(model.parameters()))
    state = copy.deepcopy(opt.state_dict()["state"])
    _nan_step(model, opt, name)
    for p, q in zip(model.parameters(), params):
        assert torch.equal(p, q), name
    after = opt.state_dict()["state"]
    for pid, st in state.items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(after[pid][k], v), (name, k)
    _step(model, opt, 3)  # and training goes on, finite
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_nonfinite_raise_names_the_problem(name: str) -> None:
    model = _model()
    opt = _make(name, model, nonfinite="raise")
    _step(model, opt, 0)
    with pytest.raises(FloatingPointError, match="non-finite gradient"):
        _nan_step(model, opt, name)


@pytest.mark.parametrize("name", NAMES)
def test_nonfinite_ignore_is_the_default_and_lets_nan_through(name: str) -> None:
    model = _model()
    opt = _make(name, model)
    _step(model, opt, 0)
    _nan_step(model, opt, name)
    state = [v for st in opt.state_dict()["state"].values() for v in st.values()]
    tensors = [*model.parameters(), *[v for v in state if isinstance(v, torch.Tensor)]]
    assert not all(torch.isfinite(t).all() for t in tensors)  # the NaN got in somewhere


def _real_view_model(model: nn.Module) -> list[nn.Parameter]:
    return [nn.Parameter(torch.view_as_real(p.detach()).clone()) for p in model.parameters()]


@pytest.mark.parametrize("name", RECIPES)
def test_complex_parameters_step_as_their_real_view(name: str) -> None:
    """As torch.optim: a complex parameter takes the step its real view would take."""
    torch.manual_seed(0)
    z = [
        nn.Parameter(torch.randn(4, 3, dtype=torch.complex64)),
        nn.Parameter(torch.randn(3, dtype=torch.complex64)),
    ]
    r = [nn.Parameter(torch.view_as_real(p.detach()).clone()) for p in z]
    try:
        opt_z = _make(name, z)
    except ValueError as err:  # matrix methods refuse complex parameters, clearly
        assert "complex" in str(err)
        return
    opt_r = _make(name, r)
    for t in range(4):
        g = torch.Generator().manual_seed(1000 + t)
        targets = [torch.randn(p.shape, dtype=p.dtype, generator=g) for p in z]

        def loss_z(targets=targets) -> torch.Tensor:
            opt_z.zero_grad()
            loss = sum((p - q).abs().pow(2).sum() for p, q in zip(z, targets))
            loss.backward()
            return loss

        def loss_r(targets=targets) -> torch.Tensor:
            opt_r.zero_grad()
            loss = sum((p - torch.view_as_real(q)).pow(2).sum() for p, q in zip(r, targets))
            loss.backward()
            return loss

        for opt, loss in ((opt_z, loss_z), (opt_r, loss_r)):
            torch.manual_seed(100 + t)  # the same draws for methods that draw noise
            if get_info(name).needs_closure:
                opt.step(loss)
            else:
                loss()
                opt.step()
    for p, q in zip(z, r):
        torch.testing.assert_close(torch.view_as_real(p.detach()), q.detach(), rtol=1e-5, atol=1e-6)


def test_a_setting_the_chosen_options_leave_unused_is_refused() -> None:
    """MARS with ``mars_type="lion"`` has no Adam denominator: an ``eps`` would be ignored."""
    with pytest.raises(TypeError, match=r"MARS with mars_type='lion' does not use \['eps'\]"):
        gradkit.create_optimizer(_model(), "mars", mars_type="lion", eps=1e-8)
    gradkit.create_optimizer(_model(), "mars", mars_type="adamw", eps=1e-8)  # read there


def test_a_gradkit_0_1_declaration_gets_a_clear_error() -> None:
    from gradkit.optim._base import RecipeOptimizer

    with pytest.raises(TypeError, match="default_hyperparameters, which gradkit 0.2 replaced"):

        class Old(RecipeOptimizer):
            default_hyperparameters = {"lr": 1e-3}
