"""Users and their tokens: the one domain service every identity adapter stands on
(`/api/v1/auth`, `/api/v1/users`, `/moorage/v1/users`, `moorage-coordinator init`,
`moorage dev`).

Passwords are hashed with argon2id (argon2-cffi's PasswordHasher) and never stored,
logged or returned in clear; a hash made with older parameters is replaced on the next
successful login. Hashing is slow on purpose, so it runs in a worker thread (at most
`MAX_CONCURRENT_HASHES` at once: each takes the hasher's memory cost); the store writes
and the domain events stay on the event loop. A failed login says the same thing
whether the user exists or not, and costs the same (an unknown user is checked against
a dummy hash).
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections.abc import Sequence
from pathlib import Path

import msgspec
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from coordinator.errors import Forbidden, Invalid, NotFound
from coordinator.events import Event, EventBus
from coordinator.models import DEFAULT_TENANT, User, UserToken, tenant_problem
from coordinator.store.ports import UserStore
from coordinator.trust import permissions as perms
from coordinator.trust.auth import AuthError, Principal
from proto.files import write_private
from proto.tokens import USER_KIND, format_token, hash_secret, new_user_token, parse_token

log = logging.getLogger(__name__)

MIN_PASSWORD = 8
MAX_PASSWORD = 1024
"""Bounded: argon2 would happily hash a megabyte sent by anyone who can reach login."""
MAX_USERNAME = 64
MAX_EMAIL = 254
MAX_TOKEN_NAME = 200
DEFAULT_TOKEN_TTL_S = 86400.0
MIN_TOKEN_TTL_S = 60.0
MAX_TOKEN_TTL_S = 90 * 86400.0
"""WebOps: rotate tokens at least every 90 days."""
MAX_CONCURRENT_HASHES = 2
LOGIN_FAILED = "invalid username or password"
FIRST_ADMIN = "admin"
ADMIN_PASSWORD_FILE = "admin.password"

_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]*$")


class IssuedToken(msgspec.Struct, frozen=True):
    token: str
    """The plain token: it exists only here, the store keeps its hash."""
    record: UserToken


# --- pure checks ----------------------------------------------------------------------


def check_username(username: str) -> str:
    if not 1 <= len(username) <= MAX_USERNAME or not _USERNAME.fullmatch(username):
        raise Invalid(
            f"username must be 1 to {MAX_USERNAME} characters of letters, digits, '.', '_',"
            " '@' or '-', starting with a letter or digit"
        )
    return username


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise Invalid(f"password must be at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise Invalid(f"password must be at most {MAX_PASSWORD} characters")
    return password


def check_email(email: str) -> str:
    email = email.strip()
    if email and (len(email) > MAX_EMAIL or not re.fullmatch(r"[^@\s]+@[^@\s]+", email)):
        raise Invalid("email must look like name@domain")
    return email


def check_tenants(tenants: Sequence[str]) -> list[str]:
    out = list(dict.fromkeys(t.strip() for t in tenants)) or [DEFAULT_TENANT]
    for tenant in out:
        problem = tenant_problem(tenant)
        if problem:
            raise Invalid(problem)
    return out


def token_ttl(expires_in: float | None) -> float:
    ttl = DEFAULT_TOKEN_TTL_S if expires_in is None else float(expires_in)
    if not MIN_TOKEN_TTL_S <= ttl <= MAX_TOKEN_TTL_S:
        raise Invalid(
            f"expires_in must be between {int(MIN_TOKEN_TTL_S)} and {int(MAX_TOKEN_TTL_S)} seconds"
        )
    return ttl


def token_tenant(user: User, asked: str | None) -> str:
    """The tenant a new token acts in: the one asked for, which the user must belong
    to, else the user's first. Pure."""
    belongs = user.tenants or [DEFAULT_TENANT]
    if not asked:
        return belongs[0]
    if asked not in belongs:
        raise Forbidden(f"user {user.username!r} does not belong to tenant {asked!r}")
    return asked


def held_by(user: User) -> frozenset[str]:
    return perms.effective(user.permissions, is_staff=user.is_staff)


def token_id_of(text: str) -> str:
    """A token's id, from the full token or the bare id (what revoke accepts). Pure."""
    text = text.strip()
    if text.startswith(USER_KIND + "."):
        try:
            return parse_token(text, USER_KIND).id
        except ValueError as exc:
            raise Invalid(str(exc)) from None
    if not re.fullmatch(r"[0-9a-f]{1,64}", text):
        raise Invalid("not a user token or token id")
    return text


def actor_of(principal: Principal | None) -> str:
    return f"{principal.kind}:{principal.name}" if principal else ""


# --- the service ----------------------------------------------------------------------


class UserService:
    def __init__(
        self,
        storage: UserStore,
        events: EventBus,
        *,
        hasher: PasswordHasher | None = None,
    ) -> None:
        self.storage = storage
        self.events = events
        self.hasher = hasher or PasswordHasher()
        self._dummy_hash = ""
        self._hashing = asyncio.Semaphore(MAX_CONCURRENT_HASHES)

    # hashing (worker threads) -------------------------------------------------------

    async def _hash(self, password: str) -> str:
        async with self._hashing:
            return await asyncio.to_thread(self.hasher.hash, password)

    async def _verify(self, stored: str, password: str) -> bool:
        def verify() -> bool:
            try:
                return self.hasher.verify(stored, password)
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                return False

        async with self._hashing:
            return await asyncio.to_thread(verify)

    async def warm(self) -> None:
        """Make the dummy hash now, so even the first login of an unknown user costs
        what a known one's does."""
        await self._dummy()

    async def _dummy(self) -> str:
        if not self._dummy_hash:
            self._dummy_hash = await self._hash(secrets.token_hex(16))
        return self._dummy_hash

    # users ----------------------------------------------------------------------------

    async def create_user(
        self,
        username: str,
        password: str,
        *,
        email: str = "",
        is_staff: bool = False,
        permissions: Sequence[str] = (),
        tenants: Sequence[str] = (),
        actor: Principal | None = None,
    ) -> User:
        """Conflict if the username is taken; Invalid naming the field otherwise."""
        check_username(username)
        check_password(password)
        email = check_email(email)
        granted = perms.ordered(perms.expand(permissions))
        tenant_list = check_tenants(tenants)
        password_hash = await self._hash(password)
        user = self.storage.create_user(
            username,
            email=email,
            password_hash=password_hash,
            is_staff=is_staff,
            permissions=granted,
            tenants=tenant_list,
            now=time.time(),
        )
        self._publish(
            "user.created",
            user,
            actor,
            is_staff=is_staff,
            permissions=granted,
            tenants=tenant_list,
        )
        log.info("user %s created", username)
        return user

    def get(self, user_id: int) -> User:
        user = self.storage.get_user(user_id)
        if user is None:
            raise NotFound(f"user {user_id} does not exist")
        return user

    def named(self, username: str) -> User:
        found = self.storage.user_by_name(username)
        if found is None:
            raise NotFound(f"user {username!r} does not exist")
        return found[0]

    def list_users(self, *, offset: int = 0, limit: int = 100) -> tuple[list[User], int]:
        return self.storage.list_users(offset=offset, limit=limit)

    def set_permissions(
        self, user_id: int, permissions: Sequence[str], *, actor: Principal | None = None
    ) -> User:
        granted = perms.ordered(perms.expand(permissions))
        user = self.get(user_id)
        self.storage.set_user_permissions(user_id, granted)
        self._publish(
            "user.permissions_changed", user, actor, before=user.permissions, after=granted
        )
        return self.get(user_id)

    def set_disabled(
        self, username: str, disabled: bool = True, *, actor: Principal | None = None
    ) -> User:
        """A disabled user cannot log in, and their tokens are refused at once."""
        user = self.named(username)
        self.storage.set_user_disabled(user.id, disabled)
        self._publish("user.disabled" if disabled else "user.enabled", user, actor)
        log.info("user %s %s", username, "disabled" if disabled else "enabled")
        return self.get(user.id)

    async def set_password(
        self, username: str, password: str, *, actor: Principal | None = None
    ) -> User:
        check_password(password)
        user = self.named(username)
        self.storage.set_password_hash(user.id, await self._hash(password))
        self._publish("user.password_changed", user, actor)
        log.info("password of user %s changed", username)
        return user

    # tokens ---------------------------------------------------------------------------

    async def login(
        self,
        username: str,
        password: str,
        *,
        name: str = "",
        expires_in: float | None = None,
        permissions: Sequence[str] | None = None,
        tenant: str | None = None,
    ) -> IssuedToken:
        """A new token for a user who gave the right password. AuthError (401) with the
        same message for an unknown user, a wrong password and a disabled user."""
        if len(name) > MAX_TOKEN_NAME:
            raise Invalid(f"name must be at most {MAX_TOKEN_NAME} characters")
        ttl = token_ttl(expires_in)
        found = self.storage.user_by_name(username) if len(username) <= MAX_USERNAME else None
        if len(password) > MAX_PASSWORD:
            password = password[:MAX_PASSWORD]  # cannot match: check_password refused it
            found = None
        if found is None:
            await self._verify(await self._dummy(), password)
            raise AuthError(LOGIN_FAILED)
        user, stored = found
        if not await self._verify(stored, password) or user.disabled:
            raise AuthError(LOGIN_FAILED)
        if self._needs_rehash(stored):
            self.storage.set_password_hash(user.id, await self._hash(password))
            log.info("password hash of user %s upgraded to the current parameters", username)
        granted = perms.token_permissions(held_by(user), permissions)
        token = new_user_token()
        record = self.storage.create_user_token(
            token.id,
            hash_secret(token.secret),
            user_id=user.id,
            name=name or "api token",
            tenant=token_tenant(user, tenant),
            permissions=perms.ordered(granted),
            now=(now := time.time()),
            expires_at=now + ttl,
        )
        self.events.publish(
            Event(
                "token.created",
                tenant=record.tenant,
                subject=record.id,
                data={
                    "user": user.username,
                    "name": record.name,
                    "permissions": record.permissions,
                },
                actor=f"user:{user.username}",
            )
        )
        return IssuedToken(format_token(token), record)

    def _needs_rehash(self, stored: str) -> bool:
        try:
            return self.hasher.check_needs_rehash(stored)
        except InvalidHashError:
            return True

    def token(self, token_id: str) -> UserToken:
        found = self.storage.user_token(token_id)
        if found is None:
            raise NotFound("token does not exist")
        return found[0]

    def revoke(self, token: str, *, actor: Principal) -> UserToken:
        """Revoke a user token (given whole or by id): the caller's own, or any when the
        caller holds `users`. After this the token is refused (401)."""
        record = self.token(token_id_of(token))
        if record.user_id != actor.user_id and not actor.allows(perms.USERS):
            raise Forbidden(
                "only the token's own user, or a holder of the 'users' permission, may revoke it"
            )
        self.storage.revoke_user_token(record.id)
        self.events.publish(
            Event(
                "token.revoked",
                tenant=record.tenant,
                subject=record.id,
                data={"user_id": record.user_id, "name": record.name},
                actor=actor_of(actor),
            )
        )
        return record

    # ---------------------------------------------------------------------------------

    def _publish(self, kind: str, user: User, actor: Principal | None, **data: object) -> None:
        tenant = user.tenants[0] if user.tenants else DEFAULT_TENANT
        self.events.publish(
            Event(
                kind, tenant=tenant, subject=user.username, data=dict(data), actor=actor_of(actor)
            )
        )


async def ensure_first_admin(users: UserService, state_dir: Path) -> Path | None:
    """With no user at all: create `admin` (staff) with a generated password written
    0600 to `<state_dir>/admin.password`, and return that path (print the path, never
    the password). None when users exist already."""
    if users.storage.count_users():
        return None
    password = secrets.token_urlsafe(18)
    path = Path(state_dir) / ADMIN_PASSWORD_FILE
    write_private(path, password.encode() + b"\n")
    await users.create_user(FIRST_ADMIN, password, is_staff=True, permissions=[perms.ADMIN])
    return path
