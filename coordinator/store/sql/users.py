"""Users, their tenants, and the tokens they got by logging in."""

from __future__ import annotations

import json
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.engine import Connection, RowMapping

from coordinator.errors import Conflict
from coordinator.models import User, UserToken
from coordinator.store.sql import schema
from coordinator.store.sql.core import SqlCore, in_chunks

_users = schema.users
_user_tenants = schema.user_tenants
_tokens = schema.user_tokens


class UsersSql(SqlCore):
    def create_user(
        self,
        username: str,
        *,
        email: str,
        password_hash: str,
        is_staff: bool,
        permissions: Sequence[str],
        tenants: Sequence[str],
        now: float,
    ) -> User:
        with self._tx() as db:
            try:
                # A savepoint: on PostgreSQL a failed statement aborts its transaction,
                # and the conflict must leave the (possibly joined) transaction usable.
                with db.begin_nested():
                    result = db.execute(
                        sa.insert(_users).values(
                            username=username,
                            email=email,
                            password_hash=password_hash,
                            is_staff=int(is_staff),
                            permissions=json.dumps(list(permissions)),
                            created_at=now,
                        )
                    )
            except exc.IntegrityError:
                raise Conflict(f"user {username!r} already exists") from None
            key = result.inserted_primary_key
            assert key is not None
            user_id = int(key[0])
            if tenants:
                db.execute(
                    self._insert(schema.tenants).on_conflict_do_nothing(),
                    [{"name": t, "created_at": now} for t in tenants],
                )
                db.execute(
                    sa.insert(_user_tenants),
                    [
                        {"user_id": user_id, "tenant": t, "position": i}
                        for i, t in enumerate(tenants)
                    ],
                )
            found = _load_users(db, [user_id])
        return found[0]

    def get_user(self, user_id: int) -> User | None:
        with self._read() as db:
            found = _load_users(db, [user_id])
        return found[0] if found else None

    def user_by_name(self, username: str) -> tuple[User, str] | None:
        with self._read() as db:
            row = (
                db.execute(sa.select(_users).where(_users.c.username == username))
                .mappings()
                .first()
            )
            if row is None:
                return None
            user = _user(row, _tenants_of(db, [int(row["id"])]))
        return user, str(row["password_hash"])

    def list_users(self, *, offset: int = 0, limit: int = 100) -> tuple[list[User], int]:
        with self._read() as db:
            total = int(db.execute(sa.select(sa.func.count()).select_from(_users)).scalar() or 0)
            rows = (
                db.execute(sa.select(_users).order_by(_users.c.id).limit(limit).offset(offset))
                .mappings()
                .all()
            )
            tenants = _tenants_of(db, [int(r["id"]) for r in rows])
        return [_user(r, tenants) for r in rows], total

    def count_users(self) -> int:
        return int(self._scalar(sa.select(sa.func.count()).select_from(_users)) or 0)

    def set_user_permissions(self, user_id: int, permissions: Sequence[str]) -> bool:
        return self._update_user(user_id, permissions=json.dumps(list(permissions)))

    def set_password_hash(self, user_id: int, password_hash: str) -> bool:
        return self._update_user(user_id, password_hash=password_hash)

    def set_user_disabled(self, user_id: int, disabled: bool) -> bool:
        return self._update_user(user_id, disabled=int(disabled))

    def _update_user(self, user_id: int, **values: object) -> bool:
        """Set columns of one user: whether the user exists."""
        with self._tx() as db:
            result = db.execute(sa.update(_users).where(_users.c.id == user_id).values(**values))
            return result.rowcount == 1

    def tenants(self) -> list[str]:
        t = schema.tenants
        return [str(r[0]) for r in self._rows(sa.select(t.c.name).order_by(t.c.name))]

    def create_user_token(
        self,
        token_id: str,
        secret_hash: str,
        *,
        user_id: int,
        name: str,
        tenant: str,
        permissions: Sequence[str],
        now: float,
        expires_at: float,
    ) -> UserToken:
        with self._tx() as db:
            db.execute(
                sa.insert(_tokens).values(
                    id=token_id,
                    user_id=user_id,
                    name=name,
                    tenant=tenant,
                    permissions=json.dumps(list(permissions)),
                    secret_hash=secret_hash,
                    created_at=now,
                    expires_at=expires_at,
                )
            )
        return UserToken(
            id=token_id,
            user_id=user_id,
            name=name,
            tenant=tenant,
            permissions=list(permissions),
            created_at=now,
            expires_at=expires_at,
        )

    def user_token(self, token_id: str) -> tuple[UserToken, str] | None:
        row = self._first(sa.select(_tokens).where(_tokens.c.id == token_id))
        if row is None:
            return None
        token = UserToken(
            id=str(row["id"]),
            user_id=int(row["user_id"]),
            name=str(row["name"]),
            tenant=str(row["tenant"]),
            permissions=list(json.loads(row["permissions"])),
            created_at=float(row["created_at"]),
            expires_at=float(row["expires_at"]),
            revoked=bool(row["revoked"]),
        )
        return token, str(row["secret_hash"])

    def revoke_user_token(self, token_id: str) -> bool:
        with self._tx() as db:
            result = db.execute(
                sa.update(_tokens).where(_tokens.c.id == token_id).values(revoked=1)
            )
            return result.rowcount == 1


def _load_users(db: Connection, user_ids: Sequence[int]) -> list[User]:
    """The users with these ids (those that exist), in id order."""
    rows = (
        db.execute(sa.select(_users).where(_users.c.id.in_(user_ids)).order_by(_users.c.id))
        .mappings()
        .all()
    )
    tenants = _tenants_of(db, [int(r["id"]) for r in rows])
    return [_user(r, tenants) for r in rows]


def _tenants_of(db: Connection, user_ids: Sequence[int]) -> dict[int, list[str]]:
    """Each user's tenants in their order (the first is the default), in one query
    per `core.IN_CHUNK` users instead of one per user."""
    found: dict[int, list[str]] = {}
    ut = _user_tenants
    for chunk in in_chunks(user_ids):
        rows = db.execute(
            sa.select(ut.c.user_id, ut.c.tenant)
            .where(ut.c.user_id.in_(chunk))
            .order_by(ut.c.user_id, ut.c.position)
        ).all()
        for user_id, tenant in rows:
            found.setdefault(int(user_id), []).append(str(tenant))
    return found


def _user(row: RowMapping, tenants: dict[int, list[str]]) -> User:
    """A user from its row and the tenants read for it. Pure."""
    user_id = int(row["id"])
    return User(
        id=user_id,
        username=str(row["username"]),
        email=str(row["email"]),
        is_staff=bool(row["is_staff"]),
        disabled=bool(row["disabled"]),
        permissions=list(json.loads(row["permissions"])),
        tenants=tenants.get(user_id, []),
        created_at=float(row["created_at"]),
    )
