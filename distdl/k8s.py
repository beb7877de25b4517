"""KubeRay manifests from a distdl command: a RayCluster, a RayJob for `train`, `tune` or
`score`, a RayService for serving. Built here as plain dicts, so there is no template to drift;
k8s/*.yaml are this module's output for the example job (tests/test_k8s.py checks both).

Every cluster runs KubeRay's in-tree autoscaler, except a job's cluster that a gang scheduler
(Kueue, Volcano) admits whole: that one keeps the fixed size it was admitted at.

Pods share no filesystem, so every path a job reads or writes must be an s3:// or gs://
URI, and the image (cluster/Dockerfile) carries distdl. The spec of a training job travels
in a ConfigMap mounted on the head pod, where the job's driver runs.
"""
from __future__ import annotations

import math
import shlex
from dataclasses import dataclass, replace
from typing import Optional, Sequence, Union

import ray
import yaml

from distdl import spec as specmod
from distdl.paths import is_uri
from distdl.serve import export_config

SPEC_MOUNT = "/etc/distdl"
SERVE_PORT = 8000
# Every pod meets the "restricted" Pod Security Standard: the base image's user "ray" (uid 1000,
# group users=100), the runtime's default seccomp profile, no capability, no privilege escalation.
POD_SECURITY = {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 100, "fsGroup": 100,
                "seccompProfile": {"type": "RuntimeDefault"}}
CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
# No pod mounts its service-account token: job code has no use for the Kubernetes API. Only the
# autoscaler (KubeRay's sidecar in the head pod) needs it, so it alone mounts the same projected
# volume that Kubernetes would otherwise give every container.
API_TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
API_TOKEN_VOLUME = {"name": "kube-api-access", "projected": {"sources": [
    {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
]}}
HEAD_RESOURCES = {"cpu": "2", "memory": "8Gi"}
DEFAULT_MAX_NODES = 4  # per worker group of a cluster or a service
# Zero-downtime upgrades of a RayService: a changed rayClusterConfig brings up a new cluster beside
# the old one, and traffic moves once its Serve applications are healthy; changes to replicas or
# min/maxReplicas only are applied in place (ray-project/kuberay, rayservice_controller.go). The
# other values: "None" (no new cluster) and "NewClusterWithIncrementalUpgrade" (needs the Gateway API).
UPGRADE_STRATEGY = {"type": "NewCluster"}
# Gang scheduling is asked for with labels on the RayJob. Kueue admits a RayJob as one workload once
# its whole cluster fits the queue's quota (docs.ray.io: "Gang scheduling ... with Kueue"); Volcano
# schedules its pods as one PodGroup (docs.ray.io: "KubeRay integration with Volcano").
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
SCHEDULER_LABEL = "ray.io/scheduler-name"
VOLCANO_QUEUE_LABEL = "volcano.sh/queue-name"
BATCH_SCHEDULERS = ("volcano",)
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
# The check KubeRay itself gives RayService workers (raylet alive and Serve proxy up), made explicit.
SERVE_READINESS = {
    "exec": {"command": ["bash", "-c",
                         "wget --tries 1 -T 2 -q -O- http://localhost:52365/api/local_raylet_healthz | grep success"
                         f" && wget --tries 1 -T 2 -q -O- http://localhost:{SERVE_PORT}/-/healthz | grep success"]},
    "initialDelaySeconds": 10, "periodSeconds": 5, "timeoutSeconds": 2, "failureThreshold": 1,
}


class K8sError(ValueError):
    pass


@dataclass
class Shape:
    """Worker pods: the size of each, how many to start with (a job; the minimum of a cluster or a
    service) and the autoscaler's maximum. None: chosen from the command (GPUs if it wants them; as
    many pods as its workers need; a job's maximum is the size it starts at, else DEFAULT_MAX_NODES)."""
    image: str
    cpus: int = 8
    memory: str = "32Gi"
    gpus: Optional[int] = None
    nodes: Optional[int] = None
    max_nodes: Optional[int] = None


@dataclass(frozen=True)
class Gang:
    """Who admits a job's pods all at once: Kueue (``queue`` names its LocalQueue), or Volcano
    (``batch_scheduler="volcano"``, ``queue`` its Queue). Neither: the default scheduler, pod by pod."""
    queue: Optional[str] = None
    batch_scheduler: Optional[str] = None

    def labels(self) -> dict[str, str]:
        if self.batch_scheduler is None:
            return {KUEUE_QUEUE_LABEL: self.queue} if self.queue else {}
        if self.batch_scheduler not in BATCH_SCHEDULERS:
            raise K8sError(f"--batch-scheduler {self.batch_scheduler!r}: must be one of {', '.join(BATCH_SCHEDULERS)}")
        labels = {SCHEDULER_LABEL: self.batch_scheduler}
        if self.queue:
            labels[VOLCANO_QUEUE_LABEL] = self.queue
        return labels


def k8s_name(text: str) -> str:
    """A DNS-1123 name: lower case, digits and '-' (KubeRay adds suffixes, so keep it short)."""
    name = "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")
    if not name or len(name) > 40:
        raise K8sError(f"cannot make a Kubernetes name of {text!r}: need 1-40 letters or digits")
    return name


def require_uris(paths: dict[str, Optional[str]]) -> None:
    local = [f"{key}={path!r}" for key, path in paths.items() if path and not is_uri(path)]
    if local:
        raise K8sError(f"on Kubernetes, pods share no filesystem: {', '.join(local)} must be an s3:// or gs:// "
                       "URI (e.g. --set storage=s3://BUCKET/runs)")


def _container(name: str, image: str, resources: dict, ports: Optional[dict[str, int]] = None,
               mounts: list[dict] = (), env: list[dict] = ()) -> dict:
    container = {"name": name, "image": image, "resources": {"requests": resources, "limits": resources},
                 "securityContext": CONTAINER_SECURITY}
    if ports:
        container["ports"] = [{"name": n, "containerPort": p} for n, p in ports.items()]
    if mounts:
        container["volumeMounts"] = list(mounts)
    if env:
        container["env"] = list(env)
    return container


def _pod(container: dict, gpus: int = 0, volumes: list[dict] = (), restart: Optional[str] = None) -> dict:
    spec = {"securityContext": POD_SECURITY, "automountServiceAccountToken": False, "containers": [container]}
    if gpus:
        spec["tolerations"] = [GPU_TOLERATION]
    if volumes:
        spec["volumes"] = list(volumes)
    if restart:
        spec["restartPolicy"] = restart
    return {"spec": spec}


def _head(image: str, config_map: Optional[str] = None, env: list[dict] = ()) -> dict:
    """num-cpus 0: the head keeps its CPUs for the GCS, the dashboard and job drivers."""
    ports = {"gcs-server": 6379, "dashboard": 8265, "client": 10001, "serve": SERVE_PORT}
    mounts = [{"name": "spec", "mountPath": SPEC_MOUNT, "readOnly": True}] if config_map else []
    volumes = [{"name": "spec", "configMap": {"name": config_map}}] if config_map else []
    container = _container("ray-head", image, HEAD_RESOURCES, ports, mounts, env)
    return {"rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
            "template": _pod(container, volumes=volumes)}


def _workers(group: str, shape: Shape, minimum: int, maximum: int, readiness: Optional[dict] = None,
             env: list[dict] = (), start: Optional[int] = None) -> dict:
    """A worker group of ``start`` pods (default: ``minimum``) that the autoscaler keeps within
    [minimum, maximum]."""
    resources = {"cpu": str(shape.cpus), "memory": shape.memory}
    if shape.gpus:
        resources["nvidia.com/gpu"] = str(shape.gpus)
    container = _container("ray-worker", shape.image, resources, {"serve": SERVE_PORT} if readiness else None,
                           env=env)
    if readiness:
        container["readinessProbe"] = readiness
    replicas = minimum if start is None else start
    return {"groupName": group, "replicas": replicas, "minReplicas": minimum, "maxReplicas": maximum,
            "rayStartParams": {}, "template": _pod(container, shape.gpus or 0)}


def cluster_spec(head: dict, workers: list[dict], autoscale: bool) -> dict:
    spec = {"rayVersion": ray.__version__, "enableInTreeAutoscaling": autoscale,
            "authOptions": {"mode": "token"}, "headGroupSpec": head, "workerGroupSpecs": workers}
    if autoscale:
        head["template"]["spec"].setdefault("volumes", []).append(API_TOKEN_VOLUME)
        spec["autoscalerOptions"] = {"upscalingMode": "Default", "idleTimeoutSeconds": 120,
                                     "securityContext": CONTAINER_SECURITY, "volumeMounts": [
                                         {"name": API_TOKEN_VOLUME["name"], "mountPath": API_TOKEN_DIR,
                                          "readOnly": True}]}
    return spec


def _resource(kind: str, name: str, spec: dict, labels: Optional[dict[str, str]] = None) -> dict:
    return {"apiVersion": "ray.io/v1", "kind": kind,
            "metadata": {"name": name, "labels": {"app": "distdl", **(labels or {})}}, "spec": spec}


def _checked_range(minimum: int, maximum: int) -> int:
    """``maximum``, once it is known to leave room for the pods a cluster starts with."""
    if maximum < max(minimum, 1):
        raise K8sError(f"--max-nodes {maximum} is below {max(minimum, 1)}, the worker pods this cluster starts "
                       "with (--nodes, or what the command needs)")
    return maximum


def raycluster(shape: Shape, name: str = "distdl") -> list[dict]:
    """A long-lived cluster for `distdl submit`: CPU and GPU worker groups, autoscaled from --nodes
    up to --max-nodes. By default one CPU worker stays up and the GPU group idles at 0: distdl's
    `auto` layout sizes a training job from the nodes alive when it starts, and the head has no
    CPUs to train on."""
    cpu_minimum = 1 if shape.nodes is None else shape.nodes
    gpu_minimum = shape.nodes or 0
    maximum = _checked_range(cpu_minimum, shape.max_nodes or DEFAULT_MAX_NODES)
    cpu, gpu = replace(shape, gpus=0), replace(shape, gpus=shape.gpus or 1)
    workers = [_workers("cpu", cpu, cpu_minimum, maximum), _workers("gpu", gpu, gpu_minimum, maximum)]
    return [_resource("RayCluster", name, cluster_spec(_head(shape.image), workers, autoscale=True))]


def _job_workers(shape: Shape, gang: Gang) -> dict:
    """The worker group of a job's own cluster: it starts with ``shape.nodes`` pods (all of them up
    before KubeRay submits the job, so an `auto` layout counts them). Autoscaled, an idle pod goes
    (minimum 0: the tail of a sweep or of a scoring pool) and demand adds pods up to --max-nodes
    (default: the size it starts at). A gang is admitted whole, at a fixed size: Kueue refuses a
    RayJob whose cluster autoscales ("a kueue managed job should not use autoscaling",
    kubernetes-sigs/kueue rayjob_webhook.go), and Volcano gang-schedules only minReplicas."""
    start, admitted_whole = shape.nodes, bool(gang.labels())
    maximum = _checked_range(start, shape.max_nodes or start)
    if admitted_whole and maximum > start:
        raise K8sError(f"--max-nodes {maximum} with --queue or --batch-scheduler: a gang-scheduled job is admitted "
                       f"whole at a fixed size ({start} worker pods; --nodes sets it)")
    minimum = start if admitted_whole else 0
    return _workers("gpu" if shape.gpus else "cpu", shape, minimum, maximum, start=start)


def _rayjob(name: str, entrypoint: list[str], shape: Shape, gang: Gang, config_map: Optional[str] = None,
            deadline_s: int = 24 * 3600) -> dict:
    """A job on a cluster of its own, deleted when the job ends; a failed attempt runs again on a
    new cluster (training resumes from the checkpoints in storage)."""
    workers = [_job_workers(shape, gang)]
    autoscale = workers[0]["minReplicas"] < workers[0]["maxReplicas"]
    submitter = _pod(_container("submitter", shape.image, {"cpu": "500m", "memory": "1Gi"}), restart="Never")
    return _resource("RayJob", name, {
        "entrypoint": shlex.join(["python", "-m", "distdl", *entrypoint]),
        "shutdownAfterJobFinishes": True, "ttlSecondsAfterFinished": 600,
        "backoffLimit": 2, "activeDeadlineSeconds": deadline_s,
        "submitterPodTemplate": submitter,  # KubeRay fills in the `ray job submit` command
        "rayClusterSpec": cluster_spec(_head(shape.image, config_map), workers, autoscale),
    }, gang.labels())


def _train_nodes(scaling: specmod.ScalingSpec, gpus: int) -> int:
    """Worker pods for the spec's workers (an elastic range's min: the autoscaler adds the rest):
    by GPUs, else one worker per pod (the `auto` CPU layout)."""
    workers = scaling.min_workers
    if workers == "auto":
        return 1
    if gpus:
        return math.ceil(workers * scaling.gpus_per_worker / gpus)
    return workers


def train_job(spec_path: str, overrides: list[str], shape: Shape, command: Sequence[str] = ("train",),
              concurrent: Union[str, int] = 1, gang: Gang = Gang()) -> list[dict]:
    """A ConfigMap with the job spec and a RayJob that runs ``distdl COMMAND SPEC`` on it: trains
    it, or (``["tune", flags...]``) sweeps it with ``concurrent`` trials at a time."""
    raw = specmod.read_raw(spec_path, overrides)
    spec = specmod.parse(raw)  # every field checked here, before any manifest exists
    require_uris(specmod.path_fields(raw))
    gpus = shape.gpus if shape.gpus is not None else int(spec.scaling.use_gpu is not False)
    trials = concurrent if isinstance(concurrent, int) else 1  # auto: as many as the pods hold
    shape = replace(shape, gpus=gpus, nodes=shape.nodes or trials * _train_nodes(spec.scaling, gpus))
    name = f"distdl-{command[0]}-{k8s_name(spec.name)}"
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{name}-spec"},
                  "data": {"spec.yaml": specmod.dump(spec)}}
    entrypoint = [command[0], f"{SPEC_MOUNT}/spec.yaml", *command[1:]]
    return [config_map, _rayjob(name, entrypoint, shape, gang, config_map=f"{name}-spec")]


def score_job(argv: list[str], paths: dict[str, str], gpus_per_actor: float, shape: Shape,
              gang: Gang = Gang()) -> list[dict]:
    """A RayJob that runs `distdl score ARGV` (already checked by distdl's own parser)."""
    require_uris(paths)
    gpus = shape.gpus if shape.gpus is not None else math.ceil(gpus_per_actor)
    shape = replace(shape, gpus=gpus, nodes=shape.nodes or 1)
    name = f"distdl-score-{k8s_name(paths['--output'].rstrip('/').rsplit('/', 1)[-1])}"
    return [_rayjob(name, ["score", *argv], shape, gang)]


def rayservice(checkpoints: list[str], api_key_env: Optional[str], shape: Shape, name: str = "distdl") -> list[dict]:
    """Serve the checkpoints: replicas autoscale inside Ray Serve, worker pods with the in-tree
    autoscaler (from --nodes, default 1: a service answers without a cold start). An API key comes
    from the Secret <name>-api-key (key: api-key) into api_key_env, on the head as well as the
    workers: the ingress (num_cpus 0) may be placed on the head. `kubectl apply` of a changed
    serveConfigV2 updates the applications in place; of a changed rayClusterConfig, a new cluster
    takes over once it serves (UPGRADE_STRATEGY)."""
    require_uris({f"--checkpoint[{i}]": c for i, c in enumerate(checkpoints)})
    shape = replace(shape, gpus=shape.gpus or 0, nodes=shape.nodes or 1)
    maximum = _checked_range(shape.nodes, shape.max_nodes or DEFAULT_MAX_NODES)
    env = [{"name": api_key_env, "valueFrom": {"secretKeyRef": {"name": f"{name}-api-key", "key": "api-key"}}}] \
        if api_key_env else []
    workers = [_workers("gpu" if shape.gpus else "cpu", shape, shape.nodes, maximum, SERVE_READINESS, env)]
    return [_resource("RayService", name, {
        "upgradeStrategy": UPGRADE_STRATEGY,
        "serveConfigV2": yaml.safe_dump(export_config(checkpoints, api_key_env=api_key_env), sort_keys=False),
        "rayClusterConfig": cluster_spec(_head(shape.image, env=env), workers, autoscale=True),
    })]


class _Dumper(yaml.SafeDumper):
    """Readable manifests: no &anchors for shared dicts, multi-line strings (a spec, a Serve config) as blocks."""

    def ignore_aliases(self, data: object) -> bool:
        return True


_Dumper.add_representer(str, lambda dumper, text: dumper.represent_scalar(
    "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None))


def render(docs: list[dict]) -> str:
    return "# Written by `distdl k8s render` (see --help); render again rather than edit.\n" + \
        yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False)
