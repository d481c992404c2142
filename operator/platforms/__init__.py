"""Platforms: where Ray clusters come from (KubeRay on Kubernetes, or this machine)."""
