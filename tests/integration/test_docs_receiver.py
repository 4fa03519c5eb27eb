"""The Flask receiver of docs/webhooks.md works as documented: the code block is
taken from the document, run as a module (over a real server thread, and through
Flask's test client), and sent requests signed as the service signs them
(models/signatures.py): a signed event is processed once however often it comes,
a bad signature is refused, either secret verifies during a rotation, and an
event whose processing failed is processed when it comes again."""

from __future__ import annotations

import importlib.util
import re
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

import pytest

from models.envelope import body as envelope_body
from models.envelope import event_id
from models.signatures import headers as signed_headers
from models.signatures import new_secret

DOC = Path(__file__).resolve().parents[2] / "docs" / "webhooks.md"
MARKER = "<!-- docs-receiver:"
PATH = "/webhooks/sla"


def receiver_source() -> str:
    text = DOC.read_text(encoding="utf-8")
    assert MARKER in text, "docs/webhooks.md lost the receiver's marker"
    block = re.search(r"```python\n(.*?)```", text[text.index(MARKER) :], re.S)
    assert block, "no python block after the marker"
    return block.group(1)


@pytest.fixture
def load_receiver(tmp_path, monkeypatch):
    """``load_receiver(secrets)``: the document's receiver as a fresh module."""

    def load(*secrets: str):
        monkeypatch.setenv("WEBHOOK_SECRET", " ".join(secrets))
        monkeypatch.setenv("WEBHOOK_DB", str(tmp_path / f"{uuid4().hex}.db"))
        path = tmp_path / "receiver.py"
        path.write_text(receiver_source(), encoding="utf-8")
        spec = importlib.util.spec_from_file_location(f"docs_receiver_{uuid4().hex}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


def event(outbox_id: int, lead: str = "42") -> tuple[str, str]:
    """(webhook-id, body) of an escalation event, serialized as the service sends it."""
    row = {
        "id": outbox_id,
        "tenant_id": uuid4(),
        "event_type": "sla.escalation.triggered",
        "created_at": datetime.now(UTC),
        "payload": {
            "type": "sla.escalation.triggered",
            "timer_id": str(uuid4()),
            "lead_id": lead,
            "sla_contract_id": "default",
            "correlation_id": f"lead-{lead}",
            "escalation_step": 1,
            "action": "notify",
            "target": "owner",
        },
    }
    return event_id(outbox_id), envelope_body(row)


def signed(secrets: list[str], msg_id: str, body: str, at: int | None = None) -> dict:
    return {
        **signed_headers(secrets, msg_id, at or int(time.time()), body),
        "Content-Type": "application/json",
    }


def rows(module, table: str) -> int:
    with sqlite3.connect(module.os.environ["WEBHOOK_DB"]) as db:
        return db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def post(client, msg_headers: dict, body: str) -> int:
    return client.post(PATH, data=body, headers=msg_headers).status_code


def test_docs_receiver_processes_a_signed_event_once_over_a_real_server(load_receiver):
    from werkzeug.serving import make_server

    secret = new_secret()
    module = load_receiver(secret)
    server = make_server("127.0.0.1", 0, module.app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        msg_id, body = event(1042)

        def send(msg_headers: dict) -> int:
            request = urllib.request.Request(
                f"http://127.0.0.1:{server.server_port}{PATH}",
                data=body.encode(),
                headers=msg_headers,
                method="POST",
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    return response.status
            except urllib.error.HTTPError as exc:
                return exc.code

        assert send(signed([secret], msg_id, body)) == 204
        # A retry: the same webhook-id, signed again later. Acknowledged, not processed again.
        assert send(signed([secret], msg_id, body, int(time.time()) + 1)) == 204
        assert send(signed([secret], msg_id, body)) == 204
    finally:
        server.shutdown()
        thread.join(5)
    assert rows(module, "processed") == 1
    assert rows(module, "escalations") == 1
    with sqlite3.connect(module.os.environ["WEBHOOK_DB"]) as db:
        assert db.execute("SELECT event_id, type, lead_id FROM escalations").fetchone() == (
            "evt_1042",
            "sla.escalation.triggered",
            "42",
        )


def test_docs_receiver_refuses_a_bad_signature(load_receiver):
    secret = new_secret()
    module = load_receiver(secret)
    client = module.app.test_client()
    msg_id, body = event(7)
    good = signed([secret], msg_id, body)

    cases = {
        "another secret": (signed([new_secret()], msg_id, body), body),
        "a changed body": (good, body.replace('"42"', '"43"')),
        "another webhook-id": ({**good, "webhook-id": "evt_8"}, body),
        "a malformed signature": ({**good, "webhook-signature": "garbage"}, body),
        "no signature": ({k: v for k, v in good.items() if k != "webhook-signature"}, body),
        "a timestamp 10 minutes old": (
            signed([secret], msg_id, body, int(time.time()) - 600),
            body,
        ),
    }
    for case, (msg_headers, sent) in cases.items():
        status = post(client, msg_headers, sent)
        assert 400 <= status < 500, f"{case}: {status}"
    assert rows(module, "processed") == 0
    assert rows(module, "escalations") == 0
    # The same receiver takes the correctly signed request.
    assert post(client, good, body) == 204
    assert rows(module, "escalations") == 1


def test_docs_receiver_verifies_with_either_secret_during_a_rotation(load_receiver):
    old, new = new_secret(), new_secret()
    msg_id, body = event(9)
    # The service signs with both during the grace period: a receiver still on
    # the old secret verifies, and so does one already on the new.
    for receiver_secrets in ([old], [new], [new, old]):
        module = load_receiver(*receiver_secrets)
        assert post(module.app.test_client(), signed([new, old], msg_id, body), body) == 204
        assert rows(module, "escalations") == 1
    # A receiver given both secrets takes a request signed with either alone.
    module = load_receiver(new, old)
    client = module.app.test_client()
    for secret, outbox_id in ((old, 10), (new, 11)):
        msg_id, body = event(outbox_id)
        assert post(client, signed([secret], msg_id, body), body) == 204
    assert rows(module, "escalations") == 2


def test_docs_receiver_processes_an_event_again_after_its_processing_failed(load_receiver):
    secret = new_secret()
    module = load_receiver(secret)
    module.app.config["PROPAGATE_EXCEPTIONS"] = False  # a 500, as in production
    client = module.app.test_client()
    msg_id, body = event(12)
    real_handle = module.handle

    def failing(event: dict) -> None:
        real_handle(event)  # written, then rolled back with the webhook-id's record
        raise RuntimeError("the CRM is down")

    module.handle = failing
    assert post(client, signed([secret], msg_id, body), body) == 500
    assert rows(module, "processed") == 0
    assert rows(module, "escalations") == 0
    module.handle = real_handle
    # The service retries with the same webhook-id: processed now, once.
    assert post(client, signed([secret], msg_id, body), body) == 204
    assert post(client, signed([secret], msg_id, body), body) == 204
    assert (rows(module, "processed"), rows(module, "escalations")) == (1, 1)
