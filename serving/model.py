"""The model server: one registered MLflow model version, swapped in place on a version change.

:class:`ModelCore` is the logic of a ``model-<i>`` Serve deployment (``app.ModelServer`` is the
thin Serve class around it):

- **Loading** (``models:/<name>/<version>`` as an MLflow pyfunc) happens in ``reconfigure`` with
  the deployment's user_config ``{model_uri, version}``, in a worker thread, while the replica
  keeps answering with the model it already has. Only when the new model is loaded is it
  published, by one attribute assignment; every request reads that attribute once, so a request
  is served start to finish by one version and reports that version. This is what makes moving an
  alias a zero-downtime, in-place update (Serve calls ``reconfigure`` on the running replicas
  and keeps routing to them meanwhile).
- **Only allowed serialisations load** (:mod:`mlplane.serving.flavors`): the model's files are
  downloaded first, its ``MLmodel`` flavors are checked against the app's ``model_policy``, and
  only then is it loaded from that same local copy (so what was checked is what loads). A
  refused model raises :class:`UnsafeModelError` before any of its code could run; like any
  failed load, it leaves a serving replica on its previous model.
- **A failed load keeps the old model** serving and is reported (``info()['loadError']``,
  ``GET /v1/models``). Raising instead would make Serve replace the replica with one that fails
  the same way — downtime for a registry hiccup. Only a replica that has no model at all (its
  first load) raises, so Serve retries it and the deployment reports the failure.
- **Predicting** checks each request against the model's signature
  (:func:`mlplane.serving.inputs.to_frame`): bad input is a 4xx answer naming the column, never
  an exception. Requests of a batch (``@serve.batch``) are validated one by one, predicted in
  one call, and split back; if the joint call fails the requests are retried one by one so one
  bad request cannot fail its neighbours.
- Errors raised by the model on checked input: ``MlflowException`` (its schema enforcement),
  ``ValueError``, ``TypeError`` and ``KeyError`` mean the model refused this input (422 with the
  model's message); anything else is the model's fault (500). Neither kills the replica.
"""

from __future__ import annotations

import functools
import logging
import math
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mlplane.serving.config import ConfigError, ModelConfig
from mlplane.serving.flavors import ModelPolicy
from mlplane.serving.inputs import InputError, InputSchema, to_frame

__all__ = [
    "LoadedModel",
    "ModelCore",
    "UnsafeModelError",
    "load_mlflow_model",
    "predict_items",
    "to_jsonable",
]

log = logging.getLogger("mlplane.serving.model")

#: One prediction request as the router sends it: (columns, number of rows).
Item = tuple[dict[str, list[Any]], int]
_MESSAGE_LIMIT = 500


@dataclass(frozen=True)
class LoadedModel:
    uri: str
    version: int
    model: Any  # has .predict(DataFrame)
    schema: InputSchema
    loaded_at: float
    #: The local copy of the model's files, removed when this version is swapped out.
    files: str | None = None

    def discard(self) -> None:
        """Remove the downloaded copy: once swapped out, nothing reads it again."""
        if self.files:
            shutil.rmtree(self.files, ignore_errors=True)


class UnsafeModelError(RuntimeError):
    """The model's serialisation is not allowed by the app's ``model_policy``."""


def load_mlflow_model(
    tracking_uri: str, config: ModelConfig, policy: ModelPolicy | None = None
) -> LoadedModel:
    """Load ``config.model_uri`` as a pyfunc model if ``policy`` allows its flavors (blocking).

    The files are downloaded once; the ``MLmodel`` of that copy is checked and that copy is
    loaded, so a registry changed between the check and the load cannot slip code in. A
    refused or failed load removes its copy; a loaded one is removed by :meth:`LoadedModel.discard`
    when the version is swapped out (a replica follows many alias moves: copies must not pile up).
    """
    import mlflow  # lazy: the router and the tests of the pure parts need no MLflow

    policy = policy or ModelPolicy()
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)  # models:/ URIs resolve through the registry URI
    folder = tempfile.mkdtemp(prefix="mlplane-model-")
    try:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=config.model_uri, dst_path=folder, tracking_uri=tracking_uri
        )
        try:
            flavors = (yaml.safe_load((Path(local) / "MLmodel").read_text()) or {}).get("flavors")
        except (OSError, yaml.YAMLError, AttributeError):
            flavors = None
        refused = policy.refusal(flavors)
        if refused is not None:
            raise UnsafeModelError(f"{config.model_uri} refused: {refused}")
        model = mlflow.pyfunc.load_model(local)
        schema = InputSchema.from_mlflow(model.metadata.get_input_schema())
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return LoadedModel(config.model_uri, config.version, model, schema, time.time(), folder)


def _refused(exc: BaseException) -> bool:
    """Did the model refuse the input (client error) rather than fail (server error)?"""
    if isinstance(exc, ValueError | TypeError | KeyError):
        return True
    return type(exc).__name__ == "MlflowException"


def _message(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    return first[:_MESSAGE_LIMIT]


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


def to_jsonable(output: Any) -> list[Any]:
    """A model's output for a frame → a JSON-ready list, one entry per row."""
    if hasattr(output, "to_dict") and hasattr(output, "columns"):  # DataFrame
        return _finite(output.to_dict(orient="records"))
    if hasattr(output, "tolist"):  # numpy array or pandas Series
        return _finite(output.tolist())
    if isinstance(output, list | tuple):
        return _finite(list(output))
    raise TypeError(f"cannot serialise model output of type {type(output).__name__}")


def _slice(output: Any, start: int, stop: int) -> Any:
    if hasattr(output, "iloc"):
        return output.iloc[start:stop]
    return output[start:stop]


def _length(output: Any) -> int | None:
    try:
        return len(output)
    except TypeError:
        return None


def _answer(loaded: LoadedModel, predictions: list[Any]) -> dict[str, Any]:
    return {"status": 200, "predictions": predictions, "version": loaded.version}


def _failure(loaded: LoadedModel, exc: BaseException) -> dict[str, Any]:
    if _refused(exc):
        return {
            "status": 422,
            "error": f"the model refused the input: {_message(exc)}",
            "version": loaded.version,
        }
    log.error("model %s failed: %r", loaded.uri, exc)
    return {
        "status": 500,
        "error": f"the model failed: {type(exc).__name__}: {_message(exc)}",
        "version": loaded.version,
    }


def _predict_one(loaded: LoadedModel, frame: Any) -> dict[str, Any]:
    try:
        return _answer(loaded, to_jsonable(loaded.model.predict(frame)))
    except Exception as exc:
        return _failure(loaded, exc)


def predict_items(loaded: LoadedModel, items: Sequence[Item]) -> list[dict[str, Any]]:
    """Answers for a batch of requests, all by the same loaded model (see the module doc)."""
    import pandas as pd

    results: list[dict[str, Any] | None] = [None] * len(items)
    frames: list[tuple[int, Any]] = []
    for i, (columns, n_rows) in enumerate(items):
        try:
            frames.append((i, to_frame(columns, n_rows, loaded.schema)))
        except InputError as exc:
            results[i] = {"status": exc.status, "error": exc.message, "version": loaded.version}
    if len(frames) == 1:
        i, frame = frames[0]
        results[i] = _predict_one(loaded, frame)
    elif frames:
        joint = pd.concat([f for _, f in frames], ignore_index=True)
        try:
            output = loaded.model.predict(joint)
            if _length(output) != len(joint):
                raise ValueError("the model returned a different number of rows")
            start = 0
            for i, frame in frames:
                stop = start + len(frame)
                results[i] = _answer(loaded, to_jsonable(_slice(output, start, stop)))
                start = stop
        except Exception:
            for i, frame in frames:  # isolate the culprit
                results[i] = _predict_one(loaded, frame)
    return [r for r in results if r is not None]


class ModelCore:
    """Holds the current model and swaps it atomically (see the module doc)."""

    def __init__(
        self,
        tracking_uri: str,
        loader: Callable[[str, ModelConfig], LoadedModel] | None = None,
        policy: ModelPolicy | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        self._loader = loader or functools.partial(
            load_mlflow_model, policy=policy or ModelPolicy()
        )
        self.loaded: LoadedModel | None = None
        self.desired: ModelConfig | None = None
        self.load_error: str | None = None
        self._load_lock = threading.Lock()
        self._retired: LoadedModel | None = None

    def reconfigure(self, user_config: Any) -> None:
        """Load the configured version, then publish it (blocking: run it in a thread)."""
        try:
            config = ModelConfig.parse(user_config)
        except ConfigError as exc:
            if self.loaded is None:
                raise
            self.load_error = f"user_config refused: {exc}"
            log.error("%s; still serving %s", self.load_error, self.loaded.uri)
            return
        self.desired = config
        with self._load_lock:  # one load at a time; the last configuration wins
            current = self.loaded
            if self.desired != config:  # superseded while waiting for the lock
                return
            if current is not None and current.uri == config.model_uri:
                self.load_error = None
                return
            try:
                loaded = self._loader(self.tracking_uri, config)
            except Exception as exc:
                self.load_error = f"loading {config.model_uri} failed: {_message(exc)}"
                if current is None:
                    raise
                log.error("%s; still serving %s", self.load_error, current.uri)
                return
            if self.desired != config:  # superseded while loading: never served
                loaded.discard()
                return
            self.loaded = loaded
            self.load_error = None
            log.info("now serving %s", config.model_uri)
            # The version before the previous one goes: a request still holding the previous
            # version (a model that reads its files lazily) finishes on files that exist.
            if self._retired is not None:
                self._retired.discard()
            self._retired = current

    def predict(self, items: Sequence[Item]) -> list[dict[str, Any]]:
        loaded = self.loaded  # read once: the whole batch is served by one version
        if loaded is None:
            return [{"status": 503, "error": "no model loaded yet", "version": None} for _ in items]
        return predict_items(loaded, items)

    def info(self) -> dict[str, Any]:
        loaded = self.loaded
        return {
            "version": loaded.version if loaded else None,
            "modelUri": loaded.uri if loaded else None,
            "loadedAt": loaded.loaded_at if loaded else None,
            "desiredVersion": self.desired.version if self.desired else None,
            "loadError": self.load_error,
            "schema": loaded.schema.to_dict() if loaded else None,
        }
