"""docs/deploy.md stays complete: its environment table lists every variable the
service reads, each with the default the code has and a description
(devtools/envdoc.py regenerates it), and the guide covers every Procfile role and
points at the metrics guide and the alert rules. Files only."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from devtools import envdoc
from models.config import Settings

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "deploy.md"


def test_the_environment_table_is_what_the_code_says():
    written, generated = envdoc.current()
    assert written == generated, "out of date: run python -m devtools.envdoc"


def test_every_variable_has_a_description():
    rows = re.findall(r"^\| `(\w+)` \| .*? \| (.*) \|$", envdoc.current()[0], re.M)
    assert len(rows) == len(envdoc.rows())
    undescribed = [name for name, description in rows if not description.strip()]
    assert not undescribed, f"describe in docs/deploy.md: {undescribed}"


def test_every_setting_is_read_from_a_variable_the_table_finds():
    by_field = {field for _, field in envdoc.settings_variables().values()}
    assert {f.name for f in fields(Settings)} <= by_field


def test_every_variable_read_outside_the_settings_is_in_the_table():
    missing = envdoc.read_elsewhere() - envdoc.rows().keys()
    assert not missing, f"add to devtools/envdoc.py OTHER and describe: {sorted(missing)}"


def test_defaults_are_the_codes():
    table = dict(re.findall(r"^\| `(\w+)` \| (.*?) \|", envdoc.current()[0], re.M))
    assert table["DATABASE_URL"] == "`postgresql://postgres@127.0.0.1:5432/postgres`"
    assert table["SLA_BATCH_SIZE"] == f"`{Settings.from_env({}).batch_size}`"
    assert table["SLA_ADMIN_TOKEN"] == "unset"
    assert table["SLA_WEBHOOK_ALLOW_PRIVATE_NETWORKS"] == "`0`"


def test_the_guide_covers_every_procfile_role_and_points_at_metrics_and_alerts():
    text = DOC.read_text()
    roles = re.findall(r"^(\w+):", (ROOT / "Procfile").read_text(), re.M)
    assert roles, "the Procfile has roles"
    for role in roles:
        assert f"| `{role}` |" in text, role
    for target in ("metrics.md", "../deploy/alerts.yml"):
        assert f"]({target})" in text
    for heading in (
        "several schedulers are safe",
        "Upgrades that keep every timer",
        "Pool sizing",
        "Redis: no persistence",
        "Metrics to watch",
    ):
        assert heading in text, heading
