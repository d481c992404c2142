"""Pure reconcile functions: resource + observed state + now -> desired children + status."""
