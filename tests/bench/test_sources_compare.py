"""``gradkit compare --source``: gradient sources as a comparison dimension.

The source reaches the training step (its recorded passes are the source's own cost, e.g.
directions x steps JVPs for the forward gradient, none for backprop), sources that cannot run
on a task are refused before any training with the task and the reason, the report shows the
passes per step, and a backprop arm keeps the study of a run made without ``--source``.
"""

from __future__ import annotations

import json

import pytest
import torch
from tiny_arms_task import PLUGIN, TINY_SEQ, compare_tiny
from tiny_task import TINY

from gradkit.bench.execution.arms import ArmError, check_arm
from gradkit.bench.execution.train import train_run
from gradkit.bench.protocol.optimizers import resolve_optimizers
from gradkit.bench.protocol.plan import StudyPlan, study_name
from gradkit.bench.protocol.sources import SourceChoice, parse_sources
from gradkit.cli import main

CPU = torch.device("cpu")
ADAMW = resolve_optimizers(["adamw"])[0][0]


def _run(source: str, steps: int = 12, seed: int = 0):
    return train_run(
        TINY_SEQ,
        ADAMW,
        {"lr": 1e-2},
        seed,
        steps=steps,
        device=CPU,
        eval_every=6,
        source=parse_sources([source])[0],
    )


def test_forward_gradient_arm_costs_directions_times_steps_jvps():
    r = _run("forward:3", steps=12)
    assert r.passes == {"forward": 36, "backward": 0, "jvp": 36, "steps": 12}
    z = _run("zeroth_order:2", steps=12)
    assert z.passes == {"forward": 48, "backward": 0, "jvp": 0, "steps": 12}
    b = _run("backprop", steps=12)
    assert b.passes == {"forward": 12, "backward": 12, "steps": 12}


def test_source_changes_the_training_and_is_a_function_of_the_seed():
    """The arm trains with the source's estimate (not backprop's gradient), and its random draws
    come from the seed: same seed, same run; backprop's run differs."""
    a, b = _run("forward:2", seed=1), _run("forward:2", seed=1)
    assert a.train_loss == b.train_loss and a.val == b.val
    bp = _run("backprop", seed=1)
    assert a.train_loss != bp.train_loss
    # DFA gives the output layer backprop's gradient but not the hidden ones: a different run
    dfa = _run("dfa", seed=1)
    assert dfa.passes == {"forward": 12, "backward": 12, "jvp": 0, "steps": 12}
    assert dfa.train_loss != bp.train_loss


@pytest.mark.parametrize(
    ("source", "passes"),
    [
        ("forward_local", {"forward": 12, "backward": 4, "jvp": 8}),  # 3 blocks: 2 JVPs
        ("forward_forward", {"forward": 8, "backward": 4, "jvp": 0}),
        ("noprop", {"forward": 4, "backward": 4, "jvp": 0}),
        # 3 linear blocks x 2 directions: 6 JVPs per step, plus the forward at the parameters
        ("forward_activity:2", {"forward": 28, "backward": 0, "jvp": 24}),
        ("counter_current", {"forward": 8, "backward": 4, "jvp": 0}),  # forward + feedback net
    ],
)
def test_model_specific_sources_run_with_their_own_cost(source, passes):
    r = _run(source, steps=4)
    assert r.passes == {**passes, "steps": 4}
    assert 0.0 <= r.final_val <= 1.0


def test_counter_current_arm_trains_the_feedback_network_too():
    """The optimizer gets the feedback network's parameters (they have gradients and move),
    and the task scores the forward network alone."""
    from gradkit.bench.execution.arms import build_arm

    data = TINY_SEQ.load_data(CPU)
    model = TINY_SEQ.build_model()
    arm = build_arm(TINY_SEQ, data, model, source=parse_sources(["ccl"])[0])
    feedback = [p for p in arm.trained.parameters() if all(p is not q for q in model.parameters())]
    assert feedback and arm.scored is model
    before = [p.detach().clone() for p in feedback]
    opt = torch.optim.SGD(arm.trained.parameters(), lr=0.1)
    opt.zero_grad()
    arm.compute(data.sample_batch(torch.Generator().manual_seed(0), 32))
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in feedback)
    opt.step()
    assert all(not torch.equal(p, b) for p, b in zip(feedback, before))


def test_sources_needing_a_sequential_model_are_refused_naming_the_task_and_reason():
    # the tiny task's model is a custom module wrapping its MLP, not an nn.Sequential
    for name in (
        "dfa",
        "forward_local",
        "forward_forward",
        "noprop",
        "forward_activity",
        "counter_current",
    ):
        with pytest.raises(ArmError, match="tiny") as err:
            check_arm(TINY, source=parse_sources([name])[0])
        assert "Sequential" in str(err.value)
    check_arm(TINY, source=parse_sources(["forward"])[0])  # any model


def test_parse_sources_names_and_directions():
    assert parse_sources(["backprop", "FG:4", "zo", "DFA", "ff", "NoProp"]) == [
        SourceChoice("backprop"),
        SourceChoice("forward", 4),
        SourceChoice("zeroth_order", 1),
        SourceChoice("dfa"),
        SourceChoice("forward_forward"),
        SourceChoice("noprop"),
    ]
    with pytest.raises(ValueError, match="unknown gradient source 'sgd'"):
        parse_sources(["sgd"])
    with pytest.raises(ValueError, match="only forward, forward_activity, zeroth_order take"):
        parse_sources(["dfa:3"])
    with pytest.raises(ValueError, match="integer >= 1"):
        parse_sources(["forward:0"])


def test_backprop_arm_keeps_the_study_of_a_run_without_sources():
    plain = StudyPlan(TINY_SEQ, ADAMW, 1, [0], 20, 32, 10)
    bp = StudyPlan(TINY_SEQ, ADAMW, 1, [0], 20, 32, 10, source=SourceChoice("backprop"))
    fg = StudyPlan(TINY_SEQ, ADAMW, 1, [0], 20, 32, 10, source=SourceChoice("forward", 2))
    assert study_name(bp) == study_name(plain) and bp.signature() == plain.signature()
    assert bp.arm == "adamw+backprop" and plain.arm == "adamw"
    assert study_name(fg) != study_name(plain) and ":adamw+forward:2:" in study_name(fg)
    assert fg.signature()["source"] == "forward:2"


def _compare(out, *extra):
    return compare_tiny(out, "--task", "tiny-seq", *extra)


def test_compare_with_sources_reports_passes_and_resumes(tmp_path, capsys):
    out = tmp_path / "r"
    assert _compare(out) == 0  # an old study, run before sources were named
    plain = (out / "summary.md").read_text()
    assert "passes per step" not in plain and "| adamw |" in plain  # the default report as before
    assert _compare(out, "--source", "backprop,forward:2") == 0
    res = json.loads((out / "results.json").read_text())
    # the backprop arm was kept from the first run; only the forward arm was trained
    assert res["meta"]["trials kept from the storage"] == 1
    ranking = {s["optimizer"]: s for s in res["tasks"]["tiny-seq"]["ranking"]}
    assert set(ranking) == {"adamw+backprop", "adamw+forward:2"}
    assert ranking["adamw+forward:2"]["passes_per_step"] == {
        "forward": 2.0,
        "backward": 0.0,
        "jvp": 2.0,
    }
    assert ranking["adamw+backprop"]["passes_per_step"] == {
        "forward": 1.0,
        "backward": 1.0,
        "jvp": 0.0,
    }
    summary = (out / "summary.md").read_text()
    header = next(line for line in summary.splitlines() if line.startswith("| rank"))
    assert "passes per step (fwd / bwd / jvp)" in header
    row = next(
        line
        for line in summary.splitlines()
        if line.startswith("| ") and "adamw+forward:2 |" in line
    )
    assert "| 2 / 0 / 2 |" in row
    # a third run of the same command trains nothing
    assert _compare(out, "--source", "backprop,forward:2") == 0
    res = json.loads((out / "results.json").read_text())
    assert res["meta"]["trials kept from the storage"] == 2


def test_compare_refuses_an_inapplicable_source_before_training(tmp_path, capsys):
    out = tmp_path / "r"
    code = main(
        [
            "compare",
            "--plugin",
            PLUGIN,
            "--task",
            "tiny-seq,mnist1d-cnn",
            "-o",
            "adamw",
            "--source",
            "backprop,dfa",
            "--quiet",
            "--out",
            str(out),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "--source dfa cannot run on task mnist1d-cnn" in err
    assert "nn.Sequential" in err and "Mnist1dCNN" in err
    assert not (out / "studies.db").exists()  # nothing was trained or stored
    assert _compare(tmp_path / "x", "--source", "sgd") == 2
    assert "unknown gradient source 'sgd'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("optimizer", "source", "reason"),
    [
        ("kfac", "forward:2", "runs no backward pass"),
        ("tract", "zeroth_order:1", "runs no backward pass"),
        ("saddle_free_newton", "dfa", "true gradient"),
        ("grad_reg_newton", "forward_activity:1", "true gradient"),
    ],
)
def test_compare_refuses_an_optimizer_that_cannot_take_the_source(
    tmp_path, capsys, optimizer, source, reason
):
    """K-FAC/TrAct read layer hooks that a source without a backward pass never fires; the
    Newton methods take curvature from the closure's gradients (without the refusal each of
    these stopped the whole run with an internal error at its first step)."""
    out = tmp_path / "r"
    code = main(
        ["compare", "--plugin", PLUGIN, "--task", "tiny-seq", "-o", f"adamw,{optimizer}"]
        + ["--source", f"backprop,{source}", "--quiet", "--out", str(out)]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert f"--source {source} cannot train with optimizer {optimizer}" in err
    assert reason in err
    assert not (out / "studies.db").exists()


def test_closure_optimizers_recompute_the_source_at_every_call():
    """SAM calls its closure twice per step; each call recomputes the source's estimate, and the
    cost counts both (backprop's too: one forward and one backward per loss evaluation)."""
    sam = resolve_optimizers(["sam"])[0][0]
    assert sam.needs_closure
    for source, passes in [
        ("backprop", {"forward": 10, "backward": 10}),
        ("forward:2", {"forward": 20, "backward": 0, "jvp": 20}),
    ]:
        r = train_run(
            TINY_SEQ,
            sam,
            {"lr": 0.05},
            0,
            steps=5,
            device=CPU,
            eval_every=5,
            source=parse_sources([source])[0],
        )
        assert r.passes == {**passes, "steps": 5}
