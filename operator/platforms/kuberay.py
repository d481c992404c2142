"""The Kubernetes platform: mlplane resources become KubeRay objects (RayJob, RayService).

Objects are built by the pure builders (``operator/builders``) and applied by the Kopf
handlers; this module holds what talks to the API server directly: whether the cluster is
ready for mlplane (API reachable, KubeRay's and mlplane's CRDs served), and the writes of the
objects that close each Ray cluster (:meth:`KubeRayPlatform.ensure_cluster_access`).
"""

from __future__ import annotations

import builtins
import secrets
from typing import Any

from mlplane.operator.builders.access import OwnerKind, cluster_access
from mlplane.operator.config import OperatorConfig
from mlplane.operator.platforms.base import (
    ChildOwnedByOther,
    ComponentHealth,
    Platform,
    controller_uid,
)

KUBERAY_GROUP_VERSION = ("ray.io", "v1")
KUBERAY_KINDS = ("RayJob", "RayService")
MLPLANE_GROUP_VERSION = ("mlplane.dev", "v1alpha1")
MLPLANE_KINDS = ("TrainingJob", "ModelDeployment", "ABTest")


#: Plurals of the custom kinds the operator writes.
PLURALS = {
    "RayJob": "rayjobs",
    "RayService": "rayservices",
    "TrainingJob": "trainingjobs",
    "ModelDeployment": "modeldeployments",
    "ABTest": "abtests",
}
#: The longest one status write may take (seconds): a hung API server must not hold a round.
STATUS_WRITE_TIMEOUT = 10.0
#: Built-in kinds the operator writes: (apiVersion, kind) → (client API class, method suffix).
BUILTIN = {
    ("v1", "Secret"): ("CoreV1Api", "namespaced_secret"),
    ("networking.k8s.io/v1", "NetworkPolicy"): ("NetworkingV1Api", "namespaced_network_policy"),
}
#: Bytes of randomness in a Ray cluster's token (256 bits).
TOKEN_BYTES = 32


def bounded(api_client: Any) -> Any:
    """``api_client`` whose every request without a ``_request_timeout`` gets
    :attr:`KubeRayPlatform.default_timeout` (the kubernetes client's default is none at all:
    a request to an API server that stopped answering waits forever)."""
    rest = getattr(api_client, "rest_client", None)
    if rest is None or getattr(rest, "_mlplane_bounded", False):
        return api_client
    request = rest.request

    def request_with_timeout(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("_request_timeout") is None:
            kwargs["_request_timeout"] = KubeRayPlatform.default_timeout
        return request(*args, **kwargs)

    rest.request = request_with_timeout
    rest._mlplane_bounded = True
    return api_client


class KubeRayPlatform(Platform):
    """Kubernetes with KubeRay, reached through the kubernetes client's configuration.

    Writes are idempotent by name: creating an object that exists is not an error (children
    have deterministic names, so "exists" means a previous try already made it).
    """

    name = "kuberay"
    #: The longest one API call may take (seconds) when the caller gives none: every call of
    #: this process is bounded, so a hung API server cannot hold a round, another object or
    #: the operator's shutdown. ``MLPLANE_API_TIMEOUT``, set once by the operator's start.
    default_timeout: float = 30.0

    def __init__(self, api_client: Any = None) -> None:
        self._api_client = bounded(api_client) if api_client is not None else None

    def _client(self) -> Any:
        if self._api_client is None:
            from kubernetes import client, config

            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            self._api_client = bounded(client.ApiClient())
        return self._api_client

    def _api(self) -> Any:
        from kubernetes import client

        return client.CustomObjectsApi(self._client())

    @staticmethod
    def _where(obj: dict[str, Any]) -> tuple[str, str, str, str]:
        group, version = obj["apiVersion"].split("/")
        return group, version, obj["metadata"]["namespace"], PLURALS[obj["kind"]]

    def create(self, obj: dict[str, Any], *, check_owner: bool = False) -> bool:
        """Create a namespaced custom object; False when one of that name already exists.

        With ``check_owner``, an existing object counts as "already made" only when the same
        controller (ownerReference uid) controls it: otherwise :class:`ChildOwnedByOther` is
        raised, so that a child of an earlier owner of the same name (a parent deleted and
        created again, its children not garbage-collected yet) is never adopted.
        """
        from kubernetes.client.exceptions import ApiException

        namespace = obj["metadata"]["namespace"]
        try:
            if (obj["apiVersion"], obj["kind"]) in BUILTIN:
                api, suffix = self._builtin(obj["apiVersion"], obj["kind"])
                getattr(api, f"create_{suffix}")(namespace, obj)
            else:
                group, version, _, plural = self._where(obj)
                self._api().create_namespaced_custom_object(group, version, namespace, plural, obj)
        except ApiException as exc:
            if exc.status != 409:
                raise
            if check_owner:
                name = obj["metadata"]["name"]
                existing = self.get(obj["apiVersion"], obj["kind"], namespace, name)
                theirs = controller_uid(existing) if existing is not None else None
                if existing is not None and theirs != controller_uid(obj):
                    raise ChildOwnedByOther(obj["kind"], namespace, name, theirs) from None
            return False
        return True

    def patch(
        self, api_version: str, kind: str, namespace: str, name: str, body: dict[str, Any]
    ) -> None:
        """Merge-patch a namespaced custom object (never the status: that is its owner's)."""
        group, version = api_version.split("/")
        self._api().patch_namespaced_custom_object(
            group, version, namespace, PLURALS[kind], name, body
        )

    def delete_owned(
        self, api_version: str, kind: str, namespace: str, name: str, owner_uid: str
    ) -> bool:
        """Delete a namespaced custom object controlled by ``owner_uid``; False if it is gone.

        Never another owner's: the object is read first and deleted with its own uid as a
        precondition, so one replaced in between (a new object of that name) is left alone.
        """
        from kubernetes.client.exceptions import ApiException

        found = self.get(api_version, kind, namespace, name)
        if found is None:
            return False
        theirs = controller_uid(found)
        if theirs != owner_uid:
            raise ChildOwnedByOther(kind, namespace, name, theirs)
        group, version = api_version.split("/")
        uid = (found.get("metadata") or {}).get("uid")
        options: dict[str, Any] = {"propagationPolicy": "Background"}
        if uid:
            options["preconditions"] = {"uid": uid}
        try:
            self._api().delete_namespaced_custom_object(
                group, version, namespace, PLURALS[kind], name, body=options
            )
        except ApiException as exc:
            if exc.status in (404, 409):
                return False
            raise
        return True

    def patch_status(
        self, api_version: str, kind: str, namespace: str, name: str, status: dict[str, Any]
    ) -> str | None:
        """Merge-patch the status subresource of one of mlplane's own objects.

        Returns the object's resourceVersion after the write (None: the object is gone): the
        handlers trust what they wrote only over bodies older than that.

        The operator writes its resources' status itself rather than through Kopf's patch:
        Kopf applies that patch after a timer's handler, and a refused write there (a 409, a
        5xx) ends the object's timer for the life of the process. Here a refusal raises
        ``ApiException`` inside the handler, which retries it.
        """
        from kubernetes.client.exceptions import ApiException

        group, version = api_version.split("/")
        try:
            written = self._api().patch_namespaced_custom_object_status(
                group, version, namespace, PLURALS[kind], name, {"status": status},
                _request_timeout=STATUS_WRITE_TIMEOUT,
            )  # fmt: skip
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        found = ((written or {}).get("metadata") or {}).get("resourceVersion")
        return str(found) if found is not None else ""

    def list(
        self, api_version: str, kind: str, namespace: str, label_selector: str = ""
    ) -> list[dict[str, Any]]:
        """The namespaced custom objects of a kind matching a label selector."""
        group, version = api_version.split("/")
        found = self._api().list_namespaced_custom_object(
            group, version, namespace, PLURALS[kind], label_selector=label_selector
        )
        return [dict(item) for item in found.get("items") or ()]

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """Read a namespaced custom object as stored now (None when there is none).

        For when a watch-fed index may lag: a create answered 409, a patch answered 409.
        """
        from kubernetes.client.exceptions import ApiException

        try:
            if (api_version, kind) in BUILTIN:
                api, suffix = self._builtin(api_version, kind)
                model = getattr(api, f"read_{suffix}")(name, namespace)
                return dict(self._client().sanitize_for_serialization(model))
            group, version = api_version.split("/")
            found = self._api().get_namespaced_custom_object(
                group, version, namespace, PLURALS[kind], name
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return dict(found)

    def pods(self, namespace: str, label_selector: str) -> tuple[dict[str, Any], ...]:
        """The pods matching a selector, read now (not from a watch that may not have synced)."""
        from kubernetes import client

        found = client.CoreV1Api(self._client()).list_namespaced_pod(
            namespace, label_selector=label_selector, _request_timeout=STATUS_WRITE_TIMEOUT
        )
        return tuple(dict(self._client().sanitize_for_serialization(p)) for p in found.items or ())

    def node(self, name: str) -> dict[str, Any] | None:
        """A Node as stored now (None when it is gone)."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        try:
            found = client.CoreV1Api(self._client()).read_node(
                name, _request_timeout=STATUS_WRITE_TIMEOUT
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return dict(self._client().sanitize_for_serialization(found))

    def _builtin(self, api_version: str, kind: str) -> tuple[Any, str]:
        from kubernetes import client

        api_class, suffix = BUILTIN[api_version, kind]
        return getattr(client, api_class)(self._client()), suffix

    def ensure_cluster_access(
        self,
        kind: OwnerKind,
        owner: str,
        namespace: str,
        owner_uid: str,
        config: OperatorConfig,
    ) -> None:
        """Create the owner's Ray token Secret and NetworkPolicy unless they exist already.

        Called before every RayJob/RayService create (and RayService patch). An existing
        Secret of the owner is never rewritten, so its token, made once here at random, is
        the one every cluster of the owner keeps using across restarts and retries. Either
        object existing under another controller raises :class:`ChildOwnedByOther`: it is not
        adopted, and the cluster must not be created (its token would be someone else's).
        """
        token = secrets.token_urlsafe(TOKEN_BYTES)
        for obj in cluster_access(kind, owner, namespace, owner_uid, config, token):
            self.create(obj, check_owner=True)

    # --- core v1 Secrets (the request-id signing key of a ModelDeployment) ---------------------

    def _core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self._client())

    def core_api(self) -> Any:
        """The core v1 API (ConfigMaps of the operator's own namespace: the reclaim history)."""
        return self._core()

    def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A Secret as stored now (None when there is none), as a plain dict."""
        from kubernetes.client.exceptions import ApiException

        try:
            found = self._core().read_namespaced_secret(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return dict(self._client().sanitize_for_serialization(found))

    def create_secret(self, secret: dict[str, Any]) -> bool:
        """Create a Secret; False when one of that name exists (the caller reads it again)."""
        from kubernetes.client.exceptions import ApiException

        try:
            self._core().create_namespaced_secret(secret["metadata"]["namespace"], secret)
        except ApiException as exc:
            if exc.status != 409:
                raise
            return False
        return True

    def patch_secret(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        """Patch a Secret (a merge patch; 409 when its ``resourceVersion`` moved meanwhile)."""
        self._core().patch_namespaced_secret(name, namespace, patch)

    def _served_kinds(self, group: str, version: str) -> tuple[bool, set[str], str]:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            resources = client.CustomObjectsApi(self._client()).get_api_resources(group, version)
        except ApiException as exc:
            if exc.status == 404:
                return True, set(), f"{group}/{version} is not served"
            return False, set(), f"API error {exc.status}: {exc.reason}"
        except (HTTPError, OSError) as exc:
            return False, set(), f"API server unreachable: {exc}"
        return True, {r.kind for r in resources.resources}, ""

    def health(self) -> builtins.list[ComponentHealth]:
        """The API server, KubeRay's CRDs and mlplane's CRDs."""
        out = []
        for label, (group, version), kinds, hint in (
            ("kuberay", KUBERAY_GROUP_VERSION, KUBERAY_KINDS, "install KubeRay 1.7 (helm chart "
             "kuberay-operator)"),
            ("mlplane-crds", MLPLANE_GROUP_VERSION, MLPLANE_KINDS, "run `mlplane crds print | "
             "kubectl apply -f -` or install the chart"),
        ):  # fmt: skip
            reachable, served, error = self._served_kinds(group, version)
            if not reachable:
                return [ComponentHealth("kubernetes", False, error)]
            missing = [k for k in kinds if k not in served]
            detail = "served" if not missing else f"missing {', '.join(missing)}: {hint}"
            out.append(ComponentHealth(label, not missing, detail, f"{group}/{version}"))
        return [ComponentHealth("kubernetes", True, "reachable"), *out]
