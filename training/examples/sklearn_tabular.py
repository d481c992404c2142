"""A churn classifier (scikit-learn) trained in checkpointed steps; survives losing its node.

Run it by hand (a fresh MLflow run, no checkpoints unless ``MLPLANE_CHECKPOINT_URI`` is set)::

    python -m mlplane.training.examples.sklearn_tabular --steps 200 --checkpoint-every 20

or as a TrainingJob's entrypoint, where the operator's variables make it resume the
TrainingJob's MLflow run and its own newest checkpoint. With ``spec.checkpoint.resumeFrom``
(``MLPLANE_RESUME_FROM``) a job that has no checkpoint of its own yet starts from that
checkpoint's model and trains its full ``--steps`` from there (a warm start).

How it trains: a ``ColumnTransformer`` (scaling, one-hot) is fitted once on the training frame,
then an ``SGDClassifier`` (logistic loss) learns from one mini-batch per step with
``partial_fit``. Step ``s`` always draws the same mini-batch (its generator is seeded with
``(seed, s)``), so resuming from a checkpoint at step ``k`` replays exactly what an
uninterrupted run would have done from ``k + 1``: work lost to a preemption is bounded by the
checkpoint interval and the result does not depend on where it was cut.

Where it trains: inside a Ray job (``RAY_ADDRESS`` set, as the Ray Jobs API does for an
entrypoint) the loop runs as one Ray task asking for ``--cpus`` and the resources in
``MLPLANE_WORKER_RESOURCES`` (``{"spot": 0.1}`` keeps it on spot workers and off the head). If
that node dies, Ray retries the task (``max_retries`` = ``MLPLANE_MAX_WORKER_FAILURES``) on
another node, where it resumes from the newest checkpoint; a bug in the loop (a Python
exception) is not retried. The driver, on the on-demand head, logs the model and the
reference profile at the end. Without Ray (``--no-ray``, or no ``RAY_ADDRESS``) the loop runs
in-process.

``--step-seconds`` slows every step down so that tests and demos can interrupt a run while it
is mid-way (wait for the ``mlplane.checkpoint.step`` tag, then kill). ``--crash-at-step`` makes
the process running the loop exit abruptly at that step, once: only when the loop did not
start from a checkpoint (so set it above ``--checkpoint-every``), to show a retry resuming.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import pickle
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import SGDClassifier
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from mlplane.training.failure import exit_code
from mlplane.training.runtime import TrainingSession

log = logging.getLogger("mlplane.training.examples.sklearn_tabular")

NUMERIC = ["tenure_months", "monthly_spend", "support_calls", "age"]
CATEGORICAL = ["plan", "region"]
FEATURES = NUMERIC + CATEGORICAL
LABEL = "churned"
MODEL_FILE = "model.pkl"
CLASSES = np.array([0, 1])


@dataclass(frozen=True)
class Config:
    steps: int = 100
    checkpoint_every: int = 10
    step_seconds: float = 0.0
    rows: int = 2000
    batch_size: int = 64
    validation_fraction: float = 0.2
    alpha: float = 1e-4
    eta0: float = 0.1
    seed: int = 7
    crash_at_step: int = 0


def make_data(rows: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Customers with a churn label from a known logistic model (deterministic per seed)."""
    rng = np.random.default_rng(seed)
    plan = rng.choice(["basic", "standard", "premium"], rows, p=[0.5, 0.3, 0.2])
    region = rng.choice(["eu", "us", "apac"], rows, p=[0.4, 0.4, 0.2])
    frame = pd.DataFrame(
        {
            # Counts as floats: an integer column in the signature rejects a missing value
            # (JSON null) at serving time, a float column takes it as NaN.
            "tenure_months": rng.integers(1, 73, rows).astype(np.float64),
            "monthly_spend": rng.gamma(2.0, 35.0, rows).round(2),
            "support_calls": rng.poisson(1.5, rows).astype(np.float64),
            "age": rng.normal(42.0, 12.0, rows).clip(18, 90).round(),
            "plan": plan,
            "region": region,
        }
    )
    plan_effect = pd.Series(plan).map({"basic": 0.6, "standard": 0.0, "premium": -0.5}).to_numpy()
    region_effect = pd.Series(region).map({"eu": -0.2, "us": 0.1, "apac": 0.3}).to_numpy()
    logit = (
        -0.2
        - 0.045 * frame["tenure_months"].to_numpy()
        + 0.012 * frame["monthly_spend"].to_numpy()
        + 0.55 * frame["support_calls"].to_numpy()
        - 0.015 * (frame["age"].to_numpy() - 42.0)
        + plan_effect
        + region_effect
    )
    label = (rng.random(rows) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)
    return frame, label


def split(
    frame: pd.DataFrame, label: np.ndarray, fraction: float, seed: int
) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame, np.ndarray]:
    """Deterministic train/validation split."""
    order = np.random.default_rng([seed, 1]).permutation(len(frame))
    n_val = max(1, int(len(frame) * fraction))
    val, train = order[:n_val], order[n_val:]
    return (
        frame.iloc[train].reset_index(drop=True),
        label[train],
        frame.iloc[val].reset_index(drop=True),
        label[val],
    )


def new_model(train: pd.DataFrame, config: Config) -> Pipeline:
    """The pipeline with its preprocessing fitted and an untrained classifier."""
    prep = ColumnTransformer(
        [
            ("num", StandardScaler(), NUMERIC),
            ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), CATEGORICAL),
        ]
    )
    prep.fit(train[FEATURES])
    # Decaying steps (eta0 / t**0.3): fast progress early, little noise late. The decay's clock
    # (t_) lives in the pickled classifier, so a resumed run continues the same schedule.
    clf = SGDClassifier(
        loss="log_loss",
        alpha=config.alpha,
        learning_rate="invscaling",
        eta0=config.eta0,
        power_t=0.3,
        random_state=config.seed,
    )
    return Pipeline([("prep", prep), ("clf", clf)])


def batch(step: int, n: int, config: Config) -> np.ndarray:
    """Row indices of step ``step``'s mini-batch: a function of (seed, step) only."""
    rng = np.random.default_rng([config.seed, 2, step])
    return rng.choice(n, size=min(config.batch_size, n), replace=False)


def train(session: TrainingSession, config: Config) -> Pipeline:
    """The training loop: resume, one ``partial_fit`` per step, report, checkpoint every K."""
    frame, label = make_data(config.rows, config.seed)
    x_train, y_train, x_val, y_val = split(frame, label, config.validation_fraction, config.seed)

    restored = session.restore()
    if restored is not None:
        model: Pipeline = pickle.loads(restored.files[MODEL_FILE])
        # A warm start (another job's checkpoint) gives the weights, then the full schedule.
        start = 0 if restored.warm_start else restored.step
    else:
        model, start = new_model(x_train, config), 0
    prep, clf = model.named_steps["prep"], model.named_steps["clf"]
    xt_train, xt_val = prep.transform(x_train[FEATURES]), prep.transform(x_val[FEATURES])

    for step in range(start + 1, config.steps + 1):
        idx = batch(step, len(xt_train), config)
        clf.partial_fit(xt_train[idx], y_train[idx], classes=CLASSES)
        proba = clf.predict_proba(xt_val)[:, 1]
        session.report(
            step,
            {
                "val_log_loss": log_loss(y_val, proba, labels=CLASSES),
                "val_accuracy": accuracy_score(y_val, proba >= 0.5),
                "train_batch_log_loss": log_loss(
                    y_train[idx], clf.predict_proba(xt_train[idx])[:, 1], labels=CLASSES
                ),
            },
        )
        if config.crash_at_step == step and (restored is None or restored.warm_start):
            log.error("--crash-at-step %d: exiting abruptly", step)
            os._exit(17)
        # spec.checkpoint.interval (a duration or Auto) when the job sets one, else every K.
        due = (
            session.checkpoint_due(step, last_step=config.steps)
            if session.checkpoint_interval is not None
            else session.due(step, config.checkpoint_every, last_step=config.steps)
            or session.notice_due()  # a reclaim notice: checkpoint now
        )
        if due:
            session.checkpoint(
                step, {MODEL_FILE: pickle.dumps(model)}, metadata={"rows": config.rows}
            )
        if config.step_seconds > 0:
            time.sleep(config.step_seconds)
    return model


def train_on_ray(session: TrainingSession, config: Config, cpus: float) -> Pipeline:
    """Run :func:`train` as one Ray task, retried on node loss, pinned by worker resources."""
    import ray

    if not ray.is_initialized():
        ray.init(log_to_driver=True)
    ctx = session.context
    task = ray.remote(train).options(
        num_cpus=cpus,
        resources=dict(ctx.worker_resources) or None,
        max_retries=ctx.max_worker_failures,
        retry_exceptions=False,
        name="mlplane-sklearn-train",
    )
    return ray.get(task.remote(session, config))


def log_results(session: TrainingSession, model: Pipeline, config: Config) -> dict[str, float]:
    """Final metrics, the model (with signature and example) and the reference profile."""
    import mlflow.sklearn
    import sklearn

    frame, label = make_data(config.rows, config.seed)
    x_train, _, x_val, y_val = split(frame, label, config.validation_fraction, config.seed)
    proba = model.predict_proba(x_val[FEATURES])[:, 1]
    final = {
        "final_val_accuracy": float(accuracy_score(y_val, proba >= 0.5)),
        "final_val_roc_auc": float(roc_auc_score(y_val, proba)),
        "final_val_log_loss": float(log_loss(y_val, proba, labels=CLASSES)),
    }
    session.report(config.steps, final)
    session.log_model(
        mlflow.sklearn,
        model,
        input_example=x_train[FEATURES].head(5),
        pip_requirements=[
            f"scikit-learn=={sklearn.__version__}",
            f"pandas=={pd.__version__}",
            f"numpy=={np.__version__}",
        ],
    )
    session.log_reference_profile(x_train[FEATURES], metadata={"model": "sklearn_tabular"})
    return final


def parse_args(argv: Sequence[str] | None) -> tuple[Config, argparse.Namespace]:
    d = Config()
    p = argparse.ArgumentParser(
        prog="python -m mlplane.training.examples.sklearn_tabular",
        description="Train a churn classifier in checkpointed steps (generated data).",
    )
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    p.add_argument("--step-seconds", type=float, default=d.step_seconds)
    p.add_argument("--rows", type=int, default=d.rows)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--alpha", type=float, default=d.alpha)
    p.add_argument("--eta0", type=float, default=d.eta0, help="initial learning rate")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--crash-at-step", type=int, default=0, help="fault injection (see docs)")
    p.add_argument("--cpus", type=float, default=0.5, help="CPUs of the Ray task")
    ray_group = p.add_mutually_exclusive_group()
    ray_group.add_argument("--ray", dest="ray", action="store_true", default=None)
    ray_group.add_argument("--no-ray", dest="ray", action="store_false")
    args = p.parse_args(argv)
    if args.steps < 1 or args.checkpoint_every < 0 or args.rows < 10 or args.batch_size < 1:
        p.error("need --steps >= 1, --checkpoint-every >= 0, --rows >= 10, --batch-size >= 1")
    config = Config(
        steps=args.steps,
        checkpoint_every=args.checkpoint_every,
        step_seconds=args.step_seconds,
        rows=args.rows,
        batch_size=args.batch_size,
        alpha=args.alpha,
        eta0=args.eta0,
        seed=args.seed,
        crash_at_step=args.crash_at_step,
    )
    return config, args


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    config, args = parse_args(argv)
    use_ray = args.ray if args.ray is not None else bool(os.environ.get("RAY_ADDRESS"))
    params: dict[str, Any] = {k: v for k, v in asdict(config).items() if k != "crash_at_step"}
    session = TrainingSession.start(params={"example": "sklearn_tabular", **params})
    log.info("MLflow run %s, attempt %d", session.run_id, session.context.attempt)
    try:
        model = train_on_ray(session, config, args.cpus) if use_ray else train(session, config)
        final = log_results(session, model, config)
    except BaseException:
        with contextlib.suppress(Exception):  # keep the training error, not MLflow's
            session.finish("FAILED")
        raise
    session.finish()
    log.info("done: %s", final)
    return 0


if __name__ == "__main__":
    sys.exit(exit_code(main))  # an MLflow/S3 outage spends no backoffLimit
