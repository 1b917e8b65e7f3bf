"""Kubernetes manifests for a run: an NFS PersistentVolume, a ReadWriteMany claim, and a Kubeflow MPIJob (or,
where no MPI Operator is installed, a batch/v1 Indexed Job of ``run --part`` pods and a merge Job).

Every pitfall of Open MPI 5 under the MPI Operator (kubeflow/mpi-operator pkg/apis/kubeflow/v2beta1/types.go,
v2beta1 MPIJob) is designed out here:
- Open MPI 5 ignores the operator's ``OMPI_MCA_orte_default_hostfile``: the launcher passes
  ``--hostfile /etc/mpi/hostfile`` itself, and the program is told ``--expect-hosts W`` so a run whose
  ranks all landed on the launcher fails at once instead of "succeeding" on one pod;
- the launcher can start before the workers' sshd: ``launcherCreationPolicy: WaitForWorkersReady`` plus
  a TCP readiness probe on 2222;
- non-root everywhere (uid 1000, sshd on 2222 with its own config, ``sshAuthMountPath`` to match),
  no privilege escalation, all capabilities dropped;
- retries: the launcher Job's ``backoffLimit`` re-runs mpirun from scratch, so the command always has
  ``--resume`` (finished images are skipped). The operator accepts only ``restartPolicy`` Never and OnFailure
  (validation.go; ``ExitCode`` makes it refuse the whole MPIJob, kubeflow/mpi-operator#537), so the launcher is
  ``Never`` (each retry a new pod, the failed one's log kept) and ``supervise`` keeps a permanent error
  permanent: a retry of the same launcher Job (its uid from the pod's label) exits with it at once;
- a lost host: Open MPI 5's mpirun then exits 0 having finished nothing; ``mpi_infer supervise`` wraps it and
  turns that into the retryable exit 200;
- logs survive: ``cleanPodPolicy: Running`` and a ``ttlSecondsAfterFinished`` of a day by default;
- GPUs only on workers (the operator blanks them on the launcher), slots = GPUs per worker;
- the Istio sidecar, which breaks ssh, is switched off.
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass, replace
from typing import Any

import yaml

from ..errors import ConfigError

API_VERSION = "kubeflow.org/v2beta1"
UID = 1000
USER_HOME = "/home/mpiuser"
SSH_PORT = 2222
DATA_MOUNT = "/data"
HOSTFILE = "/etc/mpi/hostfile"
# mpirun's exit 0 after losing a host's daemon would mark the MPIJob Succeeded with nothing done (supervise.py)
SUPERVISE = ["python", "-m", "mpi_infer", "supervise", "--"]
LAUNCH_ID_ENV = "MPI_INFER_LAUNCH_ID"  # supervise.py: one submission's retries share their launcher Job's uid
LAUNCH_ID_FIELD = "metadata.labels['batch.kubernetes.io/controller-uid']"  # a batch/v1 Job pod's label (1.27+)


def add_manifest_arguments(p: argparse.ArgumentParser) -> None:
    """Every value is checked as the API server would check it (names, quantities, ranges): exit 2 naming it."""
    from ..argtypes import image_ref, int_range, k8s_bytes, k8s_cpu, k8s_job_name, k8s_label, k8s_subdomain, nonempty

    p.add_argument("--name", required=True, type=k8s_job_name, help="MPIJob name (also names the PV)")
    p.add_argument("--namespace", default="default", type=k8s_label)
    p.add_argument("--kind", choices=("mpijob", "trainjob", "indexed-job"), default="mpijob",
                   help="mpijob (Kubeflow's MPI Operator), trainjob (Kubeflow Trainer v2: a TrainingRuntime with "
                        "its MPI policy and a TrainJob) or indexed-job: a batch/v1 Indexed Job of --workers parts "
                        "(`run --part`, no MPI, no operator) and a merge Job (docs/kubernetes.md)")
    p.add_argument("--workers", type=int_range(1, 10_000), required=True,
                   help="worker pods (indexed-job: parts, one pod each)")
    p.add_argument("--parallel", type=int_range(1, 10_000), default=None, metavar="P",
                   help="indexed-job: at most P part pods at once (default: all)")
    p.add_argument("--slots", type=int_range(0, 1024), default=0,
                   help="ranks per worker (default: GPUs per worker, else 1)")
    p.add_argument("--image", required=True, type=image_ref, help="container image (pin a tag or digest)")
    p.add_argument("--pvc", required=True, type=k8s_subdomain,
                   help="ReadWriteMany claim holding dataset, model and output")
    p.add_argument("--dataset", required=True, type=nonempty, help="dataset YAML path inside the pods (under /data)")
    p.add_argument("--model", required=True, type=nonempty, action="append", metavar="[NAME=]PATH",
                   help="model path inside the pods; repeat it for several models in one pass")
    p.add_argument("--out", required=True, type=nonempty, help="output folder inside the pods")
    p.add_argument("--gpus-per-worker", type=int_range(0, 64), default=0)
    p.add_argument("--nfs-server", type=nonempty,
                   help="render an NFS PersistentVolume for this server (with --nfs-path)")
    p.add_argument("--nfs-path", type=nonempty, help="exported path on the NFS server")
    p.add_argument("--storage", default="100Gi", type=k8s_bytes, help="PV/PVC size")
    p.add_argument("--cpu", default="2", type=k8s_cpu, help="CPU request and limit per worker (cores, or 500m)")
    p.add_argument("--memory", default="4Gi", type=k8s_bytes, help="memory request and limit per worker")
    p.add_argument("--deadline", type=int_range(1, 10 * 365 * 86400), default=24 * 3600,
                   help="activeDeadlineSeconds")
    p.add_argument("--backoff-limit", type=int_range(0, 1000), default=3, help="launcher retries (each resumes)")
    p.add_argument("--ttl", type=int_range(0, 10 * 365 * 86400), default=24 * 3600,
                   help="ttlSecondsAfterFinished (time to read logs)")
    p.add_argument("--fault-tolerant", action="store_true",
                   help="a lost worker pod does not end the run: mpirun --with-ft ulfm, `run --fault-tolerant`, "
                        "workers restart in place (docs/kubernetes.md)")
    p.add_argument("--run-args", default="", help="extra arguments for `mpi_infer run` (one string)")
    p.add_argument("--queue", default=None, type=queue_spec, metavar="kueue:LOCALQUEUE|volcano:QUEUE|coscheduling",
                   help="admit the job through Kueue's LocalQueue, or gang-schedule it with Volcano or "
                        "scheduler-plugins' coscheduling; the launcher then starts with its workers and waits for "
                        "their sshd itself (bounded: supervise --wait-for-workers)")
    p.add_argument("--priority-class", default=None, type=k8s_subdomain, metavar="NAME",
                   help="the pods' PriorityClass (and the gang's)")
    p.add_argument("--network-policy", action="store_true",
                   help="also render a NetworkPolicy: only this job's own pods reach its pods (sshd and MPI)")
    p.add_argument("--image-pull-secret", action="append", default=[], type=k8s_subdomain, metavar="NAME",
                   help="a Secret for a private registry (repeatable)")
    p.add_argument("--node-selector", action="append", default=[], type=key_value, metavar="KEY=VALUE",
                   help="schedule the pods on nodes with this label (repeatable)")
    p.add_argument("--toleration", action="append", default=[], type=toleration, metavar="KEY[=VALUE]:EFFECT",
                   help="tolerate a node taint (NoSchedule, PreferNoSchedule, NoExecute; repeatable)")
    p.add_argument("--label", action="append", default=[], type=key_value, metavar="KEY=VALUE",
                   help="a label on the MPIJob and its pods (repeatable)")
    p.add_argument("--annotation", action="append", default=[], type=key_value, metavar="KEY=VALUE",
                   help="an annotation on the MPIJob and its pods (repeatable)")
    p.add_argument("-o", "--output", default=None, help="write the YAML here instead of stdout")


WAIT_FOR_WORKERS_S = 1500  # below Kueue's default waitForPodsReady timeout (30 min): our retry comes first
GANG_TIMEOUT_S = 600  # coscheduling: how long the PodGroup may wait to be scheduled whole


def queue_spec(text: str) -> tuple[str, str]:
    """``kueue:LOCALQUEUE``, ``volcano:QUEUE`` or ``coscheduling``."""
    kind, _, name = text.partition(":")
    if kind == "coscheduling" and not name:
        return kind, ""
    if kind in ("kueue", "volcano") and name and LABEL_VALUE.fullmatch(name) and len(name) <= 63:
        return kind, name
    raise argparse.ArgumentTypeError(f"expected kueue:LOCALQUEUE, volcano:QUEUE or coscheduling, got {text!r}")


def key_value(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` (a label, annotation or node selector), both checked as the API server checks them."""
    key, sep, value = text.partition("=")
    if not sep or not LABEL_KEY.fullmatch(key) or len(value) > 63 or not LABEL_VALUE.fullmatch(value):
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE with a Kubernetes label key and value, got {text!r}")
    return key, value


def toleration(text: str) -> dict[str, str]:
    """``KEY[=VALUE]:EFFECT`` as a toleration (Equal with a value, Exists without)."""
    pair, sep, effect = text.rpartition(":")
    key, eq, value = pair.partition("=")
    if not sep or effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute") or not LABEL_KEY.fullmatch(key):
        raise argparse.ArgumentTypeError(f"expected KEY[=VALUE]:NoSchedule|PreferNoSchedule|NoExecute, got {text!r}")
    return ({"key": key, "operator": "Equal", "value": value, "effect": effect} if eq else
            {"key": key, "operator": "Exists", "effect": effect})


LABEL_KEY = re.compile(r"([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")


@dataclass(frozen=True)
class Site:
    """What a shared cluster asks of every pod: a registry secret, where it may run, how it is marked."""

    image_pull_secrets: tuple[str, ...] = ()
    node_selector: tuple[tuple[str, str], ...] = ()
    tolerations: tuple[dict[str, str], ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    annotations: tuple[tuple[str, str], ...] = ()

    priority_class: str | None = None

    def with_priority(self, priority_class: str | None) -> Site:
        """This site with ``--priority-class`` (when given) on every pod."""
        return replace(self, priority_class=priority_class) if priority_class else self

    def pod(self, spec: dict[str, Any]) -> dict[str, Any]:
        if self.priority_class:
            spec["priorityClassName"] = self.priority_class
        if self.image_pull_secrets:
            spec["imagePullSecrets"] = [{"name": n} for n in self.image_pull_secrets]
        if self.node_selector:
            spec["nodeSelector"] = dict(self.node_selector)
        if self.tolerations:
            spec["tolerations"] = [dict(t) for t in self.tolerations]
        return spec


def container_security() -> dict[str, Any]:
    """Pod Security "restricted": non-root, no privilege escalation, every capability dropped, the runtime's
    default seccomp profile."""
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True,
            "runAsUser": UID, "runAsGroup": UID, "seccompProfile": {"type": "RuntimeDefault"},
            "readOnlyRootFilesystem": True}  # writes go to /tmp (an emptyDir) and the claim


def pod_meta(name: str, role: str, site: Site) -> dict[str, Any]:
    return {"labels": {**dict(site.labels), "app.kubernetes.io/name": "mpi-infer", "app.kubernetes.io/instance": name,
                       "mpi-infer/role": role},
            "annotations": {**dict(site.annotations), "sidecar.istio.io/inject": "false"}}


def _scheduling(queue: tuple[str, str] | None, priority_class: str | None, workers: int) -> dict[str, Any]:
    """runPolicy.schedulingPolicy for a gang scheduler (the operator's --gang-scheduling=volcano or
    scheduler-plugins makes the PodGroup from it): the whole job, launcher included, or nothing. Kueue admits
    the job by its queue label and needs none."""
    if not queue or queue[0] == "kueue":
        return {}
    policy: dict[str, Any] = {"minAvailable": workers + 1}
    if queue[0] == "volcano":
        policy["queue"] = queue[1]
    else:
        policy["scheduleTimeoutSeconds"] = GANG_TIMEOUT_S
    if priority_class:
        policy["priorityClass"] = priority_class
    return {"schedulingPolicy": policy}


def data_volumes(pvc: str) -> list[dict[str, Any]]:
    return [{"name": "data", "persistentVolumeClaim": {"claimName": pvc}}, {"name": "tmp", "emptyDir": {}}]


POD_SECURITY = {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "fsGroup": UID}
MOUNTS = [{"name": "data", "mountPath": DATA_MOUNT}, {"name": "tmp", "mountPath": "/tmp"}]


def worker_slots(workers: int, slots: int, gpus_per_worker: int) -> int:
    """Ranks per worker: as given, else one per GPU, else 1 (ConfigError for what cannot run)."""
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    if gpus_per_worker < 0:
        raise ConfigError(f"--gpus-per-worker must be >= 0, got {gpus_per_worker}")
    slots = slots or max(1, gpus_per_worker)
    if gpus_per_worker and slots != gpus_per_worker:
        raise ConfigError(f"--slots {slots} != --gpus-per-worker {gpus_per_worker}: one rank per GPU")
    return slots


def storage_docs(name: str, namespace: str, pvc: str, nfs_server: str | None, nfs_path: str | None,
                 storage: str) -> list[dict[str, Any]]:
    """An NFS PersistentVolume and its ReadWriteMany claim, when an NFS server is given; else none (the claim
    exists)."""
    if bool(nfs_server) != bool(nfs_path):
        raise ConfigError("give both --nfs-server and --nfs-path, or neither")
    if not nfs_server:
        return []
    return [
        {"apiVersion": "v1", "kind": "PersistentVolume",
         "metadata": {"name": f"{name}-data", "labels": {"app.kubernetes.io/instance": name}},
         "spec": {"capacity": {"storage": storage}, "accessModes": ["ReadWriteMany"],
                  "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                  "mountOptions": ["nfsvers=4.1", "hard"],
                  "nfs": {"server": nfs_server, "path": nfs_path}}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
         "metadata": {"name": pvc, "namespace": namespace},
         "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": f"{name}-data",
                  "resources": {"requests": {"storage": storage}}}},
    ]


def worker_container(name: str, image: str, cpu: str, memory: str, gpus: int) -> dict[str, Any]:
    """A worker: sshd on 2222 (non-root, its own config), ready when it accepts connections."""
    resources: dict[str, Any] = {"requests": {"cpu": cpu, "memory": memory}, "limits": {"cpu": cpu, "memory": memory}}
    if gpus:
        resources["limits"]["nvidia.com/gpu"] = gpus
    return {"name": name, "image": image, "imagePullPolicy": "IfNotPresent",
            "command": ["/usr/sbin/sshd"], "args": ["-De", "-f", f"{USER_HOME}/.sshd_config"],
            "ports": [{"name": "ssh", "containerPort": SSH_PORT}],
            "readinessProbe": {"tcpSocket": {"port": SSH_PORT}, "initialDelaySeconds": 2, "periodSeconds": 2},
            "securityContext": container_security(), "resources": resources, "volumeMounts": MOUNTS}


def launcher_container(name: str, image: str, command: list[str]) -> dict[str, Any]:
    """The launcher: ``command`` (mpirun under supervise), small requests (the ranks run on the workers)."""
    return {"name": name, "image": image, "imagePullPolicy": "IfNotPresent", "command": command[:1],
            "args": command[1:], "securityContext": container_security(),
            "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "2Gi"}},
            "volumeMounts": MOUNTS}


def launcher_command(ranks: int, workers: int, dataset: str, model: str | list[str], out: str, gpu: bool,
                     extra: list[str], fault_tolerant: bool = False) -> list[str]:
    """The launcher's full command line: mpirun under ``mpi_infer supervise`` (a lost host's silent exit 0 becomes
    the retryable 200), explicit hostfile, --expect-hosts, --resume for retries; with
    ``fault_tolerant``, Open MPI's ULFM (``--with-ft ulfm``) and ``run --fault-tolerant``. The mpi4py runner
    (``-m mpi4py``) aborts the job on an uncaught exception; under ULFM the survivors keep going."""
    cmd = [*SUPERVISE, "mpirun", *(["--with-ft", "ulfm"] if fault_tolerant else []), "--hostfile", HOSTFILE,
           "-n", str(ranks), "--map-by", "slot", "--bind-to", "none", "-x", "PATH", "-x", "PYTHONUNBUFFERED=1",
           "python", "-m", "mpi4py", "-m", "mpi_infer", "run", "--dataset", dataset,
           *(a for m in ([model] if isinstance(model, str) else model) for a in ("--model", m)),
           "--out", out, "--expect-hosts", str(workers), "--resume"]
    if gpu:
        cmd.append("--gpu")
    if fault_tolerant:
        cmd.append("--fault-tolerant")
    return cmd + extra


def render(
    *, name: str, namespace: str, workers: int, slots: int, image: str, pvc: str, dataset: str,
    model: str | list[str],
    out: str, gpus_per_worker: int = 0, nfs_server: str | None = None, nfs_path: str | None = None,
    storage: str = "100Gi", cpu: str = "2", memory: str = "4Gi", deadline: int = 86400, backoff_limit: int = 3,
    ttl: int = 86400, run_args: list[str] | None = None, fault_tolerant: bool = False, site: Site | None = None,
    queue: tuple[str, str] | None = None, priority_class: str | None = None, network_policy: bool = False,
) -> list[dict[str, Any]]:
    """The documents: [PV, PVC] (when an NFS server is given) + the MPIJob."""
    site = (site or Site()).with_priority(priority_class)
    slots = worker_slots(workers, slots, gpus_per_worker)
    docs = storage_docs(name, namespace, pvc, nfs_server, nfs_path, storage)
    ranks = workers * slots
    command = launcher_command(ranks, workers, dataset, model, out, bool(gpus_per_worker), run_args or [],
                               fault_tolerant)
    if queue:  # a gang (or Kueue) starts the launcher with its workers: it waits for their sshd itself, bounded
        command[len(SUPERVISE) - 1:len(SUPERVISE) - 1] = ["--wait-for-workers", str(WAIT_FOR_WORKERS_S)]
    launcher = {
        "replicas": 1,
        "restartPolicy": "Never",
        "template": {
            "metadata": pod_meta(name, "launcher", site),
            "spec": site.pod({
                "securityContext": POD_SECURITY,
                "automountServiceAccountToken": False,
                "containers": [{
                    **launcher_container("launcher", image, command),
                    "env": [{"name": LAUNCH_ID_ENV, "valueFrom": {"fieldRef": {"fieldPath": LAUNCH_ID_FIELD}}}],
                }],
                "volumes": data_volumes(pvc),
            }),
        },
    }
    worker = {
        "replicas": workers,
        # The operator never recreates a Failed worker pod and decides the MPIJob's fate by the launcher alone
        # (an Evicted worker aside). With --fault-tolerant the survivors finish without a lost worker, and
        # OnFailure lets the kubelet restart its sshd in place, so a later launcher retry (rank 0 lost: exit
        # 200) finds every worker again; without it, Never (a dead worker ends mpirun: the launcher retries).
        "restartPolicy": "OnFailure" if fault_tolerant else "Never",
        "template": {
            "metadata": pod_meta(name, "worker", site),
            "spec": site.pod({
                "securityContext": POD_SECURITY,
                "automountServiceAccountToken": False,
                "containers": [worker_container("worker", image, cpu, memory, gpus_per_worker)],
                "volumes": data_volumes(pvc),
            }),
        },
    }
    docs.append({
        "apiVersion": API_VERSION, "kind": "MPIJob",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {**dict(site.labels), "app.kubernetes.io/name": "mpi-infer",
                                "app.kubernetes.io/instance": name,
                                **({"kueue.x-k8s.io/queue-name": queue[1]} if queue and queue[0] == "kueue" else {})},
                     **({"annotations": dict(site.annotations)} if site.annotations else {})},
        "spec": {
            "slotsPerWorker": slots,
            "runPolicy": {"cleanPodPolicy": "Running", "ttlSecondsAfterFinished": ttl,
                          "activeDeadlineSeconds": deadline, "backoffLimit": backoff_limit,
                          **_scheduling(queue, priority_class, workers)},
            "sshAuthMountPath": f"{USER_HOME}/.ssh",
            # WaitForWorkersReady deadlocks under a gang (mpi-operator #608: the PodGroup waits for workers + 1
            # pods, the operator creates the launcher only once the workers are ready) and is ineffective after
            # Kueue suspends and resumes a job (#615): with a queue, AtStartup and our own bounded wait.
            "launcherCreationPolicy": "AtStartup" if queue else "WaitForWorkersReady",
            "mpiImplementation": "OpenMPI",
            "mpiReplicaSpecs": {"Launcher": launcher, "Worker": worker},
        },
    })
    if network_policy:
        docs.append(network_policy_doc(name, namespace))
    return docs


# A part's permanent errors (bad usage, dataset, model, options, an internal bug) and a finished part with failed
# images fail that index at once; a retry would not change them. Everything else (I/O, 200, 202, a kill) is
# retried per index, and an eviction or a preemption (DisruptionTarget) does not count against the limit.
PERMANENT_EXIT_CODES = [2, 3, 10, 11, 12, 13, 14, 70]
PART_INDEX_ENV = "MPI_INFER_PART"


def render_indexed_job(
    *, name: str, namespace: str, parts: int, parallel: int | None, image: str, pvc: str, dataset: str,
    model: str | list[str], out: str, gpus: int = 0, nfs_server: str | None = None, nfs_path: str | None = None,
    storage: str = "100Gi", cpu: str = "2", memory: str = "4Gi", deadline: int = 86400, backoff_limit: int = 3,
    ttl: int = 86400, run_args: list[str] | None = None, site: Site | None = None,
    queue: tuple[str, str] | None = None, priority_class: str | None = None, network_policy: bool = False,
) -> list[dict[str, Any]]:
    """[PV, PVC] (with an NFS server) + an Indexed Job of ``parts`` pods, each ``run --part K/N`` (K from the
    pod's completion index), + a merge Job whose pod waits (bounded by the deadline) until every part has
    finished and then writes the one summary. No operator, no MPI, no ssh: each part retries on its own."""
    if queue and queue[0] != "kueue":
        raise ConfigError(f"--queue {queue[0]}: the parts of an Indexed Job run independently and need no gang; "
                          f"use --queue kueue:LOCALQUEUE (Kueue admits batch/v1 Jobs) or none")
    site = (site or Site()).with_priority(priority_class)
    docs = storage_docs(name, namespace, pvc, nfs_server, nfs_path, storage)
    models = [a for m in ([model] if isinstance(model, str) else model) for a in ("--model", m)]
    part_args = ["-m", "mpi_infer", "run", "--part", f"$({PART_INDEX_ENV})/{parts}", "--dataset", dataset, *models,
                 "--out", out, "--resume", *(["--gpu"] if gpus else []), *(run_args or [])]
    resources: dict[str, Any] = {"requests": {"cpu": cpu, "memory": memory}, "limits": {"cpu": cpu, "memory": memory}}
    if gpus:
        resources["limits"]["nvidia.com/gpu"] = gpus

    def job(suffix: str, role: str, container: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
        labels = {**dict(site.labels), "app.kubernetes.io/name": "mpi-infer", "app.kubernetes.io/instance": name,
                  **({"kueue.x-k8s.io/queue-name": queue[1]} if queue else {})}
        pod = site.pod({"restartPolicy": "Never", "securityContext": POD_SECURITY,
                        "automountServiceAccountToken": False,
                        "containers": [{"name": container["name"], "image": image, "imagePullPolicy": "IfNotPresent",
                                        **container, "securityContext": container_security(), "volumeMounts": MOUNTS}],
                        "volumes": data_volumes(pvc)})
        return {"apiVersion": "batch/v1", "kind": "Job",
                "metadata": {"name": f"{name}-{suffix}", "namespace": namespace, "labels": labels,
                             **({"annotations": dict(site.annotations)} if site.annotations else {})},
                "spec": {**spec, "activeDeadlineSeconds": deadline, "ttlSecondsAfterFinished": ttl,
                         "template": {"metadata": pod_meta(name, role, site), "spec": pod}}}

    part_container = {
        "name": "part", "command": ["python"], "args": part_args,
        # the pod's completion index, by name: the args expand $(MPI_INFER_PART)
        "env": [{"name": PART_INDEX_ENV, "valueFrom": {"fieldRef": {
            "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}},
                {"name": "PYTHONUNBUFFERED", "value": "1"}],
        "resources": resources}
    docs.append(job("parts", "part", part_container, {
        "completionMode": "Indexed", "completions": parts, "parallelism": min(parallel or parts, parts),
        "backoffLimitPerIndex": backoff_limit,
        "podFailurePolicy": {"rules": [
            {"action": "FailIndex", "onExitCodes": {"containerName": "part", "operator": "In",
                                                    "values": PERMANENT_EXIT_CODES}},
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]}}))
    merge_container = {
        "name": "merge", "command": ["python"],
        "args": ["-m", "mpi_infer", "merge", out, "--parts", str(parts), "--wait", str(deadline)],
        "env": [{"name": "PYTHONUNBUFFERED", "value": "1"}],
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "2Gi"}}}
    docs.append(job("merge", "merge", merge_container, {"backoffLimit": backoff_limit}))
    if network_policy:
        docs.append(network_policy_doc(name, namespace))
    return docs


def network_policy_doc(name: str, namespace: str) -> dict[str, Any]:
    """Ingress to the job's pods only from the job's pods: the launcher's ssh and mpirun's daemons, the ranks'
    TCP between workers (ephemeral ports, hence no port list). Egress stays open (DNS, the volume)."""
    job = {"matchLabels": {"app.kubernetes.io/name": "mpi-infer", "app.kubernetes.io/instance": name}}
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": f"{name}-pods", "namespace": namespace,
                         "labels": {"app.kubernetes.io/name": "mpi-infer", "app.kubernetes.io/instance": name}},
            "spec": {"podSelector": job, "policyTypes": ["Ingress"], "ingress": [{"from": [{"podSelector": job}]}]}}


class _PlainDumper(yaml.SafeDumper):
    """No anchors/aliases: every manifest reads on its own."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump(docs: list[dict[str, Any]]) -> str:
    return yaml.dump_all(docs, Dumper=_PlainDumper, sort_keys=False, default_flow_style=False, width=120)


def _split_run_args(text: str) -> list[str]:
    import shlex

    from ..errors import UsageError

    try:
        args = shlex.split(text)
    except ValueError as exc:
        raise UsageError(f"--run-args {text[:200]!r}: {exc}") from None
    owned = {"--out", "--dataset", "--model", "--config", "--part"}  # the manifest's own, given once: never twice
    for arg in args:
        if arg.split("=", 1)[0] in owned:
            raise UsageError(f"--run-args: {arg.split('=', 1)[0]} is the manifest's own option (give it to "
                             f"`manifest` itself); a second one would make the launcher and its guard disagree")
    return args


def on_the_volume(option: str, path: str) -> str:
    """A path the pods can see: under the claim's mount (an absolute path elsewhere, or a relative one, names a
    file of the image, or nothing)."""
    from ..errors import UsageError

    if not path.startswith("/") or os.path.commonpath([DATA_MOUNT, os.path.normpath(path)]) != DATA_MOUNT:
        raise UsageError(f"{option} {path}: not on the shared volume; the pods mount the claim at {DATA_MOUNT}, so "
                         f"give a path under {DATA_MOUNT}/")
    return path


def manifest_from_args(args: argparse.Namespace) -> str:
    on_the_volume("--dataset", args.dataset)
    on_the_volume("--out", args.out)
    for value in args.model:
        if value.startswith("-"):
            from ..errors import UsageError

            raise UsageError(f"--model {value}: a value that starts with '-' would read as an option of `run`")
        name, sep, path = value.partition("=")
        path = path if sep and "/" not in name else value
        if "/" in path or path.endswith((".onnx", ".bin")):  # else a shipped model's name (demo, demo-onnx)
            on_the_volume("--model", path)
    site = Site(tuple(args.image_pull_secret), tuple(args.node_selector), tuple(args.toleration),
                tuple(args.label), tuple(args.annotation))
    if args.kind == "indexed-job":
        if args.fault_tolerant or args.slots:
            from ..errors import UsageError

            raise UsageError("--fault-tolerant and --slots are for an MPIJob; an Indexed Job's parts retry on their "
                             "own, one process a pod")
        return dump(render_indexed_job(
            name=args.name, namespace=args.namespace, parts=args.workers, parallel=args.parallel, image=args.image,
            pvc=args.pvc, dataset=args.dataset, model=args.model, out=args.out, gpus=args.gpus_per_worker,
            nfs_server=args.nfs_server, nfs_path=args.nfs_path, storage=args.storage, cpu=args.cpu,
            memory=args.memory, deadline=args.deadline, backoff_limit=args.backoff_limit, ttl=args.ttl,
            run_args=_split_run_args(args.run_args), site=site, queue=args.queue,
            priority_class=args.priority_class, network_policy=args.network_policy))
    if args.kind == "trainjob":
        from .trainjob import render_trainjob

        renderer = render_trainjob
    else:
        renderer = render
    docs = renderer(
        name=args.name, namespace=args.namespace, workers=args.workers, slots=args.slots, image=args.image,
        pvc=args.pvc, dataset=args.dataset, model=args.model, out=args.out, gpus_per_worker=args.gpus_per_worker,
        nfs_server=args.nfs_server, nfs_path=args.nfs_path, storage=args.storage, cpu=args.cpu,
        memory=args.memory, deadline=args.deadline, backoff_limit=args.backoff_limit, ttl=args.ttl,
        run_args=_split_run_args(args.run_args), fault_tolerant=args.fault_tolerant,
        site=site, queue=args.queue, priority_class=args.priority_class, network_policy=args.network_policy,
    )
    return dump(docs)
