"""A PyTorch MLP trained data-parallel with Ray Train; resumes after worker loss and per attempt.

    python -m mlplane.training.examples.torch_mlp --steps 60 --checkpoint-every 10

Inside a Ray job it joins the cluster (``RAY_ADDRESS``); run by hand it starts a local Ray.
``TorchTrainer`` runs ``--num-workers`` workers (default ``MLPLANE_NUM_WORKERS`` or 2), each
asking for ``--cpus-per-worker`` CPUs (default 0.5), a GPU with ``--gpu`` /
``MLPLANE_USE_GPU=true``, and the resources in ``MLPLANE_WORKER_RESOURCES``. DDP averages the
gradients (gloo on CPU, NCCL on GPU).

Resume, both kinds (see :mod:`mlplane.training.ray_train`): every ``--checkpoint-every`` steps
rank 0 reports a checkpoint (model, optimizer, step); each (re)start of the loop asks
``ray.train.get_checkpoint()``, which after a worker loss returns the newest checkpoint of this
attempt and in a new attempt the newest one of the previous attempts (same storage path and run
name). Each step's mini-batch is a function of (seed, step, rank), so a resumed run repeats
exactly the steps after its checkpoint. With ``spec.checkpoint.resumeFrom`` (a checkpoint
another run reported) a run without checkpoints of its own starts from those weights and
trains its full ``--steps`` (a warm start).

The logged model is ``nn.Sequential(normalise, MLP, Sigmoid)`` built from torch's own layers
only: the pickled model loads with torch alone (no mlplane code in the serving image), takes
the raw features as a DataFrame and returns the churn probability. The signature names the
columns, which the drift tap and the reference profile share.

``--step-seconds`` and ``--crash-at-step`` are for demos and tests: the first slows steps down,
the second makes the last rank exit abruptly at that step (once: only when the loop did not
start from a checkpoint), which Ray Train answers by restarting the workers from the newest
checkpoint while ``MLPLANE_MAX_WORKER_FAILURES`` allows.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from mlplane.training.checkpoints import step_dir
from mlplane.training.failure import exit_code
from mlplane.training.mlflow_run import RunReporter
from mlplane.training.runtime import TAG_WARM_START_STEP, TAG_WARM_START_URI, TrainingSession

log = logging.getLogger("mlplane.training.examples.torch_mlp")

N_FEATURES = 8
FEATURES = [f"x{i}" for i in range(N_FEATURES)]
STATE_FILE = "state.pt"


@dataclass(frozen=True)
class Config:
    steps: int = 60
    checkpoint_every: int = 10
    step_seconds: float = 0.0
    rows: int = 4000
    batch_size: int = 128
    hidden: int = 32
    lr: float = 0.01
    validation_fraction: float = 0.2
    seed: int = 11
    crash_at_step: int = 0


def make_data(rows: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Features with a non-linear decision boundary (an MLP beats a linear model on it)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, N_FEATURES))
    x[:, 4] = rng.uniform(0.0, 10.0, rows)  # a feature on another scale: tests normalisation
    score = (
        x[:, 0] * x[:, 1]
        + np.sin(2.0 * x[:, 2])
        + 0.5 * x[:, 3] ** 2
        - 0.5
        + 0.15 * (x[:, 4] - 5.0)
        + 0.3 * rng.normal(size=rows)
    )
    return pd.DataFrame(x, columns=FEATURES), (score > 0).astype(np.int64)


def split(
    frame: pd.DataFrame, label: np.ndarray, fraction: float, seed: int
) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame, np.ndarray]:
    order = np.random.default_rng([seed, 1]).permutation(len(frame))
    n_val = max(1, int(len(frame) * fraction))
    val, train = order[:n_val], order[n_val:]
    return (
        frame.iloc[train].reset_index(drop=True),
        label[train],
        frame.iloc[val].reset_index(drop=True),
        label[val],
    )


def build_model(mean: np.ndarray, std: np.ndarray, hidden: int) -> nn.Sequential:
    """Logits model: a frozen affine layer standardising the inputs, then a 2-layer MLP."""
    norm = nn.Linear(N_FEATURES, N_FEATURES)
    with torch.no_grad():
        scale = 1.0 / np.where(std > 0, std, 1.0)
        norm.weight.copy_(torch.diag(torch.as_tensor(scale, dtype=torch.float32)))
        norm.bias.copy_(torch.as_tensor(-mean * scale, dtype=torch.float32))
    norm.requires_grad_(False)
    return nn.Sequential(
        norm,
        nn.Linear(N_FEATURES, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, 1),
    )


def probability_model(logits: nn.Sequential) -> nn.Sequential:
    """What gets logged: the logits model followed by a sigmoid, in eval mode."""
    return nn.Sequential(*logits, nn.Sigmoid()).eval()


def tensors(frame: pd.DataFrame, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        torch.tensor(frame[FEATURES].to_numpy(dtype=np.float32)),
        torch.as_tensor(label, dtype=torch.float32),
    )


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    with torch.no_grad():
        logits = model(x).squeeze(1)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, y)
        accuracy = ((logits > 0).float() == y).float().mean()
    return {"val_loss": float(loss), "val_accuracy": float(accuracy)}


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """One Ray Train worker: restore, train on its shard, report every step, checkpoint."""
    import ray.train
    import ray.train.torch

    config = Config(**loop_config["config"])
    reporter: RunReporter | None = loop_config.get("reporter")
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(config.seed)

    frame, label = make_data(config.rows, config.seed)
    x_train_df, y_train_np, x_val_df, y_val_np = split(
        frame, label, config.validation_fraction, config.seed
    )
    x_train, y_train = tensors(x_train_df, y_train_np)
    x_val, y_val = tensors(x_val_df, y_val_np)
    mean, std = x_train_df[FEATURES].mean().to_numpy(), x_train_df[FEATURES].std().to_numpy()

    model = build_model(mean, std, config.hidden)
    ddp = ray.train.torch.prepare_model(model)  # moves `model` to the device; DDP when world > 1
    device = ray.train.torch.get_device()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.lr)

    start = 0
    checkpoint = ray.train.get_checkpoint()
    # The job's own checkpoint first; else the explicit warm start (spec.checkpoint.resumeFrom).
    warm = checkpoint is None and loop_config.get("warm_start") is not None
    if warm:
        checkpoint = loop_config["warm_start"]
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        # A warm start takes the weights and trains the full --steps from them.
        start = 0 if warm else int(state["step"])
        if rank == 0 and reporter is not None:
            try:
                if warm:
                    reporter.set_tags({TAG_WARM_START_URI: checkpoint.path,
                                       TAG_WARM_START_STEP: str(int(state["step"]))})  # fmt: skip
                else:
                    reporter.resumed(start)
            except Exception as exc:
                log.warning("could not record the resume in MLflow: %s", exc)
        log.info("rank %d %s step %d", rank, "warm-started from" if warm else "resumed from",
                 int(state["step"]))  # fmt: skip

    shard = np.arange(len(x_train))[rank::world]
    x_val, y_val = x_val.to(device), y_val.to(device)
    for step in range(start + 1, config.steps + 1):
        rng = np.random.default_rng([config.seed, 2, step, rank])
        pick = rng.choice(len(shard), min(config.batch_size, len(shard)), replace=False)
        idx = torch.as_tensor(shard[pick])
        xb, yb = x_train[idx].to(device), y_train[idx].to(device)
        ddp.train()
        optimizer.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(ddp(xb).squeeze(1), yb)
        loss.backward()
        optimizer.step()

        metrics: dict[str, Any] = {"step": step, "train_loss": loss.item()}
        if rank == 0:
            model.eval()
            metrics.update(evaluate(model, x_val, y_val))
        if config.crash_at_step == step and (checkpoint is None or warm) and rank == world - 1:
            log.error("--crash-at-step %d: rank %d exiting abruptly", step, rank)
            os._exit(17)
        if TrainingSession.due(step, config.checkpoint_every, last_step=config.steps):
            with tempfile.TemporaryDirectory() as folder:
                saved = None
                if rank == 0:
                    state = {
                        "step": step,
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                    }
                    torch.save(state, Path(folder) / STATE_FILE)
                    saved = ray.train.Checkpoint.from_directory(folder)
                ray.train.report(metrics, checkpoint=saved, checkpoint_dir_name=step_dir(step))
        else:
            ray.train.report(metrics)
        if config.step_seconds > 0:
            time.sleep(config.step_seconds)


def load_trained(checkpoint: Any, config: Config) -> nn.Sequential:
    """Rebuild the logits model from a Ray Train checkpoint (on CPU)."""
    frame, label = make_data(config.rows, config.seed)
    x_train, _, _, _ = split(frame, label, config.validation_fraction, config.seed)
    model = build_model(
        x_train[FEATURES].mean().to_numpy(), x_train[FEATURES].std().to_numpy(), config.hidden
    )
    with checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    return model.eval()


def log_results(
    session: TrainingSession, logits: nn.Sequential, config: Config
) -> dict[str, float]:
    """Final metrics, the probability model (signature on named columns), the profile."""
    import mlflow.pytorch

    frame, label = make_data(config.rows, config.seed)
    x_train, _, x_val, y_val = split(frame, label, config.validation_fraction, config.seed)
    final = {f"final_{k}": v for k, v in evaluate(logits, *tensors(x_val, y_val)).items()}
    session.report(config.steps, final)
    model = probability_model(logits)

    def predict(batch: pd.DataFrame) -> np.ndarray:
        with torch.no_grad():
            return model(torch.tensor(batch[FEATURES].to_numpy(dtype=np.float32))).numpy()

    session.log_model(
        mlflow.pytorch,
        model,
        input_example=x_train[FEATURES].head(5),
        predict=predict,
        serialization_format="pickle",
        pip_requirements=[
            f"torch=={torch.__version__.split('+')[0]}",
            f"numpy=={np.__version__}",
            f"pandas=={pd.__version__}",
        ],
    )
    session.log_reference_profile(x_train[FEATURES], metadata={"model": "torch_mlp"})
    return final


def parse_args(argv: Sequence[str] | None) -> tuple[Config, argparse.Namespace]:
    d = Config()
    p = argparse.ArgumentParser(
        prog="python -m mlplane.training.examples.torch_mlp",
        description="Train an MLP with Ray Train's TorchTrainer (generated data).",
    )
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    p.add_argument("--step-seconds", type=float, default=d.step_seconds)
    p.add_argument("--rows", type=int, default=d.rows)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--hidden", type=int, default=d.hidden)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--crash-at-step", type=int, default=0, help="fault injection (see docs)")
    p.add_argument("--num-workers", type=int, default=None)
    p.add_argument("--cpus-per-worker", type=float, default=0.5)
    gpu = p.add_mutually_exclusive_group()
    gpu.add_argument("--gpu", dest="gpu", action="store_true", default=None)
    gpu.add_argument("--no-gpu", dest="gpu", action="store_false")
    args = p.parse_args(argv)
    if args.steps < 1 or args.checkpoint_every < 0 or args.rows < 20 or args.batch_size < 1:
        p.error("need --steps >= 1, --checkpoint-every >= 0, --rows >= 20, --batch-size >= 1")
    config = Config(
        steps=args.steps,
        checkpoint_every=args.checkpoint_every,
        step_seconds=args.step_seconds,
        rows=args.rows,
        batch_size=args.batch_size,
        hidden=args.hidden,
        lr=args.lr,
        seed=args.seed,
        crash_at_step=args.crash_at_step,
    )
    return config, args


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    config, args = parse_args(argv)

    import ray
    from ray.train.torch import TorchTrainer

    from mlplane.training.ray_train import run_config, scaling_config, warm_start_checkpoint

    params = {k: v for k, v in asdict(config).items() if k != "crash_at_step"}
    session = TrainingSession.start(params={"example": "torch_mlp", **params})
    ctx = session.context
    log.info("MLflow run %s, attempt %d", session.run_id, ctx.attempt)
    try:
        if not ray.is_initialized():
            ray.init(log_to_driver=True)
        scaling = scaling_config(
            ctx,
            num_workers=args.num_workers,
            use_gpu=args.gpu,
            cpus_per_worker=args.cpus_per_worker,
        )
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={
                "config": asdict(config),
                "reporter": session.reporter,
                "warm_start": warm_start_checkpoint(ctx),
            },
            scaling_config=scaling,
            run_config=run_config(ctx, session.reporter),
        )
        result = trainer.fit()
        if result.checkpoint is None:
            raise RuntimeError("Ray Train finished without a checkpoint to load the model from")
        final = log_results(session, load_trained(result.checkpoint, config), config)
    except BaseException:
        with contextlib.suppress(Exception):  # keep the training error, not MLflow's
            session.finish("FAILED")
        raise
    session.finish()
    log.info("done: %s", final)
    return 0


if __name__ == "__main__":
    sys.exit(exit_code(main))  # an MLflow/S3 outage spends no backoffLimit
