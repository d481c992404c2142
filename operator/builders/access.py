"""Who may reach a Ray cluster mlplane creates: its token Secret and its NetworkPolicy.

Ray's GCS (6379), dashboard and Jobs API (8265) and client server (10001) run whatever code
reaches them: on a training cluster that code holds the role that writes artifacts, on a
serving cluster it can redeploy the Serve apps. So every cluster is closed twice:

- **Token authentication** (KubeRay 1.7 ``authOptions: {mode: token, secretName}``): KubeRay
  puts ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN`` (from the Secret's ``auth_token`` key)
  into every Ray container, and its own dashboard client (Serve config, job status) reads the
  same Secret. The Secret is the operator's, one per owner (``<owner>-ray-auth``), made before
  the RayJob/RayService, owned by the TrainingJob/ModelDeployment (garbage-collected with it),
  its random token made once at the edge and never regenerated (a restart keeps the token the
  running cluster uses). All attempts of a TrainingJob share it; a ModelDeployment's new
  cluster (``upgradeStrategy: NewCluster``) keeps it.
- **A NetworkPolicy** per owner (``<owner>-ray``) selecting the owner's Ray pods by mlplane's
  own pod labels (KubeRay keeps the template's labels on the pods; ``ray.io/cluster`` changes
  with every attempt and every new serving cluster, these do not). Ingress only from: the same
  owner's Ray pods (every port: GCS, raylets, object transfer), the KubeRay operator (the
  dashboard, and Serve's port on serving clusters: KubeRay reads Serve's status and health), and
  on serving clusters Serve's port (8000) from the mlplane operator (``/admin/v1/stats``,
  ``/admin/v1/drift``, with the admin token) and from the client namespaces the configuration
  names (default: the ModelDeployment's own namespace); when the configuration names Prometheus,
  from it to Ray's metrics port (8080) and, on serving clusters, Serve's port (the app's
  ``/admin/metrics``, with the scrape token). Everything else, GCS/dashboard/client ports
  included, is closed. Token auth does not cover Serve's HTTP port (it is the app's public
  face): the policy is what limits who reaches it.

Pure: the token is an argument (the edge makes it with :mod:`secrets`), so the same inputs give
the same objects.
"""

from __future__ import annotations

import base64
from typing import Any, Literal

from mlplane.operator.builders import labels as lbl
from mlplane.operator.builders.pods import METRICS_PORT
from mlplane.operator.config import OperatorConfig

OwnerKind = Literal["TrainingJob", "ModelDeployment"]
#: The key KubeRay reads the token from (``RAY_AUTH_TOKEN_SECRET_KEY`` in KubeRay 1.7).
AUTH_TOKEN_KEY = "auth_token"
AUTH_MODE = "token"
SERVE_PORT = 8000
DASHBOARD_PORT = 8265
#: Ray's GCS and client-server ports: closed to everyone but the cluster's own pods.
GCS_PORT = 6379
CLIENT_PORT = 10001
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


def auth_secret_name(owner: str) -> str:
    """The Secret holding the Ray token of every cluster of ``owner``: ``<owner>-ray-auth``."""
    return f"{owner}-ray-auth"


def network_policy_name(owner: str) -> str:
    """The NetworkPolicy of every Ray cluster of ``owner``: ``<owner>-ray``."""
    return f"{owner}-ray"


def auth_options(owner: str) -> dict[str, Any]:
    """``authOptions`` of a RayCluster spec: token auth with the owner's Secret.

    With ``secretName`` set KubeRay uses that Secret and generates none of its own.
    """
    return {"mode": AUTH_MODE, "secretName": auth_secret_name(owner)}


def cluster_pod_labels(kind: OwnerKind, owner: str) -> dict[str, str]:
    """Labels every Ray pod of ``owner`` carries (what the builders put on the templates)."""
    key = lbl.TRAININGJOB if kind == "TrainingJob" else lbl.MODELDEPLOYMENT
    return {lbl.MANAGED_BY: lbl.MANAGED_BY_VALUE, key: owner}


def _metadata(
    kind: OwnerKind, owner: str, namespace: str, owner_uid: str, name: str
) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": namespace,
        "labels": cluster_pod_labels(kind, owner),
        "ownerReferences": [lbl.owner_reference(kind, owner, owner_uid)],
    }


def build_auth_secret(
    kind: OwnerKind, owner: str, namespace: str, owner_uid: str, token: str
) -> dict[str, Any]:
    """The owner's Ray token Secret (``data.auth_token``, base64 as the API server keeps it)."""
    if not token:
        raise ValueError("the Ray auth token must not be empty")
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": _metadata(kind, owner, namespace, owner_uid, auth_secret_name(owner)),
        "data": {AUTH_TOKEN_KEY: base64.b64encode(token.encode()).decode()},
    }


def token_of(secret: dict[str, Any] | None) -> str | None:
    """The token a Secret holds (``data`` base64, or ``stringData`` as written), else None."""
    if not secret:
        return None
    encoded = (secret.get("data") or {}).get(AUTH_TOKEN_KEY)
    if encoded:
        return base64.b64decode(encoded).decode()
    return (secret.get("stringData") or {}).get(AUTH_TOKEN_KEY) or None


def _ports(*ports: int) -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": port} for port in ports]


def _peer(namespace: str, labels: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    return {
        "namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: namespace}},
        "podSelector": {"matchLabels": dict(labels)},
    }


def _serving_clients(config: OperatorConfig) -> list[dict[str, Any]]:
    names = config.serving_client_namespaces
    if "*" in names:
        return [{"namespaceSelector": {}}]
    if not names:
        return [{"podSelector": {}}]  # any pod of the policy's own namespace
    return [{"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: n}}} for n in names]


def build_network_policy(
    kind: OwnerKind, owner: str, namespace: str, owner_uid: str, config: OperatorConfig
) -> dict[str, Any]:
    """The owner's NetworkPolicy: ingress to its Ray pods from the peers the module names."""
    pods = cluster_pod_labels(kind, owner)
    serving = kind == "ModelDeployment"
    ingress: list[dict[str, Any]] = [
        {"from": [{"podSelector": {"matchLabels": dict(pods)}}]},
        {
            "from": [_peer(config.kuberay_namespace, config.kuberay_pod_labels)],
            "ports": _ports(DASHBOARD_PORT, SERVE_PORT) if serving else _ports(DASHBOARD_PORT),
        },
    ]
    if serving:
        ingress.append(
            {
                "from": [_peer(config.operator_namespace, config.operator_pod_labels)],
                "ports": _ports(SERVE_PORT),
            }
        )
        ingress.append({"from": _serving_clients(config), "ports": _ports(SERVE_PORT)})
    if config.prometheus_namespace:
        scraped = _ports(METRICS_PORT, SERVE_PORT) if serving else _ports(METRICS_PORT)
        prometheus = _peer(config.prometheus_namespace, config.prometheus_pod_labels)
        ingress.append({"from": [prometheus], "ports": scraped})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(kind, owner, namespace, owner_uid, network_policy_name(owner)),
        "spec": {
            "podSelector": {"matchLabels": pods},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }


def cluster_access(
    kind: OwnerKind,
    owner: str,
    namespace: str,
    owner_uid: str,
    config: OperatorConfig,
    token: str,
) -> list[dict[str, Any]]:
    """What must exist before a Ray cluster of ``owner`` is created: its Secret, its policy."""
    return [
        build_auth_secret(kind, owner, namespace, owner_uid, token),
        build_network_policy(kind, owner, namespace, owner_uid, config),
    ]
