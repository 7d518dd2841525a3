"""Tuning: the lr grid sampler, fair plans, stale trials, claiming slots, storage URLs."""

from __future__ import annotations

import os
import subprocess
import sys

import optuna
import pytest
import torch
from optuna.trial import TrialState
from tiny_task import TINY

from gradkit.bench.execution import workers
from gradkit.bench.execution.storage import StorageError, check_storage, normalize_url, open_storage
from gradkit.bench.execution.study import run_study
from gradkit.bench.protocol.optimizers import resolve_optimizers
from gradkit.bench.protocol.plan import StudyPlan, study_name
from gradkit.bench.protocol.sampler import LogGridSampler, log_grid

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_log_grid():
    g = log_grid(1e-4, 1e-1, 4)
    assert g[0] == pytest.approx(1e-4) and g[-1] == pytest.approx(1e-1)
    assert g[1] / g[0] == pytest.approx(10.0)
    assert log_grid(1e-4, 1e-2, 1) == [pytest.approx(1e-3)]


def test_grid_sampler_fills_every_point_and_refills_a_failed_one():
    study = optuna.create_study(sampler=LogGridSampler(4))
    dist = optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)
    seen = []
    for i in range(3):
        t = study.ask({"lr": dist})
        seen.append(t.params["lr"])
        if i == 1:
            study.tell(t, state=TrialState.FAIL)  # a killed trial frees its point
            seen.pop()
        else:
            study.tell(t, 0.0)
    t = study.ask({"lr": dist})
    seen.append(t.params["lr"])
    study.tell(t, 0.0)
    t = study.ask({"lr": dist})
    seen.append(t.params["lr"])
    assert sorted(seen) == pytest.approx(log_grid(1e-4, 1e-1, 4))


def _plan(**kw):
    spec = resolve_optimizers(["adamw"])[0][0]
    base = dict(task=TINY, spec=spec, n_trials=3, seeds=[0], steps=10, batch_size=16, eval_every=5)
    base.update(kw)
    return StudyPlan(**base)


def test_same_interval_relative_to_each_default():
    specs, _ = resolve_optimizers(["adamw", "sgd"])
    for spec in specs:
        plan = _plan(spec=spec, lr_factors=(0.5, 20.0))
        low, high = plan.lr_range()
        assert high / low == pytest.approx(40.0)


def test_study_name_ignores_trial_count_but_not_budget():
    assert study_name(_plan(n_trials=3)) == study_name(_plan(n_trials=9))
    assert study_name(_plan(steps=10)) != study_name(_plan(steps=11))


def test_run_study_stores_runs_and_extends(tmp_path):
    storage = open_storage(str(tmp_path / "s.db"))
    plan = _plan(seeds=[0, 1])
    study = run_study(storage, plan, torch.device("cpu"))
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 3
    for t in done:
        assert {"run_seed0", "run_seed1"} <= set(t.user_attrs)
        finals = [t.user_attrs[f"run_seed{s}"]["final_val"] for s in (0, 1)]
        assert t.value == pytest.approx(sum(finals) / 2)
    assert len({t.params["lr"] for t in done}) == 3
    # rerun: nothing to do; raising the trial count extends the same study
    assert len(run_study(storage, plan, torch.device("cpu")).trials) == 3
    plan.n_trials = 5  # the grid of 5 holds that of 3: two more trials
    study = run_study(storage, plan, torch.device("cpu"))
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 5


def test_stale_trial_of_dead_process_is_reaped(tmp_path):
    storage = open_storage(str(tmp_path / "s.db"))
    study = optuna.create_study(storage=storage)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    t_dead = study.ask()
    storage.set_trial_user_attr(t_dead._trial_id, "gradkit_worker", f"{workers.HOST}:{dead}")
    storage.set_trial_user_attr(t_dead._trial_id, "gradkit_heartbeat", 1e18)
    t_mine = study.ask()
    workers.mark_owner(study, t_mine._trial_id)
    t_old = study.ask()
    storage.set_trial_user_attr(t_old._trial_id, "gradkit_worker", "elsewhere:1")
    storage.set_trial_user_attr(t_old._trial_id, "gradkit_heartbeat", 0.0)
    assert workers.reap_stale(study, stale_after=60) == 2
    states = {t.number: t.state for t in study.get_trials()}
    assert states == {0: TrialState.FAIL, 1: TrialState.RUNNING, 2: TrialState.FAIL}


def test_claim_refuses_a_slot_beyond_n_trials(tmp_path):
    study = optuna.create_study(storage=open_storage(str(tmp_path / "s.db")))
    a, b, c = study.ask(), study.ask(), study.ask()
    assert workers.claim(study, a.number, 2) and workers.claim(study, b.number, 2)
    assert not workers.claim(study, c.number, 2)
    workers.cancel(study, c._trial_id)
    assert workers.live_trials(study) == (0, 2)


def test_storage_urls(tmp_path):
    assert normalize_url("x.db").startswith("sqlite:///") and normalize_url("x.db").endswith("x.db")
    url = check_storage(str(tmp_path / "sub" / "a.db"))
    assert os.path.isdir(tmp_path / "sub") and url.startswith("sqlite:///")
    with pytest.raises(StorageError, match="cannot connect") as err:
        check_storage("postgresql+psycopg2://u:secret@127.0.0.1:1/db", timeout=2)
    assert "secret" not in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(StorageError, match="cannot parse|driver|invalid"):
        check_storage("nosuchdialect://x/y")
