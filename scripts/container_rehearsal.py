#!/usr/bin/env python3
"""An MPIJob rehearsed in real containers (podman): the launcher and the workers run the built image as the
operator would run its pods.

- Workers: ``/usr/sbin/sshd -De -f /home/mpiuser/.sshd_config`` from the image, as uid 1000, every capability
  dropped, no-new-privileges, on an ``--internal`` podman network (no route off this machine), each with the
  hostname the operator gives its pod.
- The ssh secret mounted the way mpi-operator mounts it at a non-root ``sshAuthMountPath``: root-owned files of
  mode 0644 (id_rsa, id_rsa.pub, authorized_keys) at /home/mpiuser/.ssh, read-only; the key is also sshd's host key.
- The launcher's environment as the operator sets it for Open MPI (``OMPI_MCA_orte_keep_fqdn_hostnames=true``,
  the default hostfile, ssh connection attempts, default slots).
- A hostfile in the operator's format (``<job>-worker-<i>.<job>.<namespace>.svc slots=S``) at /etc/mpi/hostfile,
  names resolved through ``--add-host`` (fixed addresses on the rehearsal's subnet).
- The launcher's command is taken from the MPIJob that ``mpi_infer manifest`` renders; the dataset (made by the
  image itself) and the output are on one shared volume, as the NFS claim would be.
- A local run (one container, one process) of the same model and data is the reference: the rehearsal's
  per-image records must equal it image for image. ``--drop-hostfile`` runs the same command without
  ``--hostfile``, which must fail with exit 13 (Open MPI 5 ignores the operator's hostfile variable).
- ``--kill-rank K`` renders the MPIJob with ``--fault-tolerant`` and SIGKILLs the rank inside worker container K
  mid-run (what the kernel's OOM killer does to a pod's biggest process): the survivors must finish, exit 0.
  ``--kill-worker K`` kills worker container K itself (a lost pod: sshd, Open MPI's daemon and the rank): the
  launcher exits with a retryable code; the rehearsal starts the container anew from the image (the kubelet's
  OnFailure restart) and runs the launcher again (the Job's retry, ``--resume``), which must complete.
  ``--evict-launcher`` stops every container of the job at once, as a node drain or a preemption stops its pods
  (SIGTERM, a 30 s grace period): the ranks stop with the retryable 202 and supervise passes a retryable code
  on; new worker containers start and the Job's retry (a new launcher, ``--resume``) must complete with the local
  run's results.

- ``--kind trainjob`` rehearses Kubeflow Trainer's TrainJob instead, as Trainer's MPI plugin and JobSet lay it
  out: workers named ``<job>-node-0-<i>``, the hostfile of their endpoints ``<job>-node-0-<i>.<job> slots=S``, the
  SSH secret as Trainer makes it (an ECDSA P-521 key pair in PEM; the private key root-owned with mode 0640 and
  the pod's fsGroup, the rest 0644), the launcher started once every worker's sshd is up (JobSet's dependsOn
  Ready), its command taken from the rendered TrainingRuntime.

- ``--kind indexed-job`` rehearses the Indexed Job instead (no MPI, no ssh): the merge pod and one pod per part
  start together, each part's command taken from the rendered Job with ``$(MPI_INFER_PART)`` expanded as the
  kubelet expands it; ``--kill-worker K`` kills part K's container mid-run and starts it anew (the Job's retry of
  that index, ``--resume``). The merge must wait for every part and equal the local run image for image.

    sudo python scripts/container_rehearsal.py --image localhost/mpi-infer:latest --workers 3
    sudo python scripts/container_rehearsal.py --image localhost/mpi-infer:latest --kind indexed-job --workers 3
    sudo python scripts/container_rehearsal.py --image localhost/mpi-infer:latest --kind trainjob --workers 3
    # one JSON line; exit 0 on success, 77 (with the reason) where podman or the image is missing
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP = 77
UID = 1000
JOB, NAMESPACE = "rehearsal", "default"
# As the rendered pods run: non-root, no capabilities, no privilege escalation, a read-only root file system
# (podman mounts tmpfs on /tmp, /run and /var/tmp, as the pods' emptyDir on /tmp)
SECURITY = ["--user", f"{UID}:{UID}", "--cap-drop=ALL", "--security-opt=no-new-privileges", "--read-only"]


class Skip(Exception):
    pass


def podman(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"podman {shlex.join(args)} -> {proc.returncode}: {proc.stderr[-2000:]}")
    return proc


def preflight(image: str) -> None:
    if os.geteuid() != 0:
        raise Skip("needs root (podman's bridge networks and the operator-style root-owned secret)")
    if not shutil.which("podman"):
        raise Skip("podman is not installed (apt-get install podman buildah debootstrap runc uidmap)")
    if podman("image", "exists", image, check=False).returncode != 0:
        raise Skip(f"image {image} is not built (sudo bash scripts/build_images.sh)")


def rows(out: str) -> list[dict[str, str]]:
    with open(os.path.join(out, "per_image.csv"), newline="") as fh:
        return list(csv.DictReader(fh))


def same_records(a: list[dict[str, str]], b: list[dict[str, str]]) -> bool:
    keys = [k for k in ("index", "split", "status", "iou", "dice", "predicted") if k in (a[0] if a else {})]
    def pick(rs: list[dict[str, str]]) -> list[tuple]:
        return [tuple(r[k] for k in keys) for r in rs]
    return bool(a) and pick(a) == pick(b)


def launcher_command(workers: int, slots: int, model: str, run_args: list[str], fault_tolerant: bool = False,
                     kind: str = "mpijob") -> list[str]:
    """The launcher container's command line, from the MPIJob (or the TrainingRuntime) ``manifest`` renders."""
    sys.path.insert(0, ROOT)
    from mpi_infer.launch.k8s import render
    from mpi_infer.launch.trainjob import render_trainjob

    docs = (render_trainjob if kind == "trainjob" else render)(
        name=JOB, namespace=NAMESPACE, workers=workers, slots=slots, image="local", pvc="local",
        dataset="/data/data/dataset.yml", model=model, out="/data/out", run_args=run_args,
        fault_tolerant=fault_tolerant)
    if kind == "trainjob":
        runtime = next(d for d in docs if d["kind"] == "TrainingRuntime")
        launcher = next(j for j in runtime["spec"]["template"]["spec"]["replicatedJobs"] if j["name"] == "launcher")
        c = launcher["template"]["spec"]["template"]["spec"]["containers"][0]
    else:
        job = next(d for d in docs if d["kind"] == "MPIJob")
        c = job["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]
    return c["command"] + c["args"]


def kill_when_busy(cid: str, ledger: str, launcher: str, how: str, timeout: float = 300) -> dict:
    """Once the rank in container ``cid`` has a batch in its ledger: SIGKILL the container (``container``) or the
    rank (``rank``), or evict the container (``evict``: SIGTERM, then SIGKILL after a 30 s grace period, as the
    kubelet evicts or preempts a pod)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if os.path.exists(ledger) and os.path.getsize(ledger) > 0:
            break
        if podman("inspect", "-f", "{{.State.Running}}", launcher, check=False).stdout.strip() != "true":
            break
        time.sleep(0.05)
    with open(ledger) as fh:
        done = sum(1 for _ in fh)
    if how == "container":
        podman("kill", "-s", "KILL", cid, check=False)
    elif how == "evict":  # every container of the job at once, as a node drain or a preemption stops every pod
        stops = [subprocess.Popen(["podman", "stop", "-t", "30", c], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL) for c in cid.split(",")]
        for p in stops:
            p.wait(timeout=90)
    else:
        podman("exec", cid, "pkill", "-KILL", "-f", "mpi_infer run", check=False)
    return {"killed": how, "its_rank_had_done": done}


def network_prefix(net: str) -> str:
    """The first three octets of the /24 that podman picked for ``net``: no fixed subnet, so two rehearsals (two
    test suites on one machine) never ask for the same one."""
    info = json.loads(podman("network", "inspect", net).stdout)[0]
    subnet = info["subnets"][0]["subnet"]
    if not subnet.endswith(".0/24"):
        raise RuntimeError(f"podman gave network {net} the subnet {subnet}; expected a /24")
    return subnet[: -len(".0/24")]


def run_launcher(net: str, subnet: str, name: str, mounts: list[str], hosts: list[str], hostfile: str, slots: int,
                 image: str, command: list[str], kill: tuple[str, str, str] | None, hostname: str = f"{JOB}-launcher"
                 ) -> tuple[int, str, float, dict]:
    """The launcher pod: its exit code, its stderr, its wall time, and what was killed meanwhile."""
    t0 = time.monotonic()
    podman("run", "-d", "--name", name, "--hostname", hostname, "--network", net, "--ip", f"{subnet}.5",
           *SECURITY, *mounts, *hosts, "-v", f"{hostfile}:/etc/mpi/hostfile:ro", "-e", "MPIEXEC_TIMEOUT=300",
           *operator_env(slots), image, *command)
    killed = kill_when_busy(kill[0] or name, kill[1], name, kill[2]) if kill else {}
    code = int(podman("wait", name, timeout=420).stdout.strip().splitlines()[-1])
    wall = time.monotonic() - t0
    logs = podman("logs", name, check=False)
    podman("rm", "-f", name, check=False)
    return code, logs.stderr + logs.stdout, wall, killed


def rehearse(image: str, workers: int, slots: int, images: int, model: str, drop_hostfile: bool,
             reference: str | None, run_args: list[str], kill_rank: int = -1, kill_worker: int = -1,
             evict_launcher: bool = False, kind: str = "mpijob") -> dict:
    preflight(image)
    work = tempfile.mkdtemp(prefix="mi-crehearsal-", dir="/var/tmp")
    os.chmod(work, 0o755)
    net = f"mi-rehearsal-{os.getpid()}"
    trainer = kind == "trainjob"
    names = [f"{JOB}-node-0-{k}" if trainer else f"{JOB}-worker-{k}" for k in range(workers)]
    containers: list[str] = []
    result: dict = {"figure": "container_rehearsal", "kind": kind, "image": image, "workers": workers,
                    "slots": slots}
    try:
        # the shared volume (the NFS claim): data made by the image itself, writable by uid 1000
        shared = os.path.join(work, "shared")
        os.makedirs(shared)
        os.chown(shared, UID, UID)
        podman("run", "--rm", *SECURITY, "--network=none", "-v", f"{shared}:/data", image,
               "mpi_infer", "synth", "/data/data", "--n", str(images), "--seed", "11")
        # the ssh secret as mpi-operator mounts it (root-owned, mode 0644, read-only), or as Trainer's MPI plugin
        # makes and mounts it (an ECDSA P-521 key in PEM; the private key 0640 with the pod's fsGroup)
        secret = os.path.join(work, "ssh")
        os.makedirs(secret)
        key = ["-t", "ecdsa", "-b", "521", "-m", "PEM"] if trainer else ["-t", "rsa", "-b", "2048"]
        subprocess.run(["ssh-keygen", "-q", *key, "-N", "", "-f", f"{secret}/id_rsa"], check=True)
        shutil.copy(f"{secret}/id_rsa.pub", f"{secret}/authorized_keys")
        for f in os.listdir(secret):
            os.chmod(os.path.join(secret, f), 0o644)
        if trainer:
            os.chown(f"{secret}/id_rsa", 0, UID)
            os.chmod(f"{secret}/id_rsa", 0o640)
        hostfile = os.path.join(work, "hostfile")
        fqdn = [f"{n}.{JOB}" if trainer else f"{n}.{JOB}.{NAMESPACE}.svc" for n in names]  # Trainer's endpoints
        with open(hostfile, "w") as fh:
            fh.writelines(f"{h} slots={slots}\n" for h in fqdn)
        os.chmod(hostfile, 0o644)
        podman("network", "create", "--internal", net)
        subnet = network_prefix(net)
        mounts = ["-v", f"{secret}:/home/mpiuser/.ssh:ro", "-v", f"{shared}:/data"]
        hosts = [a for k, h in enumerate(fqdn) for a in ("--add-host", f"{h}:{subnet}.{10 + k}")]
        def start_worker(k: int) -> str:
            return podman("run", "-d", "--name", f"{net}-{names[k]}", "--hostname", names[k], "--network", net,
                          "--ip", f"{subnet}.{10 + k}", *SECURITY, *mounts, *hosts, image,
                          "/usr/sbin/sshd", "-De", "-f", "/home/mpiuser/.sshd_config").stdout.strip()

        containers.extend(start_worker(k) for k in range(workers))
        wait_for_sshd(containers)
        victim = max(kill_rank, kill_worker)
        command = launcher_command(workers, slots, model, run_args, fault_tolerant=victim >= 0, kind=kind)
        if drop_hostfile:
            at = command.index("--hostfile")
            del command[at : at + 2]
        kill = None
        if victim >= 0:
            ledger = os.path.join(shared, "out", "ledger", f"attempt-000-rank-{victim * slots:05d}.jsonl")
            kill = (containers[victim], ledger, "container" if kill_worker >= 0 else "rank")
        elif evict_launcher:  # once rank 0 (in worker 0) has a batch done, every container gets SIGTERM at once
            kill = (",".join([f"{net}-launcher", *containers]),
                    os.path.join(shared, "out", "ledger", "attempt-000-rank-00000.jsonl"), "evict")
        # JobSet creates the launcher once every node pod is Ready: the workers' sshd is up (wait_for_sshd above)
        launcher_host = f"{JOB}-launcher-0-0" if trainer else f"{JOB}-launcher"
        code, stderr, wall, killed = run_launcher(net, subnet, f"{net}-launcher", mounts, hosts, hostfile, slots, image,
                                                  command, kill, launcher_host)
        result.update(returncode=code, wall_s=round(wall, 2), command=shlex.join(command), **killed)
        if evict_launcher and code >= 128:  # stopped as a retry: new pods, the Job's new launcher, --resume
            result["first_attempt"] = {"returncode": code, "said": [ln for ln in stderr.splitlines()
                                                                    if "interrupted" in ln or "supervise" in ln][:3]}
            for k in range(workers):  # the evicted workers' pods come back (new containers from the image)
                podman("rm", "-f", "-t", "0", containers[k], check=False)
                containers[k] = start_worker(k)
            wait_for_sshd(containers)
            code, stderr, wall, _ = run_launcher(net, subnet, f"{net}-launcher", mounts, hosts, hostfile, slots, image,
                                                 command, None)
            result.update(returncode=code, retry_wall_s=round(wall, 2), restarts=1)
        if kill_worker >= 0 and code >= 128:  # retryable: the kubelet restarts the worker, the Job the launcher
            result["first_attempt"] = {"returncode": code, "said": [ln for ln in stderr.splitlines()
                                                                    if "lost communication" in ln
                                                                    or "supervise:" in ln or "daemon" in ln][:4]}
            # The kubelet restarts a container from its image: a fresh writable layer, so nothing the killed
            # daemon left in /tmp (its PMIx rendezvous files) meets the new one, which may get the same pid.
            podman("rm", "-f", "-t", "0", containers[kill_worker])
            containers[kill_worker] = start_worker(kill_worker)
            wait_for_sshd([containers[kill_worker]])
            code, stderr, wall, _ = run_launcher(net, subnet, f"{net}-launcher", mounts, hosts, hostfile, slots, image,
                                                 command, None)
            result.update(returncode=code, retry_wall_s=round(wall, 2), restarts=1)
        if code != 0:
            result["stderr"] = stderr[-3000:]
            return result
        out = os.path.join(shared, "out")
        with open(os.path.join(out, "summary.json")) as fh:
            summary = json.load(fh)
        result.update(hosts=summary["hosts"], world_size=summary["world_size"], images=summary["images"],
                      loader=summary["backend"]["loader"], engine=summary["backend"]["engine"])
        if "fault_tolerance" in summary:
            result["fault_tolerance"] = {k: v for k, v in summary["fault_tolerance"].items() if k != "rerun_indices"}
        # the reference: the same model on the same data in one container, one process, no network
        local = os.path.join(shared, "local")
        podman("run", "--rm", *SECURITY, "--network=none", "-v", f"{shared}:/data", reference or image,
               "mpi_infer", "run", "--dataset", "/data/data/dataset.yml", "--model", model, "--out", "/data/local",
               *run_args, "--quiet", timeout=420)
        result["equal_to_local_run"] = same_records(rows(out), rows(local))
        result["reference_image"] = reference or image
        return result
    finally:
        for cid in containers:
            podman("rm", "-f", "-t", "2", cid, check=False)
        podman("network", "rm", "-f", net, check=False)
        shutil.rmtree(work, ignore_errors=True)


def rehearse_indexed(image: str, parts: int, images: int, model: str, run_args: list[str], kill_part: int = -1
                     ) -> dict:
    """The Indexed Job and its merge Job in containers (see the module's docstring)."""
    sys.path.insert(0, ROOT)
    from mpi_infer.launch.k8s import PART_INDEX_ENV, render_indexed_job

    preflight(image)
    work = tempfile.mkdtemp(prefix="mi-irehearsal-", dir="/var/tmp")
    os.chmod(work, 0o755)
    result: dict = {"figure": "indexed_job_rehearsal", "image": image, "parts": parts}
    containers: list[str] = []
    try:
        shared = os.path.join(work, "shared")
        os.makedirs(shared)
        os.chown(shared, UID, UID)
        volume = ["-v", f"{shared}:/data"]
        podman("run", "--rm", *SECURITY, "--network=none", *volume, image,
               "mpi_infer", "synth", "/data/data", "--n", str(images), "--seed", "11")
        docs = render_indexed_job(name=JOB, namespace=NAMESPACE, parts=parts, parallel=None, image="local",
                                  pvc="local", dataset="/data/data/dataset.yml", model=[model], out="/data/out",
                                  run_args=run_args, deadline=600)
        pods = {d["metadata"]["name"]: d["spec"]["template"]["spec"]["containers"][0] for d in docs
                if d["kind"] == "Job"}
        part, merge = pods[f"{JOB}-parts"], pods[f"{JOB}-merge"]
        t0 = time.monotonic()
        merge_cid = podman("run", "-d", *SECURITY, "--network=none", *volume, image, *merge["command"],
                           *merge["args"]).stdout.strip()
        containers.append(merge_cid)

        def start_part(k: int, slow: bool = False) -> str:  # the kubelet expands $(VAR) in args from the env
            args = [a.replace(f"$({PART_INDEX_ENV})", str(k)) for a in part["args"]]
            fault = ["-e", f"MPI_INFER_FAULT=slow:rank={k}:factor=20"] if slow else []  # still running when killed
            return podman("run", "-d", *SECURITY, "--network=none", *volume, "-e", f"{PART_INDEX_ENV}={k}", *fault,
                          image, *part["command"], *args).stdout.strip()

        cids = [start_part(k, slow=k == kill_part) for k in range(parts)]
        containers.extend(cids)
        if kill_part >= 0:
            ledger = os.path.join(shared, "out", "parts", f"part-{kill_part:03d}-of-{parts:03d}", "ledger",
                                  f"attempt-000-rank-{kill_part:05d}.jsonl")
            result.update(kill_when_busy(cids[kill_part], ledger, cids[kill_part], "container"))
        codes = [int(podman("wait", c, timeout=420).stdout.strip().splitlines()[-1]) for c in cids]
        result["part_exit_codes"] = list(codes)
        if kill_part >= 0:  # the Job controller retries that index in a new pod; it resumes
            retry = start_part(kill_part)
            containers.append(retry)
            codes[kill_part] = int(podman("wait", retry, timeout=420).stdout.strip().splitlines()[-1])
            result["retried_part_exit_code"] = codes[kill_part]
        code = int(podman("wait", merge_cid, timeout=420).stdout.strip().splitlines()[-1])
        result.update(returncode=code, wall_s=round(time.monotonic() - t0, 2),
                      command=shlex.join(part["command"] + part["args"]))
        if code != 0:
            logs = podman("logs", merge_cid, check=False)
            result["stderr"] = (logs.stderr + logs.stdout)[-3000:]
            return result
        with open(os.path.join(shared, "out", "summary.json")) as fh:
            summary = json.load(fh)
        result.update(images=summary["images"], parts_summary=summary["parts"]["per_part"])
        podman("run", "--rm", *SECURITY, "--network=none", *volume, image, "mpi_infer", "run", "--dataset",
               "/data/data/dataset.yml", "--model", model, "--out", "/data/local", *run_args, "--quiet", timeout=420)
        result["equal_to_local_run"] = same_records(rows(os.path.join(shared, "out")),
                                                    rows(os.path.join(shared, "local")))
        return result
    finally:
        for cid in containers:
            podman("rm", "-f", "-t", "2", cid, check=False)
        shutil.rmtree(work, ignore_errors=True)


def operator_env(slots: int) -> list[str]:
    """What mpi-operator (v2beta1, OpenMPI) sets in the launcher: Open MPI 4's ORTE reads these (keeping the
    hostfile's FQDNs), Open MPI 5 ignores them, hence the explicit --hostfile in our command."""
    env = {"OMPI_MCA_orte_keep_fqdn_hostnames": "true", "OMPI_MCA_orte_default_hostfile": "/etc/mpi/hostfile",
           "OMPI_MCA_plm_rsh_args": "-o ConnectionAttempts=10", "OMPI_MCA_orte_set_default_slots": str(slots)}
    return [a for k, v in env.items() for a in ("-e", f"{k}={v}")]


def wait_for_sshd(containers: list[str], timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    for cid in containers:
        while True:
            probe = podman("exec", cid, "sh", "-c", "test -s /tmp/sshd.pid", check=False)
            if probe.returncode == 0:
                break
            if time.monotonic() > end:
                logs = podman("logs", cid, check=False)
                raise RuntimeError(f"sshd did not start in {cid[:12]}: {logs.stdout[-500:]}{logs.stderr[-1500:]}")
            time.sleep(0.3)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", default="localhost/mpi-infer:latest")
    ap.add_argument("--kind", choices=("mpijob", "trainjob", "indexed-job"), default="mpijob")
    ap.add_argument("--reference-image", default=None, help="run the local reference with this image instead")
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--slots", type=int, default=1)
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--model", default="demo")
    ap.add_argument("--drop-hostfile", action="store_true")
    ap.add_argument("--kill-rank", type=int, default=-1, metavar="K",
                    help="--fault-tolerant; SIGKILL the rank in worker container K (not 0) mid-run")
    ap.add_argument("--evict-launcher", action="store_true",
                    help="SIGTERM every container mid-run (an eviction, a preemption): a retryable exit, then new "
                         "workers and the Job's retry resume and complete")
    ap.add_argument("--kill-worker", type=int, default=-1, metavar="K",
                    help="--fault-tolerant; SIGKILL worker container K (not 0) mid-run, then retry as the Job would")
    args = ap.parse_args()
    run_args = ["--split", "all", "--batch-size", "4"]
    try:
        if args.kind == "indexed-job":
            result = rehearse_indexed(args.image, args.workers, args.images, args.model, run_args, args.kill_worker)
            print(json.dumps(result))
            return 0 if result["returncode"] == 0 and result.get("equal_to_local_run") else 1
        result = rehearse(args.image, args.workers, args.slots, args.images, args.model, args.drop_hostfile,
                          args.reference_image, run_args, args.kill_rank, args.kill_worker, args.evict_launcher,
                          args.kind)
    except Skip as why:
        print(json.dumps({"figure": "container_rehearsal", "skipped": str(why)}))
        return SKIP
    print(json.dumps(result))
    if args.drop_hostfile:
        return 0 if result["returncode"] == 13 else 1
    return 0 if result["returncode"] == 0 and result.get("equal_to_local_run") else 1


if __name__ == "__main__":
    sys.exit(main())
