"""PostgreSQL: two worker processes share one study (no trial lost or done twice), and a
worker survives a server restart mid-run.

Needs a server: ``eval "$(bash .ci/postgres.sh)"`` sets GRADKIT_TEST_POSTGRES_URL.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
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


CTL = os.environ.get("GRADKIT_TEST_POSTGRES_CTL")


def _server(action: str) -> None:
    """Stop or start the test server with the command ``.ci/postgres.sh`` printed."""
    subprocess.run([*shlex.split(CTL), action], check=True, capture_output=True, timeout=120)


def _complete(name: str) -> int:
    import optuna
    from optuna.trial import TrialState

    try:
        study = optuna.load_study(study_name=name, storage=URL)
    except KeyError:
        return 0
    return len(study.get_trials(states=(TrialState.COMPLETE,)))


@pytest.mark.skipif(not CTL, reason="needs GRADKIT_TEST_POSTGRES_CTL from .ci/postgres.sh")
def test_worker_survives_a_server_restart_mid_run(tmp_path):
    """The server is stopped for 8 s while a worker trains; the worker waits, reconnects and
    finishes every trial (it used to die with PendingRollbackError)."""
    import optuna

    prefix = f"pgdown-{uuid.uuid4().hex[:10]}"
    cmd = tiny_worker_command(tmp_path, URL, trials=4, extra=["--study-prefix", prefix])
    env = dict(os.environ, GRADKIT_TINY_SLEEP="0.04")  # ~0.8 s per trial, heartbeat each 5 s
    cmd += ["--heartbeat", "0.2", "--stale-after", "60"]  # write to the database every step
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        name = None
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            names = [
                s.study_name
                for s in optuna.get_all_study_summaries(URL)
                if s.study_name.startswith(prefix)
            ]
            if names and _complete(names[0]) >= 1:
                name = names[0]
                break
            time.sleep(0.2)
        assert name is not None, proc.communicate(timeout=60)
        _server("stop")
        try:
            time.sleep(8)
            assert proc.poll() is None, "the worker died while the server was down"
        finally:
            _server("start")
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert _complete(name) == 4
    optuna.delete_study(study_name=name, storage=URL)
