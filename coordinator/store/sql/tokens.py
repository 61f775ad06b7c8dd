"""Join tokens and enrolment (one transaction: token consumed, machine recorded), API tokens."""

from __future__ import annotations

import sqlite3

from coordinator.models import DEFAULT_TENANT, ApiToken, JoinToken
from coordinator.store.ports import EnrollConflict, EnrollRefused
from coordinator.store.sql.core import SqlCore, _record_issued, row_record
from proto.tokens import enrolment_refusal


class TokensSql(SqlCore):
    def create_join_token(
        self,
        token_id: str,
        secret_hash: str,
        *,
        now: float,
        ttl_s: float,
        description: str = "",
        machine_id: str = "",
        tenant: str = DEFAULT_TENANT,
    ) -> JoinToken:
        self.create_join_tokens(
            [(token_id, secret_hash)],
            now=now,
            ttl_s=ttl_s,
            description=description,
            machine_id=machine_id,
            tenant=tenant,
        )
        return JoinToken(
            id=token_id,
            created_at=now,
            expires_at=now + ttl_s,
            description=description,
            machine_id=machine_id,
            tenant=tenant,
        )

    def create_join_tokens(
        self,
        tokens: list[tuple[str, str]],
        *,
        now: float,
        ttl_s: float,
        description: str = "",
        machine_id: str = "",
        tenant: str = DEFAULT_TENANT,
    ) -> None:
        """(id, secret hash) pairs, all in one transaction; `machine_id` binds them; a
        machine enrolled with one of them belongs to `tenant`."""
        with self._raw_tx() as db:
            db.executemany(
                "INSERT INTO join_tokens (id, secret_hash, created_at, expires_at, description,"
                " machine_id, tenant) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(tid, h, now, now + ttl_s, description, machine_id, tenant) for tid, h in tokens],
            )

    def join_token_hash(self, token_id: str, now: float) -> str:
        """The stored hash of a usable token, or EnrollRefused saying why it is unusable."""
        row = self._raw_one("SELECT * FROM join_tokens WHERE id=?", (token_id,))
        if row is None:
            raise EnrollRefused("unknown join token")
        if row["used_at"] is not None:
            raise EnrollRefused("join token was already used")
        if row["expires_at"] <= now:
            raise EnrollRefused("join token has expired")
        return str(row["secret_hash"])

    def enroll(
        self, token_id: str, machine_id: str, *, serial: str, not_after: float, now: float
    ) -> bool:
        """Consume the token and record the machine in one transaction: a token enrols
        once, and never takes over an enrolled machine it is not bound to
        (`tokens.enrolment_refusal`). True when an enrolled machine was re-enrolled:
        its earlier certificates are revoked in the same transaction."""
        try:
            return self._enroll(token_id, machine_id, serial=serial, not_after=not_after, now=now)
        finally:
            self._revocations.clear()  # it may have revoked certificates

    def _enroll(
        self, token_id: str, machine_id: str, *, serial: str, not_after: float, now: float
    ) -> bool:
        with self._raw_tx() as db:
            token = db.execute(
                "SELECT machine_id, tenant FROM join_tokens WHERE id=?", (token_id,)
            ).fetchone()
            machine = db.execute(
                "SELECT revoked FROM machines WHERE id=?", (machine_id,)
            ).fetchone()
            refusal = enrolment_refusal(
                machine_id,
                str(token["machine_id"]) if token is not None else "",
                enrolled=machine is not None,
                revoked=bool(machine["revoked"]) if machine is not None else False,
            )
            if refusal is not None:
                status, reason = refusal
                raise EnrollConflict(reason) if status == 409 else EnrollRefused(reason)
            cur = db.execute(
                "UPDATE join_tokens SET used_at=?, used_by=?"
                " WHERE id=? AND used_at IS NULL AND expires_at>?",
                (now, machine_id, token_id, now),
            )
            if cur.rowcount != 1:
                raise EnrollRefused("join token was already used or has expired")
            replaced = machine is not None and not machine["revoked"]
            if replaced:
                db.execute(
                    "INSERT OR IGNORE INTO revoked_certs (serial, machine_id, revoked_at)"
                    " SELECT serial, machine_id, ? FROM issued_certs WHERE machine_id=?",
                    (now, machine_id),
                )
            # The machine belongs to the token's tenant (a bound token is made only
            # in the machine's own tenant; a revoked id may be enrolled anew elsewhere).
            db.execute(
                "INSERT INTO machines (id, enrolled_at, cert_serial, cert_not_after, state,"
                " state_since, tenant) VALUES (?, ?, ?, ?, 'disconnected', ?, ?)"
                " ON CONFLICT(id) DO UPDATE SET cert_serial=excluded.cert_serial,"
                " cert_not_after=excluded.cert_not_after, revoked=0,"
                " enrolled_at=excluded.enrolled_at, tenant=excluded.tenant",
                (machine_id, now, serial, not_after, now, str(token["tenant"])),
            )
            _record_issued(db, serial, machine_id, now, not_after)
            return replaced

    def join_token_binding(self, token_id: str) -> str:
        """The machine id a join token is bound to ("" for an ordinary token)."""
        row = self._raw_one("SELECT machine_id FROM join_tokens WHERE id=?", (token_id,))
        return str(row["machine_id"]) if row is not None else ""

    def list_join_tokens(self, *, tenant: str | None = None) -> list[JoinToken]:
        if tenant is None:
            rows = self._raw_all("SELECT * FROM join_tokens ORDER BY created_at")
        else:
            rows = self._raw_all(
                "SELECT * FROM join_tokens WHERE tenant=? ORDER BY created_at", (tenant,)
            )
        return [row_record(r, JoinToken) for r in rows]

    # --- API tokens -------------------------------------------------------------------

    def create_api_token(
        self,
        token_id: str,
        secret_hash: str,
        *,
        name: str,
        role: str,
        now: float,
        ttl_s: float | None,
        tenant: str = DEFAULT_TENANT,
        unlimited: bool = False,
    ) -> ApiToken:
        expires = now + ttl_s if ttl_s else None
        with self._raw_tx() as db:
            db.execute(
                "INSERT INTO api_tokens (id, name, role, secret_hash, created_at, expires_at,"
                " tenant, unlimited) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (token_id, name, role, secret_hash, now, expires, tenant, int(unlimited)),
            )
        return ApiToken(
            id=token_id,
            name=name,
            role=role,
            created_at=now,
            expires_at=expires,
            tenant=tenant,
            unlimited=unlimited,
        )

    def api_token(self, token_id: str) -> tuple[ApiToken, str] | None:
        row = self._raw_one("SELECT * FROM api_tokens WHERE id=?", (token_id,))
        if row is None:
            return None
        return _api_token(row), str(row["secret_hash"])

    def list_api_tokens(self, *, tenant: str | None = None) -> list[ApiToken]:
        if tenant is None:
            return [_api_token(r) for r in self._raw_all("SELECT * FROM api_tokens ORDER BY id")]
        rows = self._raw_all("SELECT * FROM api_tokens WHERE tenant=? ORDER BY id", (tenant,))
        return [_api_token(r) for r in rows]

    def set_api_token_unlimited(
        self, token_id: str, unlimited: bool, *, tenant: str | None = None
    ) -> bool:
        with self._raw_tx() as db:
            return (
                db.execute(
                    "UPDATE api_tokens SET unlimited=? WHERE id=? AND tenant=COALESCE(?, tenant)",
                    (int(unlimited), token_id, tenant),
                ).rowcount
                == 1
            )

    def revoke_api_token(self, token_id: str, *, tenant: str | None = None) -> bool:
        """Revoke a token (of `tenant` only, when given: another tenant's is not found)."""
        with self._raw_tx() as db:
            return (
                db.execute(
                    "UPDATE api_tokens SET revoked=1 WHERE id=? AND tenant=COALESCE(?, tenant)",
                    (token_id, tenant),
                ).rowcount
                == 1
            )


def _api_token(row: sqlite3.Row) -> ApiToken:
    return row_record(row, ApiToken)
