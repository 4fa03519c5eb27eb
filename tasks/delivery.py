"""Webhook delivery (placeholder: the delivery worker replaces this module)."""

from __future__ import annotations


def wake_delivery() -> None:
    """Ask for a delivery round soon, after a commit that wrote events. Never raises."""
