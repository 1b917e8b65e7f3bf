"""A real one-node Slurm on this machine (for the tests and scripts/bench_parts.py): munged, slurmctld and slurmd
from Debian's packages (slurm-wlm, munge, libpmix-dev for srun --mpi=pmix), every key, state, spool, socket and
log file in one temporary folder, free ports, and only the daemons it started stopped, by their pids. Needs root
(slurmd starts jobs as their user)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scontrol")


def missing() -> str | None:
    """Why no cluster can start here, or None."""
    if os.geteuid() != 0:
        return "needs root (slurmd runs the jobs as their users)"
    absent = [d for d in DAEMONS if not shutil.which(d) and not os.path.exists(f"/usr/sbin/{d}")]
    if absent:
        return f"no {', '.join(absent)} (apt-get install slurm-wlm munge libpmix-dev: scripts/system_deps.sh)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlurmCluster:
    """``with SlurmCluster(folder) as c: c.env`` (SLURM_CONF set) for sbatch, srun and squeue."""

    def __init__(self, folder: Path, cpus: int = 4):
        self.dir = Path(folder)
        self.cpus = cpus
        self.procs: list[subprocess.Popen] = []
        self.host = socket.gethostname().split(".")[0]
        self.env = {**os.environ, "SLURM_CONF": str(self.dir / "slurm.conf")}

    def __enter__(self) -> SlurmCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        d = self.dir
        for sub in ("munge", "state", "spool", "log"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o755)  # munged refuses a socket folder others cannot enter
        os.chmod(d / "munge", 0o755)
        key = d / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        sock = d / "munge" / "munge.socket"
        self._spawn(["munged", "--foreground", "--force", f"--socket={sock}", f"--key-file={key}",
                     f"--log-file={d / 'log' / 'munged.log'}", f"--pid-file={d / 'munge' / 'munged.pid'}",
                     f"--seed-file={d / 'munge' / 'munged.seed'}"], "munged")
        self._wait(sock.exists, "munged's socket")
        (d / "plugstack.conf").write_text("")
        (d / "slurm.conf").write_text("\n".join([
            "ClusterName=mpiinfer-test", f"SlurmctldHost={self.host}(127.0.0.1)",
            f"SlurmctldPort={free_port()}", f"SlurmdPort={free_port()}",
            # cred_expire=10: a requeued job may start again after 11 s, not the default 120
            "AuthType=auth/munge", f"AuthInfo=socket={sock},cred_expire=10", "CredType=cred/munge",
            "SlurmUser=root", "SlurmdUser=root", f"StateSaveLocation={d / 'state'}", f"SlurmdSpoolDir={d / 'spool'}",
            f"SlurmctldPidFile={d / 'slurmctld.pid'}", f"SlurmdPidFile={d / 'slurmd.pid'}",
            f"SlurmctldLogFile={d / 'log' / 'slurmctld.log'}", f"SlurmdLogFile={d / 'log' / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "SlurmdParameters=config_overrides",
            "SchedulerType=sched/builtin", "SchedulerParameters=sched_interval=2", "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU", "ReturnToService=2", "MpiDefault=none", "JobCompType=jobcomp/none",
            "AccountingStorageType=accounting_storage/none", "MailProg=/bin/true",
            f"PlugStackConfig={d / 'plugstack.conf'}",
            f"NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory=4000 State=UNKNOWN",
            f"PartitionName=test Nodes={self.host} Default=YES MaxTime=INFINITE State=UP", ""]))
        conf = str(d / "slurm.conf")
        self._spawn(["slurmctld", "-D", "-i", "-f", conf], "slurmctld")
        self._spawn(["slurmd", "-D", "-f", conf, "-N", self.host], "slurmd")
        self._wait(self._node_up, "the node to come up (sinfo)", 60)

    def _spawn(self, cmd: list[str], name: str) -> None:
        with open(self.dir / "log" / f"{name}.out", "w") as log:  # the child keeps its own descriptor
            self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                               start_new_session=True))

    def _node_up(self) -> bool:
        for p in self.procs:
            if p.poll() is not None:
                raise RuntimeError(f"{p.args[0]} exited {p.returncode}: {self.logs()}")
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, env=self.env)
        return out.returncode == 0 and out.stdout.strip() in ("idle", "mix", "alloc")

    def _wait(self, ready, what: str, timeout: float = 20) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if ready():
                return
            time.sleep(0.3)
        raise RuntimeError(f"timed out waiting for {what}: {self.logs()}")

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}"
                         for p in sorted((self.dir / "log").glob("*")))

    def wait_idle(self, timeout: float = 240) -> None:
        """Until no job is pending or running."""
        def idle() -> bool:
            out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, env=self.env)
            return out.returncode == 0 and not out.stdout.strip()
        self._wait(idle, "the queue to empty", timeout)

    def stop(self) -> None:
        for p in reversed(self.procs):  # only ours, by pid: slurmd (and its steps), slurmctld, munged
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, 15)
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, 9)
                p.wait()
