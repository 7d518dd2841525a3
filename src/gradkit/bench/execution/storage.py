"""Where trials and curves live: an Optuna RDB storage behind any SQLAlchemy URL.

SQLite file by default; PostgreSQL (``postgresql+psycopg2://user:pw@host/db``) lets worker
processes on many machines share one study. Each trial keeps its per-seed curves and metrics
as user attributes (JSON), so the report can be rebuilt from the database alone.

Failures end in one line: :func:`describe_storage_error` turns what the database driver raised
(disk full, a corrupt file, a server that went away, bad JSON in a row) into a
:class:`StorageError` that names the cause and what to do. An SQLite file that holds tables but
is not an Optuna/gradkit study database is refused before anything is written to it.
:func:`open_storage` returns a :class:`ResilientStorage`: when the connection to the database
is lost (a PostgreSQL restart, a locked SQLite file), each storage call is retried with backoff
for ``retry_for`` seconds on fresh connections instead of failing the worker.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "ResilientStorage",
    "StorageError",
    "check_storage",
    "describe_storage_error",
    "display_url",
    "mask_secrets",
    "normalize_url",
    "open_storage",
]

#: Tables of an Optuna RDB storage; an SQLite file with tables must have these.
OPTUNA_TABLES = frozenset({"studies", "trials", "version_info"})


class StorageError(Exception):
    """A storage problem, its message one line naming the cause and what to do: a malformed
    URL, a missing driver, an unreachable server, a full disk, a corrupt or foreign file.
    Credentials in the message are masked (:func:`mask_secrets`)."""

    def __init__(self, message: object = "") -> None:
        super().__init__(mask_secrets(str(message)))


_URL_CREDENTIALS = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s'\"]*):[^@\s'\"]*@")
_QUERY_SECRET = re.compile(r"(?i)(\b(?:password|passwd|pwd|secret|token)=)[^&\s'\"]+")


def mask_secrets(text: str) -> str:
    """``text`` with the password of every URL (``scheme://user:PASSWORD@host``) and every
    ``password=``/``token=`` value replaced by ``***``: applied to everything the harness
    records (command lines, logs, error messages, report files, study attributes)."""
    text = _URL_CREDENTIALS.sub(r"\1:***@", text)
    return _QUERY_SECRET.sub(r"\1***", text)


def _module_present(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def normalize_url(url: str) -> str:
    """Accept a SQLAlchemy URL or a plain file path (turned into ``sqlite:///ABS_PATH``).

    A bare ``postgresql://`` URL takes SQLAlchemy's default driver (psycopg 3); when only
    psycopg2 is installed (the ``postgres`` extra) it becomes ``postgresql+psycopg2://``.
    """
    if "://" not in url:
        return "sqlite:///" + str(Path(url).expanduser().resolve())
    scheme, rest = url.split("://", 1)
    if scheme in ("postgresql", "postgres"):
        if _module_present("psycopg2") and not _module_present("psycopg"):
            return "postgresql+psycopg2://" + rest
        return "postgresql://" + rest
    return url


def display_url(url: str) -> str:
    """The URL with its password hidden, for messages."""
    try:
        from sqlalchemy.engine import make_url

        return mask_secrets(make_url(url).render_as_string(hide_password=True))
    except Exception:  # noqa: BLE001 - only used for display
        return mask_secrets(url)


def _driver_hint(url: str) -> str:
    """What to install (or write) for the driver of ``url``."""
    scheme = url.split("://", 1)[0]
    if scheme.startswith("mysql") or scheme.startswith("mariadb"):
        return (
            "install a MySQL driver and name it in the URL: pip install pymysql, then "
            "mysql+pymysql://... instead of mysql://..."
        )
    if scheme.startswith("postgres"):
        return (
            "install the driver with pip install psycopg2-binary (the postgres extra) and use "
            "postgresql+psycopg2://..."
        )
    return "install the driver SQLAlchemy names for this URL"


def _engine_kwargs(url: str, timeout: float) -> dict:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 60}}
    if url.startswith("postgresql"):
        return {"pool_pre_ping": True, "connect_args": {"connect_timeout": max(1, int(timeout))}}
    if url.startswith("mysql"):
        return {"pool_pre_ping": True, "connect_args": {"connect_timeout": max(1, int(timeout))}}
    return {"pool_pre_ping": True}


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc``, its causes and contexts, and the DB-API errors that SQLAlchemy wraps."""
    out: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or any(e is seen for seen in out):
            continue
        out.append(e)
        todo += [e.__cause__, e.__context__, getattr(e, "orig", None)]
    return out


def _first_line(e: BaseException) -> str:
    text = str(getattr(e, "orig", None) or e).strip().splitlines()
    return text[0] if text else type(e).__name__


_LOST = (
    "could not connect",
    "connection refused",
    "server closed the connection",
    "terminating connection",
    "connection to server",
    "connection already closed",
    "connection timed out",
    "the database system is shutting down",
    "the database system is starting up",
    "ssl syscall error",
    "can't reconnect until invalid transaction is rolled back",
    "lost connection",
    "gone away",
)


def _kind(exc: BaseException) -> tuple[str, str] | None:
    """``(kind, reason)`` of a storage failure, or None if ``exc`` is not one. Kinds: ``full``,
    ``corrupt``, ``not_db``, ``lost`` (connection lost or server unreachable), ``locked``,
    ``json``."""
    for e in _chain(exc):
        msg = str(e).lower()
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return "full", _first_line(e)
        if "database or disk is full" in msg or "no space left" in msg or "disk full" in msg:
            return "full", _first_line(e)
        if "database disk image is malformed" in msg or "malformed database schema" in msg:
            return "corrupt", _first_line(e)
        if "file is not a database" in msg or "file is encrypted or is not a database" in msg:
            return "not_db", _first_line(e)
        if "database is locked" in msg:
            return "locked", _first_line(e)
        if type(e).__name__ == "PendingRollbackError" or any(m in msg for m in _LOST):
            return "lost", _first_line(e)
        if getattr(e, "connection_invalidated", False):
            return "lost", _first_line(e)
        if isinstance(e, json.JSONDecodeError):
            return "json", _first_line(e)
    return None


def describe_storage_error(exc: BaseException, url: str | None = None) -> StorageError | None:
    """A one-line :class:`StorageError` naming the real cause of ``exc`` and what to do, or
    None when ``exc`` is not a storage failure (then it is a bug: show the traceback)."""
    if isinstance(exc, StorageError):
        return exc
    kind = _kind(exc)
    if kind is None:
        return None
    what, reason = kind
    where = display_url(url) if url else "the study database"
    keep = "finished trials are kept; rerun the same command to resume"
    if what == "full":
        return StorageError(
            f"the disk holding {where} is full ({reason}); free some space, then rerun the same "
            f"command ({keep}), or point --storage at a disk with room"
        )
    if what == "corrupt":
        return StorageError(
            f"{where} is corrupt ({reason}); move the file away and rerun (its trials are lost), "
            "or restore a backup; sqlite3 FILE '.recover' may save its rows"
        )
    if what == "not_db":
        return StorageError(
            f"{where} is not an SQLite database ({reason}); it is not a gradkit study file: "
            "use another --storage or --out"
        )
    if what == "json":
        return StorageError(
            f"{where} holds a trial attribute that is not valid JSON ({reason}): a damaged row; "
            "remove that study (optuna delete-study) or use a new --storage"
        )
    if what == "locked":
        return StorageError(
            f"{where} stayed locked by another process ({reason}); stop the other writer or use "
            "PostgreSQL for several workers, then rerun the same command"
        )
    return StorageError(
        f"lost the connection to {where} ({reason}); check that the database server is running "
        f"and reachable, then rerun the same command ({keep})"
    )


def _sqlite_tables(path: str) -> list[str]:
    """Table names of an existing SQLite file, read without writing to it."""
    uri = Path(path).resolve().as_uri() + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=10)
    try:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    finally:
        conn.close()
    return sorted(r[0] for r in rows)


def _check_sqlite_file(path: str, url: str) -> None:
    """Refuse an existing file that is not an Optuna/gradkit study database (nothing is
    written to it); an empty or missing file is fine (it becomes one)."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return
    try:
        tables = _sqlite_tables(path)
    except sqlite3.DatabaseError as exc:
        err = describe_storage_error(exc, url)
        raise (err or StorageError(f"cannot read {path} ({exc})")) from None
    if tables and not OPTUNA_TABLES <= set(tables):
        shown = ", ".join(tables[:8]) + (", ..." if len(tables) > 8 else "")
        raise StorageError(
            f"{path} is an SQLite database of something else (tables: {shown}), not a gradkit "
            "study database; it was left untouched: use another --storage file or --out folder"
        )


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
        _check_sqlite_file(parsed.database, url)
        try:
            os.makedirs(os.path.dirname(os.path.abspath(parsed.database)), exist_ok=True)
        except OSError as exc:
            raise describe_storage_error(exc, url) or StorageError(
                f"cannot create the folder of {parsed.database} ({exc}); use another --storage"
            ) from None
    try:
        engine = create_engine(url, **_engine_kwargs(url, timeout))
    except ModuleNotFoundError as exc:
        raise StorageError(
            f"the database driver for {display_url(url)} is not installed ({exc.name}); "
            f"{_driver_hint(url)}, or use a sqlite:/// URL"
        ) from None
    except Exception as exc:  # noqa: BLE001
        raise StorageError(f"invalid storage URL {display_url(url)}: {exc}") from None
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()
        reason_line = reason[0] if reason else type(exc).__name__
        if _kind(exc) is not None and _kind(exc)[0] in ("full", "corrupt", "not_db"):
            raise describe_storage_error(exc, url) from None
        raise StorageError(
            f"cannot connect to {display_url(url)} ({reason_line}); start the database server "
            "and check the URL, or drop --storage to use a local SQLite file"
        ) from None
    finally:
        engine.dispose()
    return url


class _Retrying:
    """Calls a storage method again on fresh connections while the database is unreachable."""

    def __init__(self, inner: Any, reset: Callable[[], None], url: str, retry_for: float) -> None:
        self.inner, self.reset, self.url, self.retry_for = inner, reset, url, retry_for

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        from optuna.exceptions import UpdateFinishedTrialError

        deadline = time.monotonic() + self.retry_for
        delay = 0.25
        retried = False
        while True:
            try:
                return getattr(self.inner, name)(*args, **kwargs)
            except UpdateFinishedTrialError:
                # a retried state change whose first attempt was committed before the
                # connection dropped: the trial already has the state we asked for
                if retried and name == "set_trial_state_values":
                    trial = self.inner.get_trial(args[0] if args else kwargs["trial_id"])
                    state = args[1] if len(args) > 1 else kwargs.get("state")
                    if trial.state == state:
                        return True
                raise
            except Exception as exc:  # noqa: BLE001
                kind = _kind(exc)
                if kind is None or kind[0] not in ("lost", "locked"):
                    raise
                if time.monotonic() + delay > deadline:
                    err = describe_storage_error(exc, self.url)
                    raise StorageError(f"{err} (retried for {self.retry_for:g} s)") from exc
                try:
                    self.reset()
                except Exception:  # noqa: BLE001 - the next attempt reports what is wrong
                    pass
                time.sleep(delay * (0.75 + 0.5 * random.random()))
                delay = min(delay * 2, 8.0)
                retried = True


def _resilient_class() -> type:
    """:class:`ResilientStorage`: an Optuna ``BaseStorage`` whose every public method goes
    through :class:`_Retrying` (built at first use, so that importing this module does not
    import Optuna)."""
    from optuna.storages import BaseStorage

    def method(name: str) -> Callable[..., Any]:
        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            return self._retrying.call(name, *args, **kwargs)

        call.__name__ = name
        call.__doc__ = f"``{name}`` of the wrapped storage, retried while the database is away."
        return call

    names = [n for n in dir(BaseStorage) if not n.startswith("_")]
    namespace: dict[str, Any] = {n: method(n) for n in names}

    def __init__(self: Any, inner: Any, reset: Callable[[], None], url: str, retry_for: float):
        self._retrying = _Retrying(inner, reset, url, retry_for)
        self.url = url

    namespace["__init__"] = __init__
    namespace["__doc__"] = (
        "An Optuna storage that retries every call with backoff, on fresh connections, while "
        "the database is unreachable (up to ``retry_for`` seconds), then raises a one-line "
        ":class:`StorageError`."
    )
    return type("ResilientStorage", (BaseStorage,), namespace)


_CLASS: list[type] = []


def ResilientStorage(inner: Any, reset: Callable[[], None], url: str, retry_for: float) -> Any:  # noqa: N802
    """Wrap ``inner`` (an Optuna storage) so that lost connections are retried; ``reset()``
    drops the broken session and pooled connections before a retry."""
    if not _CLASS:
        _CLASS.append(_resilient_class())
    return _CLASS[0](inner, reset, url, retry_for)


def open_storage(url: str, timeout: float = 10.0, attempts: int = 5, retry_for: float = 120.0):
    """A :class:`ResilientStorage` over an ``optuna.storages.RDBStorage`` for ``url`` (checked
    first); a lost connection is retried for ``retry_for`` seconds.

    Workers that start together on a fresh database race to create Optuna's tables; the loser
    gets an error from the database, so creation is retried a few times (it then finds the
    tables made by the winner).
    """
    import optuna

    url = check_storage(url, timeout)
    for attempt in range(attempts):
        try:
            rdb = optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url, timeout))
        except Exception as exc:  # noqa: BLE001
            err = describe_storage_error(exc, url)
            if err is not None and _kind(exc)[0] in ("full", "corrupt", "not_db", "json"):
                raise err from None
            if attempt == attempts - 1:
                reason = (
                    str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                )
                raise StorageError(
                    f"cannot set up the Optuna tables in {display_url(url)} ({reason}); "
                    "check that the user may create tables there"
                ) from None
            time.sleep(0.2 + random.random())
            continue

        def reset(rdb: Any = rdb) -> None:
            rdb.scoped_session.remove()
            rdb.engine.dispose()

        return ResilientStorage(optuna.storages.get_storage(rdb), reset, url, retry_for)
    raise AssertionError("unreachable")
