"""The Pod Security Standard "restricted" profile (Kubernetes 1.30), as a checker for pod specs."""

from __future__ import annotations


def restricted_violations(pod: dict) -> list[str]:
    """The Pod Security Standard "restricted" rules (v1.30) a pod spec breaks."""
    found = []
    pod_ctx = pod.get("securityContext") or {}
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            found.append(key)
    for volume in pod.get("volumes") or []:
        if set(volume) - {"name"} - {"emptyDir", "configMap", "secret", "projected", "downwardAPI",
                                      "persistentVolumeClaim", "ephemeral", "csi"}:
            found.append(f"volume {volume['name']}")
    if (pod_ctx.get("seccompProfile") or {}).get("type") not in ("RuntimeDefault", "Localhost"):
        found.append("seccompProfile")
    for container in pod.get("containers", []) + pod.get("initContainers", []):
        ctx = container.get("securityContext") or {}
        if ctx.get("allowPrivilegeEscalation") is not False:
            found.append("allowPrivilegeEscalation")
        if ctx.get("privileged"):
            found.append("privileged")
        if (ctx.get("capabilities") or {}).get("drop") != ["ALL"] or set((ctx.get("capabilities") or {}).get("add") or []) - {"NET_BIND_SERVICE"}:
            found.append("capabilities")
        if not (ctx.get("runAsNonRoot") or pod_ctx.get("runAsNonRoot")) or 0 in (ctx.get("runAsUser"), pod_ctx.get("runAsUser")):
            found.append("runAsNonRoot")
        if container.get("ports") and any(p.get("hostPort") for p in container["ports"]):
            found.append("hostPort")
    return found
