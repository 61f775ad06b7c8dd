from __future__ import annotations

import base64
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coordinator.api.paging import (
    DEFAULT_LIMIT,
    PageToken,
    PageTokenError,
    decode_token,
    encode_token,
    next_token,
    page,
    page_bounds,
    token_from_query,
)


def test_token_is_fleets_format() -> None:
    # fleet v1.0.0: URL-safe base64 (padded) of little-endian {uint16 limit, uint16 page}
    assert (
        encode_token(PageToken(100, 2))
        == base64.urlsafe_b64encode(struct.pack("<HH", 100, 2)).decode()
    )
    assert encode_token(PageToken(100, 2)) == "ZAACAA=="


@given(st.integers(1, 65535), st.integers(1, 65535))
def test_round_trip(limit: int, page_no: int) -> None:
    assert decode_token(encode_token(PageToken(limit, page_no))) == PageToken(limit, page_no)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "!!!",
        "ZAAA",
        base64.urlsafe_b64encode(struct.pack("<HH", 100, 0)).decode(),
        base64.urlsafe_b64encode(struct.pack("<HH", 0, 1)).decode(),
        "ZAACAAAA",
    ],
)
def test_malformed_tokens_are_refused(bad: str) -> None:
    with pytest.raises(PageTokenError):
        decode_token(bad)


def test_more_than_one_token_is_refused() -> None:
    with pytest.raises(PageTokenError):
        token_from_query(["ZAACAA==", "ZAACAA=="])


def test_no_token_means_first_page_of_default_size() -> None:
    assert token_from_query([]) == PageToken(DEFAULT_LIMIT, 1)


def test_paging_250_items_by_100() -> None:
    items = list(range(250))
    seen: list[int] = []
    token = PageToken()
    pages = 0
    while True:
        chunk, nxt = page(items, token)
        seen += chunk
        pages += 1
        if nxt is None:
            break
        token = decode_token(nxt)
    assert seen == items
    assert pages == 3


def test_exact_multiple_has_no_trailing_token() -> None:
    chunk, nxt = page(list(range(100)), PageToken())
    assert len(chunk) == 100 and nxt is None


@given(st.integers(0, 350), st.integers(1, 120), st.integers(1, 6))
def test_bounds_and_next_token_page_like_page(total: int, limit: int, page_no: int) -> None:
    """The fleet adapter slices units in the store by `page_bounds`: the same pages."""
    token = PageToken(limit, page_no)
    items = list(range(total))
    start, stop = page_bounds(token)
    assert (items[start:stop], next_token(token, total)) == page(items, token)
