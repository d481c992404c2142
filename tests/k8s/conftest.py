"""Fixtures of the Kubernetes test harness, for the harness's own tests."""

from k8s.harness import emulator, kubeconfig, operator  # noqa: F401 - fixtures
