"""A real single-node Slurm for the tests: munged, slurmctld and slurmd from the distribution's packages
(Debian: ``apt-get install slurmctld slurmd slurm-client munge``), configured for this host with 2 CPUs in a
temporary directory (their own key, sockets, ports, state and logs), started in a few seconds and stopped
afterwards. `start` returns None with the reason when Slurm cannot be started here."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
COMMANDS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo")


@dataclass
class Cluster:
    root: Path
    conf: Path
    pids: dict[str, int]

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": os.fspath(self.conf)}

    def run(self, *cmd: str) -> str:
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, check=True, timeout=60).stdout

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-15:])
            for p in sorted(self.root.glob("*.log"))
        )

    def stop(self) -> None:
        """Cancel every job, then stop slurmd, slurmctld and munged (started here, stopped by pid)."""
        subprocess.run(["scancel", "--user", str(os.getuid())], env=self.env, capture_output=True, timeout=30)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and self.run("squeue", "-h").strip():
            time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            pid = self.pids.get(name) or _pid(self.root / f"{name}.pid", timeout_s=0.5, default=0)
            if pid:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
                for _ in range(100):
                    try:
                        os.kill(pid, 0)
                    except ProcessLookupError:
                        break
                    time.sleep(0.05)


def _pid(path: Path, timeout_s: float = 10.0, default: int | None = None) -> int:
    """The pid a daemon writes once it has forked into the background (``default``, if given, when none)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return int(path.read_text())
        except (OSError, ValueError):
            if time.monotonic() > deadline:
                if default is not None:
                    return default
                raise
            time.sleep(0.05)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sbin(name: str) -> str | None:
    return shutil.which(name) or next((p for p in (f"/usr/sbin/{name}",) if os.access(p, os.X_OK)), None)


def start(root: Path, cpus: int = 2, timeout_s: float = 30.0) -> Cluster | str:
    """Start the cluster under ``root``; a Cluster, or the reason it cannot run here."""
    missing = [n for n in DAEMONS if _sbin(n) is None] + [c for c in COMMANDS if shutil.which(c) is None]
    if missing:
        packages = "slurmctld slurmd slurm-client munge"
        return f"Slurm is not installed ({', '.join(missing)} missing): apt-get install {packages}"
    if os.geteuid() != 0:
        return "starting slurmd needs root"
    root.mkdir(parents=True, exist_ok=True)
    (root / "state").mkdir(exist_ok=True)
    (root / "spool").mkdir(exist_ok=True)
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    sock = root / "munge.sock"
    host = socket.gethostname().split(".")[0]
    conf = root / "slurm.conf"
    conf.write_text(
        f"""ClusterName=muonlabtest
SlurmctldHost={host}(127.0.0.1)
AuthType=auth/munge
AuthInfo=socket={sock}
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
StateSaveLocation={root / "state"}
SlurmdSpoolDir={root / "spool"}
SlurmctldPidFile={root / "slurmctld.pid"}
SlurmdPidFile={root / "slurmd.pid"}
SlurmctldLogFile={root / "slurmctld.log"}
SlurmdLogFile={root / "slurmd.log"}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
ReturnToService=2
MpiDefault=none
JobRequeue=1
KillWait=5
MinJobAge=600
InactiveLimit=0
SlurmctldTimeout=10
SlurmdTimeout=10
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
    )
    env = {**os.environ, "SLURM_CONF": os.fspath(conf)}
    cluster = Cluster(root, conf, {})
    try:
        subprocess.run(
            [_sbin("munged") or "munged", "--force", f"--key-file={key}", f"--socket={sock}",
             f"--pid-file={root / 'munged.pid'}", f"--log-file={root / 'munged.log'}",
             f"--seed-file={root / 'munge.seed'}"],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        cluster.pids["munged"] = _pid(root / "munged.pid")
        subprocess.run([_sbin("slurmctld") or "slurmctld", "-i"], env=env, check=True, capture_output=True, timeout=30)
        cluster.pids["slurmctld"] = _pid(root / "slurmctld.pid")
        subprocess.run([_sbin("slurmd") or "slurmd"], env=env, check=True, capture_output=True, timeout=30)
        cluster.pids["slurmd"] = _pid(root / "slurmd.pid")
    except (subprocess.SubprocessError, OSError, ValueError) as exc:
        cluster.stop()
        return f"Slurm did not start ({exc}):\n{cluster.logs()}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True).stdout.strip()
        if state == "idle":
            return cluster
        time.sleep(0.25)
    cluster.stop()
    return f"Slurm's node did not become idle in {timeout_s} s (sinfo: {state!r}):\n{cluster.logs()}"
