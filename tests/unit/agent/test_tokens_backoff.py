from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.backoff import backoff_delay
from proto.tokens import (
    API_KIND,
    JOIN_KIND,
    TokenFormatError,
    format_token,
    hash_secret,
    new_api_token,
    new_join_token,
    parse_token,
    secret_matches,
)


def test_join_token_round_trip_and_pin() -> None:
    token = new_join_token("ab" * 32)
    text = format_token(token)
    parsed = parse_token(text, JOIN_KIND)
    assert parsed == token
    assert parsed.pin == ("ab" * 32)[:32]


def test_api_token_round_trip() -> None:
    token = new_api_token()
    assert parse_token(format_token(token), API_KIND) == token


@pytest.mark.parametrize(
    "bad", ["", "mat.x.y", "mjt.00.11.22", "mat.00.11.22", "mat.0g.11", "mat..11"]
)
def test_bad_api_tokens(bad: str) -> None:
    with pytest.raises(TokenFormatError):
        parse_token(bad, API_KIND)


def test_secret_is_only_compared_hashed() -> None:
    token = new_api_token()
    stored = hash_secret(token.secret)
    assert token.secret not in stored
    assert secret_matches(token.secret, stored)
    assert not secret_matches(token.secret + "0", stored)


@given(st.integers(0, 100), st.floats(0, 0.999))
def test_backoff_is_bounded_and_jittered(attempt: int, rand: float) -> None:
    delay = backoff_delay(attempt, initial=0.5, maximum=30, rand=rand)
    step = min(30.0, 0.5 * 2**attempt)
    assert step / 2 <= delay <= step


def test_backoff_grows() -> None:
    delays = [backoff_delay(a, initial=0.5, maximum=30, rand=0.0) for a in range(10)]
    assert delays == sorted(delays)
    assert delays[0] == 0.25 and delays[-1] == 15.0
