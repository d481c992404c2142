"""The local platform's operator: the same reconcile cores, acting on this machine's Ray.

``mlplane local up`` starts it as a server (``python -m mlplane.operator.runner``); it passes
over the stored resources (``platforms/store.py``) every ``--interval`` seconds (sooner when a
TrainingJob's reconcile asks to come back sooner, ``Plan.requeue_after``):

- TrainingJob: the pure ``reconcile/trainingjob.py`` decides; a planned RayJob becomes a Ray
  job submitted through the Jobs API under the RayJob's deterministic name; a dead Ray worker
  node with the ``spot`` resource is the local stand-in for a reclaimed spot node; MLflow is
  the local server. The ledger of counted disruptions is the status, as on Kubernetes.
- ModelDeployment: the pure ``reconcile/modeldeployment.py`` decides from the model resolved in
  MLflow and the RayService read back from ``platforms/local_serving.py``, which keeps the
  RayService records and deploys them all as Serve applications (one PUT), translating Serve's
  status into KubeRay's shape. The endpoint is ``http://127.0.0.1:8000/<namespace>/<name>``.
  With drift monitoring on, the app's ``/admin/v1/drift`` goes through ``reconcile/drift.py``
  into the status (and a retraining TrainingJob into the store when drift persists).
- ABTest: ``reconcile/abtest.py`` decides from the router's ``/admin/v1/stats`` (admin token);
  its split reaches the ModelDeployment through ``routing_for``; a promotion is recorded in
  status first, then a later pass that reads it back moves the MLflow alias, then writes
  Concluded.

After each pass the operator's series are exported (``--metrics-port``) and the serving apps
are listed for the local Prometheus.

Each resource is handled on its own: one that fails (MLflow down, a bug) is reported in its
status and the others go on. The heartbeat file says the loop is alive.

Settings (:class:`~mlplane.operator.config.Settings`: the replicas' CPUs and ceiling, the MLflow
timeout) are read once, when a :class:`Runner` is made; what the runner keeps per object (when
a running ABTest is due) belongs to the instance, never to the module.
"""

from __future__ import annotations

import argparse
import logging
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from mlplane.crds import ABTest, ABTestStatus, ModelDeployment, Resource, TrainingJob
from mlplane.crds.modeldeployment import ModelRef
from mlplane.crds.validate import check, parse
from mlplane.operator import conditions, metrics
from mlplane.operator.builders import labels as lbl
from mlplane.operator.builders.labels import rayjob_name, rayservice_name
from mlplane.operator.builders.rayjob import config_problems
from mlplane.operator.config import OperatorConfig, Settings
from mlplane.operator.platforms.base import ChildOwnedByOther
from mlplane.operator.platforms.local import LocalPlatform
from mlplane.operator.platforms.local_serving import LocalServing
from mlplane.operator.platforms.notice import deliver_notice
from mlplane.operator.platforms.reclaim_history import file_keeper
from mlplane.operator.platforms.serving_client import Unavailable, fetch_drift, fetch_stats
from mlplane.operator.platforms.store import NotFound, Store
from mlplane.operator.reconcile import abtest as ab_core
from mlplane.operator.reconcile import modeldeployment as md_core
from mlplane.operator.reconcile.drift import ObservedRetrain, reconcile_drift
from mlplane.operator.reconcile.notice import ObservedNotice
from mlplane.operator.reconcile.trainingjob import (
    AttemptCapacity,
    Observed,
    ObservedAttempt,
    ObservedDisruption,
    policy_refusal,
)
from mlplane.operator.registry import (
    Registry,
    RegistryError,
    flavors_of,
    observe_trainingjob,
    registry_for,
    resolve_model,
    trainingjob_rounds,
)

log = logging.getLogger("mlplane.runner")

R = TypeVar("R", bound=Resource)


def parsed(kind: type[R], body: dict[str, Any]) -> R:
    """``body`` parsed as ``kind`` (the store files each object under its kind's folder, so
    anything else is a corrupt file: a ValueError, reported like any unreadable object)."""
    resource = parse(body)
    if not isinstance(resource, kind):
        raise ValueError(f"expected a {kind.__name__}, read a {type(resource).__name__}")
    return resource


def local_config(platform: LocalPlatform) -> OperatorConfig:
    """The operator settings of the local platform: its MLflow, checkpoints in the state dir.

    The default checkpoint base is ``<state-dir>/checkpoints``: a TrainingJob without
    ``checkpoint.uri`` (spot workers included) checkpoints under
    ``<state-dir>/checkpoints/<namespace>/<name>/<uid>/``.
    """
    return OperatorConfig(
        mlflow_tracking_uri=platform.mlflow_uri,
        artifacts_uri=str(platform.state_dir),
        checkpoint_base_uri=str(platform.state_dir / "checkpoints"),
    )


class Runner:
    """One pass at a time over every stored resource."""

    def __init__(self, state_dir: Path, settings: Settings | None = None) -> None:
        #: Read once (None: from the environment now); nothing reads it again.
        self.settings = Settings.from_env() if settings is None else settings
        self.platform = LocalPlatform(state_dir)
        self.store = Store(state_dir)
        self.serving = LocalServing(
            self.platform,
            replica_cpus=self.settings.local_replica_cpus,
            max_replicas=self.settings.local_max_replicas,
        )
        #: The reclaim history (M of Auto checkpoint intervals), kept in the state dir.
        self.reclaims = file_keeper(self.platform.state_dir)
        #: This pass's valid ABTests by uid (their statuses as this pass leaves them).
        self._abtests: dict[str, Any] = {}
        self._due: dict[str, float] = {}
        #: The soonest ``requeue_after`` a TrainingJob's plan asked for in this pass.
        self.soonest: float | None = None

    def registry(self, tracking_uri: str) -> Registry:
        """One MLflow client per server for the runner's life."""
        return registry_for(tracking_uri, timeout=self.settings.config.mlflow_timeout)

    def pass_once(self, now: datetime | None = None) -> float | None:
        """Reconcile everything once; never raises for one resource's trouble.

        Returns the soonest ``requeue_after`` a TrainingJob asked for (None: none did), so
        the loop comes back then when it is sooner than its interval."""
        now = now or datetime.now(UTC)
        self.soonest = None
        config = local_config(self.platform)
        for body in self.store.list("TrainingJob"):
            self._guarded(self.trainingjob, body, now, config)
        self.serving.refresh()
        deployments = self.store.list("ModelDeployment")
        self._abtests = self._valid_abtests(now)
        for body in deployments:
            self._guarded(self.modeldeployment, body, now, config)
        for body in self.store.list("ABTest"):
            if body["metadata"]["uid"] in self._abtests:
                self._guarded(self.abtest, body, now, config)
        keep = [(b["metadata"]["namespace"], b["metadata"]["name"]) for b in deployments]
        for gone in self.serving.delete_except(keep):
            log.info("RayService %s: its ModelDeployment is gone, its application stops", gone)
        try:
            self.serving.sync()
        except Exception as exc:  # Serve refused: the statuses say so at the next pass
            log.error("Serve applications: %s", exc)
        else:  # the applications of gone deployments are stopped: their keys may go
            for gone in self.serving.signing.delete_except(keep):
                log.info("signing keys of %s: its ModelDeployment is gone, removed", gone)
        self._export(deployments)
        self.platform.heartbeat_file.touch()
        return self.soonest

    def _export(self, deployments: list[dict[str, Any]]) -> None:
        """The operator's series for Prometheus, and where it finds the serving apps."""
        for kind in ("TrainingJob", "ModelDeployment", "ABTest"):
            bodies = deployments if kind == "ModelDeployment" else self.store.list(kind)
            metrics.sync(kind, bodies)
        endpoints = {}
        for body in self.store.list("ModelDeployment"):
            status = body.get("status") or {}
            if status.get("endpoint") and status.get("servedVersion"):
                meta = body["metadata"]
                endpoints[f"{meta['namespace']}/{meta['name']}"] = status["endpoint"]
        self.platform.write_serving_targets(endpoints)

    @staticmethod
    def _guarded(step: Any, body: dict[str, Any], now: datetime, config: OperatorConfig) -> None:
        meta = body["metadata"]
        try:
            with metrics.reconciling(body["kind"]):
                step(body, now, config)
        except Exception as exc:  # one resource's failure must not stop the others
            log.error("%s %s/%s: %s", body["kind"], meta["namespace"], meta["name"],
                      "".join(traceback.format_exception_only(exc)).strip())  # fmt: skip

    def _invalid(
        self, body: dict[str, Any], now: datetime, config: OperatorConfig | None = None
    ) -> bool:
        """Report a resource the API checks refuse (status ``InvalidSpec``, a Warning event).

        The local store takes only validated manifests; this catches a file edited by hand or
        written by an older mlplane, exactly as the Kopf handlers do on Kubernetes, and (with
        ``config``) what the operator's configuration cannot run (``config_problems``).
        """
        problems = check(body)
        if not problems and config is not None:
            problems = config_problems(parse(body), config)
        if not problems:
            return False
        old = body.get("status") or {}
        message = "; ".join(str(p) for p in problems)
        status = {**old, "phase": "Failed",
                  "observedGeneration": body["metadata"].get("generation")}  # fmt: skip
        status["conditions"] = conditions.set_condition(
            old.get("conditions"), "InvalidSpec", "True", "InvalidSpec", message, now=now,
            generation=body["metadata"].get("generation"),
        )  # fmt: skip
        if status != old:
            self.store.add_event(body, "Warning", "InvalidSpec", message)
            self.store.write_status(body, status)
        return True

    # --- ModelDeployment -----------------------------------------------------------------------

    def modeldeployment(self, body: dict[str, Any], now: datetime, config: OperatorConfig) -> None:
        if self._invalid(body, now):
            return
        md = parsed(ModelDeployment, body)
        meta = body["metadata"]
        namespace, name, uid = meta["namespace"], meta["name"], meta["uid"]
        rs_name = rayservice_name(name)
        # The signing keys first (the Secret on Kubernetes): the application reads them.
        signing_events = self.serving.signing.ensure(
            namespace, name, uid, meta.get("annotations"), now
        )
        model = resolve_model(self.registry(config.mlflow_tracking_uri), md.spec.model)
        rayservice = self.serving.get(namespace, rs_name)
        tests = [t for t in self._abtests.values() if t.metadata.namespace == namespace]
        split = ab_core.routing_for(name, tests, namespace)
        flavors = None
        if not isinstance(model, md_core.Unresolved):  # the registry policy, as on Kubernetes
            versions = (model.version, *(v.version for v in (split.variants if split else ())))
            registry = self.registry(config.mlflow_tracking_uri)
            flavors, unavailable = flavors_of(registry, md.spec.model.name, versions)
            model = unavailable or model
        observed = md_core.Observed(model, rayservice, flavors=flavors)
        if split is not None:
            observed = md_core.Observed(
                model, rayservice, variants=split.variants, bucketing_header=split.bucketing_header,
                abtest=split.abtest, objective=split.objective, outcome_range=split.outcome_range,
                flavors=flavors,
            )  # fmt: skip
        plan = md_core.reconcile(md, observed, now, config, uid=uid)
        if plan.create and plan.desired is not None:
            self.serving.create(plan.desired)
        elif plan.patch is not None:
            self.serving.patch(namespace, rs_name, plan.patch)
        status = dict(plan.status)
        if "endpoint" in status:  # KubeRay's in-cluster Service there, Serve's proxy here
            status["endpoint"] = self.serving.endpoint(namespace, name)
        events = [*signing_events, *plan.events]
        status = self._drift(md, body, status, events, now)
        for event in events:
            self.store.add_event(body, event.type, event.reason, event.message)
        self.store.write_status(body, status)

    def _drift(
        self, md: Any, body: dict[str, Any], status: dict[str, Any], events: list[Any],
        now: datetime,
    ) -> dict[str, Any]:  # fmt: skip
        """Live drift into the status; a retraining TrainingJob when drift persists."""
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        report = None
        if md.spec.monitoring.drift.enabled and status.get("servedVersion"):
            token = self.serving.admin_token(namespace, name)
            report = fetch_drift(status["endpoint"], timeout=5.0, token=token)
        retrains = [
            ObservedRetrain.from_trainingjob(tj)
            for tj in self.store.list("TrainingJob", namespace)
            if (tj["metadata"].get("labels") or {}).get(lbl.MODELDEPLOYMENT) == name
            and lbl.RETRAIN in (tj["metadata"].get("labels") or {})
        ]
        plan = reconcile_drift(md, status, report, retrains, now, uid=meta["uid"])
        if plan.create is not None:
            job = plan.create["metadata"]["name"]
            try:
                self.store.get("TrainingJob", namespace, job)
            except NotFound:
                self.store.apply(plan.create)  # the name is deterministic: a retry finds it
        events.extend(plan.events)
        return plan.status

    # --- ABTest --------------------------------------------------------------------------------

    def _valid_abtests(self, now: datetime) -> dict[str, Any]:
        """Every valid ABTest by uid (an invalid one is reported and splits nothing)."""
        out = {}
        for body in self.store.list("ABTest"):
            if not self._invalid(body, now):
                out[body["metadata"]["uid"]] = parsed(ABTest, body)
        return out

    def abtest(self, body: dict[str, Any], now: datetime, config: OperatorConfig) -> None:
        test = self._abtests[body["metadata"]["uid"]]
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        if test.status is not None and test.status.phase in ab_core.FINAL_PHASES:
            return
        # A promotion the stored status records is finished at once (the alias moves only
        # once the decision is stored: this pass reads it back from the store).
        promoting = ab_core.pending_promotion(body.get("status")) is not None
        running = test.status is not None and test.status.phase == "Running"
        if running and not promoting and time.monotonic() < self._due.get(meta["uid"], 0.0):
            return  # a running test is evaluated every spec.analysis.interval
        self._due[meta["uid"]] = time.monotonic() + ab_core.analysis_interval(test)
        try:
            md = parsed(
                ModelDeployment, self.store.get("ModelDeployment", namespace, test.spec.deployment)
            )
        except (NotFound, ValueError):
            md = None
        versions: dict[str, Any] = {}
        stats: Any = None
        if md is not None and not promoting:
            registry = self.registry(config.mlflow_tracking_uri)
            frozen = test.status is not None and any(v.version for v in test.status.variants)
            for v in () if frozen else test.spec.variants:
                ref = ModelRef(name=md.spec.model.name, alias=v.model.alias,
                               version=v.model.version)  # fmt: skip
                found = resolve_model(registry, ref)
                versions[v.name] = found if isinstance(found, md_core.Unresolved) else found.version
            endpoint = (md.status.endpoint if md.status else None) or None
            if endpoint:
                token = self.serving.admin_token(namespace, test.spec.deployment)
                answer = fetch_stats(endpoint, abtest=name, token=token)
                stats = (ab_core.StatsUnavailable(answer.reason) if isinstance(answer, Unavailable)
                         else ab_core.stats_from_response(answer, name))  # fmt: skip
        competitors = [t for t in self._abtests.values() if t.metadata.namespace == namespace]
        plan = ab_core.reconcile(test, ab_core.Observed(md, versions, stats, competitors), now)
        move = plan.set_alias
        if move is not None:  # recorded in the stored status; a failure here is retried
            registry = self.registry(config.mlflow_tracking_uri)
            try:
                current = registry.resolve(move.model, alias=move.alias).version
            except RegistryError:
                current = None
            if current != move.version:
                registry.set_alias(move.model, move.alias, move.version)
        for event in plan.events:
            self.store.add_event(body, event.type, event.reason, event.message)
        self.store.write_status(body, plan.status)
        self._abtests[meta["uid"]] = test.model_copy(
            update={"status": ABTestStatus.model_validate(plan.status)}
        )

    # --- TrainingJob ---------------------------------------------------------------------------

    def trainingjob(self, body: dict[str, Any], now: datetime, config: OperatorConfig) -> None:
        if self._invalid(body, now, config):
            return
        old = body.get("status") or {}
        if old.get("phase") in ("Succeeded", "Failed"):
            return
        tj = parsed(TrainingJob, body)
        meta = body["metadata"]
        namespace, name, uid = meta["namespace"], meta["name"], meta["uid"]
        # A tracking URI or model name the registry policy refuses: MLflow is never contacted.
        registry = (
            None
            if policy_refusal(tj, config) is not None
            else self.registry(tj.spec.mlflow.tracking_uri or config.mlflow_tracking_uri)
        )

        def act(_: Any, plan: Any) -> None:
            if plan.stop is not None:  # a return to spot: the on-demand attempt ends first
                self.platform.stop_job(namespace, plan.stop, uid)
            for rayjob in plan.create:
                try:
                    self.platform.submit(rayjob)
                except ChildOwnedByOther as exc:  # the next observation shows it: the core waits
                    log.warning("TrainingJob %s/%s: %s", namespace, name, exc)
            for event in plan.events:
                self.store.add_event(body, event.type, event.reason, event.message)

        tj, plan, observed = trainingjob_rounds(
            tj, uid, now, config, registry,
            observe=lambda job: self._observe_trainingjob(job, registry, uid), act=act,
            deliver=lambda notice: deliver_notice(notice, local_paths=True),
        )  # fmt: skip
        self.store.write_status(body, plan.status)
        if plan.requeue_after is not None:
            self.soonest = min(self.soonest or plan.requeue_after, plan.requeue_after)
        self.reclaims.offer(plan.reclaim_samples)
        if observed.registry_error or observed.registry_refused:
            log.warning("TrainingJob %s/%s: MLflow: %s", namespace, name,
                        observed.registry_error or observed.registry_refused)  # fmt: skip

    def _observe_trainingjob(self, tj: Any, registry: Registry | None, uid: str) -> Observed:
        namespace, name = tj.metadata.namespace or "default", tj.metadata.name
        status = tj.status
        attempts: list[ObservedAttempt] = []
        current = status.current_attempt if status else None
        if current is not None:
            for number in range(1, current.number + 1):
                job = self.platform.job(namespace, rayjob_name(name, number), uid)
                if job is None:
                    continue
                capacity: AttemptCapacity = (
                    current.capacity if number == current.number else "OnDemand"
                )
                attempts.append(ObservedAttempt(
                    number, capacity, job["jobStatus"], job["jobDeploymentStatus"], None,
                    job["message"], job["startTime"], job["endTime"], job["ownerUid"],
                ))  # fmt: skip
        disruptions = self._disruptions(current)
        look = observe_trainingjob(registry, tj, uid)
        return Observed(tuple(attempts), disruptions, look.run, look.unavailable, look.refused,
                        reclaim_history=self.reclaims.history(),
                        notices=self._notices(current))  # fmt: skip

    def _notices(self, current: Any) -> tuple[ObservedNotice, ...]:
        """Reclaims announced (``mlplane local reclaim --notice``) since the current attempt
        started: the local stand-in for a spot node's termination taint. Like a dead spot node
        (:meth:`_disruptions`), a notice reaches the current attempt of every job."""
        if current is None or not current.start_time:
            return ()
        started = datetime.fromisoformat(current.start_time.replace("Z", "+00:00"))
        out = []
        for notice in self.platform.notices():
            try:
                said = datetime.fromisoformat(str(notice["time"]).replace("Z", "+00:00"))
                window = float(notice["window_seconds"])
                node = str(notice["node_id"])[:16]
            except (KeyError, TypeError, ValueError):
                continue
            if said >= started:
                out.append(
                    ObservedNotice(
                        current.number,
                        str(notice.get("signal")),
                        node=node,
                        time=str(notice["time"]),
                        window_seconds=window,
                    )
                )
        return tuple(out)

    def _disruptions(self, current: Any) -> tuple[ObservedDisruption, ...]:
        """Spot-resource Ray nodes that died while the current attempt ran."""
        if current is None or not current.start_time:
            return ()
        started = datetime.fromisoformat(current.start_time.replace("Z", "+00:00"))
        out = []
        for node in self.platform.dead_nodes():
            died = node["end_time_ms"]
            if died and datetime.fromtimestamp(died / 1000, UTC) >= started:
                out.append(ObservedDisruption(
                    current.number, "RayNodeDied", node=node["node_id"][:16],
                    time=datetime.fromtimestamp(died / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                ))  # fmt: skip
        return tuple(out)


def main(argv: list[str] | None = None) -> None:
    """``python -m mlplane.operator.runner --state-dir .mlplane``: loop until stopped."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, default=Path(".mlplane"))
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--once", action="store_true", help="one pass, then exit")
    parser.add_argument("--metrics-port", type=int, default=0, help="/metrics on 127.0.0.1")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.metrics_port:
        from prometheus_client import REGISTRY, start_http_server

        start_http_server(args.metrics_port, addr="127.0.0.1", registry=REGISTRY)
    try:
        settings = Settings.from_env()  # once: a bad value stops the start, naming it
    except ValueError as exc:
        raise SystemExit(f"mlplane runner: {exc}") from None
    runner = Runner(args.state_dir, settings)
    while True:
        started = time.monotonic()
        soonest = runner.pass_once()
        if args.once:
            return
        wait = args.interval if soonest is None else min(args.interval, max(0.1, soonest))
        time.sleep(max(0.0, wait - (time.monotonic() - started)))


if __name__ == "__main__":
    main()
