"""``manifest --kind trainjob``: a TrainingRuntime with Trainer's MPI policy and a TrainJob, read back unchanged by
Trainer's own published models and passing its webhooks' rules, every pod validating against Kubernetes 1.31
(strict) and the restricted profile, the launcher created only once the workers are ready, permanent exits final."""

from __future__ import annotations

import os

import kubernetes_validate
import pytest
import yaml
from k8s_api import crd_schema, restricted_errors, schema_errors, trainer_errors
from test_k8s import K8S_VERSION, MANIFESTS, as_pod, docs_for, mpijob

from mpi_infer.cli import main
from mpi_infer.errors import ConfigError
from mpi_infer.launch.k8s import PERMANENT_EXIT_CODES, dump
from mpi_infer.launch.trainjob import render_trainjob

BASE = dict(name="job", namespace="ns", workers=3, slots=2, image="img:1", pvc="claim", dataset="/data/d.yml",
            model="/data/m.onnx", out="/data/out", nfs_server="nfs", nfs_path="/export")


def rendered():
    yield "cpu", render_trainjob(**BASE)
    yield "kueue-site", render_trainjob(**{**BASE, "queue": ("kueue", "team-a"), "priority_class": "low",
                                           "network_policy": True})
    yield "gpu-ft", render_trainjob(**{**BASE, "slots": 0, "gpus_per_worker": 4, "fault_tolerant": True,
                                       "nfs_server": None, "nfs_path": None})
    with open(os.path.join(MANIFESTS, "trainjob-cpu.yaml")) as fh:
        yield "trainjob-cpu.yaml", list(yaml.safe_load_all(fh))


def by_kind(docs, kind):
    return next(d for d in docs if d["kind"] == kind)


def replicated(runtime, name):
    return next(j for j in runtime["spec"]["template"]["spec"]["replicatedJobs"] if j["name"] == name)


@pytest.mark.parametrize(("label", "docs"), list(rendered()))
def test_trainer_reads_the_runtime_and_the_trainjob_back_unchanged_and_every_pod_is_valid_and_restricted(label,
                                                                                                         docs):
    docs = list(yaml.safe_load_all(dump(docs)))
    runtime, trainjob = by_kind(docs, "TrainingRuntime"), by_kind(docs, "TrainJob")
    assert trainer_errors(runtime) == [] and trainer_errors(trainjob) == []
    assert trainjob["spec"]["runtimeRef"] == {"name": runtime["metadata"]["name"], "apiGroup": "trainer.kubeflow.org",
                                              "kind": "TrainingRuntime"}
    for job in runtime["spec"]["template"]["spec"]["replicatedJobs"]:
        pod = job["template"]["spec"]["template"]
        kubernetes_validate.validate(as_pod(pod), K8S_VERSION, strict=True)
        kubernetes_validate.validate({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"},
                                      "spec": job["template"]["spec"]}, K8S_VERSION, strict=True)
        assert restricted_errors(pod["spec"]) == []
        assert [c["name"] for c in pod["spec"]["containers"]] == ["node"]  # where Trainer mounts the keys
    for doc in docs:
        if doc["kind"] not in ("TrainingRuntime", "TrainJob"):
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize(("label", "docs"), list(rendered()))
def test_the_launcher_waits_for_ready_workers_and_a_permanent_exit_is_final(label, docs):
    runtime = by_kind(docs, "TrainingRuntime")
    nodes, launcher = replicated(runtime, "node"), replicated(runtime, "launcher")
    policy = runtime["spec"]["mlPolicy"]
    assert launcher["dependsOn"] == [{"name": "node", "status": "Ready"}]  # no launcher race, no operator policy
    assert launcher["template"]["metadata"]["labels"]["trainer.kubeflow.org/trainjob-ancestor-step"] == "trainer"
    assert policy["mpi"]["runLauncherAsNode"] is False and policy["mpi"]["sshAuthMountPath"] == "/home/mpiuser/.ssh"
    spec = launcher["template"]["spec"]
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "FailJob", "onExitCodes": {"containerName": "node", "operator": "In",
                                                            "values": PERMANENT_EXIT_CODES}}
    assert rules[1]["action"] == "Ignore" and rules[1]["onPodConditions"][0]["type"] == "DisruptionTarget"
    assert runtime["spec"]["template"]["spec"]["failurePolicy"] == {"maxRestarts": 0}
    assert spec["template"]["spec"]["restartPolicy"] == "Never" and spec["backoffLimit"] >= 1
    cmd = spec["template"]["spec"]["containers"][0]["command"] + spec["template"]["spec"]["containers"][0]["args"]
    assert "--wait-for-workers" not in cmd and cmd[:5] == ["python", "-m", "mpi_infer", "supervise", "--"]
    workers = by_kind(docs, "TrainJob")["spec"]["trainer"]["numNodes"]
    assert policy["numNodes"] == workers
    assert cmd[cmd.index("--hostfile") + 1] == "/etc/mpi/hostfile"  # where Trainer's MPI plugin mounts it
    assert cmd[cmd.index("--expect-hosts") + 1] == str(workers) and "--resume" in cmd
    assert cmd[cmd.index("-n") + 1] == str(workers * policy["mpi"]["numProcPerNode"])
    assert nodes["template"]["spec"]["template"]["spec"]["restartPolicy"] == ("OnFailure" if "ft" in label
                                                                             else "Never")


def test_the_launcher_runs_the_mpijobs_command():
    """The same mpirun line as the MPIJob's launcher (rehearsed in containers), so the rehearsal covers it."""
    launcher = replicated(by_kind(render_trainjob(**BASE), "TrainingRuntime"), "launcher")
    container = launcher["template"]["spec"]["template"]["spec"]["containers"][0]
    mpi = mpijob(docs_for(**{k: v for k, v in BASE.items()}))["spec"]["mpiReplicaSpecs"]["Launcher"]
    theirs = mpi["template"]["spec"]["containers"][0]
    assert container["command"] + container["args"] == theirs["command"] + theirs["args"]


def test_a_queue_label_and_the_site_reach_the_trainjob_and_every_pod_and_gangs_are_refused():
    docs = render_trainjob(**{**BASE, "queue": ("kueue", "team-a"), "priority_class": "low"})
    assert by_kind(docs, "TrainJob")["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    for job in by_kind(docs, "TrainingRuntime")["spec"]["template"]["spec"]["replicatedJobs"]:
        assert job["template"]["spec"]["template"]["spec"]["priorityClassName"] == "low"
    for gang in (("volcano", "q"), ("coscheduling", "")):
        with pytest.raises(ConfigError, match="dependsOn"):
            render_trainjob(**{**BASE, "queue": gang})


def test_the_checks_catch_what_trainer_and_the_profile_refuse():
    runtime = by_kind(render_trainjob(**BASE), "TrainingRuntime")
    bad = yaml.safe_load(yaml.safe_dump(runtime))
    bad["spec"]["mlPolicy"]["mpi"]["numProcsPerNode"] = 2  # a misspelled field: pruned without a word
    assert any("numProcsPerNode" in e for e in trainer_errors(bad))
    bad = yaml.safe_load(yaml.safe_dump(runtime))
    replicated(bad, "launcher")["template"]["spec"]["template"]["spec"]["containers"][0]["name"] = "launcher"
    assert any("container named node" in e for e in trainer_errors(bad))
    bad = yaml.safe_load(yaml.safe_dump(runtime))
    pod = replicated(bad, "node")["template"]["spec"]["template"]["spec"]
    pod["containers"][0]["securityContext"]["seccompProfile"] = {"type": "Unconfined"}
    assert any("seccompProfile" in e for e in restricted_errors(pod))
    trainjob = by_kind(render_trainjob(**BASE), "TrainJob")
    trainjob["spec"]["trainer"]["env"] = [{"name": "OMPI_MCA_orte_default_hostfile", "value": "/x"}]
    assert any("reserved" in e for e in trainer_errors(trainjob))


def test_manifest_cli_renders_a_trainjob(capsys):
    assert main(["manifest", "--kind", "trainjob", "--name", "j", "--workers", "2", "--image", "i:1", "--pvc", "c",
                 "--dataset", "/data/d.yml", "--model", "/data/m.onnx", "--out", "/data/o"]) == 0
    assert [d["kind"] for d in yaml.safe_load_all(capsys.readouterr().out)] == ["TrainingRuntime", "TrainJob"]


@pytest.mark.skipif(not os.environ.get("MPI_INFER_TRAINER_CRDS"),
                    reason="set MPI_INFER_TRAINER_CRDS to Trainer's manifests/base/crds folder (not shipped here) to "
                           "check against its CRD files too")
def test_the_runtime_and_the_trainjob_pass_trainers_own_crd_files():
    folder = os.environ["MPI_INFER_TRAINER_CRDS"]
    schemas = {kind: crd_schema(os.path.join(folder, f"trainer.kubeflow.org_{kind.lower()}s.yaml"))
               for kind in ("TrainingRuntime", "TrainJob")}
    for label, docs in rendered():
        for doc in yaml.safe_load_all(dump(docs)):
            if doc["kind"] in schemas:
                assert schema_errors(doc, schemas[doc["kind"]]) == [], (label, doc["kind"])
