"""Pure builders: a validated mlplane resource in, the Kubernetes objects it becomes out."""
