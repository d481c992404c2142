"""Deploying the app on a Ray cluster through the Serve REST API (what the local platform does).

On Kubernetes KubeRay deploys ``serveConfigV2``. On the local platform the same config goes to
the Ray dashboard's Serve REST API (``PUT /api/serve/applications/``), after
:func:`local_serve_config` has fitted it to one machine. Re-PUTting a config that differs only
in ``user_config`` (a new model version, new weights) updates the running replicas in place,
exactly as a ``serveConfigV2`` change does under KubeRay.

The recipe (``rayservice`` from ``mlplane.operator.builders.build_rayservice``)::

    config = local_serve_config(serve_config_of(rayservice), port=8000, num_cpus=0.25)
    put_applications("http://127.0.0.1:8265", config)
    wait_running("http://127.0.0.1:8265", config, timeout=120)
    # the app answers on http://127.0.0.1:8000 (GET /healthz, /v1/models, POST /v1/predict)

Ray 2.60 turns on token authentication for its dashboard whenever a token exists (by default
``~/.ray/auth_token``); the calls here send ``Authorization: Bearer <token>`` with the token Ray
itself would use (:func:`ray_auth_token`) unless given one.

Standard library only (urllib), so the caller needs no HTTP client.
"""

from __future__ import annotations

import copy
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

import yaml

__all__ = [
    "DeployError",
    "delete_applications",
    "get_applications",
    "local_serve_config",
    "put_applications",
    "ray_auth_token",
    "serve_config_of",
    "wait_running",
]

API = "/api/serve/applications/"
_DEFAULT_TOKEN_PATH = "~/.ray/auth_token"


class DeployError(RuntimeError):
    """Serve refused the config or the application failed to deploy."""


def serve_config_of(rayservice: Mapping[str, Any]) -> dict[str, Any]:
    """The Serve config inside a RayService (its ``spec.serveConfigV2`` YAML), as a dict."""
    return yaml.safe_load(rayservice["spec"]["serveConfigV2"])


#: Ray's resource of the head node (the RayService builder pins the monitor with it).
HEAD_NODE_RESOURCE = "node:__internal_head__"


def local_serve_config(
    serve_config: Mapping[str, Any],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    num_cpus: float = 0.25,
    max_replicas: int | None = 1,
    keep_gpus: bool = False,
    name: str | None = None,
    route_prefix: str | None = None,
    signing_keys: str | None = None,
    feedback_token: str | None = None,
    scrape_token_sha256: str | None = None,
    state_dir: str | None = None,
) -> dict[str, Any]:
    """A copy of a Serve config fitted to one small machine.

    - ``http_options``: the proxy listens on ``host:port`` (loopback by default);
    - every replica reserves ``num_cpus`` logical CPUs (the cluster config asks for whole
      pods' worth; on two cores fractional CPUs are what lets router, monitor and models fit);
    - ``memory`` reservations are dropped and GPUs too unless ``keep_gpus``, and the monitor's
      pin to the head node;
    - autoscaling ceilings are capped at ``max_replicas`` (None: kept);
    - ``name`` / ``route_prefix`` rename the application and mount it elsewhere, so several
      ModelDeployments can share one Ray cluster (e.g. ``ns-churn`` at ``/ns/churn``; the
      router strips the prefix). ``PUT`` replaces *all* of a cluster's applications: send
      every deployment's application in one config;
    - ``signing_keys`` replaces ``args.signing_keys`` (the Secret's mount path in a pod) with
      the machine's key directory for this application;
    - ``feedback_token`` replaces ``args.feedback_token_file`` (where the token Secret is mounted
      in a pod) with the machine's token file, for an application that has one;
    - ``scrape_token_sha256`` sets ``args.scrape_token_sha256``: the hash of the token this
      machine's Prometheus sends to ``/admin/metrics`` (the chart's, on Kubernetes);
    - ``state_dir`` sets ``args.state_dir``: where the app's monitor saves its counts and
      feedback ledger, so that a restart of the monitor or of the whole app loses none; None
      removes it (the pod's path, shared by every run on this machine, would restore another
      run's counts).

    Only resources, the name, the mount point and the key directory change: the rest of
    ``args`` and ``user_config`` are untouched, so zero-downtime updates behave as on
    Kubernetes.
    """
    config = copy.deepcopy(dict(serve_config))
    config["http_options"] = {"host": host, "port": port}
    config["proxy_location"] = "HeadOnly"
    for app in config.get("applications", []):
        if name is not None:
            app["name"] = name
        if route_prefix is not None:
            app["route_prefix"] = route_prefix
        if signing_keys is not None:
            app.setdefault("args", {})["signing_keys"] = signing_keys
        if scrape_token_sha256 is not None:
            app.setdefault("args", {})["scrape_token_sha256"] = scrape_token_sha256
        if state_dir is not None:
            app.setdefault("args", {})["state_dir"] = state_dir
        else:  # the pod's path means nothing here (and would be shared by every run)
            app.get("args", {}).pop("state_dir", None)
        if feedback_token is not None and "feedback_token_file" in app.get("args", {}):
            app["args"]["feedback_token_file"] = feedback_token
        for deployment in app.get("deployments", []):
            options = deployment.setdefault("ray_actor_options", {})
            options["num_cpus"] = num_cpus
            options.pop("memory", None)
            # The monitor's pin to the head pod (where its state is on Kubernetes): every node
            # of one machine shares its disk, so no pin is needed.
            resources = options.pop("resources", None) or {}
            resources.pop(HEAD_NODE_RESOURCE, None)
            if resources:
                options["resources"] = resources
            if not keep_gpus:
                options.pop("num_gpus", None)
            scaling = deployment.get("autoscaling_config")
            if scaling and max_replicas is not None:
                ceiling = max(1, min(scaling["max_replicas"], max_replicas))
                scaling["max_replicas"] = ceiling
                scaling["min_replicas"] = min(scaling.get("min_replicas", 1), ceiling)
    return config


def ray_auth_token(environ: Mapping[str, str] | None = None) -> str | None:
    """The token Ray's clients send: ``RAY_AUTH_TOKEN``, else the file at
    ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``; None when there is none or
    ``RAY_AUTH_MODE=disabled``."""
    env = os.environ if environ is None else environ
    if env.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return None
    if env.get("RAY_AUTH_TOKEN"):
        return env["RAY_AUTH_TOKEN"].strip()
    path = os.path.expanduser(env.get("RAY_AUTH_TOKEN_PATH") or _DEFAULT_TOKEN_PATH)
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip() or None
    except OSError:
        return None


def _request(
    method: str, url: str, body: Any = None, timeout: float = 30.0, token: str | None = None
) -> Any:
    data = None if body is None else json.dumps(body).encode()
    headers = {"content-type": "application/json"}
    token = token if token is not None else ray_auth_token()
    if token:
        headers["authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:2000]
        raise DeployError(f"{method} {url}: HTTP {exc.code}: {detail}") from None
    return json.loads(raw) if raw.strip() else None


def put_applications(
    dashboard: str,
    config: Mapping[str, Any],
    timeout: float = 60.0,
    token: str | None = None,
) -> None:
    """Declare the cluster's Serve applications (Serve converges to them asynchronously)."""
    _request("PUT", dashboard.rstrip("/") + API, dict(config), timeout, token)


def get_applications(
    dashboard: str, timeout: float = 10.0, token: str | None = None
) -> dict[str, Any]:
    """Serve's view: ``applications -> {status, message, deployments, deployed_app_config}``."""
    return _request("GET", dashboard.rstrip("/") + API, None, timeout, token)


def delete_applications(dashboard: str, timeout: float = 60.0, token: str | None = None) -> None:
    """Delete every Serve application of the cluster."""
    _request("DELETE", dashboard.rstrip("/") + API, None, timeout, token)


def _converged(app: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """Serve runs ``wanted`` (same args and user_configs) and every deployment is healthy."""
    deployed = app.get("deployed_app_config") or {}
    if deployed.get("args") != wanted.get("args"):
        return False
    by_name = {d["name"]: d for d in deployed.get("deployments", [])}
    for d in wanted.get("deployments", []):
        if by_name.get(d["name"], {}).get("user_config") != d.get("user_config"):
            return False
    deployments = app.get("deployments", {})
    return app.get("status") == "RUNNING" and all(
        d.get("status") == "HEALTHY" for d in deployments.values()
    )


def wait_running(
    dashboard: str,
    config: Mapping[str, Any],
    *,
    timeout: float = 180.0,
    poll: float = 0.5,
    token: str | None = None,
) -> dict[str, Any]:
    """Wait until every application of ``config`` runs it; its status, or DeployError.

    "Runs it" means Serve reports the application RUNNING, every deployment HEALTHY, and the
    deployed args and user_configs equal to ``config``'s (so a wait right after a PUT does not
    mistake the previous config's RUNNING for the new one's).
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = get_applications(dashboard, token=token)
        except (DeployError, urllib.error.URLError, OSError, ValueError) as exc:
            last = repr(exc)  # the dashboard may still be starting
        if isinstance(last, dict):
            apps = last.get("applications") or {}
            wanted = {a["name"]: a for a in config.get("applications", [])}
            for name in wanted:
                if apps.get(name, {}).get("status") == "DEPLOY_FAILED":
                    raise DeployError(f"{name}: {apps[name].get('message', '')[:4000]}")
            if all(name in apps and _converged(apps[name], a) for name, a in wanted.items()):
                return last
        if time.monotonic() > deadline:
            raise DeployError(f"not running after {timeout:g} s; last status: {last}")
        time.sleep(poll)
