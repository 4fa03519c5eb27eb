"""The web role check's verdicts and messages (models.db.isolation_problem)."""

from __future__ import annotations

import pytest

from models.db import RoleFacts, isolation_problem

PLAIN = RoleFacts("sla_app", superuser=False, bypass_rls=False, maintenance=(), all_tenants=False)


def test_a_plain_role_passes():
    assert isolation_problem(PLAIN, "sla_app") is None
    owner = RoleFacts("u8f3k", False, False, (), False)  # a PaaS owner login, single-login mode
    assert isolation_problem(owner, None) is None


@pytest.mark.parametrize(
    ("change", "cause"),
    [
        ({"superuser": True}, "is a superuser"),
        ({"bypass_rls": True}, "has BYPASSRLS"),
        ({"maintenance": ("sla_maintenance",)}, "inherits sla_maintenance"),
        ({"all_tenants": True}, "app.all_tenants=on"),
    ],
)
def test_each_cause_is_named_on_one_line_with_its_fix(change, cause):
    facts = RoleFacts(**{**PLAIN.__dict__, "role": "postgres", **change})
    empty = isolation_problem(facts, None)
    assert empty is not None and "\n" not in empty
    assert cause in empty and "'postgres'" in empty
    assert "SLA_DB_APP_ROLE is empty" in empty and "set SLA_DB_APP_ROLE=sla_app" in empty
    named = isolation_problem(facts, "postgres")
    assert "SLA_DB_APP_ROLE=postgres" in named and "point SLA_DB_APP_ROLE at a role" in named


def test_several_causes_are_all_named_but_a_superuser_is_just_that():
    facts = RoleFacts("x", False, True, ("sla_maintenance",), False)
    message = isolation_problem(facts, None)
    assert "'x' has BYPASSRLS and inherits sla_maintenance" in message
    # A superuser also has BYPASSRLS and every role: saying so adds nothing.
    postgres = RoleFacts("postgres", True, True, ("sla_maintenance",), False)
    message = isolation_problem(postgres, None)
    assert "is a superuser, which row-level security does not apply to (" in message
