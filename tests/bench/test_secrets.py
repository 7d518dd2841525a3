"""Secrets never leave the process: every command line, URL, log line, error message, report
file and stored study attribute has the database password masked. The end-to-end test runs a
comparison against the CI's real PostgreSQL server (``eval "$(bash .ci/postgres.sh)"`` sets
GRADKIT_TEST_POSTGRES_SECRET_URL, a role whose password appears nowhere else) and greps every
file the run writes, its output and the database for the password."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from tiny_compare import TINY_PLUGIN

from gradkit.bench.execution.storage import (
    StorageError,
    display_url,
    mask_secrets,
    normalize_url,
)
from gradkit.bench.report.page import write_report
from gradkit.bench.report.results import OptimizerResult
from gradkit.cli import main


def test_mask_secrets_hides_url_passwords_and_query_secrets():
    text = (
        "gradkit compare --storage postgresql+psycopg2://me:hunter2@db:5432/x "
        "--other mysql://root:s3cr%40t@h/db?password=qwerty&sslmode=require"
    )
    masked = mask_secrets(text)
    for secret in ("hunter2", "s3cr%40t", "qwerty"):
        assert secret not in masked
    assert "postgresql+psycopg2://me:***@db:5432/x" in masked and "sslmode=require" in masked
    assert mask_secrets("sqlite:////tmp/a/studies.db") == "sqlite:////tmp/a/studies.db"
    assert "hunter2" not in display_url("postgresql://me:hunter2@db/x")
    assert "hunter2" not in str(StorageError("cannot parse 'postgresql://me:hunter2@db/x'"))


def test_report_files_mask_the_command_line(tmp_path):
    """The "Command:" line of summary.md, index.html and results.json used to hold the URL in
    clear text."""
    from tiny_task import TINY

    res = OptimizerResult(TINY, "adamw", "s", planned=2)
    meta = {"command": "gradkit compare --storage postgresql://u:Pw-in-the-command@h/db"}
    write_report(tmp_path, {"tiny": [res]}, {}, meta)
    for name in ("summary.md", "index.html", "results.json"):
        text = (tmp_path / name).read_text()
        assert "Pw-in-the-command" not in text, name
        assert "postgresql://u:***@h/db" in text, name


def test_errors_mask_the_password(tmp_path, capsys):
    url = "postgresql+psycopg2://u:Pw-in-an-error@127.0.0.1:1/db"  # nothing listens on port 1
    code = main(
        [
            "compare",
            "--plugin",
            TINY_PLUGIN,
            "--task",
            "tiny",
            "--storage",
            url,
            "--out",
            str(tmp_path),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "cannot connect" in err
    assert "Pw-in-an-error" not in err and "u:***@" in err


SECRET_URL = os.environ.get("GRADKIT_TEST_POSTGRES_SECRET_URL")


@pytest.mark.postgres
@pytest.mark.skipif(
    not SECRET_URL, reason="set GRADKIT_TEST_POSTGRES_SECRET_URL (bash .ci/postgres.sh)"
)
def test_a_postgres_comparison_writes_the_password_nowhere(tmp_path):
    import optuna
    from sqlalchemy.engine import make_url

    password = make_url(SECRET_URL).password
    assert password and len(password) >= 12  # distinctive: a hit cannot be a coincidence
    assert SECRET_URL.startswith("postgresql://")  # the plain scheme works with psycopg2
    prefix = f"leak-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "report"
    base = [
        sys.executable, "-m", "gradkit.cli", "compare", "--plugin", TINY_PLUGIN,
        "--task", "tiny,quadratic", "--optimizers", "adamw,sgd", "--trials", "2",
        "--seeds", "2", "--steps", "20", "--eval-every", "10", "--trajectory-steps", "20",
        "--storage", SECRET_URL, "--study-prefix", prefix, "--out", str(out),
        "--progress-every", "0.01", "--workers", "1",
    ]  # fmt: skip
    env = dict(os.environ)
    runs = [
        subprocess.run(base, capture_output=True, text=True, timeout=300, env=env),
        # a failing --report-only (other --steps) and a --debug storage error
        subprocess.run(
            [*base, "--steps", "21", "--report-only"], capture_output=True, text=True, timeout=300
        ),
        subprocess.run(
            [*base, "--storage", SECRET_URL.rsplit("@", 1)[0] + "@127.0.0.1:1/x", "--debug"],
            capture_output=True,
            text=True,
            timeout=300,
        ),
    ]
    assert runs[0].returncode == 0, runs[0].stderr
    assert runs[1].returncode == 2 and "--steps 20 in the stored study, 21 now" in runs[1].stderr
    assert runs[2].returncode == 2 and "cannot connect" in runs[2].stderr
    for proc in runs:
        assert password not in proc.stdout + proc.stderr
    written = [p for p in out.rglob("*") if p.is_file()]
    assert {"summary.md", "index.html", "results.json"} <= {p.name for p in written}
    assert "Command:" in (out / "summary.md").read_text()
    for path in written:
        assert password.encode() not in path.read_bytes(), path
    # the database's own attributes: studies and every trial
    url = normalize_url(SECRET_URL)
    names = [
        s.study_name for s in optuna.get_all_study_summaries(url) if s.study_name.startswith(prefix)
    ]
    assert len(names) == 2
    for name in names:
        study = optuna.load_study(study_name=name, storage=url)
        blob = json.dumps(
            [study.user_attrs, study._storage.get_study_system_attrs(study._study_id)],
            default=str,
        )
        blob += json.dumps([[t.user_attrs, t.system_attrs] for t in study.trials], default=str)
        assert password not in blob
        optuna.delete_study(study_name=name, storage=url)
    assert not Path(password).exists()
