"""k8s/prometheus-scrape.yaml finds the metrics of the pods that distdl's KubeRay manifests make.

It relies on what KubeRay adds to each Ray pod (the label ray.io/is-ray-node, a container port
named "metrics", `--metrics-export-port=8080`); a manifest that overrode either would hide its
pods' metrics from it."""
from __future__ import annotations

from pathlib import Path

import yaml

K8S = Path(__file__).resolve().parents[1] / "k8s"
KUBERAY_METRICS_PORT = 8080  # KubeRay's DefaultMetricsPort: its --metrics-export-port and "metrics" port
CLUSTER_SPEC = {"RayCluster": lambda spec: spec, "RayJob": lambda spec: spec["rayClusterSpec"],
                "RayService": lambda spec: spec["rayClusterConfig"]}


def ray_groups() -> list[tuple[str, dict]]:
    """(manifest file, head or worker group) of every KubeRay resource in k8s/."""
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") in CLUSTER_SPEC:
                cluster = CLUSTER_SPEC[doc["kind"]](doc["spec"])
                found += [(path.name, g) for g in [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]]
    return found


def test_the_scrape_config_keeps_kuberays_ray_pods_on_their_metrics_port():
    (job,) = yaml.safe_load((K8S / "prometheus-scrape.yaml").read_text())["scrape_configs"]
    assert job["kubernetes_sd_configs"] == [{"role": "pod"}]
    keeps = {tuple(r["source_labels"]): r["regex"] for r in job["relabel_configs"] if r.get("action") == "keep"}
    assert keeps == {("__meta_kubernetes_pod_label_ray_io_is_ray_node",): "yes",
                     ("__meta_kubernetes_pod_container_port_name",): "metrics"}


def test_no_manifest_moves_the_metrics_port_kuberay_exports_on():
    groups = ray_groups()
    assert {name for name, _ in groups} >= {"raycluster.yaml", "rayservice.yaml", "rayjob-train.yaml"}
    for name, group in groups:
        port = group.get("rayStartParams", {}).get("metrics-export-port", KUBERAY_METRICS_PORT)
        assert int(port) == KUBERAY_METRICS_PORT, name
        ports = [p for c in group["template"]["spec"]["containers"] for p in c.get("ports", [])]
        assert all(p["containerPort"] == KUBERAY_METRICS_PORT for p in ports if p.get("name") == "metrics"), name
        assert all(p.get("name") == "metrics" for p in ports if p["containerPort"] == KUBERAY_METRICS_PORT), name
