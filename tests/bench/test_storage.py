"""Storage failures end in one line naming the cause and what to do; foreign files are left
untouched; lost connections are retried."""

from __future__ import annotations

import hashlib
import sqlite3

import optuna
import pytest
from tiny_compare import tiny_compare_args

from gradkit.bench.execution import storage as storage_mod
from gradkit.bench.execution.storage import StorageError, describe_storage_error, open_storage
from gradkit.cli import main


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run(tmp_path, capsys, *extra: str) -> tuple[int, str]:
    code = main([*tiny_compare_args(tmp_path / "r", trials=1, steps=5), *extra])
    return code, capsys.readouterr().err


def test_foreign_sqlite_file_is_refused_and_left_untouched(tmp_path, capsys):
    db = tmp_path / "app.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO users (name) VALUES ('ada')")
    before = _digest(db)
    code, err = _run(tmp_path, capsys, "--storage", str(db))
    assert code == 2
    assert "not a gradkit study database" in err and "users" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert _digest(db) == before
    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert tables == {"users"}


def test_a_file_that_is_not_a_database_is_named_so(tmp_path, capsys):
    bad = tmp_path / "notes.db"
    bad.write_bytes(b"these are my notes, not a database\n" * 200)
    before = _digest(bad)
    code, err = _run(tmp_path, capsys, "--storage", str(bad))
    assert code == 2 and "not an SQLite database" in err
    assert len(err.strip().splitlines()) == 1
    assert _digest(bad) == before


def test_a_corrupt_study_file_is_named_corrupt(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(tiny_compare_args(out, trials=1, steps=5)) == 0
    db = out / "studies.db"
    data = bytearray(db.read_bytes())
    page = 4096
    for start in range(page, len(data), page):  # every page but the header: garbage
        data[start : start + 64] = b"\xff" * 64
    db.write_bytes(bytes(data))
    code, err = _run(tmp_path, capsys)
    assert code in (1, 2)
    assert "corrupt" in err or "malformed" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def _full_disk_error() -> Exception:
    """What Optuna raises when SQLite cannot write: its commit error wrapping the driver's."""
    import sqlalchemy.exc

    orig = sqlite3.OperationalError("database or disk is full")
    try:
        try:
            raise sqlalchemy.exc.OperationalError("COMMIT", {}, orig)
        except sqlalchemy.exc.OperationalError as e:
            raise optuna.exceptions.StorageInternalError(
                "An exception is raised during the commit. This typically happens due to "
                "invalid data in the commit, e.g. exceeding max length."
            ) from e
    except optuna.exceptions.StorageInternalError as exc:
        return exc


def test_disk_full_mid_run_is_one_line_and_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    def fail(*args, **kwargs):
        raise _full_disk_error()

    monkeypatch.setattr("gradkit.bench.compare.run_study", fail)
    code, err = _run(tmp_path, capsys)
    assert code == 1
    assert "disk" in err and "full" in err and "free" in err
    assert "invalid data in the commit" not in err
    assert len(err.strip().splitlines()) == 1
    code, err = _run(tmp_path, capsys, "--debug")
    assert code == 1 and "Traceback" in err and err.strip().splitlines()[-1].startswith("gradkit")


def test_describe_names_each_cause():
    assert "full" in str(describe_storage_error(_full_disk_error(), "sqlite:///x.db"))
    lost = optuna.exceptions.StorageInternalError("commit failed")
    lost.__cause__ = RuntimeError("server closed the connection unexpectedly")
    assert "lost the connection" in str(describe_storage_error(lost, "postgresql://u:pw@h/db"))
    assert "pw" not in str(describe_storage_error(lost, "postgresql://u:pw@h/db"))
    import json

    try:
        json.loads("{oops")
    except json.JSONDecodeError as exc:
        assert "not valid JSON" in str(describe_storage_error(exc))
    assert describe_storage_error(ZeroDivisionError("a bug")) is None


def test_lost_connection_is_retried_then_gives_a_one_line_error(tmp_path, monkeypatch):
    storage = open_storage(str(tmp_path / "s.db"), retry_for=5.0)
    study = optuna.create_study(storage=storage, study_name="x")
    retrying = storage._retrying
    real = retrying.inner
    calls = {"n": 0, "resets": 0}

    class Flaky:
        """The real storage, but the first two calls find the server gone."""

        def __getattr__(self, name):
            attr = getattr(real, name)

            def call(*args, **kwargs):
                calls["n"] += 1
                if calls["n"] <= 2:
                    raise RuntimeError("could not connect to server: Connection refused")
                return attr(*args, **kwargs)

            return call

    retrying.inner = Flaky()
    retrying.reset = lambda: calls.__setitem__("resets", calls["resets"] + 1)
    monkeypatch.setattr(storage_mod.time, "sleep", lambda s: None)
    trial = study.ask()  # survives the outage
    assert trial.number == 0 and calls["resets"] == 2

    def down(*args, **kwargs):
        raise RuntimeError("server closed the connection unexpectedly")

    retrying.inner = type("Down", (), {"__getattr__": lambda self, name: down})()
    retrying.retry_for = 0.0
    with pytest.raises(StorageError, match="lost the connection") as err:
        study.ask()
    assert "\n" not in str(err.value)
