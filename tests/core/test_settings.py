"""Every operator setting in one object, read once; documented in docs/configuration.md."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from mlplane.operator.builders import signing
from mlplane.operator.config import SETTINGS, OperatorConfig, Settings, render_doc
from mlplane.operator.platforms import local_serving

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "configuration.md"
TEMPLATES = ROOT / "helm" / "mlplane" / "templates"


class Recording(Mapping[str, str]):
    """An environment that records every variable asked for (set or not)."""

    def __init__(self, values: dict[str, str] | None = None) -> None:
        self.values = values or {}
        self.asked: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        return self.values[key]

    def get(self, key: str, default: object = None) -> object:  # type: ignore[override]
        self.asked.add(key)
        return self.values.get(key, default)

    def __contains__(self, key: object) -> bool:
        self.asked.add(str(key))
        return key in self.values

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("settings must ask for their variables by name, not list them")

    def __len__(self) -> int:
        return len(self.values)


def test_defaults_are_the_dataclass_defaults():
    assert Settings.from_env({}) == Settings()
    assert Settings().config == OperatorConfig.from_env({})
    assert Settings().signing_key_settle == signing.SETTLE_SECONDS
    assert Settings().local_replica_cpus == local_serving.REPLICA_CPUS
    assert Settings().local_max_replicas == local_serving.MAX_REPLICAS


def test_reads_every_loop_setting():
    settings = Settings.from_env({
        "MLPLANE_RECONCILE_INTERVAL": "1", "MLPLANE_RESOLVE_INTERVAL": "2.5",
        "MLPLANE_RETRY_DELAY": "3", "MLPLANE_SIGNING_KEY_SETTLE": "0",
        "MLPLANE_ABTEST_INTERVAL": "4", "MLPLANE_ABTEST_STATS_URL": "http://127.0.0.1:1",
        "MLPLANE_SERVING_URL": "https://serving.example", "MLPLANE_LOCAL_REPLICA_CPUS": "0.25",
        "MLPLANE_LOCAL_MAX_REPLICAS": "3", "MLPLANE_CAPACITY_LABELS": "gke",
        "MLPLANE_RESYNC_INTERVAL": "120", "MLPLANE_API_TIMEOUT": "7",
    })  # fmt: skip
    assert settings == Settings(
        config=OperatorConfig(capacity_labels="gke"), reconcile_interval=1.0,
        resolve_interval=2.5, retry_delay=3.0, signing_key_settle=0.0, abtest_interval=4.0,
        abtest_stats_url="http://127.0.0.1:1", serving_url="https://serving.example",
        local_replica_cpus=0.25, local_max_replicas=3, resync_interval=120.0, api_timeout=7.0,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MLPLANE_RECONCILE_INTERVAL", "fast"),
        ("MLPLANE_RECONCILE_INTERVAL", "0"),
        ("MLPLANE_RESYNC_INTERVAL", "soon"),
        ("MLPLANE_API_TIMEOUT", "0"),
        ("MLPLANE_RESOLVE_INTERVAL", "-1"),
        ("MLPLANE_RETRY_DELAY", "nan"),
        ("MLPLANE_SIGNING_KEY_SETTLE", "2m"),
        ("MLPLANE_ABTEST_INTERVAL", "0"),
        ("MLPLANE_ABTEST_STATS_URL", "127.0.0.1:8000"),
        ("MLPLANE_SERVING_URL", "ftp://x"),
        ("MLPLANE_LOCAL_REPLICA_CPUS", "none"),
        ("MLPLANE_LOCAL_MAX_REPLICAS", "1.5"),
        ("MLPLANE_LOCAL_MAX_REPLICAS", "0"),
        ("MLPLANE_CAPACITY_LABELS", "aks"),  # OperatorConfig's, through Settings
    ],
)
def test_a_bad_value_names_its_variable(variable, value):
    with pytest.raises(ValueError, match=f"^{variable} must be .*{re.escape(repr(value))}"):
        Settings.from_env({variable: value})


def test_every_variable_read_is_in_the_table():
    env = Recording()
    Settings.from_env(env)
    listed = {s.variable for s in SETTINGS}
    assert env.asked - listed == set(), "settings read but missing from config.SETTINGS"
    assert listed - env.asked == set(), "config.SETTINGS lists settings nothing reads"
    assert len(listed) == len(SETTINGS), "a variable is listed twice"


def test_the_doc_table_is_current():
    text = DOC.read_text()
    assert render_doc(text) == text, (
        "docs/configuration.md is stale: run `.venv/bin/python -m mlplane.operator.config`"
    )
    for s in SETTINGS:
        assert f"| `{s.variable}` |" in text


def test_chart_values_named_in_the_table_set_their_variable():
    configmap = (TEMPLATES / "configmap.yaml").read_text()
    templates = "".join(p.read_text() for p in sorted(TEMPLATES.glob("*.*")))
    for s in SETTINGS:
        if s.chart is None:
            continue
        # In the ConfigMap, or (the pod's own name) as an env entry of the Deployment.
        assert f"  {s.variable}:" in configmap or f"name: {s.variable}" in templates, (
            f"the chart sets no {s.variable}"
        )
        if not s.chart.startswith("("):
            assert f".Values.{s.chart}" in templates, f"no template reads {s.chart}"
