"""RFC 3339 times as the APIs and exports show them (UTC, `Z`): one formatter for every
family, so a timestamp reads the same through each."""

from __future__ import annotations

import datetime


def iso(ts: float, timespec: str = "seconds") -> str | None:
    """`2026-12-07T02:30:00Z` (or with `timespec="milliseconds"`); None for 0 (never).
    Pure."""
    if not ts:
        return None
    moment = datetime.datetime.fromtimestamp(ts, datetime.UTC)
    return moment.isoformat(timespec=timespec).replace("+00:00", "Z")
