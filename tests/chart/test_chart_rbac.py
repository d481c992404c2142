"""RBAC is exactly what the operator needs: exact verbs on exact resources, no more.

The expected permissions below are the contract between the operator and the chart (what Kopf
and mlplane's handlers call). A permission added to the chart without a reason here fails, and
so does one the operator needs that the chart lost.
"""

from __future__ import annotations

from typing import Any

import pytest
from chart_support import CHART, NAMESPACE, by_kind, one, template

Perms = dict[tuple[str, str], set[str]]

WATCH = {"list", "watch"}
#: Each entry names the code that needs it (the comments in templates/_helpers.tpl say the same).
NAMESPACED: Perms = {
    # Kopf: watch stream (list+watch) and finalizer/annotation patches; nothing GETs these.
    ("mlplane.dev", "modeldeployments"): WATCH | {"patch"},
    ("mlplane.dev", "abtests"): WATCH | {"patch"},
    # ... plus drift retraining: KubeRayPlatform.create (get after a 409 to check the owner).
    ("mlplane.dev", "trainingjobs"): WATCH | {"get", "patch", "create"},
    ("mlplane.dev", "trainingjobs/status"): {"patch"},
    ("mlplane.dev", "modeldeployments/status"): {"patch"},
    ("mlplane.dev", "abtests/status"): {"patch"},
    # kopf.index + KubeRayPlatform.create/.patch/.get; no update. RayJobs go with their owner
    # (ownerReferences GC), except the on-demand one a return to spot ends
    # (KubeRayPlatform.delete_owned, spec.preemption.returnToSpot).
    ("ray.io", "rayjobs"): WATCH | {"get", "create", "patch", "delete"},
    ("ray.io", "rayservices"): WATCH | {"get", "create", "patch"},
    # Kopf on.event for pods (preemption evidence).
    ("", "pods"): WATCH,
    # Kopf posts core v1 Events; it never patches them nor uses events.k8s.io.
    ("", "events"): {"create"},
    # Each Ray cluster's token Secret and NetworkPolicy: created, and read back by name only to
    # check the owner of one that exists (KubeRayPlatform.create with check_owner); the
    # request-id signing Secret of each ModelDeployment also patched, to rotate.
    ("", "secrets"): {"get", "create", "patch"},
    ("networking.k8s.io", "networkpolicies"): {"get", "create"},
}
CLUSTER: Perms = {
    ("apiextensions.k8s.io", "customresourcedefinitions"): WATCH,
    ("", "nodes"): WATCH,
}
#: Kopf lists/watches namespaces only when it serves a list of namespaces (not cluster-wide).
NAMESPACES: Perms = {("", "namespaces"): {"list", "watch"}}

#: Verbs the operator used to hold and no code calls: they must not come back unexplained.
REMOVED: Perms = {
    ("ray.io", "rayjobs"): {"update"},
    ("ray.io", "rayservices"): {"update", "delete"},
    ("mlplane.dev", "modeldeployments"): {"get"},
    ("mlplane.dev", "abtests"): {"get"},
    ("", "pods"): {"get"},
    ("", "nodes"): {"get"},
    ("", "events"): {"patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"get"},
}

#: Verbs that would let the operator grant itself more, or read what it must not.
DANGEROUS_VERBS = {"escalate", "bind", "impersonate", "approve", "sign", "*"}


def permissions(rules: list[dict[str, Any]]) -> Perms:
    perms: Perms = {}
    for rule in rules:
        assert not rule.get("resourceNames"), "resourceNames are not expected"
        assert not rule.get("nonResourceURLs"), "nonResourceURLs are not expected"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                perms.setdefault((group, resource), set()).update(rule["verbs"])
    return perms


def rbac_objects(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The roles over users' resources (the operator's own state and leader Roles are checked
    apart)."""
    return [o for o in objects if o["kind"] in {"ClusterRole", "Role"} and not is_own(o)]


def is_state(obj: dict[str, Any]) -> bool:
    return obj["metadata"]["name"].endswith("-state")


def is_leader(obj: dict[str, Any]) -> bool:
    return obj["metadata"]["name"].endswith("-leader")


def is_own(obj: dict[str, Any]) -> bool:
    """The operator's own objects in its namespace (state, leader election)."""
    return is_state(obj) or is_leader(obj)


#: The operator's own state in its namespace: the reclaim history ConfigMap
#: (operator/platforms/reclaim_history.py). Create cannot be limited by name in Kubernetes;
#: reading and patching are, to that one ConfigMap.
STATE_RULES = [
    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]},
    {"apiGroups": [""], "resources": ["configmaps"],
     "resourceNames": ["mlplane-reclaim-history"], "verbs": ["get", "patch"]},
]  # fmt: skip


@pytest.mark.parametrize("render", ["rendered_default", "rendered_all"])
def test_the_state_role_reaches_one_configmap_in_the_release_namespace(
    render: str, request: pytest.FixtureRequest
) -> None:
    objects = request.getfixturevalue(render)
    (role,) = [o for o in by_kind(objects, "Role") if is_state(o)]
    assert role["metadata"]["namespace"] == NAMESPACE
    assert role["rules"] == STATE_RULES
    (binding,) = [o for o in by_kind(objects, "RoleBinding") if is_state(o)]
    assert binding["metadata"]["namespace"] == NAMESPACE
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}  # fmt: skip


def leader_rules(lease: str) -> list[dict[str, Any]]:
    """Leader election (operator/leader.py): the release's one Lease, in its namespace. Create
    cannot be limited by name; reading and renewing are, to that Lease."""
    return [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
         "resourceNames": [lease], "verbs": ["get", "update"]},
    ]  # fmt: skip


@pytest.mark.parametrize("render", ["rendered_default", "rendered_all"])
def test_the_leader_role_reaches_one_lease_in_the_release_namespace(
    render: str, request: pytest.FixtureRequest
) -> None:
    objects = request.getfixturevalue(render)
    (role,) = [o for o in by_kind(objects, "Role") if is_leader(o)]
    assert role["metadata"]["namespace"] == NAMESPACE
    (binding,) = [o for o in by_kind(objects, "RoleBinding") if is_leader(o)]
    assert binding["metadata"]["namespace"] == NAMESPACE
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    (config,) = [
        c for c in by_kind(objects, "ConfigMap") if c["metadata"]["name"].endswith("-config")
    ]
    # The Lease the operator is told to use is the one the Role lets it renew.
    assert config["data"]["MLPLANE_LEADER_LEASE_NAMESPACE"] == NAMESPACE
    assert role["rules"] == leader_rules(config["data"]["MLPLANE_LEADER_LEASE_NAME"])


def test_no_leader_role_without_leader_election() -> None:
    objects = template("--set", "operator.replicas=1",
                       "--set", "operator.leaderElection.enabled=false")  # fmt: skip
    assert not [o for o in objects if o["kind"] in {"Role", "RoleBinding"} and is_leader(o)]


@pytest.mark.parametrize("render", ["rendered_default", "rendered_all"])
def test_no_wildcards_no_secrets_no_escalation(render: str, request: pytest.FixtureRequest) -> None:
    objects = request.getfixturevalue(render)
    roles = rbac_objects(objects)
    assert roles
    for role in roles:
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert all("*" not in item for item in rule[field]), f"wildcard in {field}"
            assert not {"configmaps", "serviceaccounts"} & set(rule["resources"])
            if "secrets" in rule["resources"]:  # by name only: never enumerate Secrets
                assert not {"list", "watch"} & set(rule["verbs"])
            assert not DANGEROUS_VERBS & set(rule["verbs"])
            assert not any(r.startswith(("roles", "clusterroles")) for r in rule["resources"])


def test_cluster_wide_mode_has_exactly_the_contract(rendered_default: list[dict[str, Any]]) -> None:
    role = one(rendered_default, "ClusterRole")
    assert permissions(role["rules"]) == NAMESPACED | CLUSTER
    assert not [r for r in by_kind(rendered_default, "Role") if not is_own(r)]
    binding = one(rendered_default, "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }


@pytest.mark.parametrize("render", ["rendered_default", "rendered_all"])
def test_unused_verbs_are_gone(render: str, request: pytest.FixtureRequest) -> None:
    granted: Perms = {}
    for role in rbac_objects(request.getfixturevalue(render)):
        for key, verbs in permissions(role["rules"]).items():
            granted.setdefault(key, set()).update(verbs)
    for key, verbs in REMOVED.items():
        assert not verbs & granted.get(key, set()), f"{key}: {verbs & granted[key]} is unused"


def test_every_rule_says_which_code_needs_it() -> None:
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    for block in ("mlplane.rbac.namespacedRules", "mlplane.rbac.clusterRules"):
        body = helpers.split(f'define "{block}"', 1)[1].split("{{- end -}}", 1)[0]
        lines = body.splitlines()
        for i, line in enumerate(lines):
            if line.startswith("- apiGroups:"):
                above = lines[i - 1].strip() if i else ""
                assert above.startswith("#"), f"{block}: rule without a comment: {line}"


def test_namespaced_mode_scopes_the_namespaced_rules(rendered_all: list[dict[str, Any]]) -> None:
    cluster_role = one(rendered_all, "ClusterRole")
    assert permissions(cluster_role["rules"]) == CLUSTER | NAMESPACES
    roles = [r for r in by_kind(rendered_all, "Role") if not is_own(r)]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["ml-research", "ml-team"]
    for role in roles:
        assert permissions(role["rules"]) == NAMESPACED
    bindings = [b for b in by_kind(rendered_all, "RoleBinding") if not is_own(b)]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["ml-research", "ml-team"]
    for binding in bindings:
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["roleRef"]["name"] == roles[0]["metadata"]["name"]


@pytest.mark.parametrize("render", ["rendered_default", "rendered_all"])
def test_bindings_point_at_the_operator_service_account(
    render: str, request: pytest.FixtureRequest
) -> None:
    objects = request.getfixturevalue(render)
    account = one(objects, "ServiceAccount")
    deployment = one(objects, "Deployment")
    name = account["metadata"]["name"]
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == name
    for binding in by_kind(objects, "ClusterRoleBinding") + by_kind(objects, "RoleBinding"):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE}
        ]


def test_service_account_annotations_for_irsa(rendered_all: list[dict[str, Any]]) -> None:
    account = one(rendered_all, "ServiceAccount")
    assert account["metadata"]["name"] == "mlplane-sa"
    assert account["metadata"]["annotations"] == {
        "eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/mlplane-operator"
    }


def test_rbac_and_service_account_can_be_left_to_the_user() -> None:
    objects = template(
        "--set", "rbac.create=false",
        "--set", "serviceAccount.create=false",
        "--set", "serviceAccount.name=platform-operator",
    )  # fmt: skip
    assert not [o for o in objects if "Role" in o["kind"] or o["kind"] == "ServiceAccount"]
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "platform-operator"
