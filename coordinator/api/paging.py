"""fleet's opaque page tokens, as pure functions.

A token is URL-safe base64 (padded) of little-endian `{uint16 limit, uint16 page}`,
exactly what fleet v1.0.0 emits, so tokens minted by either server page the other.
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Sequence
from typing import TypeVar

import msgspec

T = TypeVar("T")

DEFAULT_LIMIT = 100
_FORMAT = "<HH"


class PageToken(msgspec.Struct, frozen=True):
    limit: int = DEFAULT_LIMIT
    page: int = 1


class PageTokenError(ValueError):
    pass


def encode_token(token: PageToken) -> str:
    return base64.urlsafe_b64encode(struct.pack(_FORMAT, token.limit, token.page)).decode()


def decode_token(text: str) -> PageToken:
    try:
        raw = base64.urlsafe_b64decode(text.encode())
        limit, page = struct.unpack(_FORMAT, raw)
    except (binascii.Error, struct.error, ValueError):
        raise PageTokenError("malformed nextPageToken") from None
    if page < 1:
        raise PageTokenError("nextPageToken page must be >= 1")
    if limit < 1:
        raise PageTokenError("nextPageToken limit must be >= 1")
    return PageToken(limit, page)


def token_from_query(values: Sequence[str]) -> PageToken:
    """The page asked for by the `nextPageToken` query values (none means the first)."""
    if len(values) > 1:
        raise PageTokenError("more than one nextPageToken given")
    if not values:
        return PageToken()
    return decode_token(values[0])


def page(items: Sequence[T], token: PageToken) -> tuple[list[T], str | None]:
    """One page of already-ordered items and the token of the next page, if any."""
    start = (token.page - 1) * token.limit
    chunk = list(items[start : start + token.limit])
    more = len(items) > start + token.limit
    return chunk, encode_token(PageToken(token.limit, token.page + 1)) if more else None


def page_bounds(token: PageToken) -> tuple[int, int]:
    """The slice `start:stop` of the ordered items `token` asks for."""
    start = (token.page - 1) * token.limit
    return start, start + token.limit


def next_token(token: PageToken, total: int) -> str | None:
    """The token of the page after `token`'s, if `total` items leave one."""
    more = total > token.page * token.limit
    return encode_token(PageToken(token.limit, token.page + 1)) if more else None
