"""deploy/alerts.yml: a Prometheus rule file (promtool is not available here, so
its structure is checked by hand) whose expressions name only metrics the
service exports, and which covers the alerts docs/metrics.md promises."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent.parent
RULES = ROOT / "deploy" / "alerts.yml"
DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
METRIC = re.compile(r"\b(?:sla|dramatiq)_[a-z0-9_]+\b")
REQUIRED = {
    "SlaOverdueBacklog": "sla_timers_oldest_overdue_seconds",
    "SlaFireLatenessP99High": "sla_fire_lateness_seconds_bucket",
    "SlaDeadLettersRising": "sla_dead_letters_total",
    "SlaWebhookDeliveriesFailing": "sla_webhook_deliveries_total",
}


def exported_names() -> set[str]:
    """Every sample name /metrics can hold: the counted metrics (with their
    suffixes) and the state the scrape reads."""
    from prometheus_client import REGISTRY

    from models import metrics
    from web.metrics import STATE_GAUGES, STATE_OTHERS

    names = {name for name, _, _ in STATE_GAUGES} | set(STATE_OTHERS)
    for value in vars(metrics).values():
        if isinstance(value, metrics.prom.metrics.MetricWrapperBase):
            for family in value.collect():
                names |= {s.name for s in family.samples}
                if family.type == "counter":
                    names.add(family.name + "_total")
                if family.type == "histogram":
                    names |= {family.name + suffix for suffix in ("_bucket", "_sum", "_count")}
    assert "sla_timers_started_total" in names and REGISTRY
    return names


def rules() -> list[dict]:
    document = yaml.safe_load(RULES.read_text())
    assert set(document) == {"groups"}
    found = []
    for group in document["groups"]:
        assert set(group) <= {"name", "rules", "interval"} and group["name"]
        found += group["rules"]
    return found


def test_every_rule_is_well_formed():
    names = [r["alert"] for r in rules()]
    assert len(names) == len(set(names))
    for rule in rules():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", rule["alert"])
        assert isinstance(rule["expr"], str) and rule["expr"].strip()
        assert rule["expr"].count("(") == rule["expr"].count(")")
        assert DURATION.match(rule.get("for", "0m")), rule["for"]
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert {"summary", "description"} <= rule["annotations"].keys()


def test_the_promised_alerts_exist():
    by_name = {r["alert"]: r["expr"] for r in rules()}
    for alert, metric in REQUIRED.items():
        assert metric in by_name[alert], alert


def test_every_metric_an_alert_names_is_exported():
    exported = exported_names()
    for rule in rules():
        named = set(METRIC.findall(rule["expr"]))
        assert named, f"{rule['alert']} names no metric of the service"
        assert named <= exported, f"{rule['alert']}: {named - exported} not exported"
