"""RayServices on the local platform: one Ray Serve application per ModelDeployment.

On Kubernetes KubeRay turns a RayService into a Ray cluster running its ``serveConfigV2``. Here
there is one Ray cluster (the local platform's) and Serve's REST API, whose ``PUT`` replaces
*all* of a cluster's applications. So:

- the RayService the pure reconcile wants is kept as a record in ``.mlplane/rayservices/``
  (metadata with a ``generation``, the applied-spec annotation, the spec): it is what the next
  reconcile reads back, exactly as it reads the stored RayService on Kubernetes;
- every pass, the records together become one Serve config: each ModelDeployment's application
  is renamed ``<namespace>-<name>`` and mounted at ``/<namespace>/<name>`` on the platform's
  Serve port (:func:`mlplane.serving.deploy.local_serve_config`), and it is PUT only when it
  differs from the one last PUT (or Serve lost it: Ray was restarted);
- each application's ``args.signing_keys`` (the Secret's mount path in a pod) becomes its key
  folder on this machine (:mod:`mlplane.operator.platforms.local_signing`);
- an ``args.feedback_token_file`` (``spec.feedback.tokenSecret`` mounted in a pod) becomes the
  file ``secrets/<namespace>/<secret>/token`` under the state dir, the local stand-in for that
  Secret (the user writes it, as they would create the Secret; a missing file stops the
  application's routers, which say so);
- the apps' admin routes open with each deployment's admin token (derived from its key
  folder, :meth:`LocalServing.admin_token`, as the Kopf handlers derive it from the Secret) and
  ``/admin/metrics`` also with this machine's Prometheus scrape token, whose hash every
  application gets (``args.scrape_token_sha256``, the chart's token on Kubernetes);
- Serve's application status is translated into the shape of KubeRay 1.7's RayService status
  (``Ready`` condition, ``observedGeneration``, ``activeServiceStatus``), so
  ``reconcile/modeldeployment.py`` reads it with the same code as on Kubernetes.

A model-version change is a ``user_config`` change, which Serve applies to running replicas in
place: the previous version answers until the new one is loaded, as under KubeRay.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from mlplane.operator.builders.rayservice import (
    APPLICATION,
    FEEDBACK_TOKEN_KEY,
    FEEDBACK_TOKEN_VOLUME,
)
from mlplane.operator.platforms.local import LocalPlatform
from mlplane.operator.platforms.local_signing import LocalSigningKeys
from mlplane.operator.platforms.serving_client import deployment_admin_token
from mlplane.serving.admin import scrape_token_sha256
from mlplane.serving.deploy import (
    DeployError,
    delete_applications,
    get_applications,
    local_serve_config,
    put_applications,
    serve_config_of,
)

log = logging.getLogger("mlplane.local.serving")

#: Logical CPUs each replica reserves on the local Ray (router, monitor, models share 2 cores):
#: the default of ``MLPLANE_LOCAL_REPLICA_CPUS`` (``config.Settings``).
REPLICA_CPUS = 0.1
#: Autoscaling ceiling on one machine: the default of ``MLPLANE_LOCAL_MAX_REPLICAS``.
MAX_REPLICAS = 2
_HEALTHY = {"HEALTHY", "UPSCALING", "DOWNSCALING"}


def app_name(namespace: str, name: str) -> str:
    """The Serve application of a ModelDeployment (unique within the one local cluster)."""
    return f"{namespace}-{name}"


def route_prefix(namespace: str, name: str) -> str:
    return f"/{namespace}/{name}"


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (what the API server does with a ``merge`` PATCH)."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


class LocalServing:
    """The local platform's stand-in for KubeRay's RayService controller."""

    def __init__(
        self,
        platform: LocalPlatform,
        *,
        replica_cpus: float = REPLICA_CPUS,
        max_replicas: int = MAX_REPLICAS,
    ) -> None:
        self.platform = platform
        #: Each replica's CPUs and a deployment's most replicas (the runner's settings).
        self.replica_cpus, self.max_replicas = replica_cpus, max_replicas
        self.dir = platform.state_dir / "rayservices"
        self.applied_file = platform.state_dir / "serve-applied.json"
        #: Serve's applications as last read (:meth:`refresh`); None: Serve not reachable.
        self.apps: dict[str, Any] | None = None
        #: The request-id signing keys (the Secrets' stand-in), one folder per deployment.
        self.signing = LocalSigningKeys(platform.state_dir)

    # --- records -----------------------------------------------------------------------------

    def _path(self, namespace: str, name: str) -> Path:
        return self.dir / namespace / f"{name}.yaml"

    def _records(self) -> list[dict[str, Any]]:
        out = []
        for path in sorted(self.dir.glob("*/*.yaml")):
            out.append(yaml.safe_load(path.read_text()))
        return out

    def _write(self, record: dict[str, Any]) -> None:
        meta = record["metadata"]
        path = self._path(meta["namespace"], meta["name"])
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(yaml.safe_dump(record, sort_keys=False))
        os.replace(tmp, path)

    def _record(self, namespace: str, name: str) -> dict[str, Any] | None:
        path = self._path(namespace, name)
        return yaml.safe_load(path.read_text()) if path.exists() else None

    def create(self, rayservice: Mapping[str, Any]) -> bool:
        """Record a new RayService (deployed at the next :meth:`sync`); False if it exists."""
        meta = rayservice["metadata"]
        if self._record(meta["namespace"], meta["name"]) is not None:
            return False
        record = {
            "apiVersion": rayservice["apiVersion"],
            "kind": rayservice["kind"],
            "metadata": {**copy.deepcopy(dict(meta)), "generation": 1},
            "spec": copy.deepcopy(rayservice["spec"]),
        }
        self._write(record)
        return True

    def patch(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        """Apply a merge patch; the generation moves when the spec changes (as on Kubernetes)."""
        record = self._record(namespace, name)
        if record is None:
            raise KeyError(f"RayService {namespace}/{name} is not recorded")
        meta_patch = dict(patch.get("metadata") or {})
        meta_patch.pop("resourceVersion", None)
        old_spec = record["spec"]
        record["metadata"] = merge_patch(record["metadata"], meta_patch)
        if "spec" in patch:
            record["spec"] = merge_patch(old_spec, patch["spec"])
        if record["spec"] != old_spec:
            record["metadata"]["generation"] = int(record["metadata"].get("generation", 1)) + 1
        self._write(record)

    def delete_except(self, keep: Iterable[tuple[str, str]]) -> list[str]:
        """Forget the RayServices of ModelDeployments that are gone (owner references'
        garbage collection on Kubernetes); the next :meth:`sync` stops their applications."""
        wanted = set(keep)
        gone = []
        for record in self._records():
            meta = record["metadata"]
            owner = meta.get("labels", {}).get("mlplane.dev/modeldeployment", meta["name"])
            if (meta["namespace"], owner) not in wanted:
                self._path(meta["namespace"], meta["name"]).unlink(missing_ok=True)
                # Its counts go with it: a new deployment of the same name starts afresh.
                shutil.rmtree(self.monitor_state_dir(meta["namespace"], owner), ignore_errors=True)
                gone.append(f"{meta['namespace']}/{meta['name']}")
        return gone

    # --- Serve -------------------------------------------------------------------------------

    def _token(self) -> str | None:
        header = self.platform.ray_headers().get("Authorization", "")
        return header.removeprefix("Bearer ") or None

    def refresh(self) -> dict[str, Any] | None:
        """Read Serve's applications once per pass (None when the dashboard does not answer)."""
        try:
            answer = get_applications(self.platform.ray_dashboard, token=self._token())
        except (DeployError, OSError, ValueError) as exc:
            log.warning("Serve's REST API does not answer: %s", exc)
            self.apps = None
        else:
            self.apps = dict((answer or {}).get("applications") or {})
        return self.apps

    def app_config(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """The Serve config of one record's application on this machine."""
        meta = record["metadata"]
        namespace, owner = meta["namespace"], self._owner(record)
        return local_serve_config(
            serve_config_of(record),
            port=self.platform.ports.serve,
            num_cpus=self.replica_cpus,
            max_replicas=self.max_replicas,
            name=app_name(namespace, owner),
            route_prefix=route_prefix(namespace, owner),
            signing_keys=str(self.signing.directory(namespace, owner)),
            feedback_token=self._feedback_token(record),
            scrape_token_sha256=self._scrape_token_sha256(),
            state_dir=str(self.monitor_state_dir(namespace, owner)),
        )

    def monitor_state_dir(self, namespace: str, md_name: str) -> Path:
        """Where a deployment's monitor saves its counts (``args.state_dir``): on this machine's
        disk, so a monitor, app or Ray restart loses no counted request or outcome."""
        return self.platform.state_dir / "serving-state" / namespace / md_name

    def _scrape_token_sha256(self) -> str | None:
        """The hash of this machine's Prometheus scrape token (None: no Prometheus set up)."""
        token = self.platform.scrape_token()
        return scrape_token_sha256(token) if token else None

    def admin_token(self, namespace: str, md_name: str) -> str | None:
        """The admin token of a ModelDeployment's app (``/admin/v1/stats``, ``/admin/v1/drift``),
        from its key folder as the app reads it; None before the keys exist."""
        _, keys = self.signing.read(namespace, md_name)
        return deployment_admin_token(keys.current if keys else None, namespace, md_name)

    def _feedback_token(self, record: Mapping[str, Any]) -> str | None:
        """This machine's file for the record's feedback-token Secret, None without one."""
        template = record["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]
        for volume in template["spec"].get("volumes", ()):
            if volume.get("name") == FEEDBACK_TOKEN_VOLUME:
                secret = volume["secret"]["secretName"]
                path = self.secrets_dir / record["metadata"]["namespace"] / secret
                return str(path / FEEDBACK_TOKEN_KEY)
        return None

    @property
    def secrets_dir(self) -> Path:
        """Local stand-ins for Secrets the user names: ``<namespace>/<secret>/<key>`` files."""
        return self.platform.state_dir / "secrets"

    def desired_config(self) -> dict[str, Any]:
        """Every recorded RayService's application in one Serve config (PUT replaces all)."""
        applications = []
        for record in self._records():
            applications.extend(self.app_config(record)["applications"])
        return {
            "proxy_location": "HeadOnly",
            "http_options": {"host": "127.0.0.1", "port": self.platform.ports.serve},
            "applications": applications,
        }

    def sync(self) -> bool:
        """PUT the applications when they differ from the last PUT or Serve lost some; True
        when something was sent. Raises DeployError when Serve refuses the config."""
        config = self.desired_config()
        try:
            last = json.loads(self.applied_file.read_text())
        except (FileNotFoundError, ValueError):
            last = None
        names = {a["name"] for a in config["applications"]}
        present = set(self.apps or {})
        if config == last and (self.apps is None or names <= present):
            return False
        token = self._token()
        if not config["applications"]:
            if present:
                delete_applications(self.platform.ray_dashboard, token=token)
            self.applied_file.unlink(missing_ok=True)
            return bool(present)
        put_applications(self.platform.ray_dashboard, config, token=token)
        self.applied_file.write_text(json.dumps(config, sort_keys=True))
        log.info("Serve applications declared: %s", ", ".join(sorted(names)))
        return True

    @staticmethod
    def _owner(record: Mapping[str, Any]) -> str:
        meta = record["metadata"]
        return str(meta.get("labels", {}).get("mlplane.dev/modeldeployment", meta["name"]))

    # --- reading a RayService back, KubeRay style ----------------------------------------------

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The recorded RayService with a KubeRay-shaped status from Serve's view of its app."""
        record = self._record(namespace, name)
        if record is None:
            return None
        record["status"] = self._status(record)
        return record

    def endpoint(self, namespace: str, md_name: str) -> str:
        """Where a ModelDeployment answers on this machine."""
        port = self.platform.ports.serve
        return f"http://127.0.0.1:{port}{route_prefix(namespace, md_name)}"

    def _status(self, record: Mapping[str, Any]) -> dict[str, Any]:
        meta = record["metadata"]
        generation = int(meta.get("generation", 1))
        app = (self.apps or {}).get(app_name(meta["namespace"], self._owner(record)))
        if self.apps is None or app is None:
            return {
                "observedGeneration": generation - 1,
                "conditions": [{"type": "Ready", "status": "False", "reason": "Initializing",
                                "message": "Serve has not deployed the application yet"}],
            }  # fmt: skip
        wanted = self.app_config(record)["applications"][0]
        current = _runs_config(app, wanted)
        deployments = {
            name: {"status": d.get("status"), "message": d.get("message", "")}
            for name, d in (app.get("deployments") or {}).items()
        }
        state = app.get("status")
        # Serve keeps the running replicas answering while it applies a new config in place.
        serving = state == "RUNNING" or (
            state == "DEPLOYING" and any(d["status"] in _HEALTHY for d in deployments.values())
        )
        ready_models = sum(
            _running_replicas(d)
            for name, d in (app.get("deployments") or {}).items()
            if name.startswith("model-")
        )
        return {
            "observedGeneration": generation if current else generation - 1,
            "conditions": [{
                "type": "Ready",
                "status": "True" if serving else "False",
                "reason": "RunningServeApplication" if serving else "Initializing",
                "message": app.get("message", ""),
            }],
            "numServeEndpoints": 1 if serving else 0,
            "activeServiceStatus": {
                "applicationStatuses": {
                    APPLICATION: {
                        "status": state,
                        "message": app.get("message", ""),
                        "serveDeploymentStatuses": deployments,
                    }
                },
                "rayClusterStatus": {"readyWorkerReplicas": ready_models} if ready_models else {},
            },
        }  # fmt: skip


def _running_replicas(deployment: Mapping[str, Any]) -> int:
    replicas = deployment.get("replicas")
    if isinstance(replicas, list):
        return sum(1 for r in replicas if isinstance(r, Mapping) and r.get("state") == "RUNNING")
    return 0


def _runs_config(app: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """Serve has taken the record's current config: same args and per-deployment user_config."""
    deployed = app.get("deployed_app_config") or {}
    if deployed.get("args") != wanted.get("args"):
        return False
    by_name = {d.get("name"): d for d in deployed.get("deployments") or ()}
    return all(
        by_name.get(d["name"], {}).get("user_config") == d.get("user_config")
        for d in wanted.get("deployments", [])
    )
