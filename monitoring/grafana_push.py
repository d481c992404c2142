"""Push the generated dashboards into a running Grafana through its HTTP API.

For clusters where Grafana's sidecar does not pick dashboards up from ConfigMaps (the Helm
chart's way): ``mlplane dashboards push --grafana-url ...``. It is idempotent: the folder is
created only when missing, and every dashboard is saved with ``overwrite`` under its stable
``uid``, so pushing twice leaves one copy of each, at a new version.

The only module of :mod:`mlplane.monitoring` that does network I/O (through ``grafana-client``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from grafana_client import GrafanaApi
from grafana_client.client import GrafanaException

DEFAULT_FOLDER = "mlplane"
DEFAULT_FOLDER_UID = "mlplane"


class GrafanaPushError(RuntimeError):
    """Grafana refused or could not be reached; the message says which step failed."""


@dataclass(frozen=True)
class PushResult:
    """What Grafana answered for one dashboard."""

    uid: str
    title: str
    version: int | None
    url: str | None


def _normalized_url(grafana_url: str) -> str:
    """``http://host/grafana`` -> ``http://host/grafana/``.

    grafana-client glues ``api`` straight onto the URL's path, so a Grafana served under a
    sub-path without a trailing slash would be called at ``/grafanaapi/...``.
    """
    parts = urlsplit(grafana_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {grafana_url!r}")
    path = parts.path if parts.path.endswith("/") else parts.path + "/"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def grafana_api(
    grafana_url: str,
    token: str | None = None,
    basic_auth: tuple[str, str] | None = None,
    timeout: float = 10.0,
) -> GrafanaApi:
    """A client for ``grafana_url`` with a service-account token *or* user and password.

    Credentials in the URL (``http://admin:secret@grafana:3000``) work too when neither is
    given; ``?verify=false`` in the URL skips TLS verification.
    """
    if token and basic_auth:
        raise ValueError("give a token or basic auth, not both")
    credential: str | tuple[str, str] | None = token or (tuple(basic_auth) if basic_auth else None)
    return GrafanaApi.from_url(_normalized_url(grafana_url), credential=credential, timeout=timeout)


def ensure_folder(api: GrafanaApi, title: str, uid: str) -> str:
    """The uid of the folder to push into, creating it only when missing.

    Looked up by uid first, then by title (a folder someone created by hand keeps its uid).
    """
    try:
        return str(api.folder.get_folder(uid)["uid"])
    except GrafanaException as exc:
        if exc.status_code != 404:
            raise
    for folder in api.folder.get_all_folders() or []:
        if folder.get("title") == title:
            return str(folder["uid"])
    return str(api.folder.create_folder(title, uid=uid)["uid"])


def push_dashboards(
    grafana_url: str,
    dashboards: Sequence[Mapping[str, Any]] | None = None,
    *,
    token: str | None = None,
    basic_auth: tuple[str, str] | None = None,
    folder: str = DEFAULT_FOLDER,
    folder_uid: str = DEFAULT_FOLDER_UID,
    message: str = "pushed by mlplane",
    timeout: float = 10.0,
) -> list[PushResult]:
    """Create ``folder`` if missing and save every dashboard into it, overwriting by uid.

    ``dashboards`` defaults to :func:`mlplane.monitoring.dashboards.all_dashboards`.
    Raises :class:`GrafanaPushError` naming the step that failed.
    """
    if dashboards is None:
        from mlplane.monitoring.dashboards import all_dashboards

        dashboards = all_dashboards()
    api = grafana_api(grafana_url, token=token, basic_auth=basic_auth, timeout=timeout)
    try:
        target_folder = ensure_folder(api, folder, folder_uid)
    except (GrafanaException, OSError) as exc:
        raise GrafanaPushError(f"folder {folder!r} at {grafana_url}: {exc}") from exc
    results = []
    for dash in dashboards:
        if not dash.get("uid") or not dash.get("title"):
            raise ValueError("every dashboard needs a uid and a title")
        payload = {
            # id None: Grafana finds the dashboard by uid (ids differ between instances).
            "dashboard": {**dash, "id": None},
            "folderUid": target_folder,
            "overwrite": True,
            "message": message,
        }
        try:
            answer = api.dashboard.update_dashboard(payload)
        except (GrafanaException, OSError) as exc:
            raise GrafanaPushError(f"dashboard {dash['uid']!r} at {grafana_url}: {exc}") from exc
        results.append(
            PushResult(
                uid=str(answer.get("uid", dash["uid"])),
                title=str(dash["title"]),
                version=answer.get("version"),
                url=answer.get("url"),
            )
        )
    return results
