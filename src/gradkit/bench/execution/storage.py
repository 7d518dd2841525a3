"""Where trials and curves live: an Optuna RDB storage behind any SQLAlchemy URL.

SQLite file by default; PostgreSQL (``postgresql+psycopg2://user:pw@host/db``) lets worker
processes on many machines share one study. Each trial keeps its per-seed curves and metrics
as user attributes (JSON), so the report can be rebuilt from the database alone.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["StorageError", "check_storage", "display_url", "normalize_url", "open_storage"]


class StorageError(Exception):
    """The storage URL is malformed, its driver is missing, or the database is unreachable."""


def normalize_url(url: str) -> str:
    """Accept a SQLAlchemy URL or a plain file path (turned into ``sqlite:///ABS_PATH``)."""
    if "://" not in url:
        return "sqlite:///" + str(Path(url).expanduser().resolve())
    return url


def display_url(url: str) -> str:
    """The URL with its password hidden, for messages."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - only used for display
        return url.split("@")[-1] if "@" in url else url


def _engine_kwargs(url: str, timeout: float) -> dict:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 60}}
    if url.startswith("postgresql"):
        return {"pool_pre_ping": True, "connect_args": {"connect_timeout": max(1, int(timeout))}}
    if url.startswith("mysql"):
        return {"pool_pre_ping": True, "connect_args": {"connect_timeout": max(1, int(timeout))}}
    return {"pool_pre_ping": True}


def check_storage(url: str, timeout: float = 10.0) -> str:
    """Normalise ``url`` and open one connection to it; raise :class:`StorageError` if that
    fails. For SQLite the parent folder is created."""
    url = normalize_url(url)
    try:
        from sqlalchemy import create_engine, text
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
    except Exception as exc:  # noqa: BLE001
        raise StorageError(
            f"cannot parse storage URL {url!r} ({exc}); use e.g. sqlite:///compare.db "
            "or postgresql+psycopg2://user:password@host/dbname"
        ) from None
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        os.makedirs(os.path.dirname(os.path.abspath(parsed.database)), exist_ok=True)
    try:
        engine = create_engine(url, **_engine_kwargs(url, timeout))
    except ModuleNotFoundError as exc:
        raise StorageError(
            f"the database driver for {display_url(url)} is not installed ({exc.name}); "
            "install it (e.g. pip install psycopg2-binary) or use a sqlite:/// URL"
        ) from None
    except Exception as exc:  # noqa: BLE001
        raise StorageError(f"invalid storage URL {display_url(url)}: {exc}") from None
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()
        reason_line = reason[0] if reason else type(exc).__name__
        raise StorageError(
            f"cannot connect to {display_url(url)} ({reason_line}); start the database server "
            "and check the URL, or drop --storage to use a local SQLite file"
        ) from None
    finally:
        engine.dispose()
    return url


def open_storage(url: str, timeout: float = 10.0, attempts: int = 5):
    """An ``optuna.storages.RDBStorage`` for ``url`` (checked first).

    Workers that start together on a fresh database race to create Optuna's tables; the loser
    gets an error from the database, so creation is retried a few times (it then finds the
    tables made by the winner).
    """
    import random
    import time

    import optuna

    url = check_storage(url, timeout)
    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url, timeout))
        except Exception as exc:  # noqa: BLE001
            if attempt == attempts - 1:
                reason = (
                    str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                )
                raise StorageError(
                    f"cannot set up the Optuna tables in {display_url(url)} ({reason}); "
                    "check that the user may create tables there"
                ) from None
            time.sleep(0.2 + random.random())
    raise AssertionError("unreachable")
