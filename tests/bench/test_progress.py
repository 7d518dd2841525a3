"""Predictable on a small machine: one thread per worker on CPU, several worker processes
when cores allow, the budget up front, an estimate of the total time after the first trial,
and plain progress lines when the output is not a terminal."""

from __future__ import annotations

import io
import re

import torch
from rich.console import Console
from tiny_compare import TINY_PLUGIN

from gradkit.bench import compare as compare_mod
from gradkit.bench.compare import CompareConfig, default_workers, load_plugin, run_compare
from gradkit.bench.progress import CompareProgress, format_duration


def test_workers_follow_the_cores(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(compare_mod, "usable_cores", lambda: 2)
    assert default_workers(cpu, 20) == 2
    assert default_workers(cpu, 1) == 1
    monkeypatch.setattr(compare_mod, "usable_cores", lambda: 1)
    assert default_workers(cpu, 20) == 1
    monkeypatch.setattr(compare_mod, "usable_cores", lambda: 64)
    assert default_workers(cpu, 20) == 4
    assert default_workers(cuda, 20) == 1


def test_plain_lines_every_interval_and_an_estimate_after_the_first_trial():
    buf = io.StringIO()
    console = Console(file=buf, width=200)  # not a terminal: plain lines
    now = [0.0]
    prog = CompareProgress(console, total_trials=4, workers=2, every=10.0, clock=lambda: now[0])
    assert prog.plain
    with prog:
        on_event, finish = prog.study("t/adamw", 2, 1, 100)
        on_event("trial_start", {"number": 0, "done": 0, "hyperparams": {"lr": 0.01}})
        for step in range(1, 101):
            now[0] += 0.5  # 50 s of training
            on_event("step", {"step": step, "seed_index": 0})
        on_event("trial_done", {"number": 0, "value": 0.9})
        finish(2)
    text = buf.getvalue()
    steps = re.findall(r"t/adamw trial 0 seed 1/1 step (\d+)/100", text)
    assert len(steps) == 5  # every 10 s of 50 s
    # 4 trials of 50 s on 2 workers: 100 s in all, 50 of them done
    assert (
        "first trial took 50 s; estimated total for 4 trial(s) with 2 worker(s): about 1 min 40 s"
        in text
    )
    assert "t/adamw trial 0 done: 0.9" in text and "t/adamw: 2/2 trials finished" in text
    assert "\x1b[" not in text  # no terminal control codes in a log file


def test_format_duration():
    assert format_duration(42) == "42 s"
    assert format_duration(220) == "3 min 40 s"
    assert format_duration(4000) == "1 h 06 min"


def test_a_run_prints_the_budget_first_and_uses_one_thread(tmp_path):
    load_plugin(TINY_PLUGIN)
    buf = io.StringIO()
    threads = torch.get_num_threads()
    try:
        config = CompareConfig(
            tasks=["tiny"],
            optimizers=["adamw"],
            trials=2,
            seeds=1,
            steps=10,
            out=str(tmp_path),
            report=False,
            workers=1,
        )
        run_compare(config, Console(file=buf, width=300))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    lines = buf.getvalue().splitlines()
    assert lines[1].startswith(
        "budget: tiny: 2 trials x 1 seeds x 10 steps per optimizer; 2 trials in all, 2 to run "
        "now; 1 worker process(es) x 1 thread(s)"
    )
    assert any("first trial took" in line for line in lines)
    assert not any("trial 0 done" in line for line in lines[:2])
