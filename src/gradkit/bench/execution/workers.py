"""Several workers, one study: who owns a trial, heartbeats, stale trials, claiming a slot.

A worker is ``host:pid``. Each running trial records its worker and a heartbeat time (user
attributes). A running trial is stale when its worker is a dead process on this host, or its
heartbeat is older than ``stale_after`` seconds (other hosts, or a hung process); stale trials are
marked FAIL so that their work is redone, and finished trials are never touched. A worker that
starts a trial checks that fewer than ``n_trials`` live or finished trials precede it (by trial
number); if not, another worker got the last slot first, and it cancels its own trial. So two
workers never run more than ``n_trials`` trials in total, and none twice.
"""

from __future__ import annotations

import datetime
import os
import socket
import time
from collections.abc import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

__all__ = [
    "Heartbeat",
    "cancel",
    "claim",
    "is_stale",
    "live_trials",
    "mark_owner",
    "reap_stale",
    "worker_id",
]

HOST = socket.gethostname()


def worker_id() -> str:
    """This process as ``host:pid``."""
    return f"{HOST}:{os.getpid()}"


def mark_owner(study: optuna.Study, trial_id: int) -> None:
    """Record this process as the owner of a running trial, with a first heartbeat."""
    storage = study._storage
    storage.set_trial_user_attr(trial_id, "gradkit_worker", worker_id())
    storage.set_trial_user_attr(trial_id, "gradkit_heartbeat", time.time())


class Heartbeat:
    """Call it often (every step); it writes a heartbeat at most every ``interval`` seconds."""

    def __init__(self, study: optuna.Study, trial_id: int, interval: float) -> None:
        self.storage = study._storage
        self.trial_id = trial_id
        self.interval = interval
        self.last = time.time()

    def __call__(self, *_: object) -> None:
        now = time.time()
        if now - self.last >= self.interval:
            self.storage.set_trial_user_attr(self.trial_id, "gradkit_heartbeat", now)
            self.last = now


def _pid_dead(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


def is_stale(trial: FrozenTrial, stale_after: float) -> bool:
    """True if a RUNNING trial's worker is gone (see the module docstring)."""
    if trial.state != TrialState.RUNNING:
        return False
    worker = trial.user_attrs.get("gradkit_worker")
    if isinstance(worker, str) and ":" in worker:
        host, _, pid = worker.rpartition(":")
        if worker == worker_id():
            return False
        if host == HOST and pid.isdigit() and _pid_dead(int(pid)):
            return True
    beat = trial.user_attrs.get("gradkit_heartbeat")
    if isinstance(beat, (int, float)):
        return time.time() - beat > stale_after
    if trial.datetime_start is None:
        return False
    age = datetime.datetime.now() - trial.datetime_start
    return age.total_seconds() > stale_after


def reap_stale(study: optuna.Study, stale_after: float) -> int:
    """Mark stale RUNNING trials FAIL; return how many."""
    storage = study._storage
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not is_stale(t, stale_after):
            continue
        try:
            storage.set_trial_user_attr(t._trial_id, "gradkit_stale_reaped_by", worker_id())
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            n += 1
        except Exception:  # noqa: BLE001 - another worker finished or reaped it first
            continue
    return n


#: Whether a trial counts towards the budget (see ``StudyPlan.counts``).
Usable = Callable[[FrozenTrial], bool]


def _counts(t: FrozenTrial, usable: Usable | None) -> bool:
    if t.user_attrs.get("gradkit_cancelled"):
        return False
    if t.state not in (TrialState.COMPLETE, TrialState.RUNNING):
        return False
    return usable is None or usable(t)


def live_trials(study: optuna.Study, usable: Usable | None = None) -> tuple[int, int]:
    """``(finished, running)`` counts; cancelled trials, and trials that ``usable`` rejects
    (e.g. a finished one with a value or a seed's run missing), are left out."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
    done = sum(1 for t in trials if t.state == TrialState.COMPLETE and _counts(t, usable))
    running = sum(1 for t in trials if t.state == TrialState.RUNNING and _counts(t, usable))
    return done, running


def claim(
    study: optuna.Study, trial_number: int, n_trials: int, usable: Usable | None = None
) -> bool:
    """True if fewer than ``n_trials`` counted trials precede ``trial_number``."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
    ahead = sum(1 for t in trials if t.number < trial_number and _counts(t, usable))
    return ahead < n_trials


def cancel(study: optuna.Study, trial_id: int) -> None:
    """Give a trial back unrun (FAIL, flagged ``gradkit_cancelled``)."""
    study._storage.set_trial_user_attr(trial_id, "gradkit_cancelled", True)
    study._storage.set_trial_state_values(trial_id, TrialState.FAIL)
