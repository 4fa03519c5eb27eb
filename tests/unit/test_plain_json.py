"""``plain_json`` may only skip the string walk when the walk would find nothing."""

from __future__ import annotations

import json
import random

import pytest

from web.parsing import MAX_DEPTH, plain_json, text_problems


def nested(depth: int) -> str:
    return '{"a": ' * depth + "1" + "}" * depth


@pytest.mark.parametrize(
    "text",
    [
        '{"lead_id": "a\\u0000b"}',
        '{"lead_id": "\\ud800"}',
        '{"k\\u0000": 1}',
        '{"a": "\\\\u0000"}',  # an escaped backslash: plain_json is merely cautious
        nested(MAX_DEPTH + 2),
        '{"a": [' + "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1) + "]}",
        '{"n": 9223372036854775808}',
        '{"n": [-12345678901234567890123]}',
    ],
)
def test_texts_that_may_hold_problems_are_walked(text):
    assert not plain_json(text)


@pytest.mark.parametrize(
    "text",
    [
        '{"lead_id": "x", "metadata": {"a": [1, 2, {"b": "]]]]{{{{"}]}}',
        '{"s": "quote \\" and [brackets] {inside}", "t": "\\\\"}',
        '{"timers": [' + ", ".join(['{"a": {"b": [1]}}'] * 200) + "]}",
        nested(MAX_DEPTH - 1),
        '{"emoji": "\u00e9\U0001f600"}',
        '{"n": 922337203685477580, "m": -922337203685477580, "s": "12345678901234567890"}',
    ],
)
def test_plain_texts(text):
    assert plain_json(text)
    assert text_problems(json.loads(text)) == []


def _random_value(rng: random.Random, depth: int):
    kind = rng.random()
    if depth > 40 or kind < 0.45:
        leaves = ["x", "a\u0000b", "\ud800", 'q"[{', "\\u", "\u00e9", 1, 2.5, None, True]
        return rng.choice([*leaves, 2**63, -(2**64)])
    if kind < 0.75:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(3))]
    keys = ["k", "k\u0000", "[", "\\"]
    return {rng.choice(keys) + str(i): _random_value(rng, depth + 1) for i in range(2)}


def test_plain_json_never_hides_a_problem():
    rng = random.Random(7)
    for _ in range(3000):
        value = {"root": _random_value(rng, 1)}
        text = json.dumps(value, ensure_ascii=rng.random() < 0.5)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            continue  # a body is decoded from UTF-8: it cannot hold a raw surrogate
        if plain_json(text):
            assert text_problems(json.loads(text)) == [], text
