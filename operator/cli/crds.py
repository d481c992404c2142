"""``mlplane crds``, ``validate`` and ``render``: the API types and what they become."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from mlplane.crds import BY_KIND, KINDS
from mlplane.crds.validate import check, parse, warnings_for
from mlplane.operator.cli.base import (
    REPO_ROOT,
    UserError,
    app,
    crds_app,
    err,
    load_documents,
    one_line_errors,
    out,
)

# --- crds ----------------------------------------------------------------------------------------


@crds_app.command("print")
@one_line_errors
def crds_print(
    kind: Annotated[str | None, typer.Option(help="Only this kind (e.g. TrainingJob).")] = None,
) -> None:
    """Print the CRDs as one YAML stream (pipe it to `kubectl apply -f -`)."""
    from mlplane.crds.schema import render_crd

    kinds = KINDS
    if kind:
        if kind not in BY_KIND:
            raise UserError(f"unknown kind {kind!r} (mlplane kinds: {', '.join(BY_KIND)})")
        kinds = (BY_KIND[kind],)
    sys.stdout.write("---\n".join(render_crd(k) for k in kinds))


def crd_output_dirs() -> list[Path]:
    """Where generated CRDs are committed: ``crds/`` and the Helm chart's ``crds/``."""
    from mlplane.crds.schema import CRD_DIR

    return [CRD_DIR, REPO_ROOT / "helm" / "mlplane" / "crds"]


@crds_app.command("generate")
@one_line_errors
def crds_generate(
    check_only: Annotated[
        bool, typer.Option("--check", help="Change nothing; exit 1 if a file is stale.")
    ] = False,
) -> None:
    """Write the CRD YAML generated from the API types into crds/ and the Helm chart."""
    from mlplane.crds.schema import render_all, write_all

    dirs = crd_output_dirs()
    if check_only:
        stale = [
            str(d / name)
            for d in dirs
            for name, text in render_all().items()
            if not (d / name).exists() or (d / name).read_text() != text
        ]
        if stale:
            raise UserError(f"stale: {', '.join(stale)}; run `mlplane crds generate`")
        out.print("CRDs are up to date.")
        return
    changed = write_all(dirs)
    for path in changed:
        out.print(f"wrote {path}")
    if not changed:
        out.print("CRDs are up to date.")


@app.command()
@one_line_errors
def validate(
    files: Annotated[
        list[Path], typer.Option("-f", "--filename", help="A YAML file or a folder of them.")
    ],
) -> None:
    """Check resources as the API server and the operator would: one line per problem."""
    bad = 0
    documents = load_documents(files)
    for document in documents:
        problems = check(document.body)
        if problems:
            bad += 1
            for problem in problems:
                err.print(f"{document.label}: {problem}", highlight=False, soft_wrap=True,
                          markup=False)  # fmt: skip
        else:
            out.print(f"{document.label}: valid", highlight=False, markup=False)
            for warning in warnings_for(parse(document.body)):
                err.print(f"{document.label}: warning: {warning}", highlight=False,
                          soft_wrap=True, markup=False)  # fmt: skip
    if bad:
        raise UserError(f"{bad} of {len(documents)} resources are invalid")


@app.command()
@one_line_errors
def render(
    files: Annotated[list[Path], typer.Option("-f", "--filename", help="A YAML file or folder.")],
    model_version: Annotated[
        int | None,
        typer.Option(help="Model version standing in for the registry lookup of an alias."),
    ] = None,
) -> None:
    """Print, as YAML, the Kubernetes objects the operator would create for each resource."""
    from mlplane.operator.config import OperatorConfig

    config = OperatorConfig.from_env()
    resources = []
    for document in load_documents(files):
        problems = check(document.body)
        if problems:
            raise UserError(f"{document.label}: {problems[0]}" + (
                f" (and {len(problems) - 1} more; run `mlplane validate`)" if len(problems) > 1
                else ""
            ))  # fmt: skip
        resources.append(parse(document.body))
    from mlplane.operator.builders import render as build
    from mlplane.operator.builders import to_yaml

    objects: list[dict[str, Any]] = []
    for resource in resources:
        objects.extend(build(resource, config, model_version=model_version))
    sys.stdout.write(to_yaml(objects))  # serveConfigV2 / runtimeEnvYAML as readable blocks
