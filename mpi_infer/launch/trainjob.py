"""Kubeflow Trainer v2 (trainer.kubeflow.org/v1alpha1): a TrainingRuntime with Trainer's MPI policy and a
TrainJob that runs it, for clusters with Trainer instead of the MPI Operator.

Trainer builds a JobSet from the runtime: a ``node`` replicated Job of sshd workers and a ``launcher`` Job that
JobSet creates only once every node pod is Ready (``dependsOn``), which removes the launcher race without the
operator's WaitForWorkersReady. Trainer's MPI plugin (pkg/runtime/framework/plugins/mpi) makes the SSH key pair
(mounted at ``sshAuthMountPath`` in every container named ``node``: the same layout as the MPIJob's, so the same
image serves both) and the hostfile at /etc/mpi/hostfile in the launcher, which mpirun is given explicitly.

Retries are the batch Jobs' own: the launcher Job's ``podFailurePolicy`` fails it at once on one of our permanent
exits (and JobSet with it: ``maxRestarts`` 0), ignores an eviction or a preemption (DisruptionTarget), and
retries anything else (200, 201, 202, a kill) up to ``backoffLimit``, each retry running ``--resume``.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .k8s import (
    PERMANENT_EXIT_CODES,
    POD_SECURITY,
    USER_HOME,
    Site,
    data_volumes,
    launcher_command,
    launcher_container,
    network_policy_doc,
    pod_meta,
    storage_docs,
    worker_container,
    worker_slots,
)

TRAINER_API = "trainer.kubeflow.org/v1alpha1"
ANCESTOR = "trainer.kubeflow.org/trainjob-ancestor-step"  # the pod set TrainJob's ``trainer`` applies to
NODE = "node"  # Trainer's names: the worker Job, and the container its MPI plugin mounts the keys into
LAUNCHER = "launcher"


def render_trainjob(
    *, name: str, namespace: str, workers: int, slots: int, image: str, pvc: str, dataset: str,
    model: str | list[str], out: str, gpus_per_worker: int = 0, nfs_server: str | None = None,
    nfs_path: str | None = None, storage: str = "100Gi", cpu: str = "2", memory: str = "4Gi", deadline: int = 86400,
    backoff_limit: int = 3, ttl: int = 86400, run_args: list[str] | None = None, fault_tolerant: bool = False,
    site: Site | None = None, queue: tuple[str, str] | None = None, priority_class: str | None = None,
    network_policy: bool = False,
) -> list[dict[str, Any]]:
    """[PV, PVC] (with an NFS server) + a TrainingRuntime + the TrainJob (+ a NetworkPolicy)."""
    if queue and queue[0] != "kueue":
        raise ConfigError(f"--queue {queue[0]}: a TrainJob's launcher is created only once its workers are ready "
                          f"(dependsOn), and a gang that holds every pod until all of them exist would wait "
                          f"forever; use --queue kueue:LOCALQUEUE, or --kind mpijob for {queue[0]}")
    site = (site or Site()).with_priority(priority_class)
    slots = worker_slots(workers, slots, gpus_per_worker)
    docs = storage_docs(name, namespace, pvc, nfs_server, nfs_path, storage)
    command = launcher_command(workers * slots, workers, dataset, model, out, bool(gpus_per_worker), run_args or [],
                               fault_tolerant)

    def pod(role: str, restart: str, container: dict[str, Any]) -> dict[str, Any]:
        return {"metadata": pod_meta(name, role, site),
                "spec": site.pod({"restartPolicy": restart, "securityContext": POD_SECURITY,
                                  "automountServiceAccountToken": False, "containers": [container],
                                  "volumes": data_volumes(pvc)})}

    nodes = {"name": NODE, "template": {"spec": {
        "backoffLimit": backoff_limit,
        # with --fault-tolerant the kubelet restarts a killed sshd in place; else the Job makes a new pod
        "template": pod("worker", "OnFailure" if fault_tolerant else "Never",
                        worker_container(NODE, image, cpu, memory, gpus_per_worker))}}}
    launcher = {"name": LAUNCHER, "dependsOn": [{"name": NODE, "status": "Ready"}], "template": {
        "metadata": {"labels": {ANCESTOR: "trainer"}},
        "spec": {
            "backoffLimit": backoff_limit, "activeDeadlineSeconds": deadline,
            "podFailurePolicy": {"rules": [
                {"action": "FailJob", "onExitCodes": {"containerName": NODE, "operator": "In",
                                                      "values": PERMANENT_EXIT_CODES}},
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]},
            "template": pod("launcher", "Never", launcher_container(NODE, image, command))}}}
    labels = {**dict(site.labels), "app.kubernetes.io/name": "mpi-infer", "app.kubernetes.io/instance": name}
    annotations = {"annotations": dict(site.annotations)} if site.annotations else {}
    docs.append({
        "apiVersion": TRAINER_API, "kind": "TrainingRuntime",
        "metadata": {"name": f"{name}-runtime", "namespace": namespace, "labels": labels, **annotations},
        "spec": {
            "mlPolicy": {"numNodes": workers, "mpi": {
                "numProcPerNode": slots, "mpiImplementation": "OpenMPI", "sshAuthMountPath": f"{USER_HOME}/.ssh",
                "runLauncherAsNode": False}},
            "template": {"spec": {
                "network": {"publishNotReadyAddresses": True},
                "successPolicy": {"operator": "All", "targetReplicatedJobs": [LAUNCHER]},
                "failurePolicy": {"maxRestarts": 0},  # the launcher Job retries itself; a failed Job is final
                "ttlSecondsAfterFinished": ttl,
                "replicatedJobs": [nodes, launcher]}}}})
    docs.append({
        "apiVersion": TRAINER_API, "kind": "TrainJob",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {**labels, **({"kueue.x-k8s.io/queue-name": queue[1]} if queue else {})},
                     **annotations},
        "spec": {"runtimeRef": {"name": f"{name}-runtime", "apiGroup": "trainer.kubeflow.org",
                                "kind": "TrainingRuntime"},
                 "trainer": {"numNodes": workers}}})
    if network_policy:
        docs.append(network_policy_doc(name, namespace))
    return docs
