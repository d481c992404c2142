"""Static tests of terraform/: what `terraform validate` and a reviewer would check, offline.

There is no terraform binary and no registry access here, so `terraform init/validate/plan`
cannot run. Instead every .tf file is parsed with python-hcl2 and checked for:
- the module contract: typed and described variables, described outputs, pinned providers;
- wiring: every argument given to a module is one of its inputs (for the registry modules,
  the names of the pinned releases, in fixtures/registry_modules.json), every required input
  is given, and every var./local./module./data. reference resolves;
- the design: GPU node groups (NVIDIA AMI, taints, capacity types, labels), the bucket
  (KMS, versioning, private, TLS-only, lifecycle), least-privilege IAM, the Helm releases;
- checkov (a real scanner, run offline) with no failed check and a reason beside every skip.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlplane.monitoring.notice import NOTICE_FILE

try:
    import hcl2
    from hcl2.utils import SerializationOptions
except ImportError:  # pragma: no cover - depends on the environment
    pytest.fail(
        "python-hcl2 8.x is needed to parse terraform/: "
        "`.venv/bin/pip install 'python-hcl2>=8.1,<9'` (never into checkov's environment: "
        "checkov's fork, bc-python-hcl2, installs the same `hcl2` module)",
        pytrace=False,
    )

REPO = Path(__file__).resolve().parents[2]
TF = REPO / "terraform"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
REGISTRY = json.loads((FIXTURES / "registry_modules.json").read_text())

_OPTS = SerializationOptions(strip_string_quotes=True, explicit_blocks=False, with_comments=False)
_META_ARGS = {"source", "version", "count", "for_each", "depends_on", "providers"}
_EXPR = re.compile(r"^\$\{(.*)\}$", re.S)

_spec = importlib.util.spec_from_file_location("_mlplane_locate", REPO / "tests/tools/locate.py")
assert _spec is not None and _spec.loader is not None
locate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(locate)


# --- parsing helpers ------------------------------------------------------------------------


def tf_files() -> list[Path]:
    return sorted(p for p in TF.rglob("*.tf") if ".terraform" not in p.parts)


def module_dirs() -> list[Path]:
    """Every Terraform module: the root, modules/*, examples/*."""
    return sorted({p.parent for p in tf_files()})


def rel(path: Path) -> str:
    return str(path.relative_to(TF)) or "."


@functools.cache
def parse(path: Path) -> dict[str, Any]:
    with path.open() as fh:
        return hcl2.load(fh, serialization_options=_OPTS)


@functools.cache
def module(directory: Path) -> dict[str, Any]:
    """All top-level blocks of a module's .tf files, merged (lists of block dicts)."""
    merged: dict[str, list[Any]] = {}
    for path in sorted(directory.glob("*.tf")):
        for key, blocks in parse(path).items():
            merged.setdefault(key, []).extend(blocks)
    return merged


def named(directory: Path, kind: str) -> dict[str, dict[str, Any]]:
    """Blocks with one label (variable, output, module): name -> body."""
    out: dict[str, dict[str, Any]] = {}
    for block in module(directory).get(kind, []):
        out.update(block)
    return out


def typed(directory: Path, kind: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Blocks with two labels (resource, data): (type, name) -> body."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for block in module(directory).get(kind, []):
        for rtype, by_name in block.items():
            for name, body in by_name.items():
                out[(rtype, name)] = body
    return out


def locals_of(directory: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for block in module(directory).get("locals", []):
        out.update(block)
    return out


def expr(value: Any) -> str | None:
    """The expression inside a whole-value ``${...}``, else None (a literal)."""
    if isinstance(value, str):
        m = _EXPR.match(value)
        if m:
            return m.group(1).strip()
    return None


def resolve(value: Any, local_values: dict[str, Any]) -> Any:
    """Follow a whole-value ``${local.x}`` reference (one level at a time, recursively)."""
    inner = expr(value)
    if inner and re.fullmatch(r"local\.[a-z_][a-z0-9_]*", inner):
        return resolve(local_values[inner.removeprefix("local.")], local_values)
    return value


def text(directory: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(directory.glob("*.tf")))


def code_only(source: str) -> str:
    """The source without comments (for reference scanning)."""
    return "\n".join(re.sub(r"(^|\s)(#|//).*$", "", line) for line in source.splitlines())


ROOT = TF
MODULES = {p.name: p for p in sorted((TF / "modules").iterdir()) if p.is_dir()}
EXAMPLES = {p.name: p for p in sorted((TF / "examples").iterdir()) if p.is_dir()}


# --- layout -----------------------------------------------------------------------------------


def test_standard_module_structure():
    for directory in [ROOT, *MODULES.values()]:
        for name in ("main.tf", "variables.tf", "outputs.tf", "versions.tf"):
            assert (directory / name).is_file(), f"{rel(directory)}/{name} is missing"
    assert {"minimal", "complete"} <= set(EXAMPLES), "examples/minimal and examples/complete"
    assert (TF / "README.md").is_file()


@pytest.mark.parametrize("path", tf_files(), ids=lambda p: str(p.relative_to(TF)))
def test_every_file_parses(path):
    assert parse(path), f"{path} parsed to nothing"


# --- module contract ------------------------------------------------------------------------


@pytest.mark.parametrize("directory", module_dirs(), ids=rel)
def test_variables_are_typed_and_described(directory):
    variables = named(directory, "variable")
    for name, body in variables.items():
        assert "type" in body, f"{rel(directory)}: variable {name} has no type"
        description = body.get("description")
        assert isinstance(description, str), f"{rel(directory)}: variable {name}: no description"
        assert len(description.strip()) >= 10, f"{rel(directory)}: {name}: description too thin"


@pytest.mark.parametrize("directory", module_dirs(), ids=rel)
def test_outputs_are_described(directory):
    for name, body in named(directory, "output").items():
        description = body.get("description")
        assert isinstance(description, str), f"{rel(directory)}: output {name}: no description"
        assert description.strip(), f"{rel(directory)}: output {name}: empty description"


def _has_upper_bound(constraint: str) -> bool:
    return "~>" in constraint or "<" in constraint or re.fullmatch(r"=?\s*[0-9.]+", constraint)


@pytest.mark.parametrize("directory", module_dirs(), ids=rel)
def test_versions_pin_terraform_and_every_provider(directory):
    versions = directory / "versions.tf"
    assert versions.is_file(), f"{rel(directory)} has no versions.tf"
    (terraform,) = parse(versions)["terraform"]
    assert terraform.get("required_version", "").startswith(">="), "required_version"
    providers: dict[str, Any] = {}
    for block in terraform.get("required_providers", []):
        providers.update(block)
    for name, spec in providers.items():
        assert spec.get("source", "").startswith("hashicorp/"), f"{name}: source"
        constraint = spec.get("version", "")
        assert ">=" in constraint and _has_upper_bound(constraint), (
            f"{rel(directory)}: provider {name} must be pinned to a range with a floor and a "
            f"ceiling (got {constraint!r})"
        )
    # Every provider a resource or data source here belongs to is declared.
    used = {
        rtype.split("_")[0]
        for rtype, _ in [*typed(directory, "resource"), *typed(directory, "data")]
    }
    used |= {name for block in module(directory).get("provider", []) for name in block}
    assert used <= set(providers), f"{rel(directory)}: undeclared providers {used - set(providers)}"


def test_registry_modules_are_pinned_to_a_major_version():
    calls = named(ROOT, "module")
    registry = {n: b for n, b in calls.items() if not b["source"].startswith("./")}
    assert {b["source"] for b in registry.values()} == set(REGISTRY)
    for name, body in registry.items():
        assert body.get("version") == REGISTRY[body["source"]]["constraint"], name


# --- wiring: the offline `terraform validate` -------------------------------------------------


def _module_calls() -> Iterator[tuple[Path, str, dict[str, Any]]]:
    for directory in module_dirs():
        for name, body in named(directory, "module").items():
            yield directory, name, body


@pytest.mark.parametrize(
    ("directory", "name", "body"),
    list(_module_calls()),
    ids=lambda v: rel(v) if isinstance(v, Path) else (v if isinstance(v, str) else ""),
)
def test_module_arguments_are_inputs_of_the_called_module(directory, name, body):
    source = body["source"]
    args = set(body) - _META_ARGS
    if source.startswith("."):
        target = (directory / source).resolve()
        variables = named(target, "variable")
        unknown = args - set(variables)
        assert not unknown, f"{rel(directory)}: module {name} passes unknown inputs {unknown}"
        required = {v for v, spec in variables.items() if "default" not in spec}
        missing = required - args
        assert not missing, f"{rel(directory)}: module {name} misses required inputs {missing}"
    else:
        inputs = set(REGISTRY[source]["inputs"])
        unknown = args - inputs
        assert not unknown, (
            f"module {name} passes inputs that {source} "
            f"{REGISTRY[source]['release']} does not have: {unknown}"
        )


def test_eks_node_group_attributes_exist_in_the_eks_module():
    eks = named(ROOT, "module")["eks"]
    groups = expr(eks["eks_managed_node_groups"])
    assert groups and groups.startswith("{for group, ng in local.node_groups"), groups
    passed = set(re.findall(r"(?:^|[{,\n]\s*)([a-z_]+)\s*=", groups.split("=>", 1)[1]))
    allowed = set(REGISTRY["terraform-aws-modules/eks/aws"]["eks_managed_node_group_attributes"])
    nested = {"root", "device_name", "ebs", "volume_size", "volume_type", "encrypted"}
    nested |= {
        "delete_on_termination",
        "http_endpoint",
        "http_tokens",
        "http_put_response_hop_limit",
    }
    unknown = passed - allowed - nested
    assert not unknown, f"eks_managed_node_groups entries use unknown attributes {unknown}"
    assert {"ami_type", "capacity_type", "taints", "labels", "instance_types"} <= passed


_REF = re.compile(r"\b(var|local|module|data)\.([a-z_][a-z0-9_]*)(?:\.([a-z_][a-z0-9_]*))?")


@pytest.mark.parametrize("directory", module_dirs(), ids=rel)
def test_references_resolve(directory):
    source = code_only(text(directory))
    variables = set(named(directory, "variable"))
    local_names = set(locals_of(directory))
    modules = named(directory, "module")
    data = {f"{t}.{n}" for t, n in typed(directory, "data")}
    for kind, first, second in _REF.findall(source):
        if kind == "var":
            assert first in variables, f"{rel(directory)}: var.{first} is not declared"
        elif kind == "local":
            assert first in local_names, f"{rel(directory)}: local.{first} is not declared"
        elif kind == "data" and second:
            assert f"{first}.{second}" in data, f"{rel(directory)}: data.{first}.{second}"
        elif kind == "module":
            assert first in modules, f"{rel(directory)}: module.{first} is not declared"
            target_source = modules[first]["source"]
            if target_source.startswith("."):
                outputs = set(named((directory / target_source).resolve(), "output"))
            else:
                outputs = set(REGISTRY[target_source]["outputs"])
            if second:
                assert second in outputs, f"{rel(directory)}: module.{first}.{second} is no output"


def test_eks_node_group_outputs_used_exist():
    outputs = set(REGISTRY["terraform-aws-modules/eks/aws"]["eks_managed_node_group_outputs"])
    for attr in re.findall(r"eks_managed_node_groups\[[^\]]+\]\.([a-z_]+)", text(ROOT)):
        assert attr in outputs, attr


def test_readme_documents_every_root_input_and_output():
    readme = (TF / "README.md").read_text()
    for name in [*named(ROOT, "variable"), *named(ROOT, "output")]:
        assert f"`{name}`" in readme, f"terraform/README.md does not document {name}"


# --- node groups ----------------------------------------------------------------------------


def node_groups() -> dict[str, dict[str, Any]]:
    values = locals_of(ROOT)
    groups = resolve(values["node_groups"], values)
    return {k: {a: resolve(v, values) for a, v in g.items()} for k, g in groups.items()}


GPU_TAINT = {"key": "nvidia.com/gpu", "value": "true", "effect": "NO_SCHEDULE"}


@pytest.mark.parametrize(
    ("group", "capacity"), [("gpu-spot", "SPOT"), ("gpu-on-demand", "ON_DEMAND")]
)
def test_gpu_node_groups(group, capacity):
    ng = node_groups()[group]
    assert ng["capacity_type"] == capacity
    assert ng["ami_type"] == "AL2023_x86_64_NVIDIA"
    assert GPU_TAINT in ng["taints"].values(), f"{group} lacks the nvidia.com/gpu taint"
    assert ng["labels"]["mlplane.dev/pool"] == group
    assert ng["labels"]["nvidia.com/gpu.present"] == "true"
    variable = "gpu_spot_node_group" if capacity == "SPOT" else "gpu_on_demand_node_group"
    assert ng["labels"]["mlplane.dev/accelerator"] == f"${{var.{variable}.accelerator}}"
    for attr in ("instance_types", "min_size", "max_size", "desired_size"):
        assert ng[attr] == f"${{var.{variable}.{attr}}}", (
            f"{group}.{attr} must come from the variable"
        )
    # Scale from zero by default; the spot group lists several instance types.
    type_expr = named(ROOT, "variable")[variable]["type"]
    assert re.search(r"min_size\s*=\s*optional\(number,\s*0\)", type_expr), "GPU groups start at 0"
    defaults = re.search(
        r"instance_types\s*=\s*optional\(list\(string\),\s*\[([^\]]*)\]", type_expr
    )
    assert defaults, type_expr
    if capacity == "SPOT":
        assert len(defaults.group(1).split(",")) >= 2, "spot needs several instance types"
        assert {"key": "mlplane.dev/spot", "value": "true", "effect": "NO_SCHEDULE"} in ng[
            "taints"
        ].values()


def test_system_node_group_is_on_demand_cpu_and_untainted():
    ng = node_groups()["system"]
    assert ng["capacity_type"] == "ON_DEMAND"
    assert ng["ami_type"] == "AL2023_x86_64_STANDARD"
    assert ng["labels"] == {"mlplane.dev/pool": "system"}
    assert ng["taints"] == {}
    assert ng["create"] is True


def test_spot_group_validations_demand_diversity_and_one_gpu_model():
    validations = named(ROOT, "variable")["gpu_spot_node_group"]["validation"]
    conditions = " ".join(v["condition"] for v in validations)
    assert "length(var.gpu_spot_node_group.instance_types) >= 2" in conditions
    assert "distinct(" in conditions, "instance types must share one family"
    assert "min_size <= var.gpu_spot_node_group.desired_size" in conditions


def test_scale_from_zero_tags_cover_labels_capacity_and_taints():
    values = locals_of(ROOT)
    template = (
        f"{expr(values['autoscaler_node_templates'])} {expr(values['autoscaler_template_tags'])}"
    )
    parts = ("cluster-autoscaler/node-template/", "label/", "capacityType", "taint/")
    for part in parts:
        assert part in template
    tag = typed(ROOT, "resource")[("aws_autoscaling_group_tag", "node_template")]
    assert tag["for_each"] == "${local.autoscaler_template_tags}"


# --- bucket ---------------------------------------------------------------------------------


def test_bucket_is_encrypted_versioned_private_and_tls_only():
    bucket_dir = MODULES["artifact-bucket"]
    res = typed(bucket_dir, "resource")
    this = "${aws_s3_bucket.this.id}"
    for rtype in (
        "aws_s3_bucket_server_side_encryption_configuration",
        "aws_s3_bucket_versioning",
        "aws_s3_bucket_public_access_block",
        "aws_s3_bucket_ownership_controls",
        "aws_s3_bucket_lifecycle_configuration",
        "aws_s3_bucket_policy",
    ):
        assert res[(rtype, "this")]["bucket"] == this, rtype

    (sse_rule,) = res[("aws_s3_bucket_server_side_encryption_configuration", "this")]["rule"]
    (default,) = sse_rule["apply_server_side_encryption_by_default"]
    assert default["sse_algorithm"] == "aws:kms"
    assert default["kms_master_key_id"] == "${aws_kms_key.this.arn}"
    assert res[("aws_kms_key", "this")]["enable_key_rotation"] is True

    (versioning,) = res[("aws_s3_bucket_versioning", "this")]["versioning_configuration"]
    assert versioning["status"] == "Enabled"

    block = res[("aws_s3_bucket_public_access_block", "this")]
    for flag in (
        "block_public_acls",
        "block_public_policy",
        "ignore_public_acls",
        "restrict_public_buckets",
    ):
        assert block[flag] is True, flag

    (ownership,) = res[("aws_s3_bucket_ownership_controls", "this")]["rule"]
    assert ownership["object_ownership"] == "BucketOwnerEnforced"

    rules = res[("aws_s3_bucket_lifecycle_configuration", "this")]["rule"]
    expiring = [r for r in rules if r.get("noncurrent_version_expiration")]
    assert expiring and expiring[0]["status"] == "Enabled"

    policy = res[("aws_s3_bucket_policy", "this")]["policy"]
    assert policy == "${data.aws_iam_policy_document.bucket.json}"
    statements = typed(bucket_dir, "data")[("aws_iam_policy_document", "bucket")]["statement"]
    tls = [
        s
        for s in statements
        if s["effect"] == "Deny"
        and any(
            c["variable"] == "aws:SecureTransport" and c["values"] == ["false"]
            for c in s["condition"]
        )
    ]
    assert tls, "the bucket policy must deny requests without TLS"
    assert set(tls[0]["resources"]) == {"${aws_s3_bucket.this.arn}", "${aws_s3_bucket.this.arn}/*"}


def test_root_uses_the_bucket_module_with_the_operator_key_layout():
    call = named(ROOT, "module")["artifact_bucket"]
    assert call["source"] == "./modules/artifact-bucket"
    values = locals_of(ROOT)
    # The operator puts default checkpoints under <artifacts URI>/checkpoints/...
    assert values["checkpoints_prefix"] == "checkpoints"
    mlplane_values = locals_of(MODULES["platform"])["mlplane_values"]
    assert mlplane_values["operator"]["artifactsUri"] == "s3://${var.bucket_name}"


# --- credentials and IAM ------------------------------------------------------------------------


_SECRET = re.compile(
    r"\b(access_key|secret_key|aws_access_key_id|aws_secret_access_key|session_token)\b\s*=", re.I
)


@pytest.mark.parametrize("path", tf_files(), ids=lambda p: str(p.relative_to(TF)))
def test_no_static_credentials(path):
    source = path.read_text()
    assert not _SECRET.search(source), f"{path}: static credentials"
    assert not re.search(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", source), f"{path}: an AWS access key id"
    for block in parse(path).get("provider", []):
        for name, body in block.items():
            assert not {"access_key", "secret_key", "token", "password"} & set(body), name


def policy_documents() -> Iterator[tuple[str, dict[str, Any]]]:
    for directory in module_dirs():
        for (rtype, name), body in typed(directory, "data").items():
            if rtype == "aws_iam_policy_document":
                yield f"{rel(directory)}:{name}", body


def statements(doc: dict[str, Any], *, dynamic: bool = True) -> list[dict[str, Any]]:
    """A document's statement blocks, including the content of dynamic "statement" blocks."""
    found = list(doc.get("statement", []))
    if dynamic:
        for block in doc.get("dynamic", []):
            if "statement" in block:
                found.extend(block["statement"]["content"])
    return found


def actions_of(stmt: dict[str, Any]) -> list[str]:
    return stmt.get("actions", [])


def test_policies_are_documents_not_inline_json():
    for path in tf_files():
        for line in path.read_text().splitlines():
            if re.match(r"\s*(policy|assume_role_policy|policy_json)\s*=", line):
                value = line.split("=", 1)[1].strip()
                assert value.startswith(("data.aws_iam_policy_document.", "var.")), (
                    f"{path}: {line.strip()} — render policies with aws_iam_policy_document"
                )


def test_iam_policies_grant_no_wildcards():
    docs = dict(policy_documents())
    assert len(docs) >= 7, sorted(docs)
    for name, doc in docs.items():
        for stmt in statements(doc):
            assert "not_actions" not in stmt and "not_resources" not in stmt, name
            if stmt.get("effect", "Allow") != "Allow":
                continue  # Deny statements only narrow access
            actions = actions_of(stmt)
            resources = stmt.get("resources", [])
            assert "*" not in actions, f"{name}: Allow of action *"
            key_policy = name.endswith(":kms")
            for action in actions:
                if action.endswith(":*"):
                    assert key_policy and action == "kms:*", f"{name}: wildcard action {action}"
            if "*" in resources:
                s3 = [a for a in actions if a.startswith("s3:")]
                assert not s3, f"{name}: s3 actions {s3} on Resource *"
            for principal in stmt.get("principals", []):
                assert "*" not in principal["identifiers"], f"{name}: Allow to any principal"
            if key_policy:
                (principal,) = stmt["principals"]
                assert principal["identifiers"][0].startswith("${local.account_root_arn"), name


BUCKET = "arn:aws:s3:::bucket"
TEAMS = ("team-a", "team-b")


def team_prefixes(ns: str) -> dict[str, str]:
    """Evaluate ``local.team_prefixes[ns]`` from its source: each namespace's own S3 prefixes."""
    values = locals_of(ROOT)
    source = values["team_prefixes"]
    assert "for ns in var.workload_namespaces" in source, source
    out = {}
    for kind in ("checkpoints", "artifacts"):
        m = re.search(kind + r' = "([^"]+)"', source)
        assert m, f"team_prefixes has no {kind} prefix: {source}"
        out[kind] = (
            m.group(1)
            .replace("${local.checkpoints_prefix}", values["checkpoints_prefix"])
            .replace("${local.artifacts_prefix}", values["artifacts_prefix"])
            .replace("${ns}", ns)
        )
    return out


def _instantiate(value: str, ns: str) -> str:
    """A per-namespace policy string with ``each.*`` and the bucket ARN filled in for ``ns``."""
    prefixes = team_prefixes(ns)
    return (
        value.replace("${each.value.checkpoints}", prefixes["checkpoints"])
        .replace("${each.value.artifacts}", prefixes["artifacts"])
        .replace("${each.key}", ns)
        .replace("${local.bucket_arn}", BUCKET)
    )


def _s3_grants(doc_name: str, ns: str | None = None) -> dict[str, set[str]]:
    """Resource -> S3 actions allowed on it by one root policy document's static statements.

    ``ns``: the document is one per team namespace (``for_each``); evaluate it for ``ns``.
    """
    doc = typed(ROOT, "data")[("aws_iam_policy_document", doc_name)]
    grants: dict[str, set[str]] = {}
    for stmt in statements(doc, dynamic=False):
        for resource in stmt["resources"]:
            if ns is not None:
                resource = _instantiate(resource, ns)
            for action in actions_of(stmt):
                if action.startswith("s3:"):
                    grants.setdefault(resource, set()).add(action)
    return grants


def _listing_prefixes(doc_name: str, ns: str) -> set[str]:
    doc = typed(ROOT, "data")[("aws_iam_policy_document", doc_name)]
    found: set[str] = set()
    for stmt in statements(doc, dynamic=False):
        if "s3:ListBucket" in actions_of(stmt):
            (cond,) = [c for c in stmt["condition"] if c["variable"] == "s3:prefix"]
            found |= {_instantiate(v, ns) for v in cond["values"]}
    return found


WRITE = {"s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"}


def test_team_prefixes_are_the_namespace_under_checkpoints_and_artifacts():
    assert team_prefixes("team-a") == {
        "checkpoints": "checkpoints/team-a",
        "artifacts": "artifacts/team-a",
    }


@pytest.mark.parametrize("doc_name", ["training", "serving"])
def test_workload_policies_are_one_per_team_namespace(doc_name):
    doc = typed(ROOT, "data")[("aws_iam_policy_document", doc_name)]
    assert doc.get("for_each") == "${local.team_prefixes}", (
        f"{doc_name}: one shared policy lets every namespace reach every other's objects"
    )


@pytest.mark.parametrize("ns", TEAMS)
def test_training_role_of_a_namespace_writes_only_its_own_prefixes(ns):
    grants = _s3_grants("training", ns)
    own = {f"{BUCKET}/checkpoints/{ns}/*", f"{BUCKET}/artifacts/{ns}/*"}
    assert set(grants) == {BUCKET, *own}, sorted(grants)
    for prefix in own:
        assert {"s3:GetObject", *WRITE} <= grants[prefix], prefix
    assert grants[BUCKET] == {"s3:ListBucket", "s3:GetBucketLocation"}
    # Listings too stay inside the namespace's prefixes.
    assert _listing_prefixes("training", ns) == {
        f"checkpoints/{ns}",
        f"checkpoints/{ns}/*",
        f"artifacts/{ns}",
        f"artifacts/{ns}/*",
    }
    other = next(t for t in TEAMS if t != ns)
    assert not any(f"/{other}/" in r for r in grants), f"{ns} reaches {other}'s objects"


def test_training_data_buckets_are_read_only_and_prefix_scoped():
    doc = typed(ROOT, "data")[("aws_iam_policy_document", "training")]
    dynamic = [b["statement"] for b in doc["dynamic"]]
    assert all(d["for_each"] == "${var.training_data_buckets}" for d in dynamic)
    grants = {a: c["resources"] for d in dynamic for c in d["content"] for a in c["actions"]}
    assert set(grants) == {"s3:ListBucket", "s3:GetObject"}
    assert grants["s3:GetObject"] == [
        "arn:${local.partition}:s3:::${statement.value.bucket}/${statement.value.prefix}*"
    ]
    (listing,) = [c for d in dynamic for c in d["content"] if c["actions"] == ["s3:ListBucket"]]
    assert listing["condition"][0]["variable"] == "s3:prefix"


@pytest.mark.parametrize("ns", TEAMS)
def test_serving_role_of_a_namespace_only_reads_its_own_artifacts(ns):
    grants = _s3_grants("serving", ns)
    assert set(grants) == {BUCKET, f"{BUCKET}/artifacts/{ns}/*"}, sorted(grants)
    assert grants[f"{BUCKET}/artifacts/{ns}/*"] == {"s3:GetObject"}
    assert not any(WRITE & actions for actions in grants.values())
    assert _listing_prefixes("serving", ns) == {f"artifacts/{ns}", f"artifacts/{ns}/*"}


def test_operator_reads_checkpoints_and_writes_only_reclaim_notices():
    grants = _s3_grants("operator")
    assert grants["${local.checkpoints_arn}"] == {"s3:GetObject"}
    assert "${local.artifacts_arn}" not in grants
    notices = "${local.bucket_arn}/${local.checkpoints_prefix}/*/${local.notice_object}"
    assert grants[notices] == {"s3:PutObject"}  # the notice object, nothing else
    assert not any(WRITE & actions for where, actions in grants.items() if where != notices)
    assert locals_of(ROOT)["notice_object"] == NOTICE_FILE


def test_object_arns_are_scoped_to_prefixes():
    values = locals_of(ROOT)
    assert values["checkpoints_arn"] == "${local.bucket_arn}/${local.checkpoints_prefix}/*"
    assert values["bucket_arn"] == "${module.artifact_bucket.bucket_arn}"
    # No bucket-wide artifacts ARN is left for a policy to grant by mistake.
    assert "artifacts_arn" not in values


def test_kms_use_is_limited_to_the_bucket_key_through_s3():
    for doc_name in ("training", "serving", "operator"):
        doc = typed(ROOT, "data")[("aws_iam_policy_document", doc_name)]
        kms = [s for s in statements(doc) if any(a.startswith("kms:") for a in actions_of(s))]
        assert kms, doc_name
        for stmt in kms:
            assert stmt["resources"] == ["${local.kms_key_arn}"], doc_name
            assert any(c["variable"] == "kms:ViaService" for c in stmt["condition"]), doc_name


def test_irsa_trust_pins_audience_and_exact_subjects():
    doc = typed(MODULES["irsa-role"], "data")[("aws_iam_policy_document", "trust")]
    (stmt,) = statements(doc)
    assert actions_of(stmt) == ["sts:AssumeRoleWithWebIdentity"]
    (principal,) = stmt["principals"]
    assert principal["type"] == "Federated"
    conditions = {c["variable"]: c for c in stmt["condition"]}
    assert conditions["${var.oidc_issuer}:aud"]["values"] == ["sts.amazonaws.com"]
    sub = conditions["${var.oidc_issuer}:sub"]
    assert sub["test"] == "StringEquals", "StringLike would admit wildcards"
    assert "system:serviceaccount:${sa.namespace}:${sa.name}" in sub["values"]


def test_every_mlplane_service_account_has_its_own_role():
    calls = named(ROOT, "module")
    operator = calls["irsa_operator"]
    assert operator["source"] == "./modules/irsa-role"
    assert operator["policy_json"] == "${data.aws_iam_policy_document.operator.json}"
    for role in ("training", "serving"):
        call = calls[f"irsa_{role}"]
        assert call["source"] == "./modules/irsa-role"
        assert call.get("for_each") == "${local.team_prefixes}", f"irsa_{role}: one per namespace"
        assert call["name"] == f"${{var.name}}-${{each.key}}-{role}"
        assert call["policy_json"] == f"${{data.aws_iam_policy_document.{role}[each.key].json}}"
        assert call["service_accounts"] == f"${{local.workload_subjects.{role}[each.key]}}"
        # ... and the subjects of namespace ns are that namespace's account alone.
        subjects = locals_of(ROOT)["workload_subjects"][role]
        assert subjects == (
            f"${{{{for ns in var.workload_namespaces : ns => "
            f"[{{namespace = ns, name = var.{role}_service_account}}]}}}}"
        )


def test_role_names_fit_iam_limit_for_every_namespace():
    validations = named(ROOT, "variable")["workload_namespaces"]["validation"]
    conditions = [v["condition"] for v in validations]
    assert any('length("${var.name}-${ns}-training") <= 64' in c for c in conditions), conditions


def test_workload_service_accounts_get_their_own_namespace_role():
    platform = MODULES["platform"]
    accounts = locals_of(platform)["workload_service_accounts"]
    assert "role_arn = lookup(var.service_accounts[kind].role_arns, ns, null)" in accounts
    root_call = named(ROOT, "module")["platform"]["service_accounts"]
    for role in ("training", "serving"):
        assert root_call[role]["role_arns"] == (
            f"${{{{for ns, role in module.irsa_{role} : ns => role.role_arn}}}}"
        )


def test_eks_api_endpoint_is_private_by_default():
    variables = named(ROOT, "variable")
    assert variables["endpoint_public_access"]["default"] is False
    assert variables["endpoint_public_access_cidrs"]["default"] == []
    eks = named(ROOT, "module")["eks"]
    assert eks["endpoint_private_access"] is True
    assert eks["endpoint_public_access"] == "${var.endpoint_public_access}"
    assert eks["endpoint_public_access_cidrs"] == "${var.endpoint_public_access_cidrs}"
    # Opening it needs an explicit CIDR list.
    conditions = [v["condition"] for v in variables["endpoint_public_access_cidrs"]["validation"]]
    assert any("!var.endpoint_public_access ||" in c for c in conditions), conditions


# --- Helm releases --------------------------------------------------------------------------


def test_kuberay_release():
    platform = MODULES["platform"]
    release = typed(platform, "resource")[("helm_release", "kuberay_operator")]
    assert release["repository"] == "https://ray-project.github.io/kuberay-helm/"
    assert release["chart"] == "kuberay-operator"
    assert release["version"] == "${var.kuberay_chart_version}"
    assert named(platform, "variable")["kuberay_chart_version"]["default"] == "1.7.0"
    assert named(ROOT, "variable")["kuberay_chart_version"]["default"] == "1.7.0"


def test_mlplane_release_is_optional_and_gets_roles_bucket_mlflow_and_capacity_labels():
    platform = MODULES["platform"]
    release = typed(platform, "resource")[("helm_release", "mlplane")]
    assert release["count"] == "${var.install_mlplane ? 1 : 0}"
    assert named(ROOT, "variable")["install_mlplane"]["type"] in ("bool", "${bool}")
    assert "local.mlplane_values" in release["values"]
    values = locals_of(platform)["mlplane_values"]
    annotations = values["serviceAccount"]["annotations"]
    assert (
        "local.irsa_annotation" in annotations
        and "service_accounts.operator.role_arn" in annotations
    )
    assert locals_of(platform)["irsa_annotation"] == "eks.amazonaws.com/role-arn"
    assert values["operator"]["mlflowTrackingUri"] == "${var.mlflow_tracking_uri}"
    assert values["operator"]["capacityLabels"] == "${var.capacity_label_convention}"
    assert named(ROOT, "module")["platform"]["capacity_label_convention"] == "eks"
    # Workload service accounts carry their role annotations too.
    sa = typed(platform, "resource")[("kubernetes_service_account_v1", "workload")]
    (metadata,) = sa["metadata"]
    assert "local.irsa_annotation" in metadata["annotations"]


def test_mlplane_chart_defaults_to_this_repository():
    assert locals_of(ROOT)["mlplane_chart"] == (
        '${coalesce(var.mlplane_chart_path, "${path.module}/../helm/mlplane")}'
    )
    chart = TF / ".." / "helm" / "mlplane" / "Chart.yaml"
    assert chart.resolve().is_file(), "the default chart path ../helm/mlplane has no chart"


def _schema_node(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = schema["$defs"][node["$ref"].rsplit("/", 1)[1]]
    return node


def _check_keys(schema: dict[str, Any], node: dict[str, Any], value: Any, path: str) -> None:
    node = _schema_node(schema, node)
    if isinstance(value, dict) and node.get("additionalProperties") is False:
        for key, sub in value.items():
            assert key in node.get("properties", {}), f"chart values have no key {path}.{key}"
            _check_keys(schema, node["properties"][key], sub, f"{path}.{key}")
    elif isinstance(value, dict) and "properties" in node:
        for key, sub in value.items():
            if key in node["properties"]:
                _check_keys(schema, node["properties"][key], sub, f"{path}.{key}")
    elif isinstance(value, list) and "items" in node:
        for i, item in enumerate(value):
            _check_keys(schema, node["items"], item, f"{path}[{i}]")


def test_mlplane_values_fit_the_chart_schema():
    schema_path = REPO / "helm" / "mlplane" / "values.schema.json"
    assert schema_path.is_file(), "the chart's values.schema.json is missing"
    schema = json.loads(schema_path.read_text())
    _check_keys(schema, schema, locals_of(MODULES["platform"])["mlplane_values"], "")


def test_gpu_daemonset_tolerates_gpu_and_spot_taints():
    platform = MODULES["platform"]
    plugin = typed(platform, "resource")[("helm_release", "nvidia_device_plugin")]
    (values,) = plugin["values"]
    assert "var.gpu_taint.key" in values and "var.spot_taint.key" in values
    defaults = named(platform, "variable")
    assert defaults["gpu_taint"]["default"]["key"] == "nvidia.com/gpu"
    assert defaults["spot_taint"]["default"]["key"] == "mlplane.dev/spot"


# --- checkov ----------------------------------------------------------------------------------


_SKIP = re.compile(r"checkov:skip=([A-Z0-9_]+)(?::(.*))?")


def skip_comments() -> list[tuple[Path, int, str, str]]:
    found = []
    for path in tf_files():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            m = _SKIP.search(line)
            if m:
                found.append((path, number, m.group(1), (m.group(2) or "").strip()))
    return found


def test_every_checkov_skip_has_a_reason():
    skips = skip_comments()
    assert skips, "expected the documented skips (e.g. CKV_TF_1 on registry modules)"
    for path, number, check, reason in skips:
        assert re.fullmatch(r"CKV2?_[A-Z0-9]+_[0-9]+", check), f"{path}:{number}: {check}"
        assert len(reason) >= 30, f"{path}:{number}: skip of {check} needs a written reason"


@pytest.fixture(scope="module")
def checkov_report() -> dict[str, Any]:
    try:
        checkov = locate.checkov()
    except FileNotFoundError as err:
        pytest.fail(str(err), pytrace=False)
    proc = subprocess.run(
        [str(checkov), "-d", str(TF), "--framework", "terraform", "--skip-download", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=REPO,
    )
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"checkov printed no JSON (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    reports = report if isinstance(report, list) else [report]
    (terraform,) = [r for r in reports if r.get("check_type") == "terraform"]
    return terraform


def test_checkov_finds_no_failed_check(checkov_report):
    summary = checkov_report["summary"]
    failed = checkov_report["results"].get("failed_checks", [])
    listing = "\n".join(f"{c['check_id']} {c['resource']} {c['file_path']}" for c in failed)
    assert summary["failed"] == 0, f"checkov failed checks:\n{listing}"
    assert summary["parsing_errors"] == 0
    # It really scanned the project's resources (bucket, KMS, IAM, Helm, Kubernetes).
    assert summary["passed"] >= 100, summary
    assert summary["resource_count"] >= 20, summary


def test_checkov_skips_are_all_used_and_explained(checkov_report):
    skipped = checkov_report["results"].get("skipped_checks", [])
    for check in skipped:
        assert len(check["check_result"].get("suppress_comment", "")) >= 30, check["check_id"]
    used = {c["check_id"] for c in skipped}
    written = {check for _, _, check, _ in skip_comments()}
    assert written == used, f"stale skip comments: {written - used}; unexplained: {used - written}"
