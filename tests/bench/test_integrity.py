"""Comparison integrity: a study's identity, one grid and one trial count per report, edges
of the searched range, time that does not depend on machine load, the invocation's time."""

from __future__ import annotations

import dataclasses
import math
import os
import sqlite3

import optuna
import pytest
import torch
from tiny_task import TINY
from torch import nn

from gradkit.bench import classification_task
from gradkit.bench.execution.storage import open_storage
from gradkit.bench.execution.study import run_study
from gradkit.bench.execution.timing import calibrate_step_times
from gradkit.bench.execution.train import RunResult
from gradkit.bench.protocol.grid import log_grid
from gradkit.bench.protocol.optimizers import resolve_optimizers
from gradkit.bench.protocol.plan import StudyPlan, study_name
from gradkit.bench.report.page import notes, rank, summary_table
from gradkit.bench.report.results import OptimizerResult, TrialResult, load_result

optuna.logging.set_verbosity(optuna.logging.WARNING)
CPU = torch.device("cpu")


def _spec(name: str = "adamw"):
    return resolve_optimizers([name])[0][0]


def _plan(task=TINY, **kw) -> StudyPlan:
    base = dict(
        task=task, spec=_spec(), n_trials=2, seeds=[0], steps=6, batch_size=16, eval_every=3
    )
    base.update(kw)
    return StudyPlan(**base)


def _blobs(shift: float = 0.0):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 8, generator=g) + shift
    y = torch.arange(60) % 3
    return x[:40], y[:40], x[40:], y[40:]


def _task(build=lambda: nn.Linear(8, 3), load=_blobs, **kw):
    return classification_task("my-mlp", build, load, target=0.9, steps=6, **kw)


# --- identity -------------------------------------------------------------------------------


def test_a_redefined_task_gets_its_own_study():
    same = study_name(_plan(_task())), study_name(_plan(_task()))
    assert same[0] == same[1]
    other_model = _task(lambda: nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)))
    other_data = _task(load=lambda: _blobs(shift=1.0))
    other_version = dataclasses.replace(_task(), version="2")
    other_target = dataclasses.replace(_task(), target=0.5)
    names = {study_name(_plan(t)) for t in (other_model, other_data, other_version, other_target)}
    assert len(names) == 4 and same[0] not in names


def test_gradkit_version_and_device_kind_are_part_of_the_identity():
    base = _plan(_task(), task_fingerprint="f")
    assert study_name(base) != study_name(dataclasses.replace(base, gradkit_version="9.9"))
    assert study_name(base) != study_name(dataclasses.replace(base, device_kind="cuda"))
    assert study_name(base) == study_name(dataclasses.replace(base, n_trials=7))


# --- one grid, one trial count --------------------------------------------------------------


def test_grids_nest_when_the_step_divides():
    for n, m in ((2, 3), (3, 5), (5, 9), (3, 7), (4, 7)):
        small, big = log_grid(1e-3, 1.0, n), log_grid(1e-3, 1.0, m)
        assert all(any(math.isclose(a, b, rel_tol=1e-12) for b in big) for a in small), (n, m)


def test_extended_study_searches_the_grid_of_a_fresh_one_and_fewer_trials_rank_fewer(tmp_path):
    storage = open_storage(str(tmp_path / "s.db"))
    extended = _plan(n_trials=2)
    run_study(storage, extended, CPU)
    extended.n_trials = 3
    run_study(storage, extended, CPU)
    fresh = _plan(n_trials=3, prefix="fresh")
    run_study(storage, fresh, CPU)
    lrs = lambda plan: [t.lr for t in load_result(storage, plan).trials]  # noqa: E731
    assert lrs(extended) == pytest.approx(lrs(fresh))
    assert lrs(fresh) == pytest.approx(extended.lr_grid())
    # lowering --trials: the report uses exactly the smaller grid, as a fresh 2-trial study
    lowered = _plan(n_trials=2)
    res = load_result(storage, lowered)
    assert [t.lr for t in res.trials] == pytest.approx(log_grid(*lowered.lr_range(), 2))
    assert res.complete and len(res.trials) == 2
    run_study(storage, lowered, CPU)  # runs nothing new
    assert len(optuna.load_study(study_name=study_name(lowered), storage=storage).trials) == 3
    # 3 -> 4 trials: the grid of 4 is not nested in that of 3; the report uses the 4-point
    # grid only (the old midpoint is left out), exactly as a fresh 4-trial study
    extended.n_trials = 4
    run_study(storage, extended, CPU)
    res = load_result(storage, extended)
    assert [t.lr for t in res.trials] == pytest.approx(log_grid(*extended.lr_range(), 4))
    assert res.complete
    assert len(optuna.load_study(study_name=study_name(extended), storage=storage).trials) == 5


def test_complete_trial_without_its_value_is_flagged_then_redone(tmp_path):
    db = tmp_path / "s.db"
    storage = open_storage(str(db))
    plan = _plan(n_trials=2)
    run_study(storage, plan, CPU)
    study = optuna.load_study(study_name=study_name(plan), storage=storage)
    victim = study.get_trials()[0]
    with sqlite3.connect(db) as conn:  # a damaged row: COMPLETE, value gone
        conn.execute("DELETE FROM trial_values WHERE trial_id = ?", (victim._trial_id,))
    storage = open_storage(str(db))
    res = load_result(storage, plan)
    assert not res.complete and res.missing_lrs == pytest.approx([victim.params["lr"]])
    other = dataclasses.replace(res, optimizer="lion", missing_lrs=[], trials=res.trials * 2)
    ranking = rank([res, other])
    assert [s["rank"] for s in ranking] == [1, None]  # the incomplete one is not ranked
    assert any("INCOMPLETE" in n and "1 of 2" in n for n in notes([res, other]))
    assert "INCOMPLETE" in summary_table([res, other])[2][-1]
    run_study(storage, plan, CPU)  # the rerun redoes the damaged point
    res = load_result(storage, plan)
    assert res.complete and len(res.trials) == 2


# --- edges of the searched range --------------------------------------------------------------


def _result(values: list[float], lrs: list[float]) -> OptimizerResult:
    trials = [
        TrialResult(i, lr, {"lr": lr}, v, [RunResult(seed=0, steps=[10], val=[v], final_val=v)])
        for i, (lr, v) in enumerate(zip(lrs, values))
    ]
    return OptimizerResult(
        TINY,
        "adamw",
        "s",
        trials,
        planned=len(lrs),
        lr_range=(lrs[0], lrs[-1]),
        lr_factors=(1.0, 30.0),
    )


def test_best_lr_on_the_edge_is_marked_under_tuned_with_the_range_to_search():
    lrs = log_grid(1e-3, 3e-2, 3)
    top = _result([0.5, 0.7, 0.9], lrs)
    assert top.edge() == "high"
    text = " ".join(notes([top]))
    assert "UNDER-TUNED" in text and "above" in text
    assert f"--lr-range {30 / math.sqrt(30):.3g} {30 * math.sqrt(30):.3g}" in text
    rows = summary_table([top])
    assert "UNDER-TUNED" in rows[1][rows[0].index("best lr")]
    low = _result([0.9, 0.7, 0.5], lrs)
    assert low.edge() == "low" and "below" in " ".join(notes([low]))
    inside = _result([0.5, 0.9, 0.7], lrs)
    assert inside.edge() is None and not notes([inside])


# --- time -----------------------------------------------------------------------------------


def test_time_to_target_comes_from_steps_and_an_interleaved_calibration(tmp_path, monkeypatch):
    storage = open_storage(str(tmp_path / "s.db"))
    plans = {
        name: _plan(spec=_spec(name), n_trials=1, steps=20, eval_every=5)
        for name in ("adamw", "sgd")
    }
    # adamw's trials run while "the machine is busy" (every step 20 ms slower), sgd's do not
    monkeypatch.setenv("GRADKIT_TINY_SLEEP", "0.02")
    run_study(storage, plans["adamw"], CPU)
    monkeypatch.delenv("GRADKIT_TINY_SLEEP")
    run_study(storage, plans["sgd"], CPU)
    results = {k: load_result(storage, p) for k, p in plans.items()}
    raw = {k: r.summary()["raw_train_time"] for k, r in results.items()}
    assert raw["adamw"] > 5 * raw["sgd"]  # what the old report ranked on
    cal = calibrate_step_times(
        TINY, [(k, p.spec, {"lr": 0.01}) for k, p in plans.items()], CPU, rounds=3, steps=5
    )
    assert all(0 < t < 0.01 for t in cal.step_time.values())
    assert "interleaved" in cal.describe()
    for k, r in results.items():
        r.step_time = cal.step_time[k]
        s = r.summary()
        assert s["train_time"] == pytest.approx(20 * cal.step_time[k])
        if s["reached"]:
            assert s["time_to_target"] == pytest.approx(s["steps_to_target"] * cal.step_time[k])
    calibrated = {k: r.summary()["train_time"] for k, r in results.items()}
    assert calibrated["adamw"] < 5 * calibrated["sgd"]


def test_the_invocation_time_is_the_real_elapsed_time(tmp_path):
    import time

    from gradkit.bench.compare import CompareConfig, run_compare

    out = tmp_path / "r"
    config = CompareConfig(
        tasks=["tiny"],
        optimizers=["adamw"],
        trials=1,
        seeds=1,
        steps=5,
        eval_every=5,
        out=str(out),
        quiet=True,
        started_at=time.perf_counter() - 100.0,  # the process started 100 s ago
        calibration_rounds=1,
        calibration_steps=2,
    )
    run_compare(config)
    summary = (out / "summary.md").read_text()
    line = next(x for x in summary.splitlines() if "wall time of this invocation" in x)
    assert float(line.rsplit(":", 1)[1]) >= 100.0
    assert "trials run by this invocation: 1" in summary
    assert "how time was measured" in summary and "interleaved" in summary
    config.started_at = time.perf_counter()
    run_compare(config)  # resumes: runs nothing
    assert "trials run by this invocation: 0" in (out / "summary.md").read_text()
    assert os.path.exists(out / "index.html")
