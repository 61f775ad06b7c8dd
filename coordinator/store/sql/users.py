"""Users, their tenants, and the tokens they got by logging in."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from coordinator.errors import Conflict
from coordinator.models import User, UserToken
from coordinator.store.sql.core import SqlCore


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
        with self._raw_tx() as db:
            try:
                cur = db.execute(
                    "INSERT INTO users (username, email, password_hash, is_staff, permissions,"
                    " created_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        username,
                        email,
                        password_hash,
                        int(is_staff),
                        json.dumps(list(permissions)),
                        now,
                    ),
                )
            except sqlite3.IntegrityError:
                raise Conflict(f"user {username!r} already exists") from None
            user_id = int(cur.lastrowid or 0)
            db.executemany(
                "INSERT OR IGNORE INTO tenants (name, created_at) VALUES (?, ?)",
                [(t, now) for t in tenants],
            )
            db.executemany(
                "INSERT INTO user_tenants (user_id, tenant, position) VALUES (?, ?, ?)",
                [(user_id, t, i) for i, t in enumerate(tenants)],
            )
            found = self._user(db, user_id)
        assert found is not None
        return found

    def get_user(self, user_id: int) -> User | None:
        with self._raw_read() as db:
            return self._user(db, user_id)

    def user_by_name(self, username: str) -> tuple[User, str] | None:
        with self._raw_read() as db:
            row = db.execute(
                "SELECT id, password_hash FROM users WHERE username=?", (username,)
            ).fetchone()
            if row is None:
                return None
            user = self._user(db, int(row["id"]))
        assert user is not None
        return user, str(row["password_hash"])

    def list_users(self, *, offset: int = 0, limit: int = 100) -> tuple[list[User], int]:
        with self._raw_read() as db:
            total = int(db.execute("SELECT COUNT(*) FROM users").fetchone()[0])
            ids = [
                int(r[0])
                for r in db.execute(
                    "SELECT id FROM users ORDER BY id LIMIT ? OFFSET ?", (limit, offset)
                ).fetchall()
            ]
            users = [u for u in (self._user(db, i) for i in ids) if u is not None]
        return users, total

    def count_users(self) -> int:
        row = self._raw_one("SELECT COUNT(*) FROM users")
        return int(row[0]) if row is not None else 0

    def set_user_permissions(self, user_id: int, permissions: Sequence[str]) -> bool:
        with self._raw_tx() as db:
            cur = db.execute(
                "UPDATE users SET permissions=? WHERE id=?",
                (json.dumps(list(permissions)), user_id),
            )
            return cur.rowcount == 1

    def set_password_hash(self, user_id: int, password_hash: str) -> bool:
        with self._raw_tx() as db:
            cur = db.execute(
                "UPDATE users SET password_hash=? WHERE id=?", (password_hash, user_id)
            )
            return cur.rowcount == 1

    def set_user_disabled(self, user_id: int, disabled: bool) -> bool:
        with self._raw_tx() as db:
            cur = db.execute("UPDATE users SET disabled=? WHERE id=?", (int(disabled), user_id))
            return cur.rowcount == 1

    def tenants(self) -> list[str]:
        return [str(r[0]) for r in self._raw_all("SELECT name FROM tenants ORDER BY name")]

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
        with self._raw_tx() as db:
            db.execute(
                "INSERT INTO user_tokens (id, user_id, name, tenant, permissions, secret_hash,"
                " created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    token_id,
                    user_id,
                    name,
                    tenant,
                    json.dumps(list(permissions)),
                    secret_hash,
                    now,
                    expires_at,
                ),
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
        row = self._raw_one("SELECT * FROM user_tokens WHERE id=?", (token_id,))
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
        with self._raw_tx() as db:
            cur = db.execute("UPDATE user_tokens SET revoked=1 WHERE id=?", (token_id,))
            return cur.rowcount == 1

    @staticmethod
    def _user(db: Any, user_id: int) -> User | None:
        row = db.execute("SELECT * FROM users WHERE id=?", (user_id,)).fetchone()
        if row is None:
            return None
        tenants = [
            str(r[0])
            for r in db.execute(
                "SELECT tenant FROM user_tenants WHERE user_id=? ORDER BY position", (user_id,)
            ).fetchall()
        ]
        return User(
            id=int(row["id"]),
            username=str(row["username"]),
            email=str(row["email"]),
            is_staff=bool(row["is_staff"]),
            disabled=bool(row["disabled"]),
            permissions=list(json.loads(row["permissions"])),
            tenants=tenants,
            created_at=float(row["created_at"]),
        )
