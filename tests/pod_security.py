"""The Kubernetes "restricted" Pod Security Standard, as a checker of pod specs.

The rules and field lists follow https://kubernetes.io/docs/concepts/security/pod-security-standards/
(the baseline controls, which restricted includes, then the restricted ones), as the API
server's PodSecurity admission applies them to a namespace labelled
pod-security.kubernetes.io/enforce=restricted. Each rule names the field that breaks it.
"""
from __future__ import annotations

from typing import Iterator

# Restricted: "Volume Types".
ALLOWED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                   "projected", "secret"}
# Baseline: "Sysctls", the safe set.
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes"}
SECCOMP_ALLOWED = {"RuntimeDefault", "Localhost"}
SELINUX_TYPES = {None, "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}


def violations(pod: dict, extra_containers: list[dict] = ()) -> list[str]:
    """Every rule ``pod`` (a PodSpec) breaks; ``extra_containers`` are added to it by an operator
    (KubeRay's autoscaler sidecar) with a securityContext taken from elsewhere in the manifest."""
    return list(_violations(pod, [*_containers(pod), *extra_containers]))


def _containers(pod: dict) -> list[dict]:
    return [*pod.get("containers", []), *pod.get("initContainers", []), *pod.get("ephemeralContainers", [])]


def _violations(pod: dict, containers: list[dict]) -> Iterator[str]:
    context = pod.get("securityContext", {})
    # Baseline: host namespaces, HostProcess, hostPath volumes, host ports, sysctls, SELinux, AppArmor.
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            yield f"{field} must be unset or false"
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            yield f"volume {volume['name']!r} is of type {sorted(kinds - ALLOWED_VOLUMES)}, not allowed"
    for sysctl in context.get("sysctls", []):
        if sysctl["name"] not in SAFE_SYSCTLS:
            yield f"sysctl {sysctl['name']} is not in the safe set"
    yield from _context_violations("pod", context)
    # Restricted: non-root and seccomp may be set on the pod or else on every container.
    for box in containers:
        where, box_context = f"container {box['name']!r}", box.get("securityContext", {})
        yield from _context_violations(where, box_context)
        if box_context.get("privileged"):
            yield f"{where}: privileged must be unset or false"
        if box_context.get("procMount", "Default") != "Default":
            yield f"{where}: procMount must be Default"
        if box_context.get("allowPrivilegeEscalation") is not False:
            yield f"{where}: allowPrivilegeEscalation must be false"
        capabilities = box_context.get("capabilities", {})
        if "ALL" not in capabilities.get("drop", []):
            yield f"{where}: capabilities.drop must include ALL"
        if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            yield f"{where}: capabilities.add may only hold NET_BIND_SERVICE"
        if any(port.get("hostPort") for port in box.get("ports", [])):
            yield f"{where}: hostPort must be unset or 0"
        if not box_context.get("runAsNonRoot", context.get("runAsNonRoot")):
            yield f"{where}: runAsNonRoot must be true (on the pod or the container)"
        if not box_context.get("seccompProfile", context.get("seccompProfile")):
            yield f"{where}: seccompProfile.type must be RuntimeDefault or Localhost (on the pod or the container)"


def _context_violations(where: str, context: dict) -> Iterator[str]:
    """The rules a pod's and a container's securityContext share."""
    if context.get("windowsOptions", {}).get("hostProcess"):
        yield f"{where}: windowsOptions.hostProcess must be unset or false"
    if context.get("runAsNonRoot") is False:
        yield f"{where}: runAsNonRoot must not be false"
    if context.get("runAsUser") == 0:
        yield f"{where}: runAsUser must not be 0"
    seccomp = context.get("seccompProfile", {}).get("type")
    if seccomp is not None and seccomp not in SECCOMP_ALLOWED:
        yield f"{where}: seccompProfile.type {seccomp} is not RuntimeDefault or Localhost"
    apparmor = context.get("appArmorProfile", {}).get("type")
    if apparmor not in (None, "RuntimeDefault", "Localhost"):
        yield f"{where}: appArmorProfile.type {apparmor} is not RuntimeDefault or Localhost"
    selinux = context.get("seLinuxOptions", {})
    if selinux.get("type") not in SELINUX_TYPES or selinux.get("user") or selinux.get("role"):
        yield f"{where}: seLinuxOptions may only set an allowed type"
