"""The tenant the current request may touch, for the database's own wall (#23).

The services check tenancy themselves (another tenant's object is 404). On PostgreSQL
the store adds a second wall: row-level security on every tenant-owned table, keyed by
the session setting `moorage.tenant`, which the store sets from this variable. The API
middleware sets it for a caller bound to one tenant; background work (scheduling,
liveness, agents' sessions, enrolment) and admins run unscoped (None) and see every row.
"""

from __future__ import annotations

from contextvars import ContextVar

TENANT_SCOPE: ContextVar[str | None] = ContextVar("moorage_tenant_scope", default=None)
"""None: every tenant's rows; a name: only that tenant's rows (PostgreSQL enforces it)."""

SETTING = "moorage.tenant"
"""The PostgreSQL setting the row-level security policies read ('' = unscoped)."""
