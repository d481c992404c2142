"""The Pod Security Standards' Baseline and Restricted profiles as a checker of pod specs.

Why a checker of our own: the chart's promise is "every pod passes the restricted profile", and
the cluster's Pod Security Admission is not here to ask. Each rule below is one control of
https://kubernetes.io/docs/concepts/security/pod-security-standards/ (the policy for
Kubernetes 1.30+, the oldest version the chart supports), named as that page names it, with the
fields it restricts and the values it allows. Restricted is Baseline plus its own controls, as
on that page. Windows-only relaxations are not modelled: the chart's pods are Linux pods.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

LEVELS = ("baseline", "restricted")

#: Baseline "Capabilities": what may be added at most.
BASELINE_ADDABLE_CAPABILITIES = frozenset({
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
    "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
})  # fmt: skip
#: Restricted "Capabilities (v1.22+)": drop ALL, add at most this.
RESTRICTED_ADDABLE_CAPABILITIES = frozenset({"NET_BIND_SERVICE"})
#: Baseline "SELinux": the allowed types (user and role must not be set).
SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t",
                           "container_engine_t"})  # fmt: skip
#: Baseline "Sysctls": the safe set.
SAFE_SYSCTLS = frozenset({
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
})  # fmt: skip
#: Restricted "Volume Types": the only volume sources allowed.
RESTRICTED_VOLUME_TYPES = frozenset({
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
    "projected", "secret",
})  # fmt: skip
SECCOMP_ALLOWED = frozenset({"RuntimeDefault", "Localhost"})
APPARMOR_ALLOWED = frozenset({"RuntimeDefault", "Localhost"})
APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"


@dataclass(frozen=True)
class Violation:
    """One field breaking one control (``control`` as the PSS page names it)."""

    level: str
    control: str
    where: str
    message: str

    def __str__(self) -> str:
        return f"[{self.level}] {self.control}: {self.where}: {self.message}"


def _containers(pod: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for field in ("initContainers", "containers", "ephemeralContainers"):
        for container in pod.get(field) or ():
            yield f"{field}[{container.get('name', '?')}]", container


def _baseline(pod: Mapping[str, Any], annotations: Mapping[str, str]) -> Iterator[Violation]:
    def bad(control: str, where: str, message: str) -> Violation:
        return Violation("baseline", control, where, message)

    pod_ctx = pod.get("securityContext") or {}
    if (pod_ctx.get("windowsOptions") or {}).get("hostProcess"):
        yield bad("HostProcess", "spec.securityContext", "windowsOptions.hostProcess is true")
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            yield bad("Host Namespaces", f"spec.{field}", "must be undefined or false")
    for volume in pod.get("volumes") or ():
        if "hostPath" in volume:
            yield bad("HostPath Volumes", f"volumes[{volume.get('name')}]", "hostPath volume")
    apparmor = (pod_ctx.get("appArmorProfile") or {}).get("type")
    if apparmor is not None and apparmor not in APPARMOR_ALLOWED:
        yield bad("AppArmor", "spec.securityContext", f"appArmorProfile.type {apparmor}")
    for key, value in annotations.items():
        if key.startswith(APPARMOR_ANNOTATION) and not (
            value == "runtime/default" or value.startswith("localhost/")
        ):
            yield bad("AppArmor", f"annotation {key}", f"{value}")
    yield from _selinux(pod_ctx, "spec.securityContext", bad)
    if (pod_ctx.get("seccompProfile") or {}).get("type") == "Unconfined":
        yield bad("Seccomp", "spec.securityContext", "seccompProfile.type Unconfined")
    for sysctl in pod_ctx.get("sysctls") or ():
        if sysctl.get("name") not in SAFE_SYSCTLS:
            yield bad("Sysctls", "spec.securityContext", f"unsafe sysctl {sysctl.get('name')}")

    for where, container in _containers(pod):
        ctx = container.get("securityContext") or {}
        if (ctx.get("windowsOptions") or {}).get("hostProcess"):
            yield bad("HostProcess", where, "windowsOptions.hostProcess is true")
        if ctx.get("privileged"):
            yield bad("Privileged Containers", where, "privileged is true")
        added = set((ctx.get("capabilities") or {}).get("add") or ())
        if added - BASELINE_ADDABLE_CAPABILITIES:
            extra = sorted(added - BASELINE_ADDABLE_CAPABILITIES)
            yield bad("Capabilities", where, f"adds {extra}")
        for port in container.get("ports") or ():
            if port.get("hostPort"):
                yield bad("Host Ports", where, f"hostPort {port['hostPort']}")
        apparmor = (ctx.get("appArmorProfile") or {}).get("type")
        if apparmor is not None and apparmor not in APPARMOR_ALLOWED:
            yield bad("AppArmor", where, f"appArmorProfile.type {apparmor}")
        yield from _selinux(ctx, where, bad)
        if ctx.get("procMount", "Default") != "Default":
            yield bad("/proc Mount Type", where, f"procMount {ctx['procMount']}")
        if (ctx.get("seccompProfile") or {}).get("type") == "Unconfined":
            yield bad("Seccomp", where, "seccompProfile.type Unconfined")


def _selinux(ctx: Mapping[str, Any], where: str, bad: Any) -> Iterator[Violation]:
    options = ctx.get("seLinuxOptions") or {}
    if options.get("type", "") not in SELINUX_TYPES:
        yield bad("SELinux", where, f"seLinuxOptions.type {options['type']}")
    for field in ("user", "role"):
        if options.get(field):
            yield bad("SELinux", where, f"seLinuxOptions.{field} is set")


def _restricted(pod: Mapping[str, Any]) -> Iterator[Violation]:
    def bad(control: str, where: str, message: str) -> Violation:
        return Violation("restricted", control, where, message)

    pod_ctx = pod.get("securityContext") or {}
    for volume in pod.get("volumes") or ():
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            yield bad("Volume Types", f"volumes[{volume.get('name')}]", f"type {sorted(kinds)}")
    if pod_ctx.get("runAsNonRoot") is False:
        yield bad("Running as Non-root", "spec.securityContext", "runAsNonRoot is false")
    if pod_ctx.get("runAsUser") == 0:
        yield bad("Running as Non-root user", "spec.securityContext", "runAsUser is 0")
    pod_seccomp = (pod_ctx.get("seccompProfile") or {}).get("type")
    if pod_seccomp is not None and pod_seccomp not in SECCOMP_ALLOWED:
        yield bad("Seccomp", "spec.securityContext", f"seccompProfile.type {pod_seccomp}")

    for where, container in _containers(pod):
        ctx = container.get("securityContext") or {}
        if ctx.get("allowPrivilegeEscalation") is not False:
            yield bad("Privilege Escalation", where, "allowPrivilegeEscalation is not false")
        # Container fields may be undefined only when the pod-level one is set as required.
        non_root = ctx.get("runAsNonRoot")
        if non_root is False or (non_root is None and pod_ctx.get("runAsNonRoot") is not True):
            yield bad("Running as Non-root", where, "runAsNonRoot is not true (pod or container)")
        if ctx.get("runAsUser") == 0:
            yield bad("Running as Non-root user", where, "runAsUser is 0")
        seccomp = (ctx.get("seccompProfile") or {}).get("type")
        if seccomp is None and pod_seccomp is None:
            yield bad("Seccomp", where, "no seccompProfile (pod or container)")
        elif seccomp is not None and seccomp not in SECCOMP_ALLOWED:
            yield bad("Seccomp", where, f"seccompProfile.type {seccomp}")
        caps = ctx.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or ()):
            yield bad("Capabilities", where, "capabilities.drop does not include ALL")
        added = set(caps.get("add") or ())
        if added - RESTRICTED_ADDABLE_CAPABILITIES:
            extra = sorted(added - RESTRICTED_ADDABLE_CAPABILITIES)
            yield bad("Capabilities", where, f"adds {extra}")


def violations(
    pod: Mapping[str, Any],
    level: str = "restricted",
    annotations: Mapping[str, str] | None = None,
) -> list[Violation]:
    """Everything in a pod spec that the ``level`` profile forbids (empty: the pod passes)."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}")
    found = list(_baseline(pod, annotations or {}))
    if level == "restricted":
        found.extend(_restricted(pod))
    return found
