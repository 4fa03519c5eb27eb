"""Timers, steps and outbox events: schema, repository (all SQL) and pure SLA arithmetic."""
