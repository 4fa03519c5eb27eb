"""A local webhook receiver that prints what the service sends (the README's walk-through).

    .venv/bin/python -m devtools.receiver --port 9000 --secret whsec_...

Every POST, on any path, is verified with the ``standardwebhooks`` package
against the secret (or secrets, during a rotation) and answered 204, or 400
when no secret verifies it; each event is printed once, and a copy already seen
(the same ``webhook-id``, a retry) is acknowledged and marked as such. Without
``--secret`` nothing is verified and every event is printed as unverified.
For a real receiver see docs/webhooks.md; the stack must run with
``SLA_WEBHOOK_ALLOW_PRIVATE_NETWORKS=1`` to send to this machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


def _print(text: str) -> None:
    print(text, flush=True)


def make_handler(secrets: list[str], out=_print) -> type[BaseHTTPRequestHandler]:
    verifiers = [Webhook(secret) for secret in secrets]
    seen: set[str] = set()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k.lower(): v for k, v in self.headers.items()}
            msg_id = headers.get("webhook-id", "?")
            verified = None
            for verifier in verifiers:
                try:
                    verifier.verify(body, headers)
                    verified = True
                    break
                except (WebhookVerificationError, ValueError):
                    verified = False
            if verified is False:
                out(f"{msg_id}: signature does not verify, answered 400")
                self._answer(400)
                return
            with lock:
                again = msg_id in seen
                seen.add(msg_id)
            try:
                event = json.loads(body)
            except ValueError:
                event = body.decode(errors="replace")
            note = "verified" if verified else "not verified: no --secret"
            if again:
                out(f"{msg_id}: again (a retry; already printed)")
            else:
                kind = event.get("type", "?") if isinstance(event, dict) else "?"
                out(f"{msg_id} {kind} ({note})\n{json.dumps(event, indent=2)}")
            self._answer(204)

        def _answer(self, status: int) -> None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args) -> None:  # the events say enough
            pass

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m devtools.receiver", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument(
        "--secret", action="append", default=[], help="whsec_... (twice during a rotation)"
    )
    args = parser.parse_args(argv)
    server = ThreadingHTTPServer((args.host, args.port), make_handler(args.secret))
    print(f"listening on http://{args.host}:{args.port}/ (Ctrl-C to stop)", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
