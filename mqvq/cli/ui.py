"""`mqvq ui`: the MLflow UI on this project's store."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Annotated, Optional

import typer

from mqvq.cli.common import Home, TrackingUri, cli_errors, console, err_console, open_tracker


@cli_errors
def ui(
    study: Annotated[Optional[str], typer.Argument(help="open this study's experiment (e.g. ablation-mask)")] = None,
    profile: Annotated[str, typer.Option("--profile", "-p", help="the study's profile")] = "smoke",
    host: Annotated[str, typer.Option(help="interface to listen on (0.0.0.0 for remote access)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port", min=1, max=65535)] = 5000,
    start_timeout: Annotated[float, typer.Option(help="seconds to wait for the server to answer", min=1)] = 120.0,
    auth: Annotated[
        bool,
        typer.Option(
            "--auth",
            help="require a user name and password (MLflow's basic-auth app; needs pip install 'mlflow[auth]')",
        ),
    ] = False,
    home: Home = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Start the MLflow UI on the store and print the URL (Ctrl-C stops it)."""
    from mqvq.errors import UserError
    from mqvq.studies.plan import study_experiment
    from mqvq.tracking.store import SHARED_VIEW_TAG

    tracker = open_tracker(tracking_uri, home, read_only=True)
    if not tracker.uri.startswith("sqlite:"):
        raise UserError(f"{tracker.uri} is served by its own MLflow server already: open it in a browser.")
    url = f"http://{host}:{port}"
    tracker.mark_model_training()  # MLflow 3 opens an experiment without a kind in its GenAI view
    if study:
        from mqvq.reports.summary import VIEW_KEY

        name = study_experiment(study, profile)
        exp_tags = tracker.experiment_tags(name)
        if exp_tags is None:
            raise UserError(
                f"study {study} has no runs at profile {profile} yet: run `mqvq study run {study} --profile {profile}`."
            )
        url += (
            f"/#/experiments/{tracker.experiment_id(name)}/runs?workflowType=machine_learning"  # not the GenAI side bar
        )
        if SHARED_VIEW_TAG + VIEW_KEY in exp_tags:
            url += f"&viewStateShareKey={VIEW_KEY}"  # the study's metric columns, saved by its summary
    if host not in LOOPBACK and not auth:
        err_console.print(
            f"[yellow]warning[/]: --host {host} serves the store to everyone who can reach port {port}, with no "
            "password: anyone there can read and delete runs. Pass --auth to require one.",
            highlight=False,
        )
    _check_port_free(host, port)
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        tracker.uri,
        "--host",
        host,
        "--port",
        str(port),
    ]
    env = dict(os.environ)
    if auth:
        cmd += ["--app-name", "basic-auth"]
        env |= auth_settings(tracker.home)
    console.print(f"starting the MLflow UI on {host}:{port} (store {tracker.uri}) ...", highlight=False)
    if auth:
        console.print(
            f"sign in as admin with the password in {tracker.home / AUTH_DIR / 'admin-password'} (created on the first "
            "--auth start unless MLFLOW_AUTH_ADMIN_PASSWORD was set)",
            highlight=False,
            soft_wrap=True,
        )
    # the server (and the workers it forks) get a process group of their own, which is stopped as
    # a whole however this command ends: Ctrl-C, `kill`, or a shell that ignores SIGINT
    proc = subprocess.Popen(cmd, start_new_session=True, env=env)
    previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        _wait_until_it_answers(proc, "127.0.0.1" if host in ("0.0.0.0", "::") else host, port, start_timeout)
        console.print(f"MLflow UI: {url}  (Ctrl-C stops it)", highlight=False, soft_wrap=True)  # only once it answers
        code = proc.wait()
        if code not in (0, -signal.SIGINT, -signal.SIGTERM):
            raise UserError(f"the MLflow UI server stopped with exit status {code}: see its messages above.")
    except BaseException as e:  # Ctrl-C / kill stop quietly; errors stop the server, then report
        _stop(proc)
        if not isinstance(e, KeyboardInterrupt):
            raise
    finally:
        signal.signal(signal.SIGTERM, previous)


LOOPBACK = ("127.0.0.1", "localhost", "::1")
AUTH_DIR = "ui-auth"  # in the home: the auth app's settings, its user database and the admin's first password


def auth_settings(home: Path) -> dict[str, str]:
    """The environment of MLflow's basic-auth app for this home: its settings file (users in
    <home>/ui-auth/users.db, every signed-in user may read), the admin's first password (from
    MLFLOW_AUTH_ADMIN_PASSWORD, else made once and kept in a file only its owner reads) and the secret
    key its CSRF protection needs."""
    import importlib.util
    import secrets

    from mqvq.errors import UserError
    from mqvq.files import atomic_write

    if importlib.util.find_spec("flask_wtf") is None:
        raise UserError("--auth runs MLflow's basic-auth app, which needs Flask-WTF: pip install 'mlflow[auth]'.")
    folder = home / AUTH_DIR
    folder.mkdir(exist_ok=True)
    folder.chmod(0o700)  # the password file and the user database: the owner's alone
    password = folder / "admin-password"
    if not os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD") and not password.is_file():
        atomic_write(password, lambda f: f.write(secrets.token_urlsafe(18).encode() + b"\n"))
    settings = folder / "basic_auth.ini"
    text = (
        f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{folder / 'users.db'}\nadmin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    atomic_write(settings, lambda f: f.write(text.encode()))
    return {
        "MLFLOW_AUTH_CONFIG_PATH": str(settings),
        "MLFLOW_AUTH_ADMIN_PASSWORD": os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD") or password.read_text().strip(),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": os.environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY") or secrets.token_hex(32),
    }


def _check_port_free(host: str, port: int) -> None:
    from mqvq.errors import UserError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            reason = "is already in use" if e.errno in (98, 48) else f"cannot be opened ({e.strerror})"
            raise UserError(f"port {port} on {host} {reason}: choose another with --port.") from None


def _wait_until_it_answers(proc: subprocess.Popen, host: str, port: int, timeout: float) -> None:
    from mqvq.errors import UserError

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise UserError(
                f"the MLflow UI server exited with status {proc.returncode} before it answered: see its messages above."
            )
        try:
            urllib.request.urlopen(f"http://{host}:{port}/health", timeout=2).read()
            return
        except OSError:
            time.sleep(0.3)
    raise UserError(
        f"the MLflow UI server did not answer on port {port} within {timeout:.0f} s: raise --start-timeout or see its messages above."
    )


def _stop(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGINT, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue
