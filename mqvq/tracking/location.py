"""Where a store is: the home folder (--home, $MQVQ_HOME or ./.mqvq), the tracking URI (--tracking-uri,
$MLFLOW_TRACKING_URI or <home>/mlflow.db), and whether it can be reached, each failure one sentence."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

from mqvq.errors import UserError
from mqvq.files import file_in_the_way

SUPPORTED_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")


def home_path(home: str | os.PathLike | None = None) -> Path:
    """Where the home folder is (--home, else $MQVQ_HOME, else ./.mqvq), without creating it."""
    return Path(home or os.environ.get("MQVQ_HOME") or ".mqvq").expanduser().resolve()


def home_dir(home: str | os.PathLike | None = None) -> Path:
    """The writable folder holding the default store, artifacts and working checkpoints."""
    path = home_path(home)
    ensure_writable(path, "--home / MQVQ_HOME")
    return path


def ensure_writable(path: Path, what: str) -> None:
    blocker = file_in_the_way(path)
    if blocker is not None:
        raise UserError(
            f"cannot write to {path} ({what}): {blocker} is a file, not a folder; choose a writable folder."
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to {path} ({what}): {e.strerror or e}; choose a writable folder.") from None


def resolve_tracking_uri(uri: str | None, home: Path) -> str:
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow.db'}"
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower() if ":" in uri else ""
    if scheme not in SUPPORTED_SCHEMES:
        raise UserError(
            f"tracking URI {uri!r} is not supported: use sqlite:///ABS/PATH.db, http(s)://HOST:PORT or a database URL "
            f"(postgresql://...); MLflow file stores (plain paths, file:) are refused."
        )
    return uri


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI (None for servers and other databases)."""
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None


# plain postgresql:// is served by either driver (MLflow picks psycopg 3 when it is there)
DRIVERS = {
    "postgresql": ("psycopg", "psycopg2"),
    "postgresql+psycopg2": ("psycopg2",),
    "postgresql+psycopg": ("psycopg",),
}


def require_driver(uri: str, what: str) -> None:
    """A PostgreSQL URL needs its Python driver; name the extra that installs it."""
    modules = DRIVERS.get(uri.split("://", 1)[0].lower(), ()) if "://" in uri else ()
    for module in modules:
        try:
            __import__(module)
            return
        except ImportError:
            continue
    if modules:
        raise UserError(
            f"{what} {uri} needs a PostgreSQL driver ({' or '.join(modules)}), which is not installed: "
            f'pip install "mqvq[postgres]".'
        )


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast with one sentence instead of MLflow's minutes of retries."""
    require_driver(uri, "the tracking store")
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
                r.read()
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise UserError(
                f"cannot reach the MLflow server at {uri}: {reason}; start it or pass another --tracking-uri."
            ) from None
    elif (db := sqlite_path(uri)) is not None:
        ensure_writable(db.parent, "the SQLite tracking store's folder")
