#!/usr/bin/env python3
"""Multi-host rehearsal of the MPIJob on one machine: worker "hosts" are network namespaces.

Each worker is a network namespace (its own address on a private bridge, nothing routed out) and a UTS
namespace (its own hostname), running sshd with the image's configuration (docker/sshd_config) on
port 2222 as the non-root user uid 1000. The launcher command is taken from the manifest that
`mpi_infer manifest` renders, run as uid 1000 against a hostfile in the operator's format. Only the
addresses of these namespaces and loopback are ever used.

    sudo python scripts/rehearsal.py --workers 3 --slots 1      # prints a JSON line; exit 0 on success
    sudo python scripts/rehearsal.py --workers 3 --lose-host 2  # --fault-tolerant; every process of worker
                                                                # host 2 is killed mid-run

Needs root (to make the namespaces), iproute2, util-linux (unshare, setpriv), openssh-server and a
system python3 that uid 1000 can run. Exit 77 with the reason when something is missing.
"""

from __future__ import annotations

import argparse
import csv
import fcntl
import hashlib
import json
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP = 77
UID = 1000
# One venv per checkout (two checkouts' suites never install over each other), built under a lock (the same
# checkout's two suites never build it at once).
VENV = f"/opt/mpi_infer-rehearsal/{hashlib.sha256(ROOT.encode()).hexdigest()[:12]}/venv"
NET_LOCK = "/run/lock/mi-rehearsal-net.lock"


class Net:
    """This process's bridge, namespaces and /24: names carry the pid and the subnet is one no interface on this
    machine uses, so two rehearsals (two test suites at once) never meet."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        tag = f"mi{os.getpid()}"
        self.bridge = f"{tag}br"
        self.ns = [f"{tag}w{k}" for k in range(workers)]
        self.host_if = [f"{tag}h{k}" for k in range(workers)]
        self.ns_if = [f"{tag}n{k}" for k in range(workers)]
        self.subnet = ""

    def addr(self, k: int) -> str:
        return f"{self.subnet}.{10 + k}"

    def up(self) -> None:
        """Claims a free 10.211.X.0/24 under a machine-wide lock and brings the bridge and namespaces up."""
        os.makedirs(os.path.dirname(NET_LOCK), exist_ok=True)
        with open(NET_LOCK, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            used = sh("ip -o -4 addr show", check=False).stdout
            free = next((f"10.211.{x}" for x in range(256) if f" 10.211.{x}." not in used), None)
            if free is None:
                raise RuntimeError("no free 10.211.X.0/24 on this machine")
            self.subnet = free
            sh(f"ip link add {self.bridge} type bridge && ip addr add {self.subnet}.1/24 dev {self.bridge} "
               f"&& ip link set {self.bridge} up")
        for k, ns in enumerate(self.ns):
            sh(f"ip netns add {ns}")
            sh(f"ip link add {self.host_if[k]} type veth peer name {self.ns_if[k]}")
            sh(f"ip link set {self.ns_if[k]} netns {ns}")
            sh(f"ip link set {self.host_if[k]} master {self.bridge} && ip link set {self.host_if[k]} up")
            sh(f"ip netns exec {ns} ip addr add {self.addr(k)}/24 dev {self.ns_if[k]}")
            sh(f"ip netns exec {ns} ip link set {self.ns_if[k]} up && ip netns exec {ns} ip link set lo up")

    def down(self) -> None:
        for k, ns in enumerate(self.ns):
            sh(f"ip netns del {ns}", check=False)
            sh(f"ip link del {self.host_if[k]}", check=False)
        sh(f"ip link del {self.bridge}", check=False)


class Skip(Exception):
    pass


def sh(cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, shell=True, check=check, capture_output=True, text=True, **kw)


def preflight() -> str:
    """The name of the uid-1000 user (created as mpiuser if missing); Skip with the reason otherwise."""
    if os.geteuid() != 0:
        raise Skip("needs root to create network namespaces")
    for tool in ("ip", "unshare", "setpriv", "ssh", "ssh-keygen"):
        if not shutil.which(tool):
            raise Skip(f"'{tool}' is not installed")
    if not os.path.exists("/usr/sbin/sshd"):
        raise Skip("openssh-server is not installed (apt-get install openssh-server)")
    if not os.path.exists("/usr/bin/python3"):
        raise Skip("no system /usr/bin/python3 that uid 1000 could run")
    probe = sh(f"ip netns add mi{os.getpid()}probe && ip netns del mi{os.getpid()}probe", check=False)
    if probe.returncode != 0:
        raise Skip(f"cannot create network namespaces: {probe.stderr.strip()}")
    if sh("unshare --uts true", check=False).returncode != 0:
        raise Skip("cannot create UTS namespaces")
    try:
        return pwd.getpwuid(UID).pw_name
    except KeyError:
        sh(f"useradd --create-home --uid {UID} --shell /bin/bash mpiuser")
        return "mpiuser"


def build_venv() -> str:
    """A venv on the system python that uid 1000 can run, with this checkout installed (not editable)."""
    os.makedirs(os.path.dirname(VENV), exist_ok=True)
    with open(os.path.join(os.path.dirname(VENV), "lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _install_venv()


def _install_venv() -> str:
    py = os.path.join(VENV, "bin", "python")
    if not os.path.exists(py):
        os.makedirs(os.path.dirname(VENV), exist_ok=True)
        made = sh(f"/usr/bin/python3 -m venv {VENV}", check=False)
        if made.returncode != 0:
            shutil.rmtree(VENV, ignore_errors=True)
            raise Skip(f"the system python3 cannot make a venv (python3-venv missing?): {made.stderr.strip()[:200]}")
        sh(f"{py} -m pip install --quiet --upgrade pip")
    build = tempfile.mkdtemp(prefix="mi-src-")
    try:
        for name in ("pyproject.toml", "README.md", "mpi_infer"):
            src = os.path.join(ROOT, name)
            (shutil.copytree if os.path.isdir(src) else shutil.copy)(src, os.path.join(build, name))
        sh(f"{py} -m pip install --quiet '{build}[mpi]'")
        sh(f"{py} -m pip install --quiet --no-deps --force-reinstall '{build}'")
    finally:
        shutil.rmtree(build, ignore_errors=True)
    sh(f"chmod a+rX {os.path.dirname(os.path.dirname(VENV))}")
    sh(f"chmod -R a+rX {os.path.dirname(VENV)}")
    return py


def sshd_config(work: str, k: int, net: Net) -> str:
    """The image's sshd_config with this rehearsal's paths."""
    with open(os.path.join(ROOT, "docker", "sshd_config")) as fh:
        text = fh.read()
    text = text.replace("/home/mpiuser/.ssh/id_rsa", f"{work}/ssh/id_rsa")
    text = text.replace("/home/mpiuser/.ssh/authorized_keys", f"{work}/ssh/authorized_keys")
    text = text.replace("/tmp/sshd.pid", f"{work}/sshd-{k}.pid")
    text = text.replace("SetEnv PATH=/opt/venv/bin", f"SetEnv PATH={VENV}/bin")
    text += f"ListenAddress {net.addr(k)}\n"
    path = os.path.join(work, f"sshd_config-{k}")
    with open(path, "w") as fh:
        fh.write(text)
    return path


def wait_port(host: str, port: int, timeout: float = 20) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"sshd on {host}:{port} did not come up")


def kill_host_when_busy(k: int, ns: str, ledger: str, proc: subprocess.Popen, timeout: float = 120,
                        only: str | None = None) -> dict:
    """Once worker host ``k``'s first rank has a batch in its ledger, SIGKILL every process of the host (its sshd,
    Open MPI's daemon and its ranks), as a lost node would vanish; or only those named ``only`` (the ranks: an
    OOM kill). What was killed, and when."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        if os.path.exists(ledger) and os.path.getsize(ledger) > 0:
            break
        time.sleep(0.05)
    pids = sh(f"ip netns pids {ns}", check=False).stdout.split()
    names = [sh(f"ps -o comm= -p {p}", check=False).stdout.strip() for p in pids]
    if only:
        pids = [p for p, n in zip(pids, names) if n == only]
        names = [only] * len(pids)
    sh(f"kill -9 {' '.join(pids)}", check=False) if pids else None
    with open(ledger) as fh:
        done = sum(1 for _ in fh)
    return {"killed_host": k, "killed_processes": sorted(n for n in names if n), "its_rank_had_done": done}


def equal_to_local(py: str, work: str) -> bool:
    """The rehearsal's per-image scores equal one local process's on the same data and model."""
    sh(f"{py} -m mpi_infer run --dataset {work}/data/dataset.yml --model demo --out {work}/local --split all "
       f"--batch-size 4 --quiet")

    def load(d: str) -> list[tuple]:
        with open(f"{d}/per_image.csv", newline="") as fh:
            return [(r["index"], r["status"], r["dice"], r["iou"]) for r in csv.DictReader(fh)]
    return load(f"{work}/out") == load(f"{work}/local")


def rehearse(workers: int, slots: int, images: int, drop_hostfile: bool = False, lose_host: int = -1,
             fault_tolerant: bool = True, lose_rank: int = -1) -> dict:
    user = preflight()
    py = build_venv()
    work = tempfile.mkdtemp(prefix="mi-rehearsal-", dir="/tmp")
    os.chmod(work, 0o755)
    sshds: list[subprocess.Popen] = []
    net = Net(workers)
    try:
        sh(f"{py} -m mpi_infer synth {work}/data --n {images} --seed 11")
        os.makedirs(f"{work}/ssh")
        sh(f"ssh-keygen -q -t rsa -b 2048 -N '' -f {work}/ssh/id_rsa")
        shutil.copy(f"{work}/ssh/id_rsa.pub", f"{work}/ssh/authorized_keys")
        names = [f"rehearsal-worker-{k}" for k in range(workers)]
        net.up()
        with open(f"{work}/ssh/config", "w") as fh:
            for k, name in enumerate(names):
                fh.write(f"Host {name}.rehearsal.default.svc\n  HostName {net.addr(k)}\n  User {user}\n"
                         f"  IdentityFile {work}/ssh/id_rsa\n  Port 2222\n  StrictHostKeyChecking yes\n"
                         f"  UserKnownHostsFile /dev/null\n  KnownHostsCommand /usr/bin/awk \"{{print \\\"* \\\" $1 "
                         f"\\\" \\\" $2}}\" {work}/ssh/id_rsa.pub\n"  # the one host key: as docker/ssh_config
                         f"  LogLevel ERROR\n  ConnectionAttempts 10\n")
        with open(f"{work}/hostfile", "w") as fh:  # the operator's format for Open MPI
            fh.writelines(f"{name}.rehearsal.default.svc slots={slots}\n" for name in names)
        sh(f"chown -R {UID}:{UID} {work}")

        def start_sshd(k: int) -> None:
            cfg = sshd_config(work, k, net)
            os.chown(cfg, UID, UID)
            inner = (f"hostname {names[k]} && exec setpriv --reuid={UID} --regid={UID} --clear-groups "
                     f"/usr/sbin/sshd -D -e -f {cfg}")
            with open(f"{work}/sshd-{k}.log", "a") as log:
                sshds.append(subprocess.Popen(
                    ["ip", "netns", "exec", net.ns[k], "unshare", "--uts", "sh", "-c", inner],
                    stdout=log, stderr=subprocess.STDOUT))
            wait_port(net.addr(k), 2222)

        for k in range(workers):
            start_sshd(k)

        sys.path.insert(0, ROOT)
        from mpi_infer.launch.k8s import HOSTFILE, render

        docs = render(name="rehearsal", namespace="default", workers=workers, slots=slots, image="local",
                      pvc="local", dataset=f"{work}/data/dataset.yml", model="demo", out=f"{work}/out",
                      run_args=["--split", "all", "--batch-size", "4"],
                      fault_tolerant=(lose_host >= 0 or lose_rank >= 0) and fault_tolerant)
        job = next(d for d in docs if d["kind"] == "MPIJob")
        c = job["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]
        command = [f"{work}/hostfile" if a == HOSTFILE else a for a in c["command"] + c["args"]]
        if drop_hostfile:  # what Open MPI 5 does with the operator's variable: every rank on the launcher
            at = command.index("--hostfile")
            del command[at : at + 2]
        env = {"PATH": f"{VENV}/bin:/usr/bin:/bin", "HOME": work, "LANG": "C.UTF-8",
               "PRTE_MCA_plm_ssh_args": f"-F {work}/ssh/config",
               "PRTE_MCA_oob_tcp_if_include": f"{net.subnet}.0/24", "OMPI_MCA_btl_tcp_if_include": f"{net.subnet}.0/24",
               "MPIEXEC_TIMEOUT": "180", **json.loads(os.environ.get("REHEARSAL_ENV", "{}"))}
        t0 = time.monotonic()
        proc = subprocess.Popen(["setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups", *command],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=work)
        lost = {}
        if lose_host >= 0 or lose_rank >= 0:
            k = max(lose_host, lose_rank)
            lost = kill_host_when_busy(k, net.ns[k], f"{work}/out/ledger/attempt-000-rank-{k * slots:05d}.jsonl", proc,
                                       only="python" if lose_rank >= 0 else None)
        try:
            stdout, stderr = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        proc = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
        with open(f"{work}/launcher.log", "w") as fh:
            fh.write(stdout + "\n--- stderr ---\n" + stderr)
        wall = time.monotonic() - t0
        result = {"figure": "rehearsal", "workers": workers, "slots": slots, "returncode": proc.returncode,
                  "wall_s": round(wall, 2), "command": shlex.join(command), "work": work, **lost}
        if lost and proc.returncode >= 128:  # retryable: the launcher Job retries
            # Open MPI's runtime cannot survive a lost daemon: mpirun ended the job (exit 0, which supervise made
            # 200). Do what the MPIJob does: the worker restarts in place (OnFailure), the launcher Job retries the
            # same command (it carries --resume).
            result["first_attempt"] = {"returncode": proc.returncode, "wall_s": result["wall_s"],
                                       "said": [ln for ln in proc.stderr.splitlines()
                                                if "lost communication" in ln or "supervise:" in ln]}
            if lose_host >= 0:
                start_sshd(lose_host)
            t1 = time.monotonic()
            proc = subprocess.run(["setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups", *command],
                                  env=env, capture_output=True, text=True, cwd=work, timeout=240)
            result.update(returncode=proc.returncode, retry_wall_s=round(time.monotonic() - t1, 2), restarts=1)
        if proc.returncode != 0 or not os.path.exists(f"{work}/out/summary.json"):
            logs = ""
            for k in range(workers):
                with open(f"{work}/sshd-{k}.log") as fh:
                    logs += fh.read()
            result["stderr"] = proc.stderr[-4000:] + "\nsshd logs:\n" + logs[-2000:]
            return result
        with open(f"{work}/out/summary.json") as fh:
            summary = json.load(fh)
        result.update(hosts=summary["hosts"], world_size=summary["world_size"],
                      images=summary["images"], per_image_csv=f"{work}/out/per_image.csv",
                      dataset=f"{work}/data/dataset.yml")
        if "fault_tolerance" in summary:
            result["fault_tolerance"] = {k: v for k, v in summary["fault_tolerance"].items() if k != "rerun_indices"}
        if lost:
            result["equal_to_local_run"] = equal_to_local(py, work)
        return result
    finally:
        for p in sshds:
            p.terminate()
        for p in sshds:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
        net.down()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--slots", type=int, default=1)
    ap.add_argument("--images", type=int, default=12)
    ap.add_argument("--drop-hostfile", action="store_true",
                    help="leave out --hostfile (the Open MPI 5 trap): the run must fail with exit 13")
    ap.add_argument("--lose-host", type=int, default=-1, metavar="K",
                    help="run with --fault-tolerant (mpirun --with-ft ulfm) and kill every process of worker host K "
                         "(not 0: rank 0 lives there) mid-run; the survivors must finish")
    ap.add_argument("--lose-rank", type=int, default=-1, metavar="K",
                    help="the same, killing only the ranks (python) of worker host K: Open MPI's daemon survives")
    ap.add_argument("--plain", action="store_true", help="with --lose-host/--lose-rank: without --fault-tolerant")
    args = ap.parse_args()
    try:
        result = rehearse(args.workers, args.slots, args.images, args.drop_hostfile, args.lose_host, not args.plain,
                          args.lose_rank)
    except Skip as why:
        print(json.dumps({"figure": "rehearsal", "skipped": str(why)}))
        return SKIP
    print(json.dumps(result))
    if args.lose_host >= 0 or args.lose_rank >= 0:
        return 0 if result["returncode"] == 0 and result.get("equal_to_local_run") else 1
    return 0 if result["returncode"] == (13 if args.drop_hostfile else 0) else 1


if __name__ == "__main__":
    sys.exit(main())
