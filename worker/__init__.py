"""Worker side of the sidecar: `mlflow models serve` processes, the registry, and the swap."""
