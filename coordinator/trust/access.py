"""Trust: join tokens and API tokens minted, listed and revoked (for the API and for
`moorage dev` alike; the plain token exists only in the return value, the store keeps
its hash), and enrolment as the API sees it (refusals as domain errors, the replaced
identity's session ended).
"""

from __future__ import annotations

import logging
import time

import msgspec

from coordinator.errors import Conflict, Forbidden, Invalid, NotFound
from coordinator.hub.sessions import CLOSE_REVOKED, Hub
from coordinator.metrics import CoordinatorMetrics
from coordinator.models import DEFAULT_TENANT, ApiToken, tenant_problem
from coordinator.store.ports import EnrollConflict, EnrollRefused
from coordinator.store.ports import Store as Storage
from coordinator.trust.auth import ROLE_ADMIN
from coordinator.trust.enrolment import Enroller
from proto.enrolment import EnrollRequest, EnrollResponse, machine_id_problem
from proto.tokens import format_token, hash_secret, new_api_token, new_join_token

log = logging.getLogger(__name__)

MAX_TOKEN_TTL_S = 30 * 86400.0
MAX_TOKENS_PER_CALL = 10_000


def mint_tenant(caller_tenant: str, asked: str, *, is_admin: bool) -> str:
    """The tenant a new token lives in: the caller's own unless it names another, which
    only an admin acting in the default tenant (the operator: the admin certificate,
    the default tenant's admin tokens) may do; a tenant's admin stays in its tenant.
    Invalid or Forbidden name the problem. Pure."""
    if not asked or asked == caller_tenant:
        return caller_tenant
    problem = tenant_problem(asked)
    if problem:
        raise Invalid(problem)
    if not is_admin or caller_tenant != DEFAULT_TENANT:
        raise Forbidden("only an admin of the default tenant may create tokens in another tenant")
    return asked


class JoinTokens(msgspec.Struct, frozen=True):
    tokens: list[str]
    expires_at: float


def token_ttl(value: float | None, default: float) -> float:
    """The lifetime asked for (or the default), within bounds (Invalid otherwise). Pure."""
    ttl = default if value is None else value
    if not 0 < ttl <= MAX_TOKEN_TTL_S:
        raise Invalid(f"ttl_s must be between 1 and {int(MAX_TOKEN_TTL_S)} seconds")
    return ttl


def check_join_request(count: int, machine_id: str) -> None:
    """How many tokens and for which machine may be asked for at once. Pure."""
    if not 1 <= count <= MAX_TOKENS_PER_CALL:
        raise Invalid(f"count must be between 1 and {MAX_TOKENS_PER_CALL}")
    problem = machine_id_problem(machine_id) if machine_id else None
    if problem:
        raise Invalid(f"machine_id: {problem}")
    if machine_id and count != 1:
        raise Invalid("a token bound to a machine is created alone (count 1)")


class TokenService:
    def __init__(self, storage: Storage, ca_pin: str, *, join_ttl_s: float = 3600.0) -> None:
        self.storage = storage
        self.ca_pin = ca_pin
        self.join_ttl_s = join_ttl_s

    def create_join_tokens(
        self,
        *,
        ttl_s: float | None = None,
        description: str = "",
        count: int = 1,
        machine_id: str = "",
        tenant: str = DEFAULT_TENANT,
    ) -> JoinTokens:
        """One-time join tokens, in one transaction; bound to `machine_id` if given (only
        it may enrol with the token, even when already enrolled). A machine enrolled
        with one belongs to `tenant`; a token is bound only to a machine of its tenant
        (another tenant's machine is not found) or to a new id."""
        ttl = token_ttl(ttl_s, self.join_ttl_s)
        check_join_request(count, machine_id)
        if machine_id:
            machine = self.storage.get_machine(machine_id)
            if machine is not None and machine.tenant != tenant:
                raise NotFound(f"machine {machine_id!r} does not exist")
        tokens = [new_join_token(self.ca_pin) for _ in range(count)]
        now = time.time()
        self.storage.create_join_tokens(
            [(t.id, hash_secret(t.secret)) for t in tokens],
            now=now,
            ttl_s=ttl,
            description=description,
            machine_id=machine_id,
            tenant=tenant,
        )
        return JoinTokens([format_token(t) for t in tokens], now + ttl)

    def create_join_token(self, ttl_s: float, description: str = "") -> str:
        return self.create_join_tokens(ttl_s=ttl_s, description=description).tokens[0]

    def create_api_token(
        self,
        name: str,
        ttl_s: float | None = None,
        *,
        tenant: str = DEFAULT_TENANT,
        unlimited: bool = False,
    ) -> tuple[str, ApiToken]:
        """An admin API token of `tenant` (no expiry when ttl_s is None) and its stored
        record; requests with it act in that tenant. `unlimited`: exempt from the
        per-token general rate limit."""
        problem = tenant_problem(tenant)
        if problem:
            raise Invalid(problem)
        if not name.strip():
            raise Invalid("name must not be empty")
        ttl = None if ttl_s is None else token_ttl(ttl_s, 0)
        token = new_api_token()
        record = self.storage.create_api_token(
            token.id,
            hash_secret(token.secret),
            name=name,
            role=ROLE_ADMIN,
            now=time.time(),
            ttl_s=ttl,
            tenant=tenant,
            unlimited=unlimited,
        )
        return format_token(token), record

    def api_tokens(self, *, tenant: str = DEFAULT_TENANT) -> list[ApiToken]:
        """The tenant's API tokens."""
        return self.storage.list_api_tokens(tenant=tenant)

    def set_unlimited(
        self, token_id: str, unlimited: bool, *, tenant: str = DEFAULT_TENANT
    ) -> None:
        """Exempt one of the tenant's API tokens from the general rate limit (or end the
        exemption); another tenant's is not found."""
        if not self.storage.set_api_token_unlimited(token_id, unlimited, tenant=tenant):
            raise NotFound(f"API token {token_id!r} does not exist")

    def revoke_api_token(self, token_id: str, *, tenant: str = DEFAULT_TENANT) -> None:
        """Revoke one of the tenant's tokens (another tenant's is not found)."""
        if not self.storage.revoke_api_token(token_id, tenant=tenant):
            raise NotFound(f"API token {token_id!r} does not exist")


class EnrolmentService:
    """A join token and a CSR in, a certificate out; counted, logged, and a re-enrolled
    machine's old session ended (its earlier certificates are revoked)."""

    def __init__(self, enroller: Enroller, hub: Hub, metrics: CoordinatorMetrics) -> None:
        self.enroller = enroller
        self.hub = hub
        self.metrics = metrics

    @property
    def ca_pem(self) -> str:
        """The CA certificate is public; agents pin it by the hash in the join token."""
        return self.enroller.ca_pem

    def enroll(self, req: EnrollRequest, hub_urls: list[str]) -> EnrollResponse:
        """Forbidden with the reason for the agent, or Conflict for an enrolled machine
        the token may not take over."""
        try:
            result, replaced = self.enroller.enroll(req, hub_urls)
        except EnrollRefused as exc:
            self.metrics.enrolments.labels("refused").inc()
            log.warning("enrolment of %r refused: %s", req.machine_id, exc)
            if isinstance(exc, EnrollConflict):
                raise Conflict(str(exc)) from None
            raise Forbidden(str(exc)) from None
        self.metrics.enrolments.labels("ok").inc()
        if replaced:
            self.hub.end_session(req.machine_id, CLOSE_REVOKED, "machine re-enrolled")
            log.info("re-enrolled machine %s; earlier certificates revoked", req.machine_id)
        else:
            log.info("enrolled machine %s", req.machine_id)
        return result
