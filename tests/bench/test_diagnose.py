"""Diagnostics as callbacks of ``gradkit compare``: the training-loop protocol, the
``--diagnose`` option, known sharpness values, the study signature and the report figure."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest
import torch
from tiny_compare import TINY_PLUGIN
from tiny_task import TINY
from torch import nn

from gradkit.bench import Task, register_task
from gradkit.bench.execution.diagnose import (
    SharpnessCallback,
    StepInfo,
    SubspaceCallback,
    make_callbacks,
)
from gradkit.bench.execution.train import lr_multiplier, train_run
from gradkit.bench.protocol.optimizers import resolve_optimizers
from gradkit.bench.protocol.plan import StudyPlan, study_name
from gradkit.cli import main

CPU = torch.device("cpu")


def _spec(name: str = "sgd"):
    return resolve_optimizers([name])[0][0]


# --- a least-squares task whose Hessian is known: H = X^T X / n ------------------------------


def _lsq_data():
    g = torch.Generator().manual_seed(1)
    scales = torch.tensor([2.0, 1.3, 1.0, 0.7, 0.5, 0.3])  # a clear top eigenvalue
    x = torch.randn(64, 6, generator=g) * scales
    y = x @ torch.randn(6, generator=g) + 0.1 * torch.randn(64, generator=g)
    return x, y


class _LsqData:
    """Full-batch least squares: loss = mean((x w - y)^2) / 2, so the Hessian is X^T X / n."""

    def __init__(self, device: torch.device) -> None:
        x, y = _lsq_data()
        self.x, self.y = x.to(device), y.to(device)

    def sample_batch(self, generator: torch.Generator, batch_size: int):
        return self.x, self.y  # every batch (and so the fixed batch) is the whole data set

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        x, y = batch
        return 0.5 * (model(x).squeeze(-1) - y).pow(2).mean()

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> float:
        return float(self.loss(model, (self.x, self.y)))


LSQ = register_task(
    Task(
        name="lsq-diag",
        description="linear least squares, known Hessian (test task)",
        metric="mse",
        higher_is_better=False,
        target=0.01,
        build_model=lambda: nn.Linear(6, 1, bias=False),
        load_data=_LsqData,
        steps=20,
        batch_size=64,
        eval_every=10,
        trials=1,
        seeds=2,
        lr_factors=(1.0, 1.0),
    ),
    replace=True,
)


def test_sharpness_in_compare_matches_eigvalsh_and_report_has_the_figure(tmp_path, capsys):
    out = tmp_path / "r"
    args = ["compare", "--task", "lsq-diag", "-o", "sgd", "--trials", "1", "--seeds", "2"]
    args += ["--diagnose", "sharpness", "--diagnose-every", "5", "--out", str(out), "--quiet"]
    assert main(args) == 0, capsys.readouterr().err
    data = json.loads((out / "results.json").read_text())
    trial = data["tasks"]["lsq-diag"]["trials"][0]["trials"][0]
    runs = {run["seed"]: run for run in trial["runs"]}
    assert runs[1]["diagnostics"] == {}  # diagnostics run on seed 0 only
    recs = runs[0]["diagnostics"]["sharpness"]
    assert [r["step"] for r in recs] == [5, 10, 15, 20]
    x, _ = _lsq_data()
    expected = float(torch.linalg.eigvalsh((x.T @ x / x.shape[0]).double())[-1])
    for r in recs:
        assert r["sharpness"] == pytest.approx(expected, rel=1e-3)
        lr = trial["lr"] * lr_multiplier(r["step"] - 1, 20, "cosine")  # lr used by that step
        assert r["lr"] == pytest.approx(lr, rel=1e-9)
        assert r["threshold"] == pytest.approx(2.0 / lr, rel=1e-9)
    fig = out / "lsq-diag_sharpness.png"
    assert fig.exists() and fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "lsq-diag_sharpness.png" in (out / "index.html").read_text()
    summary = (out / "summary.md").read_text()
    assert "Sharpness" in summary and "lsq-diag_sharpness.png" in summary
    # the same options rebuild the report from the storage (the study name covers --diagnose)
    fig.unlink()
    assert main([*args, "--report-only"]) == 0
    assert fig.exists()


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--diagnose", "sharpness,hessian-trace"], "unknown diagnostic 'hessian-trace'; choose"),
        (["--diagnose", "sharpness", "--diagnose-every", "0"], "impossible budget"),
        (["--steps", "5", "--diagnose", "sharpness", "--diagnose-every", "9"], "impossible budget"),
    ],
)
def test_bad_diagnose_options_are_one_line_errors(extra, needle, tmp_path, capsys):
    code = main(
        ["compare", "--task", "tiny", "--plugin", TINY_PLUGIN, "--out", str(tmp_path), *extra]
    )
    err = capsys.readouterr().err
    assert code == 2 and needle in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    with pytest.raises(ValueError, match="unknown diagnostic 'nope'"):
        make_callbacks(["sharpness", "nope"], every=5)


class _Sleepy:
    """A user callback: sleeps, and records what it was given."""

    name, every = "sleepy", 5

    def __init__(self) -> None:
        self.seen: list[dict] = []
        self.batches: list[object] = []

    def __call__(self, info: StepInfo) -> None:
        time.sleep(0.15)
        self.batches.append(info.fixed_batch())
        self.seen.append(
            {"step": info.step, "lr": info.lr, "loss": float(info.loss(self.batches[-1]).detach())}
        )

    def records(self) -> list[dict]:
        return list(self.seen)


def test_callbacks_do_not_change_training_and_are_not_timed():
    kw = dict(steps=10, device=CPU, eval_every=5)
    plain = train_run(TINY, _spec("adamw"), {"lr": 1e-2}, 0, **kw)
    sleepy = _Sleepy()
    cbs = [sleepy, SharpnessCallback(every=5)]
    diag = train_run(TINY, _spec("adamw"), {"lr": 1e-2}, 0, callbacks=cbs, **kw)
    assert diag.train_loss == plain.train_loss and diag.val == plain.val
    assert plain.diagnostics == {}
    assert diag.train_time < 0.3  # the two 0.15 s sleeps are not training time
    assert [r["step"] for r in diag.diagnostics["sleepy"]] == [5, 10]
    for r in diag.diagnostics["sleepy"]:
        assert r["lr"] == pytest.approx(1e-2 * lr_multiplier(r["step"] - 1, 10, "cosine"))
    assert sleepy.batches[0] is sleepy.batches[1]  # one fixed batch per run
    sharp = diag.diagnostics["sharpness"]
    assert [r["step"] for r in sharp] == [5, 10] and all(r["sharpness"] > 0 for r in sharp)
    # a reused callback starts a fresh history for a new run
    again = train_run(TINY, _spec("adamw"), {"lr": 1e-2}, 1, callbacks=cbs[1:], **kw)
    assert [r["step"] for r in again.diagnostics["sharpness"]] == [5, 10]


def test_subspace_callback_records_fractions():
    r = train_run(
        TINY, _spec("sgd"), {"lr": 0.1}, 0, steps=10, device=CPU, eval_every=5,
        callbacks=[SubspaceCallback(every=5, k=3)],
    )  # fmt: skip
    recs = r.diagnostics["subspace"]
    assert [s["step"] for s in recs] == [5, 10]
    for s in recs:
        assert 0.0 <= s["fraction"] <= 1.0 + 1e-9 and len(s["eigenvalues"]) == 3
        assert s["eigenvalues"] == sorted(s["eigenvalues"], reverse=True)
    assert recs[0]["overlap_with_reference"] == pytest.approx(1.0)
    assert 0.0 <= recs[1]["overlap_with_previous"] <= 1.0 + 1e-9


def test_study_name_covers_diagnostics_only_when_enabled():
    base = StudyPlan(
        task=TINY, spec=_spec("adamw"), n_trials=2, seeds=[0], steps=10, batch_size=16,
        eval_every=5,
    )  # fmt: skip
    assert "diagnose" not in base.signature()  # studies without diagnostics keep their name
    with_sharp = dataclasses.replace(base, diagnose=["sharpness"])
    every_2 = dataclasses.replace(with_sharp, diagnose_every=2)
    names = {study_name(p) for p in (base, with_sharp, every_2)}
    assert len(names) == 3
    assert with_sharp.diagnose_interval() == 5 and every_2.diagnose_interval() == 2


def test_diverging_run_records_none_instead_of_failing():
    r = train_run(
        TINY, _spec("sgd"), {"lr": 1e6}, 0, steps=30, device=CPU, eval_every=10,
        callbacks=make_callbacks(["sharpness", "subspace"], every=1),
    )  # fmt: skip
    assert r.diverged
    sharp, sub = r.diagnostics["sharpness"], r.diagnostics["subspace"]
    assert len(sharp) == len(sub) >= 2
    assert sharp[0]["sharpness"] > 0 and sharp[-1]["sharpness"] is None
    assert sub[-1]["fraction"] is None
    json.dumps(r.to_dict(), allow_nan=False)  # storable as strict JSON
