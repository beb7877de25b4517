"""k8s/: KubeRay manifests are what `distdl k8s render` prints, pass the KubeRay CRD schemas
(strictly, as an API server with field validation does), run as non-root with limits, pass the
"restricted" Pod Security Standard (tests/pod_security.py), and the RayService's serveConfigV2
passes Ray Serve's own ServeDeploySchema."""
from __future__ import annotations

import shlex
from pathlib import Path

import jsonschema
import pod_security
import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from distdl import cli, k8s
from distdl import spec as specmod
from distdl.serve import export_config
from distdl.specbase import SpecError

ROOT = Path(__file__).resolve().parent.parent
CRDS = ROOT / "tests" / "fixtures" / "kuberay-crds"  # verbatim copies, with their licence
IMAGE, BUCKET = "REGISTRY/distdl:0.1.0", "s3://YOUR_BUCKET"
# The commands that wrote k8s/*.yaml (docs/clusters.md, "Kubernetes: KubeRay").
RENDERED = {
    "raycluster.yaml": f"cluster --image {IMAGE}",
    "rayjob-train.yaml": f"train jobs/cnn_digits.yaml --image {IMAGE} --set storage={BUCKET}/runs "
                         f"--set data.train={BUCKET}/digits/train.parquet",
    "rayjob-score.yaml": f"score --image {IMAGE} --checkpoint {BUCKET}/runs/cnn_digits/best "
                         f"--input {BUCKET}/digits/holdout.parquet --output {BUCKET}/scores/digits",
    "rayservice.yaml": f"serve --image {IMAGE} --checkpoint {BUCKET}/runs/cnn_digits/best",
    "rayjob-tune.yaml": f"tune jobs/cnn_digits.yaml --image {IMAGE} --set storage={BUCKET}/runs "
                        f"--set data.train={BUCKET}/digits/train.parquet --search train.lr=loguniform:1e-4:1e-1 "
                        "--search model.width=choice:16,32,64 --trials 8 --max-concurrent 2 --scheduler asha",
}


def strict(node):
    """The CRD's openAPIV3Schema as plain JSON Schema that rejects unknown fields, as the API server
    does, except where the CRD says x-kubernetes-preserve-unknown-fields; int-or-string takes both."""
    if isinstance(node, list):
        return [strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: strict(v) for k, v in node.items() if k != "description"}
    if out.pop("x-kubernetes-int-or-string", False):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if "properties" in out and "additionalProperties" not in out \
            and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def schemas() -> dict[str, jsonschema.Draft7Validator]:
    """A validator per kind, built once (jsonschema.validate would re-check each 1 MB schema)."""
    paths = sorted(CRDS.glob("ray.io_*.yaml"))
    assert paths, f"no KubeRay CRDs in {CRDS}"
    found = {}
    for path in paths:
        crd = yaml.load(path.read_text(), Loader=yaml.CSafeLoader)
        (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        found[crd["spec"]["names"]["kind"]] = jsonschema.Draft7Validator(strict(v1["schema"]["openAPIV3Schema"]))
    return found


def docs(name: str) -> list[dict]:
    return list(yaml.safe_load_all((ROOT / "k8s" / name).read_text()))


def render(capsys, command: str) -> str:
    assert cli.main(["k8s", "render", *shlex.split(command)]) == 0
    return capsys.readouterr().out


def containers(node) -> list[dict]:
    """Every container in a manifest, wherever a pod template sits."""
    if isinstance(node, list):
        return [c for n in node for c in containers(n)]
    if not isinstance(node, dict):
        return []
    return node.get("containers", []) + [c for k, v in node.items() if k != "containers" for c in containers(v)]


def pod_specs(node) -> list[dict]:
    if isinstance(node, list):
        return [p for n in node for p in pod_specs(n)]
    if not isinstance(node, dict):
        return []
    return ([node] if "containers" in node else []) + [p for v in node.values() for p in pod_specs(v)]


@pytest.mark.parametrize("name", RENDERED)
def test_committed_manifest_is_what_render_prints(name, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert render(capsys, RENDERED[name]) == (ROOT / "k8s" / name).read_text()


@pytest.mark.parametrize("name", RENDERED)
def test_manifest_passes_the_kuberay_crd_schema(name, schemas):
    resources = [d for d in docs(name) if d["apiVersion"] == "ray.io/v1"]
    assert len(resources) == 1
    schemas[resources[0]["kind"]].validate(resources[0])


def test_a_misspelt_field_fails_the_schema(schemas):
    job = docs("rayjob-train.yaml")[1]
    job["spec"]["shutdownAfterJobFinish"] = job["spec"].pop("shutdownAfterJobFinishes")
    with pytest.raises(jsonschema.ValidationError, match="shutdownAfterJobFinish"):
        schemas["RayJob"].validate(job)


@pytest.mark.parametrize("name", RENDERED)
def test_pods_run_as_non_root_with_limits(name):
    manifest = docs(name)
    pods, boxes = pod_specs(manifest), containers(manifest)
    assert pods and all(p["securityContext"]["runAsNonRoot"] for p in pods)
    for box in boxes:
        assert box["resources"]["limits"] == box["resources"]["requests"]
        assert box["securityContext"]["allowPrivilegeEscalation"] is False


def test_the_cluster_autoscales_a_cpu_and_a_gpu_group_behind_a_cpu_head():
    (cluster,) = docs("raycluster.yaml")
    spec = cluster["spec"]
    assert spec["enableInTreeAutoscaling"] and spec["authOptions"] == {"mode": "token"}
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    # One CPU worker stays up (a training job is sized from the nodes alive when it starts and the
    # head has no CPUs); the GPU group idles at zero pods.
    assert set(groups) == {"cpu", "gpu"}
    assert [(g["replicas"], g["minReplicas"], g["maxReplicas"]) for g in groups.values()] == [(1, 1, 4), (0, 0, 4)]
    assert "nvidia.com/gpu" in containers(groups["gpu"])[0]["resources"]["limits"]
    assert "nvidia.com/gpu" not in containers(groups["cpu"])[0]["resources"]["limits"]


def test_the_training_job_runs_the_spec_from_its_config_map_and_cleans_up():
    config_map, job = docs("rayjob-train.yaml")
    spec = job["spec"]
    assert spec["entrypoint"] == "python -m distdl train /etc/distdl/spec.yaml"
    assert spec["shutdownAfterJobFinishes"] and spec["ttlSecondsAfterFinished"] > 0
    assert spec["backoffLimit"] >= 1 and spec["activeDeadlineSeconds"] > 0
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert {"name": "spec", "configMap": {"name": config_map["metadata"]["name"]}} in head["volumes"]
    shipped = specmod.parse(yaml.safe_load(config_map["data"]["spec.yaml"]))
    assert shipped.storage == f"{BUCKET}/runs" and shipped.name == "cnn_digits"


def test_the_sweep_job_runs_distdl_tune_with_its_search_on_a_pod_per_concurrent_trial():
    config_map, job = docs("rayjob-tune.yaml")
    assert shlex.split(job["spec"]["entrypoint"]) == [
        "python", "-m", "distdl", "tune", "/etc/distdl/spec.yaml", "--search", "train.lr=loguniform:1e-4:1e-1",
        "--search", "model.width=choice:16,32,64", "--trials", "8", "--max-concurrent", "2", "--scheduler", "asha"]
    (group,) = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert group["replicas"] == 2
    assert specmod.parse(yaml.safe_load(config_map["data"]["spec.yaml"])).storage == f"{BUCKET}/runs"


def test_a_bad_search_is_refused_before_any_manifest(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert cli.main(["k8s", "render", "tune", "jobs/cnn_digits.yaml", "--image", IMAGE,
                     "--search", "storage=choice:a,b"]) == 2
    assert "--search storage: cannot be searched" in capsys.readouterr().err


def test_the_score_job_runs_distdl_score_with_its_arguments():
    (job,) = docs("rayjob-score.yaml")
    assert shlex.split(job["spec"]["entrypoint"])[:4] == ["python", "-m", "distdl", "score"]
    assert f"--output {BUCKET}/scores/digits" in job["spec"]["entrypoint"]


def test_the_service_config_passes_ray_serves_schema_and_readiness_checks_the_proxy():
    (service,) = docs("rayservice.yaml")
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    assert config == export_config([f"{BUCKET}/runs/cnn_digits/best"], api_key_env=None)  # = `distdl serve --export`
    app = ServeDeploySchema.model_validate(config).applications[0]
    assert app.import_path == "distdl.serve:build_app" and app.route_prefix == "/"
    assert service["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"]
    (worker,) = containers(service["spec"]["rayClusterConfig"]["workerGroupSpecs"])
    assert "/-/healthz" in worker["readinessProbe"]["exec"]["command"][-1]


def test_an_api_key_comes_from_a_secret_on_the_head_and_the_workers(capsys):
    """The ingress replica asks for no CPU, so it may land on the head (num-cpus 0) as well."""
    (service,) = yaml.safe_load_all(render(capsys, f"serve --image {IMAGE} --checkpoint {BUCKET}/c "
                                                   "--api-key-env DISTDL_API_KEY --name digits"))
    cluster = service["spec"]["rayClusterConfig"]
    (worker,) = containers(cluster["workerGroupSpecs"])
    (head,) = containers(cluster["headGroupSpec"])
    for box in (head, worker):
        assert box["env"] == [{"name": "DISTDL_API_KEY",
                               "valueFrom": {"secretKeyRef": {"name": "digits-api-key", "key": "api-key"}}}]
    assert yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["args"]["api_key_env"] == "DISTDL_API_KEY"


def test_a_training_job_sizes_its_worker_pods_from_the_spec(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = render(capsys, f"train jobs/cnn_digits.yaml --image {IMAGE} --set storage={BUCKET}/r "
                         f"--set data.train={BUCKET}/t.parquet --set scaling.num_workers=4 --gpus-per-node 2")
    (group,) = list(yaml.safe_load_all(out))[1]["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert group["replicas"] == group["maxReplicas"] == 2 and group["minReplicas"] == 0
    assert containers(group)[0]["resources"]["limits"]["nvidia.com/gpu"] == "2"


TRAIN = f"train jobs/cnn_digits.yaml --image {IMAGE} --set storage={BUCKET}/r --set data.train={BUCKET}/t.parquet"
SCORE = f"score --image {IMAGE} --checkpoint {BUCKET}/c --input {BUCKET}/i --output {BUCKET}/o"


def job_and_workers(capsys, command: str) -> tuple[dict, dict]:
    """The RayJob a command renders, and its one worker group."""
    job = list(yaml.safe_load_all(render(capsys, command)))[-1]
    (group,) = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    return job, group


def test_a_jobs_cluster_starts_at_nodes_and_autoscales_between_zero_and_max_nodes(capsys, schemas):
    job, group = job_and_workers(capsys, f"{SCORE} --max-actors 8 --nodes 2 --max-nodes 8")
    schemas["RayJob"].validate(job)
    assert job["spec"]["rayClusterSpec"]["enableInTreeAutoscaling"]
    assert (group["replicas"], group["minReplicas"], group["maxReplicas"]) == (2, 0, 8)
    # Without --max-nodes a job grows no larger than it starts; idle pods still go.
    (committed,) = docs("rayjob-score.yaml")
    (group,) = committed["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert committed["spec"]["rayClusterSpec"]["enableInTreeAutoscaling"]
    assert (group["replicas"], group["minReplicas"], group["maxReplicas"]) == (1, 0, 1)


def test_the_service_upgrades_to_a_changed_cluster_without_downtime():
    (service,) = docs("rayservice.yaml")
    assert service["spec"]["upgradeStrategy"] == {"type": "NewCluster"}


@pytest.mark.parametrize("flags, labels", [
    ("--queue team-a", {"kueue.x-k8s.io/queue-name": "team-a"}),
    ("--batch-scheduler volcano", {"ray.io/scheduler-name": "volcano"}),
    ("--batch-scheduler volcano --queue team-a", {"ray.io/scheduler-name": "volcano", "volcano.sh/queue-name": "team-a"}),
])
def test_a_gang_scheduled_job_has_its_scheduler_labels_and_a_fixed_size(flags, labels, capsys, monkeypatch, schemas):
    monkeypatch.chdir(ROOT)
    job, group = job_and_workers(capsys, f"{TRAIN} --nodes 2 {flags}")
    schemas["RayJob"].validate(job)
    assert job["metadata"]["labels"] == {"app": "distdl", **labels}
    # Kueue's webhook refuses a RayJob whose cluster autoscales; Volcano's gang would be only its minimum.
    assert job["spec"]["rayClusterSpec"]["enableInTreeAutoscaling"] is False
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 2


@pytest.mark.parametrize("name", RENDERED)
def test_no_scheduler_label_unless_asked(name):
    for doc in docs(name):
        if doc["apiVersion"] == "ray.io/v1":
            assert doc["metadata"]["labels"] == {"app": "distdl"}


@pytest.mark.parametrize("flags, message", [
    (f"cluster --image {IMAGE} --queue team-a", "--queue and --batch-scheduler apply to train, tune and score, not to cluster"),
    (f"{SCORE} --queue team-a --max-nodes 4", "--max-nodes 4 with --queue or --batch-scheduler: a gang-scheduled job"),
    (f"{SCORE} --batch-scheduler yunikorn", "--batch-scheduler 'yunikorn': must be one of volcano"),
    (f"{SCORE} --nodes 3 --max-nodes 2", "--max-nodes 2 is below 3, the worker pods this cluster starts with"),
    (f"serve --image {IMAGE} --checkpoint {BUCKET}/c --nodes 5", "--max-nodes 4 is below 5"),
])
def test_bad_scaling_or_queue_flags_are_refused_with_the_flag_named(flags, message, capsys):
    assert cli.main(["k8s", "render", *shlex.split(flags)]) == 1
    assert message in capsys.readouterr().err


def test_local_paths_are_refused_with_the_field_named(monkeypatch):
    monkeypatch.chdir(ROOT)
    shape = k8s.Shape(IMAGE)
    with pytest.raises(k8s.K8sError, match=r"storage='runs', data.train='data/digits/train.parquet' must be an s3://"):
        k8s.train_job("jobs/cnn_digits.yaml", [], shape)
    with pytest.raises(k8s.K8sError, match=r"--output='out/s' must be"):
        k8s.score_job([], {"--checkpoint": "s3://b/c", "--input": "s3://b/i", "--output": "out/s"}, 0, shape)


def test_a_bad_spec_or_a_missing_image_is_refused(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(SpecError, match="train.lr: must be float"):
        k8s.train_job("jobs/cnn_digits.yaml", ["train.lr=fast"], k8s.Shape(IMAGE))
    assert cli.main(["k8s", "render", "cluster"]) == 1
    assert "needs --image" in capsys.readouterr().err


# ---- Pod Security Standard "restricted" ------------------------------------------------------
def pods_with_operator_containers(manifest: list[dict]) -> list[tuple[dict, list[dict]]]:
    """(pod spec, containers KubeRay adds to it) for every pod template: the autoscaler sidecar joins
    the head pod of an autoscaled cluster, with autoscalerOptions' securityContext and volumeMounts."""
    found = []
    for cluster in pod_clusters(manifest):
        head = cluster["headGroupSpec"]["template"]["spec"]
        options = cluster.get("autoscalerOptions")
        sidecar = [{"name": "autoscaler", "securityContext": options["securityContext"],
                    "volumeMounts": options["volumeMounts"]}] if cluster["enableInTreeAutoscaling"] else []
        found.append((head, sidecar))
        found += [(group["template"]["spec"], []) for group in cluster["workerGroupSpecs"]]
    for doc in manifest:
        if "submitterPodTemplate" in doc.get("spec", {}):
            found.append((doc["spec"]["submitterPodTemplate"]["spec"], []))
    assert len(found) == len(pod_specs(manifest)), "a pod template the walk above does not know"
    return found


def pod_clusters(manifest: list[dict]) -> list[dict]:
    """The RayCluster spec of each resource: a RayCluster's own, a RayJob's or a RayService's."""
    specs = [doc["spec"] for doc in manifest if doc.get("apiVersion") == "ray.io/v1"]
    return [s.get("rayClusterSpec") or s.get("rayClusterConfig") or s for s in specs]


RENDERED_TOO = {  # beyond k8s/: the variants whose pods differ
    "service with an API key": f"serve --image {IMAGE} --checkpoint {BUCKET}/c --api-key-env KEY",
    "training on GPUs": f"train jobs/cnn_digits.yaml --image {IMAGE} --set storage={BUCKET}/r "
                        f"--set data.train={BUCKET}/t.parquet --gpus-per-node 2",
    "training queued in Kueue, no autoscaler": f"train jobs/cnn_digits.yaml --image {IMAGE} --set storage={BUCKET}/r "
                                               f"--set data.train={BUCKET}/t.parquet --queue team-a",
}


@pytest.mark.parametrize("name", [*RENDERED, *RENDERED_TOO])
def test_every_pod_passes_the_restricted_pod_security_standard(name, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    manifest = docs(name) if name in RENDERED else list(yaml.safe_load_all(render(capsys, RENDERED_TOO[name])))
    pods = pods_with_operator_containers(manifest)
    assert pods
    for pod, added in pods:
        assert pod_security.violations(pod, added) == []
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}


def test_the_pod_security_checker_names_each_broken_rule():
    (cluster,) = docs("raycluster.yaml")
    pod = cluster["spec"]["workerGroupSpecs"][0]["template"]["spec"]
    assert pod_security.violations(pod) == []
    pod["hostNetwork"] = True
    pod["volumes"] = [{"name": "node", "hostPath": {"path": "/"}}]
    del pod["securityContext"]["seccompProfile"]
    box = pod["containers"][0]
    box["securityContext"] = {"privileged": True, "runAsUser": 0, "capabilities": {"add": ["SYS_ADMIN"]}}
    assert pod_security.violations(pod) == [
        "hostNetwork must be unset or false",
        "volume 'node' is of type ['hostPath'], not allowed",
        "container 'ray-worker': runAsUser must not be 0",
        "container 'ray-worker': privileged must be unset or false",
        "container 'ray-worker': allowPrivilegeEscalation must be false",
        "container 'ray-worker': capabilities.drop must include ALL",
        "container 'ray-worker': capabilities.add may only hold NET_BIND_SERVICE",
        "container 'ray-worker': seccompProfile.type must be RuntimeDefault or Localhost (on the pod or the container)",
    ]


@pytest.mark.parametrize("name", RENDERED)
def test_only_the_autoscaler_mounts_a_service_account_token(name):
    """Job code runs in the Ray containers and has no use for the Kubernetes API; the autoscaler
    needs it to add and remove worker pods."""
    manifest = docs(name)
    for pod, added in pods_with_operator_containers(manifest):
        assert pod["automountServiceAccountToken"] is False
        mounted = {m["mountPath"] for box in pod["containers"] for m in box.get("volumeMounts", [])}
        assert k8s.API_TOKEN_DIR not in mounted
        for sidecar in added:
            (mount,) = sidecar["volumeMounts"]
            assert mount["mountPath"] == k8s.API_TOKEN_DIR and mount["readOnly"]
            volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
            assert {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}} in volume["projected"]["sources"]
