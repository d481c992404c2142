"""Benchmark: the mlplane serving app (router -> model deployment) vs. a plain Ray Serve deployment.

Both serve the same registered MLflow pyfunc model (a small sklearn pipeline) in one local Ray
cluster, behind the same Serve HTTP proxy, in the same run. The mlplane app is deployed the way
the local platform deploys it: ``build_rayservice`` (the operator's builder) -> its
``serveConfigV2`` -> ``local_serve_config`` -> ``PUT /api/serve/applications/``.

Targets (each an application under its own route prefix):

- ``plain``: one Serve deployment (:class:`Plain`, below) that does what mlplane's model
  deployment does minus everything mlplane adds: parse the JSON records, build a DataFrame,
  ``pyfunc.predict`` in a worker thread, with the same ``@serve.batch`` settings, replica count,
  CPU reservation, ``max_ongoing_requests`` and autoscaling config as mlplane's ``model-0``.
- ``mlplane``: ``mlplane.serving.app:build_app`` serving one version: the router (payload
  checks, signed request id, per-request counts shipped to the monitor) -> ``model-0``.
- ``mlplane-ab`` (``--ab``): the same app running an A/B split, two variants (two model
  deployments, versions 2 and 1) at 50/50, sticky on the ``x-user-id`` header.

Default mode: ``mlplane`` vs ``plain`` (the cost of the router). ``--ab``: ``mlplane-ab`` vs
``mlplane`` (the cost of the split over the single-model path). Every target gets the same
request bodies and headers (one row each by default, ``x-user-id`` from 1,000 users) from an
aiohttp client with ``--concurrency`` connections, in ``--rounds`` rounds whose target order
alternates (ABBA...), after a warm-up. Reported: per target the median over rounds of
requests/s, p50 and p99 latency; ratios are the median of the per-round paired ratios
(target / baseline), with their range.

Not a test: the client, the proxy and every replica share the machine's cores, so absolute
numbers say more about the machine than about the app; the ratios are the point.

    .venv/bin/python bench/serving_router.py [--ab] [--requests 2000] [--concurrency 8]
        [--rounds 4] [--rows 1] [--no-batching] [--drift] [--keep]

It starts its own Ray head (token auth, a temporary ``--temp-dir``, loopback addresses) and
stops it by process group at the end. Ray's daemons still listen on every interface: on a
shared host run it in a private network namespace,
``unshare -n bash -c 'ip link set lo up; .venv/bin/python bench/serving_router.py'``.

This module is also what the ``plain`` application imports on the Ray workers (the Ray head
runs with ``bench/`` on ``PYTHONPATH``): keep its top-level imports light.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

MODEL = "bench-churn"
UID = "6a1f3c2e-0000-4000-8000-0000000000be"
BUCKETING_HEADER = "x-user-id"
VARIANT_HEADER = "x-mlplane-variant"
USERS = 1000
PREFIXES = {"plain": "/plain", "mlplane": "/single", "mlplane-ab": "/ab"}
DEPLOY_TIMEOUT_S = 300.0


# --- the baseline: a plain Serve deployment of the same pyfunc model ---------------------------


@serve.deployment(name="plain", ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=8)
class Plain:
    """The model alone: JSON records -> DataFrame -> ``pyfunc.predict`` (in a thread)."""

    def __init__(self, args: dict[str, Any]) -> None:
        import mlflow

        mlflow.set_tracking_uri(args["tracking_uri"])
        self.model = mlflow.pyfunc.load_model(args["model_uri"])
        batching = args.get("batching")
        self.batching = batching is not None
        if batching is not None:
            self._batched.set_max_batch_size(batching["max_batch_size"])
            self._batched.set_batch_wait_timeout_s(batching["batch_wait_timeout_s"])

    def _predict(self, requests: list[list[dict[str, Any]]]) -> list[list[Any]]:
        import pandas as pd

        frame = pd.DataFrame([row for rows in requests for row in rows])
        output = self.model.predict(frame)
        values = output.tolist() if hasattr(output, "tolist") else list(output)
        answers, start = [], 0
        for rows in requests:
            answers.append(values[start : start + len(rows)])
            start += len(rows)
        return answers

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _batched(self, requests: list[list[dict[str, Any]]]) -> list[list[Any]]:
        return await asyncio.to_thread(self._predict, requests)

    async def __call__(self, request: Request) -> JSONResponse:
        try:
            records = (await request.json())["records"]
            if self.batching:
                predictions = await self._batched(records)
            else:
                (predictions,) = await asyncio.to_thread(self._predict, [records])
        except (ValueError, KeyError, TypeError) as exc:
            return JSONResponse({"error": f"{type(exc).__name__}: {exc}"}, status_code=422)
        return JSONResponse({"predictions": predictions})


def build_plain(args: dict[str, Any]) -> Any:
    """Serve application builder (``import_path: serving_router:build_plain``)."""
    return Plain.bind(args)


# --- load client and statistics ------------------------------------------------------------------


@dataclass
class RunResult:
    """One target's share of one round: every request's latency and outcome."""

    target: str
    wall_s: float
    latencies_s: list[float]
    statuses: Counter[str] = field(default_factory=Counter)
    variants: Counter[str] = field(default_factory=Counter)

    @property
    def requests(self) -> int:
        return len(self.latencies_s)

    @property
    def errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status != "200")

    @property
    def rps(self) -> float:
        return self.requests / self.wall_s if self.wall_s > 0 else 0.0

    def latency_ms(self, q: float) -> float:
        return 1000.0 * percentile(self.latencies_s, q)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation between order statistics (numpy's
    default), so p50 of two values is their mean and p99 of few values is not just the max."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be within [0, 100], not {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


async def drive(
    url: str,
    bodies: Sequence[bytes],
    headers: Sequence[Mapping[str, str]],
    requests: int,
    concurrency: int,
    *,
    target: str = "",
    timeout_s: float = 60.0,
) -> RunResult:
    """POST ``requests`` requests to ``url`` from ``concurrency`` workers on kept-alive
    connections (request ``i`` sends ``bodies[i % len]`` with ``headers[i % len]``).

    Latency is measured from send to the last byte of the answer; a failed connection or a
    timeout counts as an error (status ``ExceptionName``) with the time it took.
    """
    import aiohttp  # lazy: Serve replicas importing this module need no client

    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    variants: Counter[str] = Counter()
    counter = itertools.count()
    connector = aiohttp.TCPConnector(limit=concurrency)
    client_timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session:

        async def worker() -> None:
            while (i := next(counter)) < requests:
                started = time.perf_counter()
                try:
                    async with session.post(
                        url, data=bodies[i % len(bodies)], headers=headers[i % len(headers)]
                    ) as response:
                        await response.read()
                        status = str(response.status)
                        variant = response.headers.get(VARIANT_HEADER)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    status, variant = type(exc).__name__, None
                latencies.append(time.perf_counter() - started)
                statuses[status] += 1
                if variant is not None:
                    variants[variant] += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return RunResult(target, wall, latencies, statuses, variants)


@dataclass(frozen=True)
class Summary:
    """A target over all rounds: medians of the per-round figures."""

    target: str
    rounds: int
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float
    variants: dict[str, int]


def summarize(runs: Sequence[RunResult]) -> Summary:
    """Median over rounds of requests/s, p50 and p99 (each round's figure from its requests)."""
    if not runs:
        raise ValueError("no runs to summarise")
    variants: Counter[str] = Counter()
    for run in runs:
        variants.update(run.variants)
    return Summary(
        target=runs[0].target,
        rounds=len(runs),
        requests=sum(r.requests for r in runs),
        errors=sum(r.errors for r in runs),
        rps=statistics.median(r.rps for r in runs),
        p50_ms=statistics.median(r.latency_ms(50) for r in runs),
        p99_ms=statistics.median(r.latency_ms(99) for r in runs),
        variants=dict(sorted(variants.items())),
    )


@dataclass(frozen=True)
class Ratio:
    """Median of per-round ratios target / baseline, with their smallest and largest."""

    median: float
    low: float
    high: float


def paired_ratios(runs: Sequence[RunResult], baseline: Sequence[RunResult]) -> dict[str, Ratio]:
    """Round-by-round ratios (rounds paired by index, so load drifts cancel within a pair)."""
    if len(runs) != len(baseline) or not runs:
        raise ValueError("ratios need the same, non-zero number of rounds on both sides")
    metrics = {
        "req/s": lambda r: r.rps,
        "p50": lambda r: r.latency_ms(50),
        "p99": lambda r: r.latency_ms(99),
    }
    out = {}
    for name, metric in metrics.items():
        values = [metric(a) / metric(b) for a, b in zip(runs, baseline, strict=True)]
        out[name] = Ratio(statistics.median(values), min(values), max(values))
    return out


def round_order(targets: Sequence[str], round_index: int) -> list[str]:
    """ABBA...: the order of the targets alternates every round, so that neither is always
    the one running right after the other (warmed caches, a load spike) more often."""
    return list(targets) if round_index % 2 == 0 else list(reversed(targets))


def format_report(
    summaries: Sequence[Summary], ratios: Mapping[str, Mapping[str, Ratio]], baseline: str
) -> str:
    """The results table and the ratio lines."""
    lines = [
        f"{'target':<12} {'rounds':>6} {'requests':>8} {'errors':>6} {'req/s':>8} "
        f"{'p50 ms':>8} {'p99 ms':>8}  variants",
        "-" * 78,
    ]
    for s in summaries:
        split = " ".join(f"{k}={v}" for k, v in s.variants.items()) or "-"
        lines.append(
            f"{s.target:<12} {s.rounds:>6} {s.requests:>8} {s.errors:>6} {s.rps:>8.1f} "
            f"{s.p50_ms:>8.2f} {s.p99_ms:>8.2f}  {split}"
        )
    for target, by_metric in ratios.items():
        parts = ", ".join(
            f"{name} {r.median:.2f}x [{r.low:.2f}-{r.high:.2f}]" for name, r in by_metric.items()
        )
        lines.append(f"ratio {target} / {baseline} (median of per-round ratios [range]): {parts}")
    return "\n".join(lines)


def make_requests(
    n: int, rows_per_request: int, seed: int = 0
) -> tuple[list[bytes], list[dict[str, str]]]:
    """``n`` JSON bodies (``{"records": [...]}``) and header sets with a bucketing key each."""
    rng = random.Random(seed)
    bodies = []
    for _ in range(n):
        records = [
            {
                "tenure": round(rng.gauss(24, 12), 1),
                "spend": rng.gammavariate(2.0, 30.0),
                "visits": rng.randint(0, 12),
                "plan": rng.choice(["free", "pro", "team"]),
            }
            for _ in range(rows_per_request)
        ]
        bodies.append(json.dumps({"records": records}).encode())
    headers = [
        {"content-type": "application/json", BUCKETING_HEADER: f"user-{rng.randrange(USERS)}"}
        for _ in range(n)
    ]
    return bodies, headers


# --- setup: a registry, a Ray head, the applications ----------------------------------------------


def register_models(workdir: Path, with_profile: bool) -> str:
    """Two versions of a small sklearn pipeline in a SQLite registry; its tracking URI."""
    import mlflow
    import numpy as np
    import pandas as pd
    from mlflow.models import infer_signature
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    uri = f"sqlite:///{workdir}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("bench", artifact_location=f"file://{workdir}/art")
    rng = np.random.default_rng(7)
    frame = pd.DataFrame(
        {
            "tenure": rng.normal(24, 12, 600).round(1),
            "spend": rng.gamma(2.0, 30.0, 600),
            "visits": rng.poisson(5, 600).astype("int64"),
            "plan": rng.choice(["free", "pro", "team"], 600),
        }
    )
    for c in (0.05, 5.0):
        labels = (frame["tenure"] + rng.normal(0, 5, len(frame)) > 24).astype(int)
        model = make_pipeline(
            ColumnTransformer(
                [("plan", OneHotEncoder(handle_unknown="ignore"), ["plan"])],
                remainder="passthrough",
            ),
            LogisticRegression(C=c, max_iter=500),
        ).fit(frame, labels)
        with mlflow.start_run(experiment_id=experiment):
            mlflow.sklearn.log_model(
                model,
                name="model",
                signature=infer_signature(frame, model.predict(frame)),
                registered_model_name=MODEL,
                pip_requirements=["scikit-learn"],
            )
            if with_profile:
                from mlplane.monitoring.profile import PROFILE_ARTIFACT_PATH, build_profile

                mlflow.log_text(build_profile(frame).to_json(), PROFILE_ARTIFACT_PATH)
    return uri


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _group_alive(pgid: int) -> bool:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


class RayHead:
    """``ray start --head --block`` in its own session, with its own token and temp dir."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.token = secrets.token_hex(32)
        ports = {name: free_port() for name in ("gcs", "dashboard", "client")}
        self.dashboard = f"http://127.0.0.1:{ports['dashboard']}"
        bench_dir = str(Path(__file__).resolve().parent)
        pythonpath = os.pathsep.join(p for p in (bench_dir, os.environ.get("PYTHONPATH")) if p)
        self._log = (workdir / "ray.log").open("wb")
        self.process = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "ray"),
                "start",
                "--head",
                "--block",
                "--disable-usage-stats",
                "--node-ip-address=127.0.0.1",
                f"--port={ports['gcs']}",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={ports['dashboard']}",
                f"--ray-client-server-port={ports['client']}",
                "--include-dashboard=true",
                f"--num-cpus={os.cpu_count() or 2}",
                f"--temp-dir={workdir / 'ray'}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={
                **os.environ,
                "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN": self.token,
                "PYTHONPATH": pythonpath,
            },
        )

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        from mlplane.serving.deploy import get_applications

        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.process.returncode}; see ray.log")
            try:
                get_applications(self.dashboard, token=self.token)
                return
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Ray's dashboard not up after {timeout_s:g} s") from exc
            time.sleep(1.0)

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL whatever is left after 15 s."""
        pgid = self.process.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.5)
        if _group_alive(pgid):
            os.killpg(pgid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self._log.close()


def mlplane_app(
    tracking_uri: str,
    *,
    name: str,
    port: int,
    ab: bool,
    batching: bool,
    drift: bool,
    signing_keys: Path | None = None,
) -> dict[str, Any]:
    """The app as the local platform deploys it, from the operator's builder (its request-id
    keys in ``signing_keys``, laid out as the local platform's key folder)."""
    from mlplane.crds.validate import parse
    from mlplane.operator.builders import Variant, build_rayservice
    from mlplane.operator.config import OperatorConfig
    from mlplane.serving.deploy import local_serve_config, serve_config_of

    spec: dict[str, Any] = {
        "model": {"name": MODEL, "alias": "champion"},
        "replicas": {"min": 1, "max": 1},
        "resources": {"cpu": "250m", "memory": "512Mi"},
        "monitoring": {"drift": {"enabled": drift, "window": "1m", "minSamples": 100}},
    }
    md = parse(
        {
            "apiVersion": "mlplane.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": "churn", "namespace": "bench", "uid": UID},
            "spec": spec,
        }
    )
    extra: dict[str, Any] = {}
    if ab:
        extra = {
            "variants": [Variant("control", 2, 50), Variant("candidate", 1, 50)],
            "bucketing_header": BUCKETING_HEADER,
            "abtest": "bench-ab",
        }
    rayservice = build_rayservice(
        md, 2, OperatorConfig(mlflow_tracking_uri=tracking_uri), owner_uid=UID, **extra
    )
    config = local_serve_config(
        serve_config_of(rayservice),
        port=port,
        num_cpus=0.25,
        name=name,
        route_prefix=PREFIXES[name],
        signing_keys=None if signing_keys is None else str(signing_keys),
    )
    app = config["applications"][0]
    if not batching:
        app["args"]["batching"] = None
    return config


def plain_app(tracking_uri: str, model_deployment: Mapping[str, Any], batching: Any) -> dict:
    """The baseline application, with ``model-0``'s replica options and batching."""
    options = {
        k: model_deployment[k]
        for k in ("max_ongoing_requests", "autoscaling_config", "ray_actor_options")
        if k in model_deployment
    }
    return {
        "name": "plain",
        "route_prefix": PREFIXES["plain"],
        "import_path": "serving_router:build_plain",
        "args": {
            "tracking_uri": tracking_uri,
            "model_uri": model_deployment["user_config"]["model_uri"],
            "batching": batching,
        },
        "deployments": [{"name": "plain", **options}],
    }


def _signing_keys(workdir: Path) -> tuple[Path, str]:
    """A key folder for the apps (a random ``current``, 0600) and the key, as text."""
    folder = workdir / "signing-keys"
    folder.mkdir(mode=0o700)
    key = secrets.token_hex(32)
    fd = os.open(folder / "current", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key)
    return folder, key


def _ready(base: str, admin_token: str) -> bool:
    """Every variant of an mlplane app serves its configured version (``GET /admin/v1/models``
    with the app's admin token, as the operator reads it)."""
    import urllib.request

    request = urllib.request.Request(
        f"{base}/admin/v1/models", headers={"Authorization": f"Bearer {admin_token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            variants = json.loads(response.read())["variants"]
    except (OSError, ValueError, KeyError):
        return False
    return all(v["ready"] for v in variants)


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


async def _measure(
    urls: Mapping[str, str],
    bodies: Sequence[bytes],
    headers: Sequence[Mapping[str, str]],
    args: argparse.Namespace,
) -> dict[str, list[RunResult]]:
    per_round = max(1, args.requests // args.rounds)
    for target, url in urls.items():
        warm = await drive(url, bodies, headers, args.warmup, args.concurrency, target=target)
        if warm.errors:
            raise RuntimeError(f"{target}: warm-up failed: {dict(warm.statuses)}")
    runs: dict[str, list[RunResult]] = {t: [] for t in urls}
    for k in range(args.rounds):
        for target in round_order(list(urls), k):
            run = await drive(
                urls[target], bodies, headers, per_round, args.concurrency, target=target
            )
            runs[target].append(run)
            print(
                f"  round {k + 1}/{args.rounds} {target:<11} {run.rps:7.1f} req/s  "
                f"p50 {run.latency_ms(50):7.2f} ms  p99 {run.latency_ms(99):7.2f} ms  "
                f"errors {run.errors}  (load {_load()})",
                flush=True,
            )
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ab", action="store_true", help="A/B split vs single-model path")
    parser.add_argument("--requests", type=int, default=2000, help="per target, over all rounds")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=100, help="unmeasured, per target")
    parser.add_argument("--rows", type=int, default=1, help="rows per request")
    parser.add_argument(
        "--no-batching", action="store_true", help="no @serve.batch in either (default: the CRD's)"
    )
    parser.add_argument("--drift", action="store_true", help="mlplane apps with the drift tap on")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (Ray's logs)")
    args = parser.parse_args(argv)
    if args.requests < args.rounds or args.rounds < 1 or args.concurrency < 1:
        parser.error("need --rounds >= 1, --concurrency >= 1 and --requests >= --rounds")

    from mlplane.serving.admin import admin_token
    from mlplane.serving.deploy import put_applications, wait_running

    # Short: Ray's unix socket paths must stay under ~107 characters.
    workdir = Path(tempfile.mkdtemp(prefix="mlpb-", dir="/tmp"))
    started = time.monotonic()
    print(f"load average at start: {_load()} on {os.cpu_count()} CPUs; work dir {workdir}")
    head = None
    try:
        tracking_uri = register_models(workdir, with_profile=args.drift)
        print(f"registered 2 versions of {MODEL} ({time.monotonic() - started:.0f} s)")
        head = RayHead(workdir)
        head.wait_ready()
        port = free_port()
        print(f"Ray head up ({time.monotonic() - started:.0f} s); Serve on 127.0.0.1:{port}")
        batching = not args.no_batching
        keys, key = _signing_keys(workdir)
        single = mlplane_app(
            tracking_uri,
            name="mlplane",
            port=port,
            ab=False,
            batching=batching,
            drift=args.drift,
            signing_keys=keys,
        )
        applications = list(single["applications"])
        if args.ab:
            ab = mlplane_app(
                tracking_uri,
                name="mlplane-ab",
                port=port,
                ab=True,
                batching=batching,
                drift=args.drift,
                signing_keys=keys,
            )
            applications = ab["applications"] + applications
            targets, baseline = ["mlplane-ab", "mlplane"], "mlplane"
        else:
            model_0 = next(d for d in applications[0]["deployments"] if d["name"] == "model-0")
            applications.append(
                plain_app(tracking_uri, model_0, applications[0]["args"]["batching"])
            )
            targets, baseline = ["mlplane", "plain"], "plain"
        config = {**single, "applications": applications}
        put_applications(head.dashboard, config, token=head.token)
        wait_running(head.dashboard, config, timeout=DEPLOY_TIMEOUT_S, token=head.token)
        urls = {t: f"http://127.0.0.1:{port}{PREFIXES[t]}" for t in targets}
        for target in targets:
            if target != "plain":
                deadline = time.monotonic() + 120
                while not _ready(urls[target], admin_token(key.encode(), "bench/churn")):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{target}: models not ready after 120 s")
                    time.sleep(0.5)
        urls = {t: (u if t == "plain" else f"{u}/v1/predict") for t, u in urls.items()}
        batch = applications[0]["args"]["batching"]
        print(
            f"deployed {', '.join(targets)} ({time.monotonic() - started:.0f} s); "
            f"batching {batch}; drift {'on' if args.drift else 'off'}; "
            f"{args.requests} requests per target in {args.rounds} rounds, "
            f"concurrency {args.concurrency}, {args.rows} row(s) per request"
        )
        bodies, headers = make_requests(1000, args.rows)
        runs = asyncio.run(_measure(urls, bodies, headers, args))
    finally:
        if head is not None:
            head.stop()
        if args.keep:
            print(f"work dir kept: {workdir}")
        else:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)

    summaries = [summarize(runs[t]) for t in targets]
    ratios = {t: paired_ratios(runs[t], runs[baseline]) for t in targets if t != baseline}
    print()
    print(format_report(summaries, ratios, baseline))
    print(f"load average at end: {_load()}; total {time.monotonic() - started:.0f} s")
    return 1 if any(s.errors for s in summaries) else 0


if __name__ == "__main__":
    sys.exit(main())
