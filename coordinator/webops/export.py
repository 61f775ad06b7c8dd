"""Exports of WebOps deployments (#21) as CSV or JSON, pure: rows from plain values, one
page at a time (the adapter streams each page as it is encoded, so an export never
holds more than a page)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from typing import Any

import msgspec

from coordinator import timefmt
from coordinator.webops.records import WebDeployment

FORMATS = ("json", "csv")
PAGE = 100
"""Deployments read from the store and encoded at a time."""

COLUMNS = (
    "id",
    "name",
    "status",
    "project_type",
    "repo_url",
    "branch",
    "domain",
    "port",
    "machine",
    "unit",
    "live_build",
    "created_by",
    "created_at",
    "updated_at",
)
"""What an export carries: never the env vars (they hold secrets)."""

FORMULA_LEADS = ("=", "+", "-", "@", "\t", "\r")


def iso(ts: float) -> str:
    return timefmt.iso(ts) or ""


def record(dep: WebDeployment) -> dict[str, Any]:
    return {
        "id": dep.id,
        "name": dep.name,
        "status": dep.status,
        "project_type": dep.project_type,
        "repo_url": dep.repo_url,
        "branch": dep.branch,
        "domain": dep.domain,
        "port": dep.port,
        "machine": dep.machine_id,
        "unit": dep.unit,
        "live_build": dep.live_build,
        "created_by": dep.created_by,
        "created_at": iso(dep.created_at),
        "updated_at": iso(dep.updated_at),
    }


def csv_cell(value: object) -> str:
    """A cell a spreadsheet shows as text: one starting like a formula (`=`, `+`, `-`,
    `@`, tab, carriage return) gets a leading `'` (OWASP's advice); quoting is the csv
    module's."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_LEADS) else text


def csv_header() -> bytes:
    return csv_lines([list(COLUMNS)])


def csv_page(deps: Iterable[WebDeployment]) -> bytes:
    return csv_lines([[csv_cell(v) for v in record(d).values()] for d in deps])


def csv_lines(rows: list[list[str]]) -> bytes:
    out = io.StringIO()
    csv.writer(out, quoting=csv.QUOTE_MINIMAL, lineterminator="\r\n").writerows(rows)
    return out.getvalue().encode("utf-8")


def json_page(deps: Iterable[WebDeployment], first: bool) -> bytes:
    """Items of one JSON array, comma-joined, with the comma before them unless first."""
    parts = [msgspec.json.encode(record(d)) for d in deps]
    if not parts:
        return b""
    return (b"" if first else b",") + b",".join(parts)
