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
WAIT_FOR_WORKERS_S = 1500  # below Kueue's default waitForPodsReady timeout (30 min): our retry comes first
GANG_TIMEOUT_S = 600  # coscheduling: how long the PodGroup may wait to be scheduled whole


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
