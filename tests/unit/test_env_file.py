"""The project's ``.env`` (models/config.py): every entry point finds the URLs
``make up`` recorded there, a real environment variable always wins, and the
tests' own settings never read it. Also the queue knob the tests use to stay
apart from a running stack. Files only: no network, no process."""

from __future__ import annotations

import os

import pytest

from models import config
from models.config import Settings

EMBEDDED = "postgresql://postgres@127.0.0.1:54329/postgres"


@pytest.fixture
def env_file(tmp_path, monkeypatch):
    """A .env as `make up` writes it, named by SLA_ENV_FILE; the URLs unset."""
    path = tmp_path / ".env"
    path.write_text(f"DATABASE_URL={EMBEDDED}\nREDIS_URL=redis://127.0.0.1:63799/0\n")
    monkeypatch.setenv("SLA_ENV_FILE", str(path))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    return path


def test_the_settings_find_the_urls_make_up_recorded_in_env(env_file, monkeypatch):
    monkeypatch.setattr(os, "environ", os.environ.copy())  # load_dotenv writes here
    settings = config.get_settings.__wrapped__()  # what every process calls, uncached
    assert settings.database_url == "postgresql+psycopg://" + EMBEDDED.split("://")[1]
    assert settings.redis_url == "redis://127.0.0.1:63799/0"


def test_a_real_environment_variable_wins_over_env(env_file, monkeypatch):
    monkeypatch.setattr(os, "environ", os.environ.copy())
    os.environ["DATABASE_URL"] = "postgresql://app@db.internal:5432/sla"
    config.load_env_file()
    assert os.environ["DATABASE_URL"] == "postgresql://app@db.internal:5432/sla"
    assert os.environ["REDIS_URL"] == "redis://127.0.0.1:63799/0"  # only the unset one


def test_an_empty_sla_env_file_reads_no_file(env_file, monkeypatch):
    """What the tests set (tests/conftest.py): a developer's .env never reaches them."""
    monkeypatch.setattr(os, "environ", os.environ.copy())
    os.environ["SLA_ENV_FILE"] = ""
    assert config.env_file() is None
    config.load_env_file()
    assert "DATABASE_URL" not in os.environ


def test_the_tests_run_with_env_files_switched_off():
    assert os.environ["SLA_ENV_FILE"] == ""
    assert os.environ["FLASK_SKIP_DOTENV"] == "1"


def test_the_queue_is_a_setting_the_tests_change():
    assert Settings.from_env({}).queue == "sla"
    assert Settings.from_env({"SLA_QUEUE": "sla-test"}).queue == "sla-test"
    with pytest.raises(ValueError, match="SLA_QUEUE"):  # a ConfigError
        Settings.from_env({"SLA_QUEUE": "sla test"})
