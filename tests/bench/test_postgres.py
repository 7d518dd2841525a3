"""Two worker processes share one study through PostgreSQL: no trial lost or done twice.

Needs a server: ``eval "$(bash .ci/postgres.sh)"`` sets GRADKIT_TEST_POSTGRES_URL.
"""

from __future__ import annotations

import os
import subprocess
import uuid

import pytest
from tiny_compare import tiny_worker_command

URL = os.environ.get("GRADKIT_TEST_POSTGRES_URL")
pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(not URL, reason="set GRADKIT_TEST_POSTGRES_URL (bash .ci/postgres.sh)"),
]
N_TRIALS = 6


def test_two_workers_share_one_study(tmp_path):
    import optuna
    from optuna.trial import TrialState

    prefix = f"pgtest-{uuid.uuid4().hex[:10]}"
    cmd = tiny_worker_command(tmp_path, URL, trials=N_TRIALS, extra=["--study-prefix", prefix])
    env = dict(os.environ, GRADKIT_TINY_SLEEP="0.03")
    procs = [subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err

    names = [
        s.study_name for s in optuna.get_all_study_summaries(URL) if s.study_name.startswith(prefix)
    ]
    assert len(names) == 1
    study = optuna.load_study(study_name=names[0], storage=URL)
    trials = study.get_trials()
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == N_TRIALS  # none lost, none extra
    assert len({t.params["lr"] for t in done}) == N_TRIALS  # every grid point once
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    # every trial that was not cancelled before starting finished: nothing was run twice
    started = [t for t in trials if not t.user_attrs.get("gradkit_cancelled")]
    assert len(started) == N_TRIALS
    assert all("run_seed0" in t.user_attrs for t in done)
    workers = {t.user_attrs["gradkit_worker"] for t in done}
    assert 1 <= len(workers) <= 2
    optuna.delete_study(study_name=names[0], storage=URL)
