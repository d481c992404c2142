"""The vendored KubeRay CRDs are what ``scripts/vendor_kuberay_crds.py`` made, and are used.

Without the upstream files at hand, two checks still catch a stale or hand-edited copy: each
file's sha256 is the one SOURCE.md records, and reducing the vendored file again yields the
same bytes (it is in reduced form, and the reducer still produces it). With the upstream
files at hand, ``scripts/vendor_kuberay_crds.py --check`` replays the whole vendoring.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import sys
from pathlib import Path

import pytest
from kuberay_crds import DEFAULT_DIR, ENV, FILES, crd_dir

REPO = Path(__file__).resolve().parents[2]


def _vendor_module():
    spec = importlib.util.spec_from_file_location(
        "vendor_kuberay_crds", REPO / "scripts" / "vendor_kuberay_crds.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


vendor = _vendor_module()
SOURCE = (DEFAULT_DIR / "SOURCE.md").read_text()


def _recorded(file: str) -> tuple[str, str]:
    """(upstream sha256, vendored sha256) as SOURCE.md records them for ``file``."""
    row = next(line for line in SOURCE.splitlines() if line.startswith(f"| `{file}`"))
    shas = re.findall(r"`([0-9a-f]{64})`", row)
    assert len(shas) == 2, row
    return shas[0], shas[1]


def _tag() -> str:
    found = re.search(r"\| release tag \| `([^`]+)`", SOURCE)
    assert found, "SOURCE.md names no release tag"
    return found.group(1)


def test_the_repository_copy_is_the_default():
    if os.environ.get(ENV):
        pytest.skip(f"{ENV} points the tests at another copy")  # a deliberate override
    assert crd_dir() == DEFAULT_DIR
    assert DEFAULT_DIR.is_relative_to(REPO)


@pytest.mark.parametrize("file", sorted(FILES.values()))
def test_vendored_file_matches_its_recorded_checksum(file):
    data = (DEFAULT_DIR / file).read_bytes()
    assert hashlib.sha256(data).hexdigest() == _recorded(file)[1], (
        f"{file} differs from SOURCE.md: regenerate it with scripts/vendor_kuberay_crds.py"
    )


@pytest.mark.parametrize("file", sorted(FILES.values()))
def test_vendored_file_is_in_reduced_form(file):
    data = (DEFAULT_DIR / file).read_bytes()
    assert vendor.render(data, file, _tag()).encode() == data


def test_source_names_licence_tag_and_upstream_path():
    assert "Apache License 2.0" in SOURCE
    assert re.match(r"v\d+\.\d+\.\d+$", _tag())
    for file in FILES.values():
        assert f"`ray-operator/config/crd/bases/{file}`" in SOURCE


def test_reduction_drops_descriptions_and_other_versions():
    upstream = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "rayjobs.ray.io", "annotations": {"a": "b"}},
        "spec": {
            "group": "ray.io",
            "names": {"kind": "RayJob", "plural": "rayjobs"},
            "scope": "Namespaced",
            "versions": [
                {"name": "v1alpha1", "schema": {"openAPIV3Schema": {"type": "object"}}},
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "additionalPrinterColumns": [{"name": "x"}],
                    "schema": {
                        "openAPIV3Schema": {
                            "description": "RayJob is ...",
                            "type": "object",
                            "properties": {
                                # a field *named* description stays; its annotation goes
                                "description": {"type": "string", "description": "doc"},
                            },
                        }
                    },
                },
            ],
        },
    }
    reduced = vendor.reduce_crd(upstream)
    assert [v["name"] for v in reduced["spec"]["versions"]] == ["v1"]
    assert reduced["metadata"] == {"name": "rayjobs.ray.io"}
    schema = reduced["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert schema == {"type": "object", "properties": {"description": {"type": "string"}}}
