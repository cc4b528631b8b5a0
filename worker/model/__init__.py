"""A model version as data: its URI, its MLmodel, its input signature, its local copy and
environment, and the copy a dead worker leaves for its replacement."""
