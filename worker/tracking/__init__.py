"""What the registry names: resolving a tracked URI, and watching it by polling."""
