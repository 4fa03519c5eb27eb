"""Configuration (models/config.py): defaults, validation, and errors that name
their variable. Settings are read from a given mapping: no I/O."""

from __future__ import annotations

import pytest

from models.config import ConfigError, Settings


def test_the_limit_setting_is_validated():
    assert Settings.from_env({"SLA_RATE_LIMIT": "off"}).rate_limit is None
    assert Settings.from_env({"SLA_RATE_LIMIT": "10/second;100/minute"}).rate_limit
    assert Settings.from_env({}).rate_limit == "100/second;3000/minute"
    with pytest.raises(ConfigError, match="SLA_RATE_LIMIT"):
        Settings.from_env({"SLA_RATE_LIMIT": "lots"})
