"""Fail early, say why: every option (the report folder, the storage) is checked before any
training; --report-only refuses when no study matches and names the options that differ;
abbreviated options are refused; postgresql:// works with the installed psycopg2 and mysql://
gets the right hint; a resumed run says how many trials it kept."""

from __future__ import annotations

import os
import time

import pytest
from tiny_compare import TINY_PLUGIN, tiny_compare_args

from gradkit.bench.execution import storage as storage_mod
from gradkit.bench.execution.storage import StorageError, check_storage, normalize_url
from gradkit.cli import main


def _compare(*args: str, out) -> list[str]:
    return ["compare", "--plugin", TINY_PLUGIN, *args, "--out", str(out), "--quiet"]


@pytest.mark.parametrize("task", ["tiny", "quadratic"])
def test_bad_out_is_refused_before_any_work(task, tmp_path, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    for out, needle in (
        ("/proc/x", "cannot create the report folder"),
        (str(a_file), "is an existing file"),
        ("/sys", "cannot write to the report folder"),  # read-only even for root
    ):
        start = time.perf_counter()
        code = main(_compare("--task", task, "--trajectory-steps", "5000", out=out))
        err = capsys.readouterr().err
        assert code == 2, err
        assert needle in err and "--out" in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1
        assert time.perf_counter() - start < 5  # before the trials or the test functions


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_refused(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    assert main(_compare("--task", "tiny", out=ro)) == 2
    assert "cannot write to the report folder" in capsys.readouterr().err


def test_bad_storage_is_refused_for_test_function_only_runs(tmp_path, capsys):
    out = tmp_path / "new"
    code = main(
        _compare("--task", "quadratic", "--storage", "postgresql://u:p@127.0.0.1:1/db", out=out)
    )
    err = capsys.readouterr().err
    assert code == 2 and "cannot connect" in err
    assert not out.exists()  # a refused run leaves nothing behind


def test_abbreviated_options_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(_compare("--task", "tiny", "--trial", "2", out=tmp_path))
    assert exc.value.code == 2
    assert "unrecognized arguments: --trial" in capsys.readouterr().err


def test_report_only_refuses_and_names_the_options_that_differ(tmp_path, capsys):
    out = tmp_path / "r"
    assert main([*tiny_compare_args(out, trials=2, steps=10), "--no-report"]) == 0
    capsys.readouterr()
    # a forgotten --steps: the old behaviour wrote an empty "no finished trial" report, exit 0
    code = main([*tiny_compare_args(out, trials=2, steps=12), "--report-only"])
    err = capsys.readouterr().err
    assert code == 2
    assert "no study in" in err and "--steps 10 in the stored study, 12 now" in err
    # no database at all
    code = main([*tiny_compare_args(tmp_path / "empty", trials=2, steps=10), "--report-only"])
    assert code == 2 and "no study database" in capsys.readouterr().err


def test_a_resumed_run_says_how_many_trials_it_kept(tmp_path, capsys):
    out = tmp_path / "r"
    args = [a for a in tiny_compare_args(out, trials=2, steps=10) if a != "--quiet"]
    assert main([*args, "--no-report"]) == 0
    capsys.readouterr()
    assert main([*args, "--trials", "3", "--no-report"]) == 0
    err = capsys.readouterr().err
    assert (
        "resuming: kept 2 finished trial(s) from the storage (tiny/adamw 2); 1 left to run" in err
    )


def test_postgresql_scheme_uses_the_installed_psycopg2(monkeypatch):
    present = {"psycopg2": True, "psycopg": False}
    monkeypatch.setattr(storage_mod, "_module_present", lambda name: present[name])
    assert normalize_url("postgresql://u:p@h/db") == "postgresql+psycopg2://u:p@h/db"
    assert normalize_url("postgres://u:p@h/db") == "postgresql+psycopg2://u:p@h/db"
    assert normalize_url("postgresql+psycopg://u:p@h/db") == "postgresql+psycopg://u:p@h/db"
    present["psycopg"] = True  # psycopg 3 installed: SQLAlchemy's default driver works
    assert normalize_url("postgresql://u:p@h/db") == "postgresql://u:p@h/db"


def test_mysql_gets_a_mysql_hint():
    pytest.importorskip("sqlalchemy")
    try:
        import MySQLdb  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("MySQLdb is installed")
    with pytest.raises(StorageError) as exc:
        check_storage("mysql://u:p@127.0.0.1:1/db")
    msg = str(exc.value)
    assert "pymysql" in msg and "mysql+pymysql://" in msg and "psycopg2" not in msg
