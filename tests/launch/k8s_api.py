"""What a cluster accepts, for the manifest tests: the Pod Security "restricted" profile, Kubeflow Trainer's
TrainJob and TrainingRuntime, and the MPI Operator's (kubeflow/mpi-operator v0.8.2) MPIJob.

Trainer's objects are read with its own published models (kubeflow-trainer-api, the pydantic classes generated
from its OpenAPI spec) and must read back unchanged (a field they do not know is dropped, as the API server
would prune it); its webhook's rules are below.

For an MPIJob, two checks, each as the operator makes it:
- the API server's: the CRD's structural schema (manifests/base/kubeflow.org_mpijobs.yaml, v2beta1), written out
  here as JSON Schema: field names, types, formats and defaults, strict (a field the schema does not know, which
  the API server would prune without a word, is an error), each pod template checked against Kubernetes' own
  PodTemplateSpec schema (kubernetes-validate's, strict);
- the controller's: its defaulting (pkg/apis/kubeflow/v2beta1/default.go) and then ValidateMPIJob
  (pkg/apis/kubeflow/validation/validation.go). An MPIJob that fails it never runs: the controller records a
  Warning event and never requeues it. Its restart policies are Never and OnFailure only (not ExitCode,
  kubeflow/mpi-operator#537).

``crd_schema(path)`` reads a CRD file (the operator's or Trainer's, where one is at hand) for the same check
against it.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import jsonschema
import kubernetes_validate
import yaml
from referencing import Registry, Resource

K8S_DEFS = "/api/_definitions.json#/$defs/"
INT32 = {"type": "integer", "format": "int32"}


def _strict(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "additionalProperties": False,
            **({"required": list(required)} if required else {})}


REPLICA_SPEC = _strict({"replicas": INT32, "restartPolicy": {"type": "string"},
                        "template": {"$ref": K8S_DEFS + "io.k8s.api.core.v1.PodTemplateSpec"}})
RUN_POLICY = _strict({
    "activeDeadlineSeconds": {"type": "integer", "format": "int64"}, "backoffLimit": INT32,
    "cleanPodPolicy": {"type": "string"}, "managedBy": {"type": "string"},
    "schedulingPolicy": _strict({"minAvailable": INT32, "minResources": {"type": "object"},
                                 "priorityClass": {"type": "string"}, "queue": {"type": "string"},
                                 "scheduleTimeoutSeconds": INT32}),
    "suspend": {"type": "boolean", "default": False}, "ttlSecondsAfterFinished": INT32})
MPIJOB_V2BETA1 = _strict({
    "apiVersion": {"const": "kubeflow.org/v2beta1"}, "kind": {"const": "MPIJob"},
    "metadata": {"$ref": K8S_DEFS + "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"},
    "spec": _strict({
        "launcherCreationPolicy": {"type": "string", "default": "AtStartup"},
        "mpiImplementation": {"type": "string", "enum": ["OpenMPI", "Intel", "MPICH"], "default": "OpenMPI"},
        "mpiReplicaSpecs": {"type": "object", "additionalProperties": REPLICA_SPEC},
        "runLauncherAsWorker": {"type": "boolean", "default": False},
        "runPolicy": RUN_POLICY,
        "slotsPerWorker": {**INT32, "default": 1},
        "sshAuthMountPath": {"type": "string", "default": "/root/.ssh"}}, required=("mpiReplicaSpecs",)),
}, required=("apiVersion", "kind", "metadata", "spec"))

INT_BOUNDS = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}


def _validator(schema: dict[str, Any], version: str = "1.31.0") -> jsonschema.Validator:
    """A Draft 2020-12 validator of ``schema`` whose ``$ref``s reach Kubernetes' strict definitions."""
    definitions = kubernetes_validate.utils.schema_contents(
        f"kubernetes-json-schema/v{version}-local-strict/_definitions.json", version)
    registry = Resource.from_contents(definitions) @ Registry()
    schema = {"$id": "https://kubernetes.io/api/mpijob/v2beta1", **schema}  # "/api/..." refs resolve as k8s's do
    checker = jsonschema.Draft202012Validator.FORMAT_CHECKER
    return jsonschema.Draft202012Validator(schema, registry=registry, format_checker=checker)


def schema_errors(job: dict[str, Any], schema: dict[str, Any] | None = None) -> list[str]:
    """The structural errors of ``job`` (each "path: message"), against MPIJOB_V2BETA1 or a CRD's schema."""
    errors = [f"{'.'.join(str(p) for p in e.absolute_path)}: {e.message}"
              for e in _validator(schema or MPIJOB_V2BETA1).iter_errors(job)]
    return errors + _int_range_errors(job, schema or MPIJOB_V2BETA1, [])


def _int_range_errors(value: Any, schema: dict[str, Any], path: list[str]) -> list[str]:
    """int32/int64 bounds (the API server's, which JSON Schema's ``format`` leaves unchecked for integers)."""
    if not isinstance(schema, dict):
        return []
    out = []
    bounds = INT_BOUNDS.get(schema.get("format", ""))
    if bounds and isinstance(value, int) and not bounds[0] <= value <= bounds[1]:
        out.append(f"{'.'.join(path)}: {value} is outside {schema['format']}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            sub = props.get(key, extra if isinstance(extra, dict) else None)
            if sub is not None:
                out += _int_range_errors(item, sub, [*path, str(key)])
    return out


def defaulted(job: dict[str, Any]) -> dict[str, Any]:
    """``job`` after the operator's defaulting (SetDefaults_MPIJob)."""
    job = copy.deepcopy(job)
    spec = job["spec"]
    spec.setdefault("runPolicy", {}).setdefault("cleanPodPolicy", "None")
    spec.setdefault("slotsPerWorker", 1)
    spec["sshAuthMountPath"] = spec.get("sshAuthMountPath") or "/root/.ssh"
    spec["mpiImplementation"] = spec.get("mpiImplementation") or "OpenMPI"
    spec["launcherCreationPolicy"] = spec.get("launcherCreationPolicy") or "AtStartup"
    for role, policy, replicas in (("Launcher", "OnFailure", 1), ("Worker", "Never", 0)):
        replica = spec.get("mpiReplicaSpecs", {}).get(role)
        if replica is not None:
            replica["restartPolicy"] = replica.get("restartPolicy") or policy
            replica.setdefault("replicas", replicas)
    return job


DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def controller_errors(job: dict[str, Any]) -> list[str]:
    """ValidateMPIJob's errors for ``job`` after defaulting (an MPIJob with any never runs)."""
    job = defaulted(job)
    spec, errs = job["spec"], []
    replicas = spec.get("mpiReplicaSpecs", {})
    workers = (replicas.get("Worker") or {}).get("replicas") or 0
    hostname = f"{job['metadata'].get('name', '')}-worker-{max(workers, 1) - 1}"
    if len(hostname) > 63 or not DNS1035.match(hostname):
        errs.append(f"metadata.name: pods would be named {hostname!r}, not a DNS-1035 label")
    if spec["slotsPerWorker"] < 0:
        errs.append("spec.slotsPerWorker: must be >= 0")
    policy = spec["runPolicy"]
    if policy["cleanPodPolicy"] not in ("None", "Running", "All"):
        errs.append(f"spec.runPolicy.cleanPodPolicy: {policy['cleanPodPolicy']!r} not supported")
    for key in ("ttlSecondsAfterFinished", "activeDeadlineSeconds", "backoffLimit"):
        if policy.get(key) is not None and policy[key] < 0:
            errs.append(f"spec.runPolicy.{key}: must be >= 0")
    if policy.get("managedBy") is not None and policy["managedBy"] not in ("kueue.x-k8s.io/multikueue",
                                                                           "kubeflow.org/mpi-operator"):
        errs.append(f"spec.runPolicy.managedBy: {policy['managedBy']!r} not supported")
    if not spec["sshAuthMountPath"]:
        errs.append("spec.sshAuthMountPath: required")
    if spec["mpiImplementation"] not in ("OpenMPI", "Intel", "MPICH"):
        errs.append(f"spec.mpiImplementation: {spec['mpiImplementation']!r} not supported")
    if "Launcher" not in replicas:
        errs.append("spec.mpiReplicaSpecs[Launcher]: required")
    for role, replica in replicas.items():
        where = f"spec.mpiReplicaSpecs[{role}]"
        if replica.get("restartPolicy") not in ("Never", "OnFailure"):
            errs.append(f"{where}.restartPolicy: {replica.get('restartPolicy')!r} not supported (Never, OnFailure)")
        if not replica.get("template", {}).get("spec", {}).get("containers"):
            errs.append(f"{where}.template.spec.containers: required")
        if role == "Launcher" and replica.get("replicas") != 1:
            errs.append(f"{where}.replicas: must be 1")
        if role == "Worker" and (replica.get("replicas") or 0) <= 0:
            errs.append(f"{where}.replicas: must be >= 1")
    return errs


def crd_schema(path: str) -> dict[str, Any]:
    """The schema of a CRD file's served version, made strict where the API server would prune (an object with
    ``properties`` and no ``x-kubernetes-preserve-unknown-fields``)."""
    with open(path, encoding="utf-8") as fh:
        crd = yaml.safe_load(fh)
    version = next(v for v in crd["spec"]["versions"] if v.get("storage"))

    def strict(node: Any) -> Any:
        if isinstance(node, dict):
            node = {k: strict(v) for k, v in node.items()}
            if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
                node.setdefault("additionalProperties", False)
            return node
        return [strict(v) for v in node] if isinstance(node, list) else node

    schema = strict(version["schema"]["openAPIV3Schema"])
    schema["properties"]["apiVersion"] = {"const": f"{crd['spec']['group']}/{version['name']}"}
    schema["properties"]["kind"] = {"const": crd["spec"]["names"]["kind"]}
    schema["properties"]["metadata"] = {"$ref": K8S_DEFS + "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}
    return schema


def restricted_errors(spec: dict[str, Any]) -> list[str]:
    """Where a pod spec breaks the "restricted" Pod Security Standard (kubernetes.io/docs/concepts/security/
    pod-security-standards), field by field, or our own rules: a read-only root, writes to the claim and /tmp."""
    errs = []
    if spec.get("automountServiceAccountToken") is not False or spec["securityContext"].get("runAsNonRoot") is not True:
        errs.append("pod: a service account token, or not runAsNonRoot")
    errs += [f"pod: {k}" for k in ("hostNetwork", "hostPID", "hostIPC") if k in spec]
    for c in spec["containers"]:
        sc = c.get("securityContext", {})
        if sc.get("allowPrivilegeEscalation") is not False or sc.get("capabilities", {}).get("drop") != ["ALL"]:
            errs.append(f"{c['name']}: privilege escalation, or capabilities kept")
        if sc.get("runAsNonRoot") is not True or sc.get("runAsUser") == 0 or "privileged" in sc:
            errs.append(f"{c['name']}: root or privileged")
        if sc.get("seccompProfile") != {"type": "RuntimeDefault"}:
            errs.append(f"{c['name']}: seccompProfile is not RuntimeDefault")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            errs.append(f"{c['name']}: a hostPort")
        if sc.get("readOnlyRootFilesystem") is not True or \
                {m["mountPath"] for m in c.get("volumeMounts", [])} != {"/data", "/tmp"}:
            errs.append(f"{c['name']}: a writable root, or mounts other than /data and /tmp")
    if not all("persistentVolumeClaim" in v or "emptyDir" in v for v in spec.get("volumes", [])):
        errs.append("pod: a volume other than the claim and an emptyDir (a hostPath?)")
    return errs


TRAINER_ANCESTOR = "trainer.kubeflow.org/trainjob-ancestor-step"
MPI_RESERVED_ENV = {"OMPI_MCA_orte_default_hostfile", "OMPI_MCA_plm_rsh_args", "OMPI_MCA_orte_keep_fqdn_hostnames",
                    "OMPI_MCA_orte_set_default_slots"}


def trainer_errors(doc: dict[str, Any]) -> list[str]:
    """A TrainingRuntime or TrainJob as Trainer takes it: read by its published models, which must give it back
    unchanged, then its webhooks' rules (pkg/webhooks, the MPI plugin's Validate)."""
    from kubeflow_trainer_api import models

    cls = {"TrainingRuntime": models.TrainerV1alpha1TrainingRuntime, "TrainJob": models.TrainerV1alpha1TrainJob}
    try:
        back = cls[doc["kind"]].from_dict(doc).to_dict()
    except Exception as exc:  # pydantic's ValidationError: a wrong type
        return [f"{doc['kind']}: {exc}"]
    errs = [f"{doc['kind']}: read back differently (an unknown field, or a value of another type): {diff}"
            for diff in _differences(doc, back, doc["kind"])]
    if doc["kind"] == "TrainingRuntime":
        for k, job in enumerate(doc["spec"]["template"]["spec"]["replicatedJobs"]):
            ancestor = job["template"].get("metadata", {}).get("labels", {}).get(TRAINER_ANCESTOR)
            if ancestor == "trainer":
                if job.get("replicas", 1) != 1:
                    errs.append(f"replicatedJobs[{k}].replicas: always must be 1")
                names = [c["name"] for c in job["template"]["spec"]["template"]["spec"]["containers"]]
                if "node" not in names:
                    errs.append(f"replicatedJobs[{k}]: the trainer's pod set needs a container named node")
    else:
        env = {e["name"] for e in doc["spec"].get("trainer", {}).get("env", [])}
        errs += [f"trainer.env: {name} is reserved for the MPI plugin" for name in sorted(env & MPI_RESERVED_ENV)]
    return errs


def _differences(want: Any, got: Any, path: str) -> list[str]:
    if isinstance(want, dict) and isinstance(got, dict):
        out = [f"{path}.{k}" for k in want if k not in got]
        return out + [d for k in want if k in got for d in _differences(want[k], got[k], f"{path}.{k}")]
    if isinstance(want, list) and isinstance(got, list) and len(want) == len(got):
        return [d for k, (a, b) in enumerate(zip(want, got)) for d in _differences(a, b, f"{path}[{k}]")]
    if isinstance(want, int) and isinstance(got, float) and not isinstance(want, bool) and want == got:
        return []  # a quantity (int or string) the models hold as a number: 4 GPUs read as 4.0
    return [] if want == got and type(want) is type(got) else [f"{path}: {want!r} read as {got!r}"]
