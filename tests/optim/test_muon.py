"""Muon: trajectories against pytorch-optimizer and against the decomposed chain, the role
split, the settings declaration, state dicts (gradkit 0.1 keys too), per-instance compile caches,
float64 Newton-Schulz, complex parameters refused, bad input."""

from __future__ import annotations

import copy
import functools
import inspect
import io
import pickle

import pytest
import torch
from torch import nn

import gradkit
import gradkit.transforms.muon_update as muon_update_module
import gradkit.transforms.orthogonalize as orthogonalize_module
from gradkit.core.optimizer import ChainOptimizer
from gradkit.core.transform import chain
from gradkit.optim.muon import Muon
from gradkit.transforms.decay import DecoupledWeightDecay
from gradkit.transforms.ema_momentum import EMAMomentum
from gradkit.transforms.moments import ScaleByAdam
from gradkit.transforms.orthogonalize import CUBIC, Orthogonalize, newton_schulz
from gradkit.transforms.partition import PartitionByFlag
from gradkit.transforms.scaling import ScaleByLearningRate
from helpers import single_threaded_tests  # noqa: F401  (autouse: one intra-op thread)

SHAPES = [(16, 8), (8, 16), (16, 8), (6, 2, 3, 3), (12,), (5,)]


def _po_muon_fp32(monkeypatch):
    """pytorch-optimizer's Muon with its Newton-Schulz in float32 (it hard-codes bfloat16)."""
    po = pytest.importorskip("pytorch_optimizer")
    import pytorch_optimizer.optimizer.muon.base as base
    from pytorch_optimizer.optimizer.utils.matrix import zero_power_via_newton_schulz_5

    monkeypatch.setattr(
        base,
        "zero_power_via_newton_schulz_5",
        functools.partial(zero_power_via_newton_schulz_5, dtype=torch.float32),
    )
    return po.Muon


def _run(opt, params, steps, seed=1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params:
            # a gradient that depends on the parameters, so trajectories feed back
            p.grad = torch.randn(p.shape, generator=g) + 0.5 * p.detach()
        opt.step()


@pytest.mark.parametrize(
    "nesterov,scale,fused",
    [(True, "spectral", True), (False, "rms", True), (True, "spectral", False)],
)
def test_trajectory_matches_pytorch_optimizer(monkeypatch, nesterov, scale, fused):
    PoMuon = _po_muon_fp32(monkeypatch)
    torch.manual_seed(0)
    init = [torch.randn(s) for s in SHAPES]
    ours = [p.clone().requires_grad_() for p in init]
    ref = [p.clone().requires_grad_() for p in init]
    hp = dict(lr=0.02, momentum=0.9, nesterov=nesterov, weight_decay=0.05)
    adam = dict(adamw_lr=1e-2, adamw_betas=(0.9, 0.99), adamw_eps=1e-8, adamw_wd=0.01)
    opt = Muon(ours, scale=scale, fused=fused, **hp, **adam)
    po = PoMuon(
        [
            {"params": [p for p in ref if p.ndim >= 2], "use_muon": True},
            {"params": [p for p in ref if p.ndim < 2], "use_muon": False},
        ],
        use_adjusted_lr=scale == "rms",
        **hp,
        **adam,
    )
    _run(opt, ours, 150)
    _run(po, ref, 150)
    for a, b in zip(ours, ref):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5), (a - b).abs().max()


def decomposed_muon(params, **hp):
    """The test oracle: Muon as the chain EMAMomentum -> Orthogonalize -> decay -> lr (the form
    gradkit 0.1 ran with ``fused=False``), AdamW for the vectors."""
    adamw = {k: hp.pop(k) for k in ("adamw_lr", "adamw_betas", "adamw_eps", "adamw_wd") if k in hp}
    groups = Muon._split(params, {**Muon._default_options(), **adamw})
    matrix = chain(EMAMomentum(), Orthogonalize(), DecoupledWeightDecay(), ScaleByLearningRate())
    adam = chain(ScaleByAdam(), DecoupledWeightDecay(), ScaleByLearningRate())
    defaults = {"lr": 0.02, "momentum": 0.95, "nesterov": True, "ns_steps": 5, **hp}
    return ChainOptimizer(groups, PartitionByFlag("use_muon", matrix, adam), defaults, fused=False)


@pytest.mark.parametrize("fused", [False, True])
def test_fused_equals_chain(fused):
    torch.manual_seed(0)
    init = [torch.randn(s) for s in SHAPES]
    a = [p.clone().requires_grad_() for p in init]
    b = [p.clone().requires_grad_() for p in init]
    oa = Muon(a, fused=fused, weight_decay=0.1)
    oa._compile_backend = "aot_eager"
    ob = decomposed_muon(b, weight_decay=0.1)
    _run(oa, a, 100)
    _run(ob, b, 100)
    for x, y in zip(a, b):
        assert torch.allclose(x, y, rtol=1e-6, atol=1e-6)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.conv = nn.Conv1d(8, 8, 3, padding=1)
        self.hidden = nn.Linear(8, 16)
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 20)

    def forward(self, x):
        h = self.embed(x).transpose(1, 2)
        h = self.conv(h).transpose(1, 2)
        return self.head(self.norm(torch.tanh(self.hidden(h))))


def test_from_module_split_and_override():
    net = _Net()
    opt = gradkit.create_optimizer(net, "muon", lr=0.01, adamw_lr=1e-3)
    muon_ids = {id(p) for g in opt.param_groups if g["use_muon"] for p in g["params"]}
    assert muon_ids == {id(net.conv.weight), id(net.hidden.weight)}
    for g in opt.param_groups:
        assert g["lr"] == (0.01 if g["use_muon"] else 1e-3)
    # the user moves the head to Muon
    opt2 = Muon.from_module(net, overrides={"head.weight": "hidden_matrix"})
    muon2 = {id(p) for g in opt2.param_groups if g["use_muon"] for p in g["params"]}
    assert id(net.head.weight) in muon2
    x = torch.randint(0, 20, (4, 6))
    before = [p.detach().clone() for p in net.parameters()]
    for _ in range(3):
        opt.zero_grad()
        net(x).square().mean().backward()
        opt.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, net.parameters()))


def test_plain_params_split_by_ndim():
    ps = [torch.randn(s, requires_grad=True) for s in SHAPES]
    opt = Muon(ps)
    for g in opt.param_groups:
        assert all((p.ndim >= 2) == g["use_muon"] for p in g["params"])


def test_state_dict_round_trip():
    torch.manual_seed(0)
    init = [torch.randn(s) for s in SHAPES]
    a = [p.clone().requires_grad_() for p in init]
    opt = Muon(a)
    _run(opt, a, 5)
    saved = opt.state_dict()
    b = [p.detach().clone().requires_grad_() for p in a]
    opt_b = Muon(b)
    opt_b.load_state_dict(saved)
    _run(opt, a, 5, seed=7)
    _run(opt_b, b, 5, seed=7)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


@pytest.mark.parametrize(
    "bad",
    [
        {"lr": -1.0},
        {"momentum": 1.0},
        {"ns_steps": 0},
        {"ns_steps": 2.5},
        {"scale": "bogus"},
        {"adamw_betas": (1.0, 0.9)},
        {"adamw_lr": -3.0},
        {"ns_dtype": "bf16"},
        {"fused": "yes"},
    ],
)
def test_bad_hyperparameters(bad):
    name = next(iter(bad))
    with pytest.raises(ValueError, match=name):
        Muon([torch.randn(4, 4, requires_grad=True), torch.randn(4, requires_grad=True)], **bad)


# ---------------------------------------------------------------- settings declaration
def test_declaration_signature_and_options_out_of_groups():
    sig = inspect.signature(Muon).parameters
    for name in ("lr", "momentum", "ns_steps", "adamw_lr", "ns_dtype", "orthogonalize_on"):
        assert name in sig
    assert sig["adamw_lr"].default == 3e-4 and sig["ns_dtype"].default is None
    assert "betas" not in sig  # read by the AdamW groups only: adamw_betas sets it
    ps = [torch.randn(4, 3, requires_grad=True), torch.randn(3, requires_grad=True)]
    opt = Muon(ps, adamw_lr=1e-3, adamw_betas=(0.8, 0.9), ns_dtype=torch.float64)
    assert opt.options["ns_dtype"] == torch.float64
    for g in opt.param_groups:
        assert not {"adamw_lr", "adamw_betas", "ns_dtype", "fused", "orthogonalize_on"} & set(g)
    adam = next(g for g in opt.param_groups if not g["use_muon"])
    assert adam["lr"] == 1e-3 and adam["betas"] == (0.8, 0.9)
    with pytest.raises(ValueError, match="ns_dtype.*construction option"):
        opt.add_param_group({"params": [torch.randn(2, 2)], "use_muon": True, "ns_dtype": None})
    with pytest.raises(TypeError, match="adamw_betas"):
        Muon(ps, betas=(0.9, 0.9))


def test_group_hyperparameters_are_live():
    # a per-group momentum / ns_steps is read each step: the group with momentum 0 and one with
    # 0.9 move differently from the same gradient history
    torch.manual_seed(0)
    a, b = torch.randn(6, 4, requires_grad=True), torch.randn(6, 4)
    b = b.copy_(a.detach()).requires_grad_()
    opt = Muon(
        [{"params": [a], "use_muon": True}, {"params": [b], "use_muon": True, "momentum": 0.0}]
    )
    for _ in range(3):
        g = torch.randn(6, 4)
        a.grad, b.grad = g.clone(), g.clone()
        opt.step()
    assert not torch.allclose(a, b)
    opt.param_groups[0]["momentum"] = 0.0  # a schedule on momentum
    opt.param_groups[0]["ns_steps"] = 3
    a.grad = torch.randn(6, 4)
    opt.step()


def test_fused_flat_is_refused_and_registry_keeps_working():
    ps = [torch.randn(4, 3, requires_grad=True)]
    with pytest.raises(ValueError, match="fused"):
        Muon(ps, fused="flat")
    net = _Net()
    for name in ("muon", "adago", "noise_adaptive_muon", "drop_muon"):
        opt = gradkit.create_optimizer(net, name, adamw_lr=1e-3)
        assert {g["use_muon"] for g in opt.param_groups} == {True, False}


# ---------------------------------------------------------------- compile caches
# 12 distinct matrix buckets (wide shapes): more than torch.compile's recompile limit of 8
MANY_SHAPES = [(2, 3), (2, 4), (2, 5), (3, 4), (3, 5), (2, 6), (3, 6), (4, 5), (2, 7), (3, 7),
               (4, 6), (7, 4)]  # fmt: skip


def test_process_global_compile_cache_would_fail():
    # the bug this guards against: ONE compiled function shared by every shape fails at the 9th
    from torch._dynamo.exc import FailOnRecompileLimitHit

    fn = orthogonalize_module.CompileCache().get(
        orthogonalize_module._ns_loop, "shared", "eager", dynamic=False, fullgraph=True
    )
    with torch._dynamo.config.patch(recompile_limit=8), pytest.raises(FailOnRecompileLimitHit):
        for shape in MANY_SHAPES:
            fn(torch.randn(1, *sorted(shape)), 2, *orthogonalize_module.QUINTIC)


def test_compiled_muon_many_shapes_and_optimizers_in_one_process():
    assert not hasattr(orthogonalize_module, "_COMPILED")
    assert not hasattr(muon_update_module, "_PRE_COMPILED")
    torch._dynamo.reset()
    init = [torch.randn(s, generator=torch.Generator().manual_seed(i)) for i, s in
            enumerate(MANY_SHAPES)]  # fmt: skip
    with torch._dynamo.config.patch(recompile_limit=8):
        runs = []
        for k in range(3):  # several optimizers, same shapes, one process
            ps = [p.clone().requires_grad_() for p in init]
            opt = Muon(ps, fused=True, nesterov=k != 1)
            opt._compile_backend = "eager"
            _run(opt, ps, 3)
            runs.append(ps)
            compiled = opt.transform.transforms[0].branches["T"].transforms[1].cache
            assert len(compiled) == len(MANY_SHAPES)  # one compiled copy per bucket, its own
        adago = gradkit.optim.adago.AdaGO([p.clone().requires_grad_() for p in init], fused=True)
        adago._compile_backend = "eager"
        _run(adago, adago.param_groups[0]["params"], 2)
    # compiled and eager: the same math
    ps = [p.clone().requires_grad_() for p in init]
    _run(Muon(ps, fused=False), ps, 3)
    for x, y in zip(runs[0], ps):
        assert torch.allclose(x, y, rtol=1e-5, atol=1e-6)


def test_copies_start_with_their_own_cache_and_step_identically():
    torch.manual_seed(0)
    ps = [torch.randn(s, requires_grad=True) for s in SHAPES]
    opt = Muon(ps, fused=True)
    opt._compile_backend = "eager"
    _run(opt, ps, 2)
    for clone in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        orig = opt.transform.transforms[0].branches["T"].transforms[1]
        mine = clone.transform.transforms[0].branches["T"].transforms[1]
        assert mine.cache is not orig.cache and len(mine.cache) == 0


# ---------------------------------------------------------------- float64 Newton-Schulz
def test_ns_dtype_float64_runs_in_float64_from_the_input_on():
    torch.manual_seed(0)
    p0 = torch.randn(6, 10, dtype=torch.float64)
    g = torch.randn(6, 10, dtype=torch.float64) * 1e-3 + 1.0  # far from float32-exact
    p = p0.clone().requires_grad_()
    opt = Muon([p], ns_dtype=torch.float64, nesterov=False, momentum=0.5, fused=False)
    p.grad = g.clone()
    opt.step()
    # the rule in float64 throughout: m = 0.5 g, step = -lr * NS(m / ||m||)
    m = 0.5 * g
    x = m / torch.linalg.matrix_norm(m)
    a, b, c = orthogonalize_module.QUINTIC
    for _ in range(5):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    expected = p0 - 0.02 * x
    assert p.dtype == torch.float64
    # rounding the input to float32 first (the old behaviour) errs by ~1e-8 here
    assert (p.detach() - expected).abs().max() < 1e-13
    # and the building block: newton_schulz with float64 keeps float64 digits
    ref = newton_schulz(m, 30, CUBIC, dtype=torch.float64)
    u, _, vh = torch.linalg.svd(m, full_matrices=False)
    assert (ref - u @ vh).abs().max() < 1e-12


# ---------------------------------------------------------------- checkpoints
def _trained():
    torch.manual_seed(0)
    ps = [torch.randn(6, 4, requires_grad=True), torch.randn(4, requires_grad=True)]
    opt = Muon(ps)
    _run(opt, ps, 3)
    return ps, opt


@pytest.mark.parametrize("matrix_key", ["0.T.1.momentum_buffer", "0.T.0.momentum_buffer"])
def test_gradkit_01_checkpoint_loads(matrix_key):
    # gradkit 0.1 keyed state by chain position: "0.T.1.momentum_buffer" (fused Muon),
    # "0.T.0.momentum_buffer" (fused=False), "0.F.0.exp_avg" (the AdamW branch)
    ps, opt = _trained()
    new = opt.state_dict()
    mat, vec = new["state"][0], new["state"][1]
    old = {
        "state": {
            0: {"step": mat["step"].clone(), matrix_key: mat["momentum_buffer"].clone()},
            1: {
                "step": vec["step"].clone(),
                "0.F.0.exp_avg": vec["exp_avg"].clone(),
                "0.F.0.exp_avg_sq": vec["exp_avg_sq"].clone(),
            },
        },
        # 0.1 copied every setting into every group, construction options included
        "param_groups": [
            {**g, "fused": True, "ns_dtype": None, "adamw_lr": 3e-4, "adamw_wd": 0.0}
            for g in new["param_groups"]
        ],
    }
    qs = [p.detach().clone().requires_grad_() for p in ps]
    opt2 = Muon(qs)
    opt2.load_state_dict(old)
    _run(opt, ps, 3, seed=5)
    _run(opt2, qs, 3, seed=5)
    for p, q in zip(ps, qs):
        assert torch.equal(p, q)


def test_state_dict_saves_with_torch_save():
    ps, opt = _trained()
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    assert set(opt.state_dict()["state"][0]) >= {"step", "momentum_buffer"}


# ---------------------------------------------------------------- unusual input
@pytest.mark.parametrize(
    "name", ["muon", "adago", "noise_adaptive_muon", "drop_muon", "steepest_descent"]
)
def test_complex_parameters_are_refused(name):
    z = torch.randn(4, 3, dtype=torch.complex64, requires_grad=True)
    with pytest.raises(ValueError, match="complex"):
        gradkit.create_optimizer([z], name)


def test_zero_element_matrix_is_skipped():
    ps = [torch.randn(0, 4, requires_grad=True), torch.randn(3, 4, requires_grad=True)]
    opt = Muon(ps)
    before = ps[1].detach().clone()
    _run(opt, ps, 2)
    assert not torch.equal(before, ps[1])
