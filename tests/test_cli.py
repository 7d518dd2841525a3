"""The ``gradkit`` command: help, list, a full tiny comparison with its report, bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from bench.tiny_compare import TINY_PLUGIN, tiny_compare_args
from gradkit.cli import build_parser, main


def _compare_help() -> str:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices["compare"].format_help()


def test_help_explains_every_option():
    text = _compare_help()
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for action in sub.choices["compare"]._actions:
        if action.option_strings:
            assert action.help, f"{action.option_strings} has no help"
            assert action.option_strings[0] in text
    for word in ("--task", "--optimizers", "--trials", "--seeds", "--storage", "--device", "resum"):
        assert word in text


def test_list_prints_registered_optimizers(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "adamw" in out and "1711.05101" in out


def test_list_tasks(capsys):
    assert main(["compare", "--list-tasks"]) == 0
    out = capsys.readouterr().out
    for name in ("mnist1d-cnn", "mnist1d-mlp", "digits-cnn", "stdlib-charlm", "rosenbrock"):
        assert name in out


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--optimizers", "adamw,nosuchopt"], "unknown optimizer 'nosuchopt'"),
        (["--task", "nosuchtask"], "unknown task 'nosuchtask'"),
        (["--steps", "0"], "impossible budget"),
        (["--trials", "-1"], "impossible budget"),
        (["--steps", "5", "--eval-every", "10"], "impossible budget"),
        (["--lr-range", "3", "1"], "--lr-range"),
        (["--device", "cuda:7"], "cuda"),
        (["--search", "dropout"], "cannot search dropout"),
        (["--storage", "postgresql+psycopg2://u:pw@127.0.0.1:1/db"], "cannot connect"),
        (["--plugin", "no/such/file.py"], "plugin"),
    ],
)
def test_bad_input_one_line_exit_2(args, needle, capsys, tmp_path):
    import torch

    if args[:2] == ["--device", "cuda:7"] and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    code = main(
        ["compare", "--task", "tiny", "--plugin", TINY_PLUGIN, "--out", str(tmp_path), *args]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert needle in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_bad_input_from_the_real_command():
    proc = subprocess.run(
        [sys.executable, "-m", "gradkit.cli", "compare", "--trials", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("gradkit compare: error: impossible budget")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_argparse_errors_are_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["compare", "--trials", "many"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "invalid int value" in err
    assert len(err.strip().splitlines()) == 1


def test_tiny_comparison_writes_the_report(tmp_path, capsys):
    out = tmp_path / "report"
    code = main(
        [
            "compare",
            "--plugin",
            TINY_PLUGIN,
            "--task",
            "tiny,quadratic",
            "--optimizers",
            "adamw,sgd",
            "--trials",
            "2",
            "--seeds",
            "2",
            "--steps",
            "20",
            "--eval-every",
            "10",
            "--trajectory-steps",
            "20",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0, capsys.readouterr().err
    for name in (
        "index.html",
        "summary.md",
        "results.json",
        "studies.db",
        "tiny_curves.png",
        "tiny_lr_sensitivity.png",
        "tiny_time_to_target.png",
        "trajectories.png",
    ):
        assert (out / name).exists(), name
    summary = (out / "summary.md").read_text()
    assert "| rank | optimizer |" in summary and "adamw" in summary and "sgd" in summary
    data = json.loads((out / "results.json").read_text())
    ranking = data["tasks"]["tiny"]["ranking"]
    assert [r["optimizer"] for r in ranking] and ranking[0]["trials"] == 2
    finals = [r["final_mean"] for r in ranking]
    assert finals == sorted(finals, reverse=True)
    trials = data["tasks"]["tiny"]["trials"][0]["trials"]
    assert len(trials) == 2 and len(trials[0]["runs"]) == 2
    assert len(data["trajectories"]["quadratic"]) == 2
    html = (out / "index.html").read_text()
    assert "tiny_curves.png" in html and "<table>" in html


def test_report_only_rebuilds_from_the_storage(tmp_path, capsys):
    out = tmp_path / "r"
    common = tiny_compare_args(out, trials=2, steps=10)
    assert main([*common, "--no-report"]) == 0
    assert not (out / "index.html").exists()
    assert main([*common, "--report-only", "--trials", "5"]) == 0  # runs nothing more
    data = json.loads((out / "results.json").read_text())
    assert len(data["tasks"]["tiny"]["trials"][0]["trials"]) == 2


# --- names and packaging ----------------------------------------------------------------------

OPTIONAL = ("optuna", "sqlalchemy", "matplotlib", "rich", "sklearn", "mnist1d", "scipy")


def test_names_are_canonical_like_create_optimizer():
    from gradkit.bench.compare import _split_tasks
    from gradkit.bench.protocol.optimizers import resolve_optimizers

    found, missing = resolve_optimizers(["stable-spam", "Stable SPAM", "ADAMW", "lion_kappa"])
    assert not missing and [s.name for s in found] == ["stable_spam", "adamw", "lion_kappa"]
    tasks, functions = _split_tasks(["MNIST1D_CNN", "Rosenbrock"])
    assert [t.name for t in tasks] == ["mnist1d-cnn"] and functions == ["rosenbrock"]


def test_list_has_no_catalogue_ids(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[1].split()
    assert header == ["name", "paper", "arXiv", "closure", "defaults"]
    assert not re.search(r"\bP\d{3}\b", out)


def test_import_gradkit_imports_no_optional_package():
    code = (
        "import sys, gradkit, gradkit.bench, gradkit.cli; gradkit.cli.build_parser(); "
        f"print(sorted(m for m in {OPTIONAL!r} if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_core_install_needs_torch_and_numpy_only():
    from pathlib import Path

    import tomllib

    meta = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    names = [re.split(r"[<>=!~\[ ]", d)[0] for d in meta["dependencies"]]
    assert names == ["torch", "numpy"]
    extra = [re.split(r"[<>=!~\[ ]", d)[0] for d in meta["optional-dependencies"]["compare"]]
    assert {"optuna", "sqlalchemy", "matplotlib", "rich", "scipy", "mnist1d"} <= set(extra)
    assert any(d.startswith("gradkit[compare") for d in meta["optional-dependencies"]["test"])


def test_without_the_extra_list_works_and_compare_names_it(monkeypatch, capsys):
    for name in OPTIONAL:
        monkeypatch.setitem(sys.modules, name, None)  # import fails, find_spec says missing
    assert main(["list"]) == 0
    assert "adamw" in capsys.readouterr().out
    assert main(["compare", "--task", "tiny"]) == 2
    err = capsys.readouterr().err
    assert 'pip install "gradkit[compare]"' in err and "optuna" in err
    assert len(err.strip().splitlines()) == 1


def test_readme_and_ci_install_the_same_extras():
    from pathlib import Path

    root = Path(__file__).parents[1]
    readme = (root / "README.md").read_text()
    ci = (root / ".ci" / "run").read_text()
    extras = re.search(r'pip install -e "(\.\[[^\]]+\])"', readme).group(1)
    assert "compare" in extras and "test" in extras
    assert f'pip install -q -e "{extras}"' in ci
