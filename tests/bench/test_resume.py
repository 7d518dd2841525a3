"""Resume after SIGKILL: kill ``gradkit compare`` midway, rerun it, lose no finished trial."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState
from tiny_compare import tiny_worker_command


def _cmd(out: Path, db: Path) -> list[str]:
    return tiny_worker_command(out, f"sqlite:///{db}", trials=6)


def _trials(db: Path) -> list[optuna.trial.FrozenTrial]:
    summaries = optuna.get_all_study_summaries(f"sqlite:///{db}")
    if not summaries:
        return []
    study = optuna.load_study(study_name=summaries[0].study_name, storage=f"sqlite:///{db}")
    return study.get_trials()


def test_sigkill_midway_then_rerun_loses_nothing(tmp_path):
    db, out = tmp_path / "studies.db", tmp_path / "report"
    env = dict(os.environ, GRADKIT_TINY_SLEEP="0.03")  # ~0.6 s of training per trial
    proc = subprocess.Popen(_cmd(out, db), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    done_before: dict[int, float] = {}
    try:
        while time.time() < deadline:
            time.sleep(0.3)
            if db.exists():
                try:
                    trials = _trials(db)
                except Exception:  # noqa: BLE001 - the database is still being created
                    continue
                done = [t for t in trials if t.state == TrialState.COMPLETE]
                running = [t for t in trials if t.state == TrialState.RUNNING]
                if len(done) >= 2 and running:
                    break
            assert proc.poll() is None, proc.communicate()
        else:
            raise AssertionError("the comparison did not get midway in time")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    trials = _trials(db)
    done_before = {t.number: t.value for t in trials if t.state == TrialState.COMPLETE}
    assert 2 <= len(done_before) < 6
    assert any(t.state == TrialState.RUNNING for t in trials)  # the one that was killed

    rerun = subprocess.run(_cmd(out, db), env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    trials = _trials(db)
    done = {t.number: t for t in trials if t.state == TrialState.COMPLETE}
    assert len(done) == 6
    for number, value in done_before.items():  # finished trials kept, untouched
        assert done[number].value == value
    lrs = [t.params["lr"] for t in done.values()]
    assert len(set(lrs)) == 6  # every grid point exactly once: nothing done twice
    assert not any(t.state == TrialState.RUNNING for t in trials)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert all("gradkit_stale_reaped_by" in t.user_attrs for t in failed)
