"""The enrolment exchange (HTTPS JSON, before the agent has a certificate)."""

from __future__ import annotations

import re

import msgspec

ENROLL_PATH = "/agent/v1/enroll"
CA_PATH = "/agent/v1/ca"
HUB_PATH = "/agent/v1"

_MACHINE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
"""Matched with `fullmatch`: `$` would also match before a trailing newline."""


class EnrollRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    token: str
    machine_id: str
    csr_pem: str


class EnrollResponse(msgspec.Struct, frozen=True):
    machine_id: str
    cert_pem: str
    ca_pem: str
    hub_url: str
    """The enrolling coordinator's own hub: all an agent older than `hub_urls` uses."""
    hub_urls: list[str] = []
    """Every coordinator's hub, in the order to try them (#23). Empty from a coordinator
    older than the field: `hub_urls_of` falls back to `hub_url`."""


def hub_urls_of(response: EnrollResponse) -> list[str]:
    """The hubs an enrolment answer names, whichever coordinator version sent it."""
    return unique_urls(response.hub_urls or [response.hub_url])


def unique_urls(urls: list[str]) -> list[str]:
    """`urls` without blanks and repeats, first occurrence kept (order is preference)."""
    return list(dict.fromkeys(u for u in urls if u))


def machine_id_problem(machine_id: str) -> str | None:
    """Why a machine id is unusable (it becomes a certificate CN and a URL segment), or None."""
    if not _MACHINE_ID.fullmatch(machine_id):
        return (
            "machine id must be 1-64 characters of [A-Za-z0-9_.-] starting with a letter or digit"
        )
    return None
