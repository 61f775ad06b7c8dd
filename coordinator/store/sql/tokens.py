"""Join tokens and enrolment (one transaction: token consumed, machine recorded), API tokens."""

from __future__ import annotations

import sqlalchemy as sa

from coordinator.models import DEFAULT_TENANT, ApiToken, JoinToken
from coordinator.store.ports import EnrollConflict, EnrollRefused
from coordinator.store.sql import schema
from coordinator.store.sql.core import SqlCore, record_issued, row_record
from proto.tokens import enrolment_refusal

_join = schema.join_tokens
_api = schema.api_tokens


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
        """(id, secret hash) pairs, all in one transaction (one batched INSERT);
        `machine_id` binds them; a machine enrolled with one of them belongs to `tenant`."""
        if not tokens:
            return
        rows = [
            {
                "id": tid,
                "secret_hash": h,
                "created_at": now,
                "expires_at": now + ttl_s,
                "description": description,
                "machine_id": machine_id,
                "tenant": tenant,
            }
            for tid, h in tokens
        ]
        with self._tx() as db:
            db.execute(sa.insert(_join), rows)

    def join_token_hash(self, token_id: str, now: float) -> str:
        """The stored hash of a usable token, or EnrollRefused saying why it is unusable."""
        row = self._first(
            sa.select(_join.c.used_at, _join.c.expires_at, _join.c.secret_hash).where(
                _join.c.id == token_id
            )
        )
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
        m = schema.machines
        issued = schema.issued_certs
        with self._tx() as db:
            token = (
                db.execute(
                    sa.select(_join.c.machine_id, _join.c.tenant).where(_join.c.id == token_id)
                )
                .mappings()
                .first()
            )
            machine = db.execute(sa.select(m.c.revoked).where(m.c.id == machine_id)).first()
            refusal = enrolment_refusal(
                machine_id,
                str(token["machine_id"]) if token is not None else "",
                enrolled=machine is not None,
                revoked=bool(machine.revoked) if machine is not None else False,
            )
            if refusal is not None:
                status, reason = refusal
                raise EnrollConflict(reason) if status == 409 else EnrollRefused(reason)
            consumed = db.execute(
                sa.update(_join)
                .where(_join.c.id == token_id, _join.c.used_at.is_(None), _join.c.expires_at > now)
                .values(used_at=now, used_by=machine_id)
            )
            if consumed.rowcount != 1:
                raise EnrollRefused("join token was already used or has expired")
            assert token is not None  # it was just consumed
            replaced = machine is not None and not machine.revoked
            if replaced:
                db.execute(
                    self._insert(schema.revoked_certs)
                    .from_select(
                        ["serial", "machine_id", "revoked_at"],
                        sa.select(
                            issued.c.serial,
                            issued.c.machine_id,
                            sa.literal(now, schema.Real),
                        ).where(issued.c.machine_id == machine_id),
                    )
                    .on_conflict_do_nothing()
                )
            # The machine belongs to the token's tenant (a bound token is made only
            # in the machine's own tenant; a revoked id may be enrolled anew elsewhere).
            insert = self._insert(m).values(
                id=machine_id,
                enrolled_at=now,
                cert_serial=serial,
                cert_not_after=not_after,
                state="disconnected",
                state_since=now,
                tenant=str(token["tenant"]),
            )
            db.execute(
                insert.on_conflict_do_update(
                    index_elements=[m.c.id],
                    set_={
                        "cert_serial": insert.excluded.cert_serial,
                        "cert_not_after": insert.excluded.cert_not_after,
                        "revoked": 0,
                        "enrolled_at": insert.excluded.enrolled_at,
                        "tenant": insert.excluded.tenant,
                    },
                )
            )
            record_issued(db, serial, machine_id, now, not_after)
            return replaced

    def join_token_binding(self, token_id: str) -> str:
        """The machine id a join token is bound to ("" for an ordinary token)."""
        value = self._scalar(sa.select(_join.c.machine_id).where(_join.c.id == token_id))
        return str(value) if value is not None else ""

    def list_join_tokens(self, *, tenant: str | None = None) -> list[JoinToken]:
        stmt = sa.select(_join).order_by(_join.c.created_at, _join.c.id)
        if tenant is not None:
            stmt = stmt.where(_join.c.tenant == tenant)
        return [row_record(r, JoinToken) for r in self._maps(stmt)]

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
        with self._tx() as db:
            db.execute(
                sa.insert(_api).values(
                    id=token_id,
                    name=name,
                    role=role,
                    secret_hash=secret_hash,
                    created_at=now,
                    expires_at=expires,
                    tenant=tenant,
                    unlimited=int(unlimited),
                )
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
        row = self._first(sa.select(_api).where(_api.c.id == token_id))
        if row is None:
            return None
        return row_record(row, ApiToken), str(row["secret_hash"])

    def list_api_tokens(self, *, tenant: str | None = None) -> list[ApiToken]:
        stmt = sa.select(_api).order_by(_api.c.id)
        if tenant is not None:
            stmt = stmt.where(_api.c.tenant == tenant)
        return [row_record(r, ApiToken) for r in self._maps(stmt)]

    def set_api_token_unlimited(
        self, token_id: str, unlimited: bool, *, tenant: str | None = None
    ) -> bool:
        with self._tx() as db:
            result = db.execute(
                sa.update(_api)
                .where(_api.c.id == token_id, *_of_tenant(tenant))
                .values(unlimited=int(unlimited))
            )
            return result.rowcount == 1

    def revoke_api_token(self, token_id: str, *, tenant: str | None = None) -> bool:
        """Revoke a token (of `tenant` only, when given: another tenant's is not found)."""
        with self._tx() as db:
            result = db.execute(
                sa.update(_api).where(_api.c.id == token_id, *_of_tenant(tenant)).values(revoked=1)
            )
            return result.rowcount == 1


def _of_tenant(tenant: str | None) -> list[sa.ColumnElement[bool]]:
    """The API-token condition for "of `tenant`, or of any tenant when None". Pure."""
    return [] if tenant is None else [_api.c.tenant == tenant]
