"""The admin port: status, metrics, reload and rollback, registry webhooks."""
