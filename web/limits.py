"""Length limits of the text the API takes, declared once.

Validation (web/parsing.py, web/schemas.py, the lead routes, the CLI) and the
OpenAPI document (web/openapi.py) both read them from here, so the document
cannot drift from what the service enforces. Column types allow these lengths.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Names a client chooses: lead_id, sla_contract_id, correlation_id, tenant names.
ID_MAX = 200
IDEMPOTENCY_KEY_MAX = 255


@dataclass(frozen=True)
class TextLimit:
    """Text of 1 to ``max_length`` characters."""

    max_length: int

    @property
    def reason(self) -> str:
        return f"must be 1 to {self.max_length} characters"

    def accepts(self, value: str) -> bool:
        return 1 <= len(value) <= self.max_length

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "minLength": 1, "maxLength": self.max_length}

    def describe(self) -> str:
        return f"1 to {self.max_length} characters."


HEADERS = {
    "Idempotency-Key": TextLimit(IDEMPOTENCY_KEY_MAX),
    "X-Correlation-ID": TextLimit(ID_MAX),
}
PATH_PARAMS = {"lead_id": TextLimit(ID_MAX)}
TENANT_NAME = TextLimit(ID_MAX)
