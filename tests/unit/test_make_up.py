"""`make up` on a machine without SLA_ADMIN_TOKEN: a local token is generated,
kept in the project's .env (which honcho and the settings read, so the admin
routes and the Dramatiq dashboard exist) and printed with the links to the API,
the docs, the dashboard and the ops page. Files only: no network, no process."""

from __future__ import annotations

from pathlib import Path

from dotenv import dotenv_values

from devtools import services

ROOT = Path(__file__).resolve().parents[2]


def test_without_a_token_one_is_generated_and_kept_in_env(tmp_path, monkeypatch):
    monkeypatch.delenv("SLA_ADMIN_TOKEN", raising=False)
    env_file = tmp_path / ".env"
    env_file.write_text("DATABASE_URL=postgresql://postgres@127.0.0.1:54329/postgres\n")

    token, made = services.admin_token(env_file)
    assert made and len(token) >= 32
    recorded = dotenv_values(env_file)
    assert recorded["SLA_ADMIN_TOKEN"] == token
    assert recorded["DATABASE_URL"].endswith(":54329/postgres")  # the rest is kept
    assert env_file.stat().st_mode & 0o777 == 0o600  # a credential: the owner's alone

    # The next `make up` keeps it: dashboards and scripts go on working.
    assert services.admin_token(env_file) == (token, False)


def test_a_set_token_wins_and_nothing_is_written(tmp_path, monkeypatch):
    env_file = tmp_path / ".env"
    monkeypatch.setenv("SLA_ADMIN_TOKEN", "from-the-environment")
    assert services.admin_token(env_file) == ("from-the-environment", False)
    assert not env_file.exists()


def test_the_token_is_printed_as_an_export_for_make_up(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("SLA_ADMIN_TOKEN", raising=False)
    services.cmd_admin_token(tmp_path / ".env")
    out, err = capsys.readouterr()
    token = dotenv_values(tmp_path / ".env")["SLA_ADMIN_TOKEN"]
    assert out == f"export SLA_ADMIN_TOKEN={token}\n"
    assert "generated" in err


def test_the_links_name_the_api_docs_dashboard_and_ops_page():
    text = services.links("http://127.0.0.1:8000", "tok-123")
    for url in ("/v1/", "/openapi.json", "/docs", "/dramatiq/", "/ui/"):
        assert f"http://127.0.0.1:8000{url}" in text
    assert "SLA_ADMIN_TOKEN=tok-123" in text
    assert "password: the admin token" in text
    assert "tok-123" not in services.links("http://127.0.0.1:8000", None)


def test_make_up_generates_the_token_and_prints_the_links():
    recipe = (ROOT / "Makefile").read_text().split("\nup:", 1)[1].split("\n\n", 1)[0]
    assert "devtools.services admin-token" in recipe
    assert "devtools.services links &" in recipe  # in the background, beside honcho
    assert recipe.index("admin-token") < recipe.index("honcho start")
