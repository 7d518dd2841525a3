"""``gradkit compare --aggregator`` on multi-task tasks: the aggregator reaches the training
step, each task's metric is recorded and reported, inapplicable combinations are refused, and
the second MNIST-1D label is the documented function of the signal."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_arms_task import TINY_MULTITASK, compare_tiny

from gradkit.bench.execution.train import train_run
from gradkit.bench.protocol.optimizers import resolve_optimizers
from gradkit.bench.protocol.plan import StudyPlan, study_name
from gradkit.bench.tasks.builtin.mnist1d import MNIST1D_MULTITASK, peak_quarter

CPU = torch.device("cpu")
ADAMW = resolve_optimizers(["adamw"])[0][0]
# plain SGD: the update scales with the gradient (AdamW would hide Mean vs Sum)
SGD = resolve_optimizers(["sgd"])[0][0]


def _run(aggregator: str | None, steps: int = 12):
    return train_run(
        TINY_MULTITASK,
        SGD,
        {"lr": 0.1},
        0,
        steps=steps,
        device=CPU,
        eval_every=6,
        aggregator=aggregator,
    )


def test_sum_aggregator_is_backprop_of_the_summed_losses_and_others_differ():
    plain = _run(None)  # loss.backward() of the sum of the task losses
    summed = _run("sum")
    # per-task gradients summed by multigrad: the same run up to float rounding
    assert summed.train_loss == pytest.approx(plain.train_loss, rel=1e-5, abs=1e-7)
    assert summed.val == plain.val
    assert summed.passes == {"forward": 12, "backward": 24, "jvp": 0, "steps": 12}
    mean = _run("mean")  # half the summed gradient on the trunk: another trajectory
    assert mean.train_loss != pytest.approx(plain.train_loss, rel=1e-5, abs=1e-7)
    upgrad = _run("upgrad")
    assert upgrad.train_loss != pytest.approx(plain.train_loss, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("aggregator", ["pcgrad", "mgda", "gradnorm"])
def test_every_aggregator_trains_and_records_each_tasks_metric(aggregator):
    r = _run(aggregator, steps=12)
    assert set(r.task_metrics) == {"blob accuracy", "sign accuracy"}
    assert r.final_val == pytest.approx(sum(r.task_metrics.values()) / 2)
    assert r.passes["backward"] == 2 * r.passes["forward"] == 24
    # it trains (the summed loss falls by a fifth in 12 steps; chance accuracies are 1/3, 1/2)
    assert r.train_loss[-1] < 0.8 * r.train_loss[0]
    assert r.task_metrics["blob accuracy"] > 0.5 and r.task_metrics["sign accuracy"] > 0.6
    # and with its own rule, not the sum's
    assert r.train_loss != _run("sum", steps=12).train_loss


def test_aggregator_is_part_of_the_study_identity():
    a = StudyPlan(TINY_MULTITASK, ADAMW, 1, [0], 20, 32, 10, aggregator="sum")
    b = StudyPlan(TINY_MULTITASK, ADAMW, 1, [0], 20, 32, 10, aggregator="pcgrad")
    assert a.arm == "adamw+sum" and b.arm == "adamw+pcgrad"
    assert study_name(a) != study_name(b) and b.signature()["aggregator"] == "pcgrad"


def test_peak_quarter_label_is_the_quarter_holding_the_maximum():
    data = MNIST1D_MULTITASK.load_data(CPU)
    x = data.x_train
    for row, label in zip(data.x_train[:200].tolist(), data.ys_train[1][:200].tolist()):
        where = max(range(40), key=lambda i: row[i])
        assert label == where // 10
    assert torch.equal(data.ys_train[1], peak_quarter(x))
    assert torch.equal(data.ys_val[1], peak_quarter(data.x_val))
    assert sorted(torch.bincount(data.ys_train[1]).tolist()) == [896, 939, 965, 1200]


def test_compare_reports_each_tasks_metric_per_aggregator(tmp_path):
    out = tmp_path / "r"
    assert compare_tiny(out, "--task", "tiny-multitask", "--aggregator", "sum,pcgrad,upgrad") == 0
    res = json.loads((out / "results.json").read_text())
    ranking = {s["optimizer"]: s for s in res["tasks"]["tiny-multitask"]["ranking"]}
    assert set(ranking) == {"adamw+sum", "adamw+pcgrad", "adamw+upgrad"}
    for s in ranking.values():
        assert set(s["task_metrics"]) == {"blob accuracy", "sign accuracy"}
        assert s["passes_per_step"] == {"forward": 1.0, "backward": 2.0, "jvp": 0.0}
    summary = (out / "summary.md").read_text()
    header = next(line for line in summary.splitlines() if line.startswith("| rank"))
    assert "final blob accuracy (mean ± 95% CI)" in header
    assert "final sign accuracy (mean ± 95% CI)" in header


def test_compare_refuses_aggregators_and_sources_where_they_do_not_apply(tmp_path, capsys):
    assert compare_tiny(tmp_path / "a", "--task", "tiny-seq", "--aggregator", "pcgrad") == 2
    err = capsys.readouterr().err
    assert "--aggregator pcgrad cannot run on task tiny-seq: it has one loss" in err
    assert compare_tiny(tmp_path / "b", "--task", "tiny-multitask", "--source", "forward") == 2
    err = capsys.readouterr().err
    assert "cannot run on task tiny-multitask" in err and "multi-task" in err
    assert compare_tiny(tmp_path / "c", "--task", "tiny-multitask", "--aggregator", "nash") == 2
    assert "unknown aggregator 'nash'" in capsys.readouterr().err
    assert not any((tmp_path / d / "studies.db").exists() for d in "abc")
