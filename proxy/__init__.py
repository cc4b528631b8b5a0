"""HTTP side of the sidecar: the public forwarding port, the admin port, metrics and the CLI."""
