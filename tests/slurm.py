"""A one-node SLURM for the tests, from Debian's packages (slurm-wlm, munge): munged, slurmctld and
slurmd in a folder of their own, with their own ports and state (see ../shared/reference/clusters.md).
`SlurmCluster.start` skips the calling test when the packages are missing or this is not root."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

BINARIES = ("slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "munged", "munge", "unmunge")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ok(cmd: list[str], env=None, timeout: float = 10) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except (subprocess.TimeoutExpired, OSError):
        return None


def _munge_works() -> bool:
    p = _ok(["bash", "-c", "munge -n | unmunge"])
    return p is not None and p.returncode == 0


def start_munge() -> subprocess.Popen | None:
    """munged with a key owned by munge, mode 0400 (started only when none answers)."""
    if _munge_works():
        return None
    key = Path("/etc/munge/munge.key")
    if not key.is_file():
        key.parent.mkdir(parents=True, exist_ok=True)
        key.write_bytes(os.urandom(1024))
    shutil.chown(key, "munge", "munge")
    key.chmod(0o400)
    for d in ("/run/munge", "/var/lib/munge", "/var/log/munge"):
        Path(d).mkdir(parents=True, exist_ok=True)
        shutil.chown(d, "munge", "munge")
    proc = subprocess.Popen(
        ["runuser", "-u", "munge", "--", "munged", "--foreground"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    for _ in range(50):
        if _munge_works():
            return proc
        time.sleep(0.2)
    proc.terminate()
    pytest.skip("munged did not start")


class SlurmCluster:
    def __init__(self, root: Path):
        self.root = root
        self.conf = root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.procs: list[subprocess.Popen] = []
        self.munge: subprocess.Popen | None = None

    @classmethod
    def start(cls, root: Path) -> "SlurmCluster":
        missing = [b for b in BINARIES if shutil.which(b) is None]
        if missing:
            pytest.skip(f"SLURM is not installed (no {', '.join(missing)}): apt-get install slurm-wlm munge")
        if os.geteuid() != 0:
            pytest.skip("the test cluster's daemons run as root")
        cluster = cls(root)
        cluster._start()
        return cluster

    def _start(self) -> None:
        root = self.root
        for d in ("state", "spool", "log"):
            (root / d).mkdir(parents=True, exist_ok=True)
        self.munge = start_munge()
        node = (_ok(["slurmd", "-C"]).stdout.splitlines() or [""])[0]
        node = " ".join(w for w in node.split() if not w.startswith(("NodeName=", "UpTime=")))
        host = socket.gethostname()
        self.conf.write_text(f"""ClusterName=mqvq{os.getpid()}
SlurmctldHost=localhost
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ReturnToService=2
KillWait=10
MinJobAge=300
SchedulerParameters=sched_interval=2
NodeName=localhost NodeHostname={host} NodeAddr=127.0.0.1 {node} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
""")
        self.procs.append(
            subprocess.Popen(
                ["slurmctld", "-D", "-f", str(self.conf)],
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        self._wait(
            lambda: "UP" in ((_ok(["scontrol", "ping"], self.env) or subprocess.CompletedProcess([], 1, "")).stdout),
            "slurmctld",
        )
        self.procs.append(
            subprocess.Popen(
                ["slurmd", "-D", "-N", "localhost", "-f", str(self.conf)],
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        self._wait(
            lambda: (p := _ok(["sinfo", "-h", "-o", "%T"], self.env)) is not None and p.stdout.strip() == "idle",
            "slurmd",
        )

    def _wait(self, ready, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            time.sleep(0.5)
        log = self.root / "log" / f"{what}.log"
        self.stop()
        pytest.skip(
            f"the test cluster's {what} did not come up: {log.read_text()[-500:] if log.is_file() else 'no log'}"
        )

    def run(self, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, env=self.env)

    def wait_idle(self, timeout: float = 240) -> None:
        """Until no job is queued or running."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.run("squeue", "-h").stdout.strip():
                return
            time.sleep(1)
        raise AssertionError(f"jobs still queued after {timeout} s:\n{self.run('squeue').stdout}")

    def stop(self) -> None:
        subprocess.run(["scancel", "--full", "-u", "root"], env=self.env, capture_output=True, timeout=10)
        for p in reversed(self.procs):
            p.terminate()
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        self.procs.clear()
        if self.munge is not None:
            self.munge.terminate()
            self.munge.wait(timeout=10)
