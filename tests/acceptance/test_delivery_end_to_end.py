"""Webhooks end to end: the HTTP API, a real Dramatiq worker process and a real
local receiver (tests/support/receiver.py).

A timer started over HTTP fires through its wake-up, and the worker's
delivery actor POSTs its ``sla.timer.started``, ``sla.timer.due`` and
``sla.escalation.triggered`` events to the tenant's subscription, signed
(verified with ``standardwebhooks``' own verifier), in the timer's order.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook

from devtools.processes import Service
from tests.integration.test_delivery import deliveries, subscribe
from tests.support.common import wait_until
from tests.support.receiver import Receiver

BIN = Path(sys.executable).parent


@pytest.fixture
def worker(engine, tmp_path) -> Iterator[Service]:
    env = {**os.environ, "SLA_WEBHOOK_ALLOW_PRIVATE_NETWORKS": "1"}
    proc = Service(
        [str(BIN / "dramatiq"), "tasks", "--processes", "1", "--threads", "4"],
        env,
        tmp_path / "worker.log",
        ready="is ready for action",
    )
    yield proc
    proc.stop()


def test_a_fired_timer_reaches_the_subscription_signed_and_in_order(engine, tenant, worker, client):
    with Receiver() as receiver:
        sub = subscribe(engine, tenant[0], receiver.url + "/sla")
        response = client.post("/v1/timers", json={"lead_id": "lead-42", "window_seconds": 2})
        assert response.status_code == 201, response.json
        timer_id = response.json["id"]

        requests = receiver.wait_for(3, timeout=20)
        verified = [Webhook(sub["secret"]).verify(r.body, r.headers) for r in requests]
        assert [v["type"] for v in verified] == [
            "sla.timer.started",
            "sla.timer.due",
            "sla.escalation.triggered",
        ]
        assert all(v["data"]["timer_id"] == timer_id for v in verified)
        assert [r.webhook_id for r in requests] == [v["id"] for v in verified]
        step = verified[2]["data"]
        assert (step["escalation_step"], step["lead_id"]) == (1, "lead-42")
        assert {"action", "target", "correlation_id", "sla_contract_id"} <= step.keys()
        wait_until(
            lambda: all(d["status"] == "DELIVERED" for d in deliveries(engine)),
            5,
            "the deliveries to be recorded",
        )
        assert len(receiver.received()) == 3  # each once
