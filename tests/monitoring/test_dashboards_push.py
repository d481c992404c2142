"""push_dashboards against a stub of Grafana's HTTP API (no Grafana server exists here).

The stub (127.0.0.1, a random port, one per test) implements the documented contract of the
endpoints the pusher uses and records every request:

- auth: ``Authorization: Bearer <token>`` (service-account token) or HTTP basic; else 401;
- ``GET /api/folders/<uid>``: the folder, or 404;
- ``GET /api/folders``: all folders ``[{id, uid, title}]``;
- ``POST /api/folders`` ``{"title", "uid"?}``: creates it (409 when the uid or title exists);
- ``POST /api/dashboards/db`` ``{"dashboard": {...}, "folderUid"|"folderId", "overwrite",
  "message"?}``: the dashboard needs a ``title``; ``folderUid`` must name an existing folder
  (400); an existing ``uid`` without ``overwrite`` is 412; a non-null ``dashboard.id`` that
  does not exist is 404. Answers ``{id, uid, url, status, version, slug}``.

It is a stub: it checks the request shapes Grafana documents, not Grafana's behaviour beyond
them. It may serve under a sub-path (Grafana's ``root_url`` with ``serve_from_sub_path``).
"""

from __future__ import annotations

import base64
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from mlplane.monitoring import dashboards as d
from mlplane.monitoring.grafana_push import GrafanaPushError, push_dashboards

TOKEN = "glsa_test_token"
USER, PASSWORD = "admin", "s3cret"


class StubGrafana:
    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self.folders: dict[str, dict[str, Any]] = {}
        self.dashboards: dict[str, dict[str, Any]] = {}
        self.requests: list[dict[str, Any]] = []
        self._ids = iter(range(1, 10_000))
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}{self.prefix}"

    def add_folder(self, uid: str, title: str) -> None:
        self.folders[uid] = {"id": next(self._ids), "uid": uid, "title": title}

    def calls(self, method: str, path: str) -> list[dict[str, Any]]:
        return [q for q in self.requests if q["method"] == method and q["path"] == path]

    # -- the API ---------------------------------------------------------------------------

    @staticmethod
    def _authorized(header: str | None) -> bool:
        if header == f"Bearer {TOKEN}":
            return True
        expected = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        return header == f"Basic {expected}"

    def handle(self, method: str, path: str, headers: Any, body: Any) -> tuple[int, Any]:
        self.requests.append(
            {"method": method, "path": path, "auth": headers.get("Authorization"), "body": body}
        )
        if not path.startswith(self.prefix + "/api/"):
            return 404, {"message": "Not found"}
        if not self._authorized(headers.get("Authorization")):
            return 401, {"message": "Unauthorized"}
        api = path[len(self.prefix) + len("/api") :]
        if method == "POST" and headers.get("Content-Type", "").split(";")[0] != "application/json":
            return 415, {"message": "Content-Type must be application/json"}
        if method == "GET" and api == "/folders":
            return 200, list(self.folders.values())
        if method == "GET" and (m := re.fullmatch(r"/folders/([\w-]+)", api)):
            folder = self.folders.get(m[1])
            return (200, folder) if folder else (404, {"message": "folder not found"})
        if method == "POST" and api == "/folders":
            return self._create_folder(body)
        if method == "POST" and api == "/dashboards/db":
            return self._save_dashboard(body)
        return 404, {"message": "Not found"}

    def _create_folder(self, body: Any) -> tuple[int, Any]:
        if not isinstance(body, dict) or not body.get("title"):
            return 400, {"message": "folder title cannot be empty"}
        uid = body.get("uid") or f"generated-{len(self.folders)}"
        if uid in self.folders or any(f["title"] == body["title"] for f in self.folders.values()):
            return 409, {"message": "a folder with the same name or uid already exists"}
        self.add_folder(uid, body["title"])
        return 200, self.folders[uid]

    def _save_dashboard(self, body: Any) -> tuple[int, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("dashboard"), dict):
            return 400, {"message": "bad request data"}
        dash = body["dashboard"]
        if not dash.get("title"):
            return 400, {"message": "Dashboard title cannot be empty"}
        folder_uid = body.get("folderUid")
        if folder_uid is None and body.get("folderId") is not None:
            folder_uid = next(
                (f["uid"] for f in self.folders.values() if f["id"] == body["folderId"]), "?"
            )
        if folder_uid and folder_uid not in self.folders:
            return 400, {"message": "folder not found"}
        uid = dash.get("uid")
        existing = self.dashboards.get(uid) if uid else None
        if dash.get("id") is not None and (existing is None or existing["id"] != dash["id"]):
            return 404, {"message": "Dashboard not found"}
        if existing and not body.get("overwrite"):
            return 412, {
                "message": "A dashboard with the same uid already exists",
                "status": "name-exists",
            }
        version = existing["version"] + 1 if existing else 1
        dash_id = existing["id"] if existing else next(self._ids)
        slug = re.sub(r"[^a-z0-9]+", "-", dash["title"].lower()).strip("-")
        self.dashboards[uid] = {
            "id": dash_id,
            "version": version,
            "folderUid": folder_uid,
            "model": dash,
            "message": body.get("message"),
        }
        return 200, {
            "id": dash_id,
            "uid": uid,
            "url": f"{self.prefix}/d/{uid}/{slug}",
            "status": "success",
            "version": version,
            "slug": slug,
        }

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = "<invalid json>"
                with stub._lock:
                    status, answer = stub.handle(
                        method, self.path.split("?")[0], self.headers, body
                    )
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def __enter__(self) -> StubGrafana:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def grafana():
    with StubGrafana() as stub:
        yield stub


def test_push_creates_the_folder_and_every_dashboard(grafana):
    results = push_dashboards(grafana.url, token=TOKEN)
    expected = d.all_dashboards()
    assert [x.uid for x in results] == [x["uid"] for x in expected]
    assert all(x.version == 1 and x.url.startswith("/d/") for x in results)
    assert len(grafana.calls("POST", "/api/folders")) == 1
    assert grafana.folders["mlplane"]["title"] == "mlplane"
    for dash in expected:
        stored = grafana.dashboards[dash["uid"]]
        assert stored["folderUid"] == "mlplane"
        assert stored["model"] == {**dash, "id": None}
    posts = grafana.calls("POST", "/api/dashboards/db")
    assert len(posts) == len(expected)
    assert all(p["body"]["overwrite"] is True for p in posts)
    assert all(q["auth"] == f"Bearer {TOKEN}" for q in grafana.requests)


def test_pushing_again_overwrites_and_reuses_the_folder(grafana):
    push_dashboards(grafana.url, token=TOKEN)
    results = push_dashboards(grafana.url, token=TOKEN, message="second")
    assert all(x.version == 2 for x in results)
    assert len(grafana.calls("POST", "/api/folders")) == 1
    assert len(grafana.dashboards) == len(d.all_dashboards())
    assert {x["message"] for x in grafana.dashboards.values()} == {"second"}


def test_an_existing_folder_with_that_title_is_reused(grafana):
    grafana.add_folder("hand-made", "ML platform")
    push_dashboards(grafana.url, [d.slo_dashboard()], token=TOKEN, folder="ML platform")
    assert grafana.calls("POST", "/api/folders") == []
    assert grafana.dashboards["mlplane-slo"]["folderUid"] == "hand-made"


@pytest.mark.parametrize("how", ["argument", "url"])
def test_basic_auth(grafana, how):
    if how == "argument":
        push_dashboards(grafana.url, [d.operator_dashboard()], basic_auth=(USER, PASSWORD))
    else:
        url = grafana.url.replace("http://", f"http://{USER}:{PASSWORD}@")
        push_dashboards(url, [d.operator_dashboard()])
    assert "mlplane-operator" in grafana.dashboards
    assert all(q["auth"].startswith("Basic ") for q in grafana.requests)


def test_grafana_under_a_sub_path():
    with StubGrafana(prefix="/grafana") as stub:
        push_dashboards(stub.url, [d.drift_dashboard()], token=TOKEN)
        assert "mlplane-drift" in stub.dashboards
        assert {q["path"] for q in stub.requests} >= {"/grafana/api/dashboards/db"}


def test_a_wrong_token_is_refused_and_nothing_is_saved(grafana):
    with pytest.raises(GrafanaPushError, match="folder 'mlplane'"):
        push_dashboards(grafana.url, token="wrong")
    assert grafana.dashboards == {}
    assert grafana.folders == {}


def test_a_refused_dashboard_names_itself(grafana):
    bad = {**d.slo_dashboard(), "title": ""}
    with pytest.raises(ValueError, match="uid and a title"):
        push_dashboards(grafana.url, [bad], token=TOKEN)
    grafana.add_folder("mlplane", "mlplane")
    # The stub refuses a dashboard whose id it does not know: the pusher must send id None.
    stale_id = {**d.slo_dashboard(), "id": 42}
    push_dashboards(grafana.url, [stale_id], token=TOKEN)
    assert grafana.dashboards["mlplane-slo"]["version"] == 1


def test_unreachable_grafana():
    with StubGrafana() as stub:
        url = stub.url
    with pytest.raises(GrafanaPushError, match="folder"):
        push_dashboards(url, token=TOKEN, timeout=5)


def test_token_and_basic_auth_are_exclusive():
    with pytest.raises(ValueError, match="not both"):
        push_dashboards("http://127.0.0.1:1", token=TOKEN, basic_auth=(USER, PASSWORD))
    with pytest.raises(ValueError, match="http"):
        push_dashboards("ftp://grafana", token=TOKEN)
