"""Every pod the chart creates passes the Pod Security Standards' restricted profile.

The profile's controls are implemented in ``pod_security.py`` (one rule per control of
https://kubernetes.io/docs/concepts/security/pod-security-standards/); the tests below show
each control catching what it forbids, so a passing chart is evidence and not a check that
cannot fail.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from chart_support import pod_specs
from pod_security import violations


def _pod_templates(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any], dict]]:
    """(kind/name, pod spec, pod annotations) of every workload the chart renders."""
    found = []
    specs = dict(pod_specs(objects))
    for obj in objects:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        if name in specs:
            template = obj.get("spec", {}).get("template", {})
            annotations = (template.get("metadata") or {}).get("annotations") or {}
            found.append((name, specs[name], annotations))
    return found


@pytest.mark.parametrize("render", ["rendered_default", "rendered_all"])
def test_every_pod_the_chart_creates_is_restricted(
    render: str, request: pytest.FixtureRequest
) -> None:
    pods = _pod_templates(request.getfixturevalue(render))
    assert pods, "the chart renders no pod: nothing was checked"
    for name, pod, pod_annotations in pods:
        found = [str(v) for v in violations(pod, "restricted", pod_annotations)]
        assert found == [], name


# --- the checker can fail: one mutation per control ------------------------------------------


def compliant() -> dict[str, Any]:
    """A minimal pod that meets the restricted profile."""
    return {
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": "app",
                "image": "example:1",
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]},
                },
            }
        ],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    }


def _ctx(pod: dict[str, Any]) -> dict[str, Any]:
    return pod["containers"][0]["securityContext"]


Mutation = Callable[[dict[str, Any]], None]

#: (control the PSS page names, level it belongs to, mutation that breaks it)
MUTATIONS: list[tuple[str, str, Mutation]] = [
    ("HostProcess", "baseline",
     lambda p: _ctx(p).update(windowsOptions={"hostProcess": True})),
    ("Host Namespaces", "baseline", lambda p: p.update(hostNetwork=True)),
    ("Host Namespaces", "baseline", lambda p: p.update(hostPID=True)),
    ("Host Namespaces", "baseline", lambda p: p.update(hostIPC=True)),
    ("Privileged Containers", "baseline", lambda p: _ctx(p).update(privileged=True)),
    ("Capabilities", "baseline",
     lambda p: _ctx(p).update(capabilities={"drop": ["ALL"], "add": ["SYS_ADMIN"]})),
    ("HostPath Volumes", "baseline",
     lambda p: p["volumes"].append({"name": "host", "hostPath": {"path": "/"}})),
    ("Host Ports", "baseline",
     lambda p: p["containers"][0].update(ports=[{"containerPort": 80, "hostPort": 80}])),
    ("AppArmor", "baseline",
     lambda p: _ctx(p).update(appArmorProfile={"type": "Unconfined"})),
    ("SELinux", "baseline",
     lambda p: _ctx(p).update(seLinuxOptions={"type": "spc_t"})),
    ("SELinux", "baseline",
     lambda p: p["securityContext"].update(seLinuxOptions={"user": "system_u"})),
    ("/proc Mount Type", "baseline", lambda p: _ctx(p).update(procMount="Unmasked")),
    ("Seccomp", "baseline",
     lambda p: p["securityContext"].update(seccompProfile={"type": "Unconfined"})),
    ("Sysctls", "baseline",
     lambda p: p["securityContext"].update(sysctls=[{"name": "kernel.msgmax", "value": "1"}])),
    ("Volume Types", "restricted",
     lambda p: p["volumes"].append({"name": "nfs", "nfs": {"server": "a", "path": "/"}})),
    ("Privilege Escalation", "restricted",
     lambda p: _ctx(p).pop("allowPrivilegeEscalation")),
    ("Running as Non-root", "restricted",
     lambda p: p["securityContext"].pop("runAsNonRoot")),
    ("Running as Non-root", "restricted", lambda p: _ctx(p).update(runAsNonRoot=False)),
    ("Running as Non-root user", "restricted", lambda p: _ctx(p).update(runAsUser=0)),
    ("Seccomp", "restricted", lambda p: p["securityContext"].pop("seccompProfile")),
    ("Capabilities", "restricted", lambda p: _ctx(p).update(capabilities={"drop": ["NET_RAW"]})),
    ("Capabilities", "restricted",
     lambda p: _ctx(p).update(capabilities={"drop": ["ALL"], "add": ["CHOWN"]})),
    ("Privilege Escalation", "restricted",
     lambda p: p.setdefault("initContainers", []).append(
         {"name": "init", "securityContext": {"capabilities": {"drop": ["ALL"]}}})),
]  # fmt: skip


#: Baseline breaches that restricted, tightening the same field, reports under its own control.
ALSO_RESTRICTED = {
    ("Capabilities", "baseline"): {("Capabilities", "restricted")},
    ("HostPath Volumes", "baseline"): {("Volume Types", "restricted")},
    ("Seccomp", "baseline"): {("Seccomp", "restricted")},
}


def test_the_compliant_pod_passes() -> None:
    assert violations(compliant(), "restricted") == []


@pytest.mark.parametrize(("control", "level", "mutate"), MUTATIONS)
def test_each_control_catches_what_it_forbids(control: str, level: str, mutate: Mutation) -> None:
    pod = compliant()
    mutate(pod)
    found = violations(pod, "restricted")
    assert found, f"{control}: the mutation went unnoticed"
    expected = {(control, level)} | ALSO_RESTRICTED.get((control, level), set())
    assert {(v.control, v.level) for v in found} == expected, [str(v) for v in found]
    # Baseline controls are part of restricted; restricted ones are not in baseline.
    assert bool(violations(pod, "baseline")) == (level == "baseline")


def test_apparmor_annotation_is_checked() -> None:
    key = "container.apparmor.security.beta.kubernetes.io/app"
    assert violations(compliant(), annotations={key: "runtime/default"}) == []
    (found,) = violations(compliant(), annotations={key: "unconfined"})
    assert found.control == "AppArmor"


def test_the_rendered_operator_pod_fails_once_mutated(
    rendered_default: list[dict[str, Any]],
) -> None:
    """The chart's pod really goes through the checker: break it and it is caught."""
    ((_, pod, _),) = _pod_templates(rendered_default)
    pod = copy.deepcopy(pod)
    pod["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    pod["hostPID"] = True
    assert {v.control for v in violations(pod)} == {"Privilege Escalation", "Host Namespaces"}
