"""The training loop: curves, metrics, closures, divergence, schedule, statistics."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from tiny_task import TINY

from gradkit.bench.execution.train import RunResult, lr_multiplier, train_run
from gradkit.bench.protocol.optimizers import resolve_optimizers
from gradkit.bench.protocol.stats import mean_ci

CPU = torch.device("cpu")


def _spec(name="adamw", **changes):
    spec = resolve_optimizers([name])[0][0]
    return dataclasses.replace(spec, **changes)


def test_run_records_curves_and_metrics():
    r = train_run(TINY, _spec(), {"lr": 1e-2}, 0, steps=30, device=CPU, eval_every=10)
    assert r.steps == [10, 20, 30]
    assert len(r.wall) == len(r.train_loss) == len(r.val) == 3
    assert r.wall == sorted(r.wall) and r.train_time >= r.wall[-1] > 0
    assert r.final_val == r.val[-1] and r.best_val == max(r.val)
    assert r.train_loss[-1] < r.train_loss[0]
    assert 0 < r.step_time_share < 1
    assert r.optimizer_state_bytes > 0 and r.peak_memory_bytes > 0
    if r.steps_to_target is not None:
        assert r.val[r.steps.index(r.steps_to_target)] >= TINY.target
    back = RunResult.from_dict(r.to_dict())
    assert back == r


def test_same_seed_same_run_different_seed_differs():
    a = train_run(TINY, _spec(), {"lr": 1e-2}, 3, steps=20, device=CPU)
    b = train_run(TINY, _spec(), {"lr": 1e-2}, 3, steps=20, device=CPU)
    c = train_run(TINY, _spec(), {"lr": 1e-2}, 4, steps=20, device=CPU)
    assert a.train_loss == b.train_loss and a.val == b.val
    assert a.train_loss != c.train_loss


def test_closure_is_passed_when_needed():
    spec = _spec("sgd", needs_closure=True)
    r = train_run(TINY, spec, {"lr": 0.1}, 0, steps=10, device=CPU, eval_every=5)
    assert r.steps == [5, 10] and all(math.isfinite(v) for v in r.train_loss)
    assert r.train_loss[-1] < r.train_loss[0]


def test_closure_optimizer_returning_none_is_an_error(monkeypatch):
    from gradkit.bench.execution import train as train_mod

    class NoLoss(torch.optim.SGD):
        def step(self, closure=None):
            if closure is not None:
                closure()
            return None

    monkeypatch.setattr(
        train_mod, "build_optimizer", lambda model, spec, **hp: NoLoss(model.parameters(), **hp)
    )
    with pytest.raises(RuntimeError, match="returned None"):
        train_run(TINY, _spec("sgd", needs_closure=True), {"lr": 0.1}, 0, steps=3, device=CPU)


def test_divergence_stops_and_records_worst():
    r = train_run(TINY, _spec("sgd"), {"lr": 1e6}, 0, steps=30, device=CPU, eval_every=10)
    assert r.diverged
    assert r.final_val == TINY.worst == 0.0


def test_lr_schedule():
    assert lr_multiplier(0, 100, "constant") == 1.0
    assert lr_multiplier(0, 100, "cosine") == pytest.approx(0.2)  # warmup 5 steps
    assert lr_multiplier(4, 100, "cosine") == pytest.approx(1.0)
    assert lr_multiplier(99, 100, "cosine") < 1e-3
    with pytest.raises(ValueError, match="schedule"):
        lr_multiplier(0, 10, "linear")


def test_mean_ci_matches_t_interval():
    from scipy import stats

    xs = [0.9, 0.92, 0.95, 0.91]
    mean, half = mean_ci(xs)
    lo, hi = stats.t.interval(0.95, len(xs) - 1, loc=sum(xs) / 4, scale=stats.sem(xs))
    assert mean == pytest.approx((lo + hi) / 2) and half == pytest.approx((hi - lo) / 2)
    assert math.isnan(mean_ci([1.0])[1])
    assert math.isnan(mean_ci([])[0])
