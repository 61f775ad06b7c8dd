"""`moorctl audit`: its query and its rows, as pure functions."""

from __future__ import annotations

import click
import pytest

from moorctl.cli import audit_params, audit_row


def test_audit_params_keep_what_was_given_and_turn_durations_into_times() -> None:
    params = audit_params(
        {
            "principal": "token:ci",
            "status": 401,
            "kind": None,
            "since": "1h",
            "until": "",
            "path": "",
        },
        now=10_000.0,
    )
    assert params == {"principal": "token:ci", "status": "401", "since": "6400.000"}
    assert audit_params({"since": "1700000000.5"}, now=1.0) == {"since": "1700000000.5"}
    with pytest.raises(click.BadParameter):
        audit_params({"since": "yesterday"}, now=1.0)


def test_audit_rows_for_requests_and_events() -> None:
    request = {
        "at": 0.0,
        "kind": "request",
        "principal_kind": "token",
        "principal": "ci",
        "tenant": "default",
        "method": "PUT",
        "path": "/fleet/v1/units/a.service",
        "status": 201,
        "client_ip": "10.0.0.1",
    }
    row = audit_row(request)
    assert row[1:] == ["token:ci", "default", "PUT", "/fleet/v1/units/a.service", "201", "10.0.0.1"]
    anonymous = audit_row({"at": 0.0, "method": "POST", "path": "/x", "status": 401})
    assert anonymous[1:3] == ["-", "-"]
    event = audit_row({"at": 0.0, "kind": "event", "event": "machine.lost", "subject": "m1"})
    assert event[1:] == ["-", "-", "event", "machine.lost m1", "-", "-"]
