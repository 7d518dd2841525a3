"""Every second-order / preconditioned optimizer runs in ``gradkit compare``'s harness.

Each one is resolved by name as ``--optimizers`` does, trained by the harness's own training
loop (``train_run``: model built by the task, optimizer built from the model by
``build_optimizer``, closure passed when needed, warmup + cosine schedule) at its search centre,
and must lower the training loss of the tiny task. The layer-hook optimizers (K-FAC, TrAct) must
also have their hooks on the model: built from bare parameters they would silently fall back to
their first-order rule, which lowers the loss too.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from tiny_compare import TINY_PLUGIN
from tiny_task import TINY

from gradkit.bench.execution import train as train_mod
from gradkit.bench.execution.train import train_run
from gradkit.bench.protocol.optimizers import (
    SEARCH_CENTRES,
    resolve_optimizers,
    scaled_hyperparams,
    search_centre,
)
from gradkit.cli import main
from gradkit.errors import canonical_name

CPU = torch.device("cpu")

SECOND_ORDER = (
    "soap",
    "shampoo",
    "psgd_kron",
    "kfac",
    "mfac",
    "tract",
    "grad_reg_newton",
    "saddle_free_newton",
)
#: optimizers whose preconditioner reads statistics from hooks on the model
LAYER_HOOKS = ("kfac", "tract")
#: the closure optimizers (curvature products by finite differences of the harness's closure)
CLOSURE = ("grad_reg_newton", "saddle_free_newton")


@pytest.fixture
def built(monkeypatch):
    """The optimizers the harness builds, in order."""
    made: list[torch.optim.Optimizer] = []
    original = train_mod.build_optimizer

    def spy(model, spec, **hp):
        opt = original(model, spec, **hp)
        made.append(opt)
        return opt

    monkeypatch.setattr(train_mod, "build_optimizer", spy)
    return made


def test_all_second_order_optimizers_are_selectable_with_a_declared_centre():
    found, missing = resolve_optimizers(list(SECOND_ORDER))
    assert missing == []
    assert [canonical_name(s.name) for s in found] == [canonical_name(n) for n in SECOND_ORDER]
    for spec in found:
        # an explicit centre, not the fallback to the optimizer's own default lr
        assert canonical_name(spec.name) in SEARCH_CENTRES, spec.name
        assert search_centre(spec) == SEARCH_CENTRES[canonical_name(spec.name)]
    needs = {canonical_name(s.name) for s in found if s.needs_closure}
    assert needs == {canonical_name(n) for n in CLOSURE}


@pytest.mark.parametrize("name", SECOND_ORDER)
def test_trains_the_tiny_task_through_the_harness(name, built):
    spec = resolve_optimizers([name])[0][0]
    # a point of the tiny task's own grid (its centre times 1 to 30); the Newton methods at the
    # centre itself (at L = 1, gradient-regularized Newton's loss jumps at 3x), for 12 steps:
    # each of their steps costs 20 or more closure calls
    steps, lr = (12, search_centre(spec)) if name in CLOSURE else (30, 3 * search_centre(spec))
    assert (
        TINY.lr_factors[0] * search_centre(spec) <= lr <= TINY.lr_factors[1] * search_centre(spec)
    )
    r = train_run(
        TINY,
        spec,
        scaled_hyperparams(spec, lr),
        0,
        steps=steps,
        device=CPU,
        eval_every=steps // 3,
    )
    assert not r.diverged
    assert all(math.isfinite(v) for v in r.train_loss)
    # the mean loss of the last third is well below that of the first (log 3 ~ 1.1 at start)
    assert r.train_loss[-1] < 0.7 * r.train_loss[0], r.train_loss
    assert r.final_val > 0.5  # three balanced classes: chance is 1/3
    assert len(built) == 1
    opt = built[0]
    assert type(opt).__name__ != "Optimizer"
    if name in LAYER_HOOKS:
        stats = opt.statistics
        assert stats is not None, f"{name} was built without its layer hooks"
    if name in CLOSURE:
        assert 0 < r.step_time_share <= 1


def test_kfac_in_the_harness_collects_factors_for_both_linear_layers(built):
    """K-FAC built by the harness registers both Linear layers of the tiny MLP and its hooks
    fill their Kronecker factors during the run (``A`` with the bias column, ``G``)."""
    spec = resolve_optimizers(["kfac"])[0][0]
    hp = scaled_hyperparams(spec, search_centre(spec))
    train_run(TINY, spec, hp, 0, steps=3, device=CPU)
    opt = built[0]
    assert [(m.in_features, m.out_features) for m in opt.statistics.layers] == [(8, 16), (16, 3)]
    for layer in opt.statistics.layers:
        state = opt.state[layer.weight]
        a, g = state["kfac_a"], state["kfac_g"]
        assert a.shape == (layer.in_features + 1,) * 2 and g.shape == (layer.out_features,) * 2
        assert float(torch.trace(a)) > 0 and float(torch.trace(g)) > 0


def test_gradkit_compare_runs_all_eight_and_reports_their_times(tmp_path):
    """The command itself: plan, trials, the interleaved step-time calibration and the report,
    for all eight on the tiny task (one lr, one seed, 6 steps)."""
    out = tmp_path / "report"
    args = ["compare", "--plugin", TINY_PLUGIN, "--task", "tiny", "-o", ",".join(SECOND_ORDER)]
    args += ["--trials", "1", "--seeds", "1", "--steps", "6", "--eval-every", "3"]
    assert main([*args, "--workers", "1", "--out", str(out), "--quiet"]) == 0
    ranking = json.loads((out / "results.json").read_text())["tasks"]["tiny"]["ranking"]
    by_name = {canonical_name(r["optimizer"]): r for r in ranking}
    assert sorted(by_name) == sorted(canonical_name(n) for n in SECOND_ORDER)
    for name, r in by_name.items():
        centre = SEARCH_CENTRES[name]
        assert r["lr_range"] == pytest.approx([centre * f for f in TINY.lr_factors]), name
        assert r["complete"] and not r["diverged"], name
        assert math.isfinite(r["final_mean"]) and r["final_mean"] > 1 / 3, name
        assert math.isfinite(r["step_time"]) and r["step_time"] > 0, name  # calibration ran
        assert 0 < r["step_time_share"] <= 1, name
        if name in CLOSURE:  # the closure's forward and backward run inside step()
            assert r["step_time_share"] > 0.95, name
