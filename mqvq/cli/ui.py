"""`mqvq ui`: the MLflow UI on this project's store."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Annotated, Optional

import typer

from mqvq.cli.common import Home, TrackingUri, cli_errors, console


@cli_errors
def ui(study: Annotated[Optional[str], typer.Argument(help="open this study's experiment (e.g. ablation-mask)")] = None,
       profile: Annotated[str, typer.Option("--profile", "-p", help="the study's profile")] = "smoke",
       host: Annotated[str, typer.Option(help="interface to listen on (0.0.0.0 for remote access)")] = "127.0.0.1",
       port: Annotated[int, typer.Option(help="port")] = 5000,
       home: Home = None, tracking_uri: TrackingUri = None) -> None:
    """Start the MLflow UI on the store and print the URL (Ctrl-C stops it)."""
    from mqvq.errors import UserError
    from mqvq.studies.plan import study_experiment
    from mqvq.tracking import Tracker

    tracker = Tracker(tracking_uri, home)
    if not tracker.uri.startswith("sqlite:"):
        raise UserError(f"{tracker.uri} is served by its own MLflow server already: open it in a browser.")
    url = f"http://{host}:{port}"
    if study:
        exp = tracker.client.get_experiment_by_name(study_experiment(study, profile))
        if exp is None:
            raise UserError(f"study {study} has no runs at profile {profile} yet: run `mqvq study run {study} --profile {profile}`.")
        url += f"/#/experiments/{exp.experiment_id}"
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracker.uri, "--host", host, "--port", str(port)]
    console.print(f"MLflow UI: {url}  (store {tracker.uri}; Ctrl-C stops it)", highlight=False)
    # the server (and the workers it forks) get a process group of their own, which is stopped as
    # a whole however this command ends: Ctrl-C, `kill`, or a shell that ignores SIGINT
    proc = subprocess.Popen(cmd, start_new_session=True)
    previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        raise typer.Exit(proc.wait())
    except KeyboardInterrupt:
        _stop(proc)
    finally:
        signal.signal(signal.SIGTERM, previous)


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
