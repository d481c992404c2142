"""Which registered models may be loaded: the registry is a code boundary (pure, stdlib only).

Loading an MLflow model runs whatever its ``MLmodel`` file tells ``mlflow.pyfunc.load_model``
to run: a pickle or cloudpickle file executes code as it is read, a ``python_model`` is a
cloudpickled object, a custom ``loader_module`` or ``code`` directory is arbitrary Python. So
whoever can write the registry (or move an alias) could run code in serving. This module names
what a model's loading executes, as one *serialisation* string, and decides whether it is
allowed:

- ``sklearn:skops`` — scikit-learn saved with skops (``skops.io.load`` builds only the types on
  its trusted list; MLflow reads that list from the ``MLmodel`` file itself, so the list must
  hold only types under :data:`TRUSTED_TYPE_PREFIXES`, else it is ``sklearn:skops-untrusted``);
- ``sklearn:pickle``, ``sklearn:cloudpickle``, ``pytorch:pickle``, ... — ``<flavor>:<format>``
  for MLflow's built-in loaders (``<flavor>`` alone when the flavor names no format);
- ``onnx`` — an ONNX graph (no Python runs on load);
- ``pyfunc:python_model`` — a cloudpickled :class:`mlflow.pyfunc.PythonModel`;
- ``pyfunc:code`` — any model that ships a ``code`` directory (put on ``sys.path``);
- ``loader:<module>`` — a loader module outside MLflow;
- ``unknown`` — no readable ``python_function`` flavor.

:data:`SAFE_SERIALIZATIONS` (formats that do not execute code on load) is the default allowed
set. Anything else loads only when the deployment opts in with
``spec.model.allowUnsafeDeserialization: true``. The operator checks this before it deploys
(``ModelDeployment`` condition ``Ready=False``, reason ``UnsafeModelFlavor``), and the serving
app checks it again before it loads (defence in depth: the operator's check and the load are
apart in time).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "OPT_IN_FIELD",
    "SAFE_SERIALIZATIONS",
    "TRUSTED_TYPE_PREFIXES",
    "ModelPolicy",
    "refusal",
    "serialization_of",
]

#: Serialisations that execute no code of the model's author on load.
SAFE_SERIALIZATIONS: tuple[str, ...] = ("sklearn:skops", "onnx")
#: Types a skops model may declare trusted (scikit-learn, NumPy, SciPy themselves).
TRUSTED_TYPE_PREFIXES: tuple[str, ...] = ("sklearn.", "numpy.", "scipy.")
#: The ModelDeployment field that allows any serialisation (named in refusals).
OPT_IN_FIELD = "spec.model.allowUnsafeDeserialization"


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def serialization_of(flavors: Mapping[str, Any] | None) -> str:
    """What loading a model with these ``MLmodel`` flavors executes (see the module doc)."""
    flavors = _mapping(flavors)
    pyfunc = _mapping(flavors.get("python_function"))
    loader = pyfunc.get("loader_module")
    if not isinstance(loader, str) or not loader:
        if "python_model" in pyfunc or "cloudpickle_version" in pyfunc:
            return "pyfunc:python_model"
        return "unknown"
    if pyfunc.get("code"):
        return "pyfunc:code"
    if loader == "mlflow.pyfunc.model":
        return "pyfunc:python_model"
    if not loader.startswith("mlflow.") or loader.count(".") != 1:
        return f"loader:{loader}"
    name = loader.removeprefix("mlflow.")
    conf = _mapping(flavors.get(name))
    if name == "sklearn":
        fmt = conf.get("serialization_format") or "pickle"  # MLflow's own default when absent
        if fmt == "skops" and not _trusted(conf.get("skops_trusted_types")):
            return "sklearn:skops-untrusted"
        return f"sklearn:{fmt}"
    if name == "onnx":
        return "onnx"
    fmt = conf.get("serialization_format") or conf.get("model_format")
    return f"{name}:{fmt}" if isinstance(fmt, str) and fmt else name


def _trusted(types: Any) -> bool:
    if types is None:
        return True
    if not isinstance(types, list):
        return False
    return all(isinstance(t, str) and t.startswith(TRUSTED_TYPE_PREFIXES) for t in types)


def refusal(
    flavors: Mapping[str, Any] | None,
    allowed: Collection[str] = SAFE_SERIALIZATIONS,
    *,
    allow_unsafe: bool = False,
) -> str | None:
    """Why a model with these flavors must not be loaded (None: it may).

    ``allowed`` is the operator's allowed set; ``allow_unsafe`` the deployment's opt-in, which
    lets any serialisation load.
    """
    if allow_unsafe:
        return None
    kind = serialization_of(flavors)
    if kind in allowed:
        return None
    what = {
        "unknown": "its MLmodel file names no python_function loader",
        "sklearn:skops-untrusted": "it is skops with trusted types outside "
        + ", ".join(f"{p}*" for p in TRUSTED_TYPE_PREFIXES),
    }.get(kind, "loading it can execute code stored in the model")
    return (
        f"the model's serialisation {kind!r} is not allowed ({what}; allowed: "
        f"{', '.join(sorted(allowed)) or 'none'}): log it in an allowed format (e.g. "
        f"mlflow.sklearn.log_model(..., serialization_format='skops') or ONNX), or, if you "
        f"trust everyone who can write this registered model and its aliases, set "
        f"{OPT_IN_FIELD}: true"
    )


@dataclass(frozen=True)
class ModelPolicy:
    """What the serving app may load: the operator's allowed set and the deployment's opt-in.

    It travels in the app's args as ``model_policy: {allowed: [str], allow_unsafe: bool}``;
    absent, it is this default (closed: the safe set, no opt-in).
    """

    allowed: tuple[str, ...] = SAFE_SERIALIZATIONS
    allow_unsafe: bool = False

    def refusal(self, flavors: Mapping[str, Any] | None) -> str | None:
        """Why a model with these flavors must not be loaded (None: it may)."""
        return refusal(flavors, self.allowed, allow_unsafe=self.allow_unsafe)

    def to_args(self) -> dict[str, Any]:
        return {"allowed": list(self.allowed), "allow_unsafe": self.allow_unsafe}

    @classmethod
    def from_args(cls, value: Any) -> ModelPolicy:
        """Parse the args' ``model_policy`` (``ValueError`` naming the key when wrong)."""
        if value is None:
            return cls()
        if not isinstance(value, Mapping) or set(value) != {"allowed", "allow_unsafe"}:
            raise ValueError("args.model_policy must be {allowed: [str], allow_unsafe: bool}")
        allowed, unsafe = value["allowed"], value["allow_unsafe"]
        if not isinstance(allowed, list) or not all(isinstance(a, str) for a in allowed):
            raise ValueError("args.model_policy.allowed must be a list of strings")
        if not isinstance(unsafe, bool):
            raise ValueError("args.model_policy.allow_unsafe must be true or false")
        return cls(tuple(allowed), unsafe)
