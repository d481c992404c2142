"""TrainingJob attempt → KubeRay ``ray.io/v1`` RayJob (its own Ray cluster, deleted at the end).

One RayJob per attempt, named ``<name>-a<attempt>``. Choices, and why:

- ``submissionMode: SidecarMode``. KubeRay injects the submitter as a container of the head
  pod, so (1) no separate submitter pod has to be scheduled: in ``K8sJobMode`` that pod could
  land on a spot node and be preempted, failing the attempt for nothing, and it is one more
  image pull before training starts; (2) the submitter lives and dies with the on-demand head,
  and KubeRay disables head restarts in this mode, so losing the head ends the attempt instead
  of KubeRay silently re-running the job from scratch inside the same RayJob: attempts stay
  mlplane's to count; (3) unlike ``HTTPMode`` nothing depends on the KubeRay operator reaching
  the head's dashboard over the network.
- ``backoffLimit: 0``: mlplane manages attempts (separate budgets for preemptions and code
  failures); KubeRay retrying on its own would hide failures from both.
- ``shutdownAfterJobFinishes: true`` with the spec's ``ttlSecondsAfterFinished`` (default 0):
  a finished attempt releases its GPUs. Kueue requires it as well.
- The head always runs on on-demand capacity. Worker groups run where their ``capacity`` says,
  except that ``SpotWithFallback`` follows the attempt's capacity (``OnDemand`` once the
  preemption budget is spent). A ``Spot`` group never falls back.
- The head advertises ``num-cpus: "0"`` whenever the job has worker groups that can hold pods,
  so no task or actor (training workers, Ray Data) is scheduled on it: the head is the one pod
  whose loss ends the attempt, and it is sized for GCS and the driver, not for work. The driver
  and Ray Train's controller need no CPU reservation. Without workers, the head keeps its CPUs
  so that a small job can run on it alone.
- ``enableInTreeAutoscaling`` when any group sets ``minReplicas`` or ``maxReplicas`` (a missing
  bound defaults to ``replicas``), except under Kueue: Kueue reserves quota for the pods it
  admits and rejects autoscaling RayJobs (unless elastic workload slicing is enabled), so with
  ``queueName`` every group runs at exactly ``replicas``.
- Checkpoints go to the TrainingJob's own folder, scoped by its uid (:func:`checkpoint_uri`),
  passed to the attempt as ``MLPLANE_CHECKPOINT_URI``; ``checkpoint.resumeFrom`` becomes
  ``MLPLANE_RESUME_FROM``. Spot workers with no checkpoint location at all are refused.
- Closed by default (``builders/access.py``, ``builders/pods.py``): token authentication with
  the TrainingJob's Secret ``<name>-ray-auth`` (shared by its attempts), restricted security
  contexts on every pod and container, the configured training service account.
- With ``queueName`` the RayJob carries ``kueue.x-k8s.io/queue-name`` and is created suspended;
  from then on Kueue owns ``spec.suspend`` (it unsuspends on admission), so the operator must not
  patch ``suspend`` back on an existing RayJob.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import yaml

from mlplane.crds import Resource, TrainingJob
from mlplane.crds.trainingjob import WorkerGroup
from mlplane.crds.validate import Problem
from mlplane.monitoring.notice import NOTICE_PENDING_FILE
from mlplane.operator.builders import labels as lbl
from mlplane.operator.builders.access import auth_options
from mlplane.operator.builders.placement import NodeCapacity, head_placement, place
from mlplane.operator.builders.pods import (
    HEAD_CONTAINER,
    RAY_VERSION,
    WORKER_CONTAINER,
    autoscaler_options,
    int32,
    pod_template,
    ray_container,
)
from mlplane.operator.config import (
    CHECKPOINT_BASE_CHART_VALUE,
    CHECKPOINT_BASE_VARIABLE,
    OperatorConfig,
)

AttemptCapacity = Literal["OnDemand", "Spot"]
SUBMISSION_MODE = "SidecarMode"
#: Kueue turns a RayJob into a Workload of at most 8 pod sets: the head and 7 worker groups.
KUEUE_MAX_WORKER_GROUPS = 7
DEFAULT_NAMESPACE = "default"

#: Environment of the training runtime (``mlplane.training``) inside the Ray job.
ENV_CHECKPOINT_URI = "MLPLANE_CHECKPOINT_URI"
ENV_CHECKPOINT_KEEP = "MLPLANE_CHECKPOINT_KEEP"
ENV_RESUME_FROM = "MLPLANE_RESUME_FROM"
ENV_ATTEMPT = "MLPLANE_ATTEMPT"
ENV_MAX_WORKER_FAILURES = "MLPLANE_MAX_WORKER_FAILURES"
ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"
ENV_RUN_ID = "MLFLOW_RUN_ID"
ENV_EXPERIMENT = "MLPLANE_MLFLOW_EXPERIMENT"
ENV_TRAININGJOB = "MLPLANE_TRAININGJOB"
ENV_TRAININGJOB_UID = "MLPLANE_TRAININGJOB_UID"


def first_attempt_capacity(tj: TrainingJob) -> AttemptCapacity:
    """``Spot`` when any worker group may use spot, else ``OnDemand``."""
    return "Spot" if needs_checkpoints(tj) else "OnDemand"


def worker_capacity(group: WorkerGroup, attempt: AttemptCapacity) -> NodeCapacity:
    """Where a group's workers run in an attempt of the given capacity."""
    if group.capacity == "SpotWithFallback":
        return attempt
    return group.capacity


#: The notice window of each capacity-label convention (seconds): AWS gives a spot instance two
#: minutes, GKE a spot VM 30 s. The default grace of spot Ray worker pods.
NOTICE_WINDOW_SECONDS = {"eks": 120, "karpenter": 120, "gke": 30}
#: What the preStop hook waits for: the runtime's notice being read (seconds), and the file it
#: keeps while the notice checkpoint is being written (``mlplane.monitoring.notice``).
PRESTOP_NOTICE_WAIT_SECONDS = 15


def spot_grace_seconds(tj: TrainingJob, config: OperatorConfig) -> int:
    """The grace of spot Ray worker pods: ``spec.preemption.terminationGraceSeconds``, else
    the capacity convention's notice window."""
    asked = tj.spec.preemption.termination_grace_seconds
    return asked if asked is not None else NOTICE_WINDOW_SECONDS.get(config.capacity_labels, 120)


def notice_grace(template: dict[str, Any], grace: int) -> None:
    """Let an evicted spot worker finish the checkpoint a reclaim notice asked for.

    A drain (the termination handler's, Karpenter's) evicts the pods right after tainting the
    node, and ``ray start`` stops Ray at once on SIGTERM: the grace period alone would not
    keep the training task alive. So a preStop hook (which runs before SIGTERM, within the
    grace) waits up to :data:`PRESTOP_NOTICE_WAIT_SECONDS` for the runtime to mark a notice
    checkpoint as pending, then while it is pending, and returns at once when there is none to
    wait for; every pod deletion costs at most that first wait.
    """
    wait = min(PRESTOP_NOTICE_WAIT_SECONDS, max(grace - 10, 0))
    pending = NOTICE_PENDING_FILE
    script = (
        f"i=0; while [ ! -e {pending} ] && [ $i -lt {wait} ]; do sleep 1; i=$((i+1)); done; "
        f"while [ -e {pending} ] && [ $i -lt {max(grace - 5, 0)} ]; do sleep 1; i=$((i+1)); done"
    )
    spec = template["spec"]
    spec["terminationGracePeriodSeconds"] = grace
    for container in spec["containers"]:
        container["lifecycle"] = {"preStop": {"exec": {"command": ["/bin/sh", "-c", script]}}}


def namespace_of(tj: TrainingJob) -> str:
    """The resource's namespace (``default`` for a file that names none, as kubectl does)."""
    return tj.metadata.namespace or DEFAULT_NAMESPACE


def needs_checkpoints(tj: TrainingJob) -> bool:
    """Whether any worker group may run on spot capacity (a preempted attempt must resume)."""
    return any(w.capacity != "OnDemand" for w in tj.spec.workers)


def checkpoint_uri(tj: TrainingJob, config: OperatorConfig, uid: str | None) -> str | None:
    """Where this TrainingJob's attempts checkpoint: its own folder, scoped by its uid.

    ``<checkpoint.uri>/<uid>``, else ``<base>/<namespace>/<name>/<uid>`` under the operator's
    checkpoint base, else None (no checkpoints). Why the uid: a TrainingJob deleted and
    applied again (an Argo CD replace) or a drift retraining from the same template keeps its
    name and ``checkpoint.uri`` but gets a new uid; without it, attempt 1 would resume the old
    job's final step, train nothing and register the old weights as a new version. All
    attempts of one uid share the folder, so attempt 2..n resume attempt 1's progress.
    ``uid`` None (``mlplane render`` of a file) shows the placeholder ``<uid>``.
    """
    scope = uid or "<uid>"
    checkpoint = tj.spec.checkpoint
    if checkpoint is not None and checkpoint.uri:
        return f"{checkpoint.uri.rstrip('/')}/{scope}"
    base = config.checkpoint_base
    if base:
        return f"{base}/{namespace_of(tj)}/{tj.metadata.name}/{scope}"
    return None


def missing_checkpoint_location(tj: TrainingJob, config: OperatorConfig) -> str | None:
    """Why a job cannot run here: spot workers with nowhere to checkpoint (None when fine).

    The CRD cannot reject this on its own (it does not know the operator's configuration),
    so the operator does, naming both ways out.
    """
    if not needs_checkpoints(tj) or checkpoint_uri(tj, config, None) is not None:
        return None
    return (
        "not set, and this operator has no default checkpoint location: a worker group uses "
        "Spot or SpotWithFallback capacity, so a preempted attempt needs checkpoints to resume "
        "from. Set spec.checkpoint.uri, or configure the operator's default base (chart value "
        f"{CHECKPOINT_BASE_CHART_VALUE}, environment variable {CHECKPOINT_BASE_VARIABLE}; "
        "operator.artifactsUri also works: its /checkpoints is used)"
    )


def config_problems(resource: Resource, config: OperatorConfig) -> list[Problem]:
    """What this operator's configuration cannot run in an otherwise valid resource.

    The handlers and the local runner add these to the API checks, so such a resource gets
    the ``InvalidSpec`` condition like any invalid one, and a change of spec or configuration
    (an operator restart re-assesses every object) lifts it.
    """
    if isinstance(resource, TrainingJob):
        missing = missing_checkpoint_location(resource, config)
        if missing is not None:
            return [Problem("spec.checkpoint.uri", missing)]
    return []


def training_env(
    tj: TrainingJob,
    attempt: int,
    config: OperatorConfig,
    *,
    run_id: str | None,
    owner_uid: str | None,
    checkpoint_env: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The variables the training runtime reads (they override the user's of the same name).

    ``checkpoint_env``: the checkpoint interval variables the reconcile computed for this
    attempt (``reconcile/trainingjob.py``: ``spec.checkpoint.interval`` with C and M).
    """
    env = {
        ENV_ATTEMPT: str(attempt),
        ENV_MAX_WORKER_FAILURES: str(tj.spec.preemption.max_worker_failures),
        ENV_TRACKING_URI: tj.spec.mlflow.tracking_uri or config.mlflow_tracking_uri,
        ENV_EXPERIMENT: tj.spec.mlflow.experiment or f"{namespace_of(tj)}/{tj.metadata.name}",
        ENV_TRAININGJOB: f"{namespace_of(tj)}/{tj.metadata.name}",
        ENV_CHECKPOINT_KEEP: str(tj.spec.checkpoint.keep if tj.spec.checkpoint else 3),
    }
    uri = checkpoint_uri(tj, config, owner_uid)
    if uri:
        env[ENV_CHECKPOINT_URI] = uri
    if tj.spec.checkpoint is not None and tj.spec.checkpoint.resume_from:
        env[ENV_RESUME_FROM] = tj.spec.checkpoint.resume_from
    if run_id:
        env[ENV_RUN_ID] = run_id
    if owner_uid:
        env[ENV_TRAININGJOB_UID] = owner_uid
    env.update(checkpoint_env or {})
    return env


def runtime_env(
    tj: TrainingJob,
    attempt: int,
    config: OperatorConfig,
    *,
    run_id: str | None,
    owner_uid: str | None,
    checkpoint_env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The user's ``runtimeEnv`` with mlplane's variables added to ``env_vars``."""
    user = dict(tj.spec.runtime_env or {})
    user_vars = user.get("env_vars") or {}
    if not isinstance(user_vars, dict):
        raise ValueError("spec.runtimeEnv.env_vars must be a mapping of names to strings")
    env: dict[str, str] = {}
    for name, value in user_vars.items():
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValueError(
                f"spec.runtimeEnv.env_vars.{name} must be a string (got {type(value).__name__})"
            )
        env[str(name)] = str(value)
    env.update(training_env(tj, attempt, config, run_id=run_id, owner_uid=owner_uid,
                            checkpoint_env=checkpoint_env))  # fmt: skip
    user["env_vars"] = dict(sorted(env.items()))
    return user


def _bounds(group: WorkerGroup, autoscaling: bool) -> tuple[int, int]:
    if not autoscaling:
        return group.replicas, group.replicas
    low = group.min_replicas if group.min_replicas is not None else group.replicas
    high = group.max_replicas if group.max_replicas is not None else group.replicas
    return low, high


def _check_kueue(tj: TrainingJob) -> None:
    if len(tj.spec.workers) > KUEUE_MAX_WORKER_GROUPS:
        raise ValueError(
            f"with queueName, at most {KUEUE_MAX_WORKER_GROUPS} worker groups: Kueue admits a "
            f"RayJob as at most 8 pod sets, one of them the head (got {len(tj.spec.workers)})"
        )
    if any(w.name == "head" for w in tj.spec.workers):
        raise ValueError("with queueName, no worker group may be named 'head' (Kueue reserves it)")


def _rayjob(
    tj: TrainingJob,
    attempt: int,
    capacity: AttemptCapacity,
    config: OperatorConfig,
    *,
    run_id: str | None,
    owner_uid: str | None,
    checkpoint_env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    if capacity not in ("OnDemand", "Spot"):
        raise ValueError(f"an attempt's capacity is OnDemand or Spot (got {capacity!r})")
    spec = tj.spec
    name = str(tj.metadata.name)
    if (missing := missing_checkpoint_location(tj, config)) is not None:
        raise ValueError(f"spec.checkpoint.uri: {missing}")
    queued = spec.queue_name is not None
    if queued:
        _check_kueue(tj)
    autoscaling = not queued and any(
        w.min_replicas is not None or w.max_replicas is not None for w in spec.workers
    )
    labels = lbl.trainingjob_labels(name, attempt, capacity)
    image = spec.image or config.default_training_image
    conv = config.capacity_labels

    workers = []
    for group in spec.workers:
        low, high = _bounds(group, autoscaling)
        placement = place(
            conv,
            worker_capacity(group, capacity),
            accelerator=group.accelerator,
            gpus=group.resources.gpu,
            node_selector=spec.node_selector,
            tolerations=spec.tolerations,
        )
        container = ray_container(
            WORKER_CONTAINER,
            image,
            cpu=group.resources.cpu,
            memory=group.resources.memory,
            gpus=group.resources.gpu,
        )
        template = pod_template(labels, container, placement, config.training_service_account)
        if worker_capacity(group, capacity) == "Spot":
            notice_grace(template, spot_grace_seconds(tj, config))
        workers.append(
            {
                "groupName": group.name,
                "replicas": int32(group.replicas, f"workers[{group.name}].replicas"),
                "minReplicas": int32(low, f"workers[{group.name}].minReplicas"),
                "maxReplicas": int32(high, f"workers[{group.name}].maxReplicas"),
                "rayStartParams": {},
                "template": template,
            }
        )
    has_worker_capacity = any(w["maxReplicas"] > 0 for w in workers)
    head = {
        "rayStartParams": {"num-cpus": "0"} if has_worker_capacity else {},
        "template": pod_template(
            labels,
            ray_container(
                HEAD_CONTAINER,
                image,
                cpu=spec.head.resources.cpu,
                memory=spec.head.resources.memory,
            ),
            head_placement(conv, node_selector=spec.node_selector, tolerations=spec.tolerations),
            config.training_service_account,
        ),
    }
    metadata_labels = dict(labels)
    if queued:
        metadata_labels[lbl.KUEUE_QUEUE] = str(spec.queue_name)
    metadata: dict[str, Any] = {
        "name": lbl.rayjob_name(name, attempt),
        "namespace": namespace_of(tj),
        "labels": metadata_labels,
    }
    if owner_uid is not None:
        metadata["ownerReferences"] = [lbl.owner_reference("TrainingJob", name, owner_uid)]
    job_spec: dict[str, Any] = {
        "entrypoint": spec.entrypoint,
        "runtimeEnvYAML": yaml.safe_dump(
            runtime_env(
                tj,
                attempt,
                config,
                run_id=run_id,
                owner_uid=owner_uid,
                checkpoint_env=checkpoint_env,
            ),
            sort_keys=True,
            default_flow_style=False,
        ),
        "submissionMode": SUBMISSION_MODE,
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": int32(
            spec.ttl_seconds_after_finished or 0, "ttlSecondsAfterFinished"
        ),
        "backoffLimit": 0,
        "suspend": spec.suspend or queued,
        "rayClusterSpec": {
            "rayVersion": RAY_VERSION,
            "authOptions": auth_options(name),
            "enableInTreeAutoscaling": autoscaling,
            "headGroupSpec": head,
            "workerGroupSpecs": workers,
        },
    }
    if autoscaling:
        job_spec["rayClusterSpec"]["autoscalerOptions"] = autoscaler_options()
    if spec.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = int32(
            spec.active_deadline_seconds, "activeDeadlineSeconds"
        )
    return {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": metadata, "spec": job_spec}


def build_rayjob(
    tj: TrainingJob,
    attempt: int,
    capacity: AttemptCapacity,
    config: OperatorConfig,
    *,
    run_id: str | None,
    owner_uid: str,
    checkpoint_env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The RayJob of attempt ``attempt`` (from 1) of a validated TrainingJob.

    ``capacity`` is the attempt's: ``Spot`` puts spot-capable worker groups on spot nodes,
    ``OnDemand`` moves ``SpotWithFallback`` groups to on-demand. ``run_id`` is the MLflow run
    shared by all attempts once known; ``owner_uid`` the TrainingJob's ``metadata.uid``;
    ``checkpoint_env`` the attempt's checkpoint interval variables (see :func:`training_env`).

    Raises ``ValueError`` (including ``PlacementConflict``) for a spec KubeRay or Kueue would
    reject: a permanent error, not worth retrying.
    """
    return _rayjob(tj, attempt, capacity, config, run_id=run_id, owner_uid=owner_uid,
                   checkpoint_env=checkpoint_env)  # fmt: skip
