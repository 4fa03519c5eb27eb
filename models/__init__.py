"""Timers, steps and outbox events: the schema, the SQL (``sql/*.sql`` and the
modules that run it), the service's errors and pure SLA arithmetic."""
