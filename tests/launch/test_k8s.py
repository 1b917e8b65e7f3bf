"""Kubernetes manifests: they parse, the pods validate against a pinned Kubernetes schema (a real
validator), the MPIJob uses only kubeflow.org/v2beta1 fields with the values the pitfalls call for."""

from __future__ import annotations

import os
import subprocess
import sys

import kubernetes_validate
import pytest
import yaml
from conftest import ROOT
from k8s_api import controller_errors, crd_schema, restricted_errors, schema_errors

from mpi_infer.cli import main
from mpi_infer.errors import ConfigError
from mpi_infer.launch.k8s import HOSTFILE, Site, dump, render, render_indexed_job

K8S_VERSION = "1.31.0"  # pinned: the validator ships schemas per Kubernetes release
MANIFESTS = os.path.join(ROOT, "manifests")



def docs_for(**overrides):
    kw = dict(name="job", namespace="ns", workers=3, slots=2, image="img:1", pvc="claim", dataset="/data/d.yml",
              model="/data/m.onnx", out="/data/out", nfs_server="nfs", nfs_path="/export")
    kw.update(overrides)
    return render(**kw)


def mpijob(docs):
    return next(d for d in docs if d["kind"] == "MPIJob")


def as_pod(template, namespace="ns"):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {**template["metadata"], "name": "p",
                                                            "namespace": namespace}, "spec": template["spec"]}


def all_rendered():
    yield "cpu", docs_for()
    yield "kueue", docs_for(queue=("kueue", "team-a"), priority_class="batch-low")
    yield "volcano", docs_for(queue=("volcano", "imaging"))
    yield "coscheduling", docs_for(queue=("coscheduling", ""), slots=0, gpus_per_worker=2)
    yield "gpu", docs_for(slots=0, gpus_per_worker=4, nfs_server=None, nfs_path=None)
    yield "ft", docs_for(fault_tolerant=True)
    for name in sorted(os.listdir(MANIFESTS)):
        if name.startswith("mpijob-") and name.endswith(".yaml"):
            with open(os.path.join(MANIFESTS, name)) as fh:
                yield name, list(yaml.safe_load_all(fh))


@pytest.mark.parametrize(("label", "docs"), list(all_rendered()))
def test_manifests_parse_and_validate(label, docs):
    docs = yaml.safe_load_all(dump(docs)) if not label.endswith(".yaml") else docs
    for doc in docs:
        if doc["kind"] == "MPIJob":
            job = doc
            assert job["apiVersion"] == "kubeflow.org/v2beta1"
            for replica in job["spec"]["mpiReplicaSpecs"].values():
                kubernetes_validate.validate(as_pod(replica["template"]), K8S_VERSION, strict=True)
        else:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize(("label", "docs"), list(all_rendered()))
def test_mpijob_fields_follow_v2beta1_and_the_pitfalls(label, docs):
    job = mpijob(docs)
    spec = job["spec"]
    assert set(spec["mpiReplicaSpecs"]) == {"Launcher", "Worker"}
    ft = "--fault-tolerant" in str(spec["mpiReplicaSpecs"]["Launcher"])
    for role, replica in spec["mpiReplicaSpecs"].items():
        assert replica["restartPolicy"] == ("OnFailure" if ft and role == "Worker" else "Never")
        pod = replica["template"]["spec"]
        assert pod["securityContext"]["runAsUser"] == 1000 and pod["securityContext"]["runAsNonRoot"]
        c = pod["containers"][0]
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
        assert "requests" in c["resources"] and "limits" in c["resources"]
        assert replica["template"]["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
    queued = "--wait-for-workers" in spec["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]["args"]
    # under a queue or a gang the launcher starts with its workers and waits for them itself (mpi-operator #608)
    assert spec["launcherCreationPolicy"] == ("AtStartup" if queued else "WaitForWorkersReady")
    assert spec["sshAuthMountPath"] == "/home/mpiuser/.ssh"
    assert spec["runPolicy"]["cleanPodPolicy"] == "Running"
    assert spec["runPolicy"]["ttlSecondsAfterFinished"] >= 3600
    assert spec["runPolicy"]["activeDeadlineSeconds"] > 0 and spec["runPolicy"]["backoffLimit"] >= 1
    launcher = spec["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]
    worker = spec["mpiReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]
    cmd = launcher["command"] + launcher["args"]
    if queued:
        assert cmd[4:7] == ["--wait-for-workers", "1500", "--"]  # below Kueue's 30-minute waitForPodsReady
        cmd = [*cmd[:4], *cmd[6:]]
    assert cmd[:5] == ["python", "-m", "mpi_infer", "supervise", "--"]  # a lost host's exit 0 becomes 200
    cmd = cmd[5:]
    if ft:
        assert cmd[:3] == ["mpirun", "--with-ft", "ulfm"] and "--fault-tolerant" in cmd
        cmd = [cmd[0], *cmd[3:]]
    assert cmd[:3] == ["mpirun", "--hostfile", HOSTFILE]  # Open MPI 5 ignores the operator's variable
    assert "--resume" in cmd  # a launcher retry continues, never redoes or double-counts
    assert cmd[cmd.index("--expect-hosts") + 1] == str(spec["mpiReplicaSpecs"]["Worker"]["replicas"])
    assert cmd[cmd.index("-n") + 1] == str(spec["mpiReplicaSpecs"]["Worker"]["replicas"] * spec["slotsPerWorker"])
    assert worker["command"] == ["/usr/sbin/sshd"] and "/home/mpiuser/.sshd_config" in worker["args"]
    assert worker["readinessProbe"]["tcpSocket"]["port"] == 2222
    assert "nvidia.com/gpu" not in str(launcher["resources"])


@pytest.mark.parametrize(("label", "docs"), list(all_rendered()))
def test_every_mpijob_passes_the_operators_schema_and_its_controllers_validation(label, docs):
    """What kubeflow/mpi-operator v0.8.2 accepts (tests/launch/k8s_api.py): the CRD's schema, strict (a field
    the API server would prune is an error), and the controller's ValidateMPIJob after its defaulting, which
    refuses restartPolicy ExitCode: an MPIJob that fails it never runs, with nothing but a Warning event."""
    job = mpijob(list(yaml.safe_load_all(dump(docs))))
    assert schema_errors(job) == []
    assert controller_errors(job) == []
    launcher = job["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]
    assert launcher["env"] == [{"name": "MPI_INFER_LAUNCH_ID", "valueFrom": {"fieldRef": {
        "fieldPath": "metadata.labels['batch.kubernetes.io/controller-uid']"}}}]  # supervise's retries


def test_the_operator_checks_catch_what_the_operator_refuses():
    """The checks themselves: each thing the operator refuses or prunes, put into a good MPIJob, is caught."""
    good = mpijob(list(yaml.safe_load_all(dump(docs_for()))))
    cases = [
        (("spec", "mpiReplicaSpecs", "Launcher", "restartPolicy"), "ExitCode", controller_errors, "not supported"),
        (("spec", "mpiReplicaSpecs", "Worker", "replicas"), 0, controller_errors, "must be >= 1"),
        (("spec", "mpiReplicaSpecs", "Launcher", "replicas"), 2, controller_errors, "must be 1"),
        (("spec", "runPolicy", "cleanPodPolicy"), "Sometimes", controller_errors, "not supported"),
        (("metadata", "name"), "j" * 60, controller_errors, "DNS-1035"),
        (("spec", "slotPerWorker"), 2, schema_errors, "Additional properties"),  # pruned without a word
        (("spec", "runPolicy", "schedulingPolicy", "minAvailable"), "3", schema_errors, "is not of type"),
        (("spec", "slotsPerWorker"), 2**31, schema_errors, "outside int32"),
        (("spec", "mpiImplementation"), "OpenMPI5", schema_errors, "is not one of"),
        (("spec", "mpiReplicaSpecs", "Worker", "template", "spec", "containers", 0, "imagePullPolicy"), 3,
         schema_errors, "is not of type"),
    ]
    for path, value, check, says in cases:
        job = yaml.safe_load(yaml.safe_dump(good))
        node = job
        for key in path[:-1]:
            node = node[key] if isinstance(key, int) else node.setdefault(key, {})
        node[path[-1]] = value
        errors = check(job)
        assert any(says in e for e in errors), (path, errors)


@pytest.mark.skipif(not os.environ.get("MPI_INFER_MPIJOB_CRD"),
                    reason="set MPI_INFER_MPIJOB_CRD to the operator's manifests/base/kubeflow.org_mpijobs.yaml "
                           "(not shipped here: its CRD is the operator's file) to check against it too")
def test_every_mpijob_passes_the_operators_own_crd_file():
    schema = crd_schema(os.environ["MPI_INFER_MPIJOB_CRD"])
    for label, docs in all_rendered():
        assert schema_errors(mpijob(list(yaml.safe_load_all(dump(docs)))), schema) == [], label


@pytest.mark.parametrize(("workers", "slots", "gpus"), [(1, 1, 0), (2, 4, 0), (8, 2, 2), (3, 0, 4)])
def test_mpirun_ranks_equal_workers_times_slots(workers, slots, gpus):
    job = mpijob(docs_for(workers=workers, slots=slots, gpus_per_worker=gpus))
    args = job["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]["args"]
    expected_slots = slots or max(1, gpus)
    assert job["spec"]["slotsPerWorker"] == expected_slots
    assert args[args.index("-n") + 1] == str(workers * expected_slots)
    worker = job["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"].get("nvidia.com/gpu", 0) == gpus
    assert ("--gpu" in args) == bool(gpus)


def test_bad_manifest_options():
    with pytest.raises(ConfigError, match="one rank per GPU"):
        docs_for(slots=2, gpus_per_worker=4)
    with pytest.raises(ConfigError, match="both --nfs-server and --nfs-path"):
        docs_for(nfs_path=None)
    with pytest.raises(ConfigError, match="--workers must be >= 1"):
        docs_for(workers=0)


def test_manifest_cli_prints_yaml(capsys):
    assert main(["manifest", "--name", "j", "--workers", "2", "--slots", "3", "--image", "i:1", "--pvc", "c",
                 "--dataset", "/data/d.yml", "--model", "/data/m.bin", "--out", "/data/o",
                 "--run-args", "--split all --balance"]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [d["kind"] for d in docs] == ["MPIJob"]
    args = docs[0]["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]["args"]
    assert args[-3:] == ["--split", "all", "--balance"] and args[args.index("-n") + 1] == "6"


@pytest.mark.parametrize("extra", ["--out /data/other", "--out=/data/other", "--model m2.onnx", "--dataset x.yml"])
def test_manifest_refuses_its_own_options_in_run_args(extra, capsys):
    """A second --out made the launcher write one folder and its guard (supervise) read another."""
    code = main(["manifest", "--name", "j", "--workers", "2", "--image", "i:1", "--pvc", "c", "--dataset",
                 "/data/d.yml", "--model", "/data/m.bin", "--out", "/data/o", f"--run-args={extra}"])
    assert code == 2 and "is the manifest's own option" in capsys.readouterr().err


def test_supervise_reads_the_out_that_run_reads():
    from mpi_infer.launch.supervise import run_out_dir

    assert run_out_dir(["mpirun", "python", "-m", "mpi_infer", "run", "--out", "a", "--out=b"]) == "b"


def _read_manifests() -> dict[str, str]:
    out = {}
    for name in sorted(os.listdir(MANIFESTS)):
        if name.startswith("mpijob-") and name.endswith(".yaml"):
            with open(os.path.join(MANIFESTS, name)) as fh:
                out[name] = fh.read()
    return out


def test_committed_manifests_match_the_renderer():
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    before = _read_manifests()
    subprocess.run(["bash", os.path.join(MANIFESTS, "render.sh")], check=True, env=env)
    assert _read_manifests() == before, "manifests/ is stale: run manifests/render.sh"


@pytest.mark.parametrize(("label", "docs"), list(all_rendered()))
def test_every_pod_meets_pod_security_restricted(label, docs):
    """The "restricted" Pod Security Standard, field by field (kubernetes.io/docs/concepts/security/
    pod-security-standards), for the launcher and the workers of every rendered variant."""
    for replica in mpijob(list(docs))["spec"]["mpiReplicaSpecs"].values():
        assert restricted_errors(replica["template"]["spec"]) == []


def test_site_options_and_several_models_reach_every_pod():
    with open(os.path.join(MANIFESTS, "mpijob-cpu-site.yaml")) as fh:
        job = mpijob(list(yaml.safe_load_all(fh)))
    assert job["metadata"]["labels"]["team"] == "imaging" and job["metadata"]["annotations"]["owner"] == "imaging-lab"
    for replica in job["spec"]["mpiReplicaSpecs"].values():
        t = replica["template"]
        assert t["metadata"]["labels"]["team"] == "imaging"
        assert t["spec"]["imagePullSecrets"] == [{"name": "registry-creds"}]
        assert t["spec"]["nodeSelector"] == {"nodepool": "cpu"}
        assert t["spec"]["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "imaging",
                                             "effect": "NoSchedule"}]
    args = job["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]["args"]
    models = [args[k + 1] for k, a in enumerate(args) if a == "--model"]
    assert models == ["segnet=/data/models/isic_segm_segnet.bin", "unet=/data/models/unet.onnx"]


@pytest.mark.parametrize("option,value,says", [
    ("--dataset", "/etc/d.yml", "not on the shared volume"), ("--out", "results", "not on the shared volume"),
    ("--model", "/data/../etc/m.onnx", "not on the shared volume"), ("--model", "a=m.onnx", "not on the shared volume"),
    ("--out", "-rf", "not on the shared volume"), ("--model", "-x", "starts with '-'"),
])
def test_paths_off_the_volume_and_option_like_values_are_refused(option, value, says, capsys):
    given = {"--dataset": "/data/d.yml", "--model": "/data/m.bin", "--out": "/data/o", option: value}
    code = main(["manifest", "--name", "j", "--workers", "2", "--image", "i:1", "--pvc", "c",
                 *(f"{k}={v}" for k, v in given.items())])
    assert code == 2 and says in capsys.readouterr().err


@pytest.mark.parametrize("queue,label,policy", [
    ("kueue:team-a", {"kueue.x-k8s.io/queue-name": "team-a"}, None),
    ("volcano:imaging", {}, {"minAvailable": 4, "queue": "imaging", "priorityClass": "batch-low"}),
    ("coscheduling", {}, {"minAvailable": 4, "scheduleTimeoutSeconds": 600, "priorityClass": "batch-low"}),
])
def test_queues_and_gangs(queue, label, policy, capsys):
    assert main(["manifest", "--name", "j", "--workers", "3", "--image", "i:1", "--pvc", "c", "--dataset",
                 "/data/d.yml", "--model", "/data/m.bin", "--out", "/data/o", "--queue", queue,
                 "--priority-class", "batch-low"]) == 0
    job = mpijob(list(yaml.safe_load_all(capsys.readouterr().out)))
    assert label.items() <= job["metadata"]["labels"].items()
    assert job["spec"]["runPolicy"].get("schedulingPolicy") == policy
    assert job["spec"]["launcherCreationPolicy"] == "AtStartup"
    for replica in job["spec"]["mpiReplicaSpecs"].values():
        assert replica["template"]["spec"]["priorityClassName"] == "batch-low"
        assert "requests" in replica["template"]["spec"]["containers"][0]["resources"]  # Kueue needs them


def test_supervise_waits_for_the_workers_then_names_those_that_never_answered(tmp_path):
    import socket
    import time

    from mpi_infer.launch.supervise import wait_for_workers

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("127.0.0.1 slots=2\n")
    assert wait_for_workers(str(hostfile), port, 5, poll_s=0.1) == 0
    hostfile.write_text("127.0.0.1 slots=2\nnever-there.invalid slots=2\n")
    t0 = time.monotonic()
    assert wait_for_workers(str(hostfile), port, 1, poll_s=0.1) == 200
    assert time.monotonic() - t0 < 10
    listener.close()


def test_network_policy_lets_only_the_jobs_pods_in():
    docs = docs_for(network_policy=True)
    (policy,) = [d for d in docs if d["kind"] == "NetworkPolicy"]
    kubernetes_validate.validate(yaml.safe_load(dump([policy])), K8S_VERSION, strict=True)
    job_pods = policy["spec"]["podSelector"]["matchLabels"]
    assert policy["spec"]["ingress"] == [{"from": [{"podSelector": {"matchLabels": job_pods}}]}]
    for replica in mpijob(docs)["spec"]["mpiReplicaSpecs"].values():  # the selector selects launcher and workers
        assert job_pods.items() <= replica["template"]["metadata"]["labels"].items()


def indexed(**overrides):
    kw = dict(name="job", namespace="ns", parts=4, parallel=2, image="img:1", pvc="claim", dataset="/data/d.yml",
              model=["/data/m.onnx"], out="/data/out", nfs_server="nfs", nfs_path="/export")
    kw.update(overrides)
    return render_indexed_job(**kw)


def indexed_variants():
    yield "plain", indexed()
    yield "kueue-gpu-site", indexed(queue=("kueue", "team-a"), priority_class="low", gpus=1,
                                    site=Site(("creds",), (("pool", "gpu"),), (), (("team", "x"),), ()))
    for name in sorted(os.listdir(MANIFESTS)):
        if name.startswith("indexed-job-") and name.endswith(".yaml"):
            with open(os.path.join(MANIFESTS, name)) as fh:
                yield name, list(yaml.safe_load_all(fh))


@pytest.mark.parametrize(("label", "docs"), list(indexed_variants()))
def test_indexed_job_validates_runs_every_part_once_and_is_restricted(label, docs):
    docs = list(yaml.safe_load_all(dump(docs)))
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    jobs = {d["metadata"]["name"].rsplit("-", 1)[1]: d for d in docs if d["kind"] == "Job"}
    parts, merge = jobs["parts"]["spec"], jobs["merge"]["spec"]
    n = parts["completions"]
    assert parts["completionMode"] == "Indexed" and parts["parallelism"] <= n
    assert parts["backoffLimitPerIndex"] >= 1  # each part retries on its own
    part = parts["template"]["spec"]["containers"][0]
    assert part["args"][part["args"].index("--part") + 1] == f"$(MPI_INFER_PART)/{n}" and "--resume" in part["args"]
    index = next(e for e in part["env"] if e["name"] == "MPI_INFER_PART")
    assert "job-completion-index" in index["valueFrom"]["fieldRef"]["fieldPath"]
    rules = parts["podFailurePolicy"]["rules"]
    permanent = set(rules[0]["onExitCodes"]["values"])
    assert {2, 10, 11, 12, 70} <= permanent and not permanent & {200, 201, 202}
    assert rules[1] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    m = merge["template"]["spec"]["containers"][0]["args"]
    assert m[:3] == ["-m", "mpi_infer", "merge"] and m[m.index("--parts") + 1] == str(n) and "--wait" in m
    for job in jobs.values():
        spec = job["spec"]["template"]["spec"]
        assert spec["restartPolicy"] == "Never" and spec["automountServiceAccountToken"] is False
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"] and sc["capabilities"]["drop"] == ["ALL"]
            assert sc["allowPrivilegeEscalation"] is False and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    if "kueue" in label:
        assert all(j["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a" for j in jobs.values())
        assert parts["template"]["spec"]["priorityClassName"] == "low"
        assert part["resources"]["limits"]["nvidia.com/gpu"] == 1 and "--gpu" in part["args"]


@pytest.mark.parametrize(("extra", "says"), [
    (["--queue", "volcano:q"], "need no gang"), (["--fault-tolerant"], "are for an MPIJob"),
    (["--run-args", "--part 1/2"], "manifest's own option")])
def test_indexed_job_refuses_what_parts_cannot_use(extra, says, capsys):
    code = main(["manifest", "--kind", "indexed-job", "--name", "j", "--workers", "2", "--image", "i:1", "--pvc",
                 "c", "--dataset", "/data/d.yml", "--model", "/data/m.onnx", "--out", "/data/o", *extra])
    assert code != 0 and says in capsys.readouterr().err
