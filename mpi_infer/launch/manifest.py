"""``mpi_infer manifest``: its options, checked as the API server would check them, and the rendering of the
kind asked for (an MPIJob or an Indexed Job: k8s.py; a TrainJob: trainjob.py)."""

from __future__ import annotations

import argparse
import os
import re

from .k8s import DATA_MOUNT, Site, dump, render, render_indexed_job
from .trainjob import render_trainjob


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
    renderer = render_trainjob if args.kind == "trainjob" else render
    docs = renderer(
        name=args.name, namespace=args.namespace, workers=args.workers, slots=args.slots, image=args.image,
        pvc=args.pvc, dataset=args.dataset, model=args.model, out=args.out, gpus_per_worker=args.gpus_per_worker,
        nfs_server=args.nfs_server, nfs_path=args.nfs_path, storage=args.storage, cpu=args.cpu,
        memory=args.memory, deadline=args.deadline, backoff_limit=args.backoff_limit, ttl=args.ttl,
        run_args=_split_run_args(args.run_args), fault_tolerant=args.fault_tolerant,
        site=site, queue=args.queue, priority_class=args.priority_class, network_policy=args.network_policy,
    )
    return dump(docs)
