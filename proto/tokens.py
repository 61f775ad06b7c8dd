"""Join and API token formats: generated, parsed and hashed here, stored only hashed.

A token is `<kind>.<id>.<secret>[.<pin>]`. The id finds the row, the secret is kept
only as its SHA-256 (the secret carries 128 random bits, so a slow hash buys nothing)
and compared in constant time. A join token also carries a prefix of the fleet CA's
SHA-256 so a new agent can pin the coordinator before it trusts it with the token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

import msgspec

JOIN_KIND = "mjt"
API_KIND = "mat"
USER_KIND = "mut"
"""A user's token (`POST /api/v1/auth/token/`): acts as the user, with a subset of their
permissions, in one tenant."""
PIN_CHARS = 32


class TokenFormatError(ValueError):
    pass


class ParsedToken(msgspec.Struct, frozen=True):
    kind: str
    id: str
    secret: str
    pin: str = ""


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)


def new_join_token(ca_pin: str) -> ParsedToken:
    return ParsedToken(JOIN_KIND, secrets.token_hex(8), secrets.token_hex(16), ca_pin[:PIN_CHARS])


def new_api_token() -> ParsedToken:
    return ParsedToken(API_KIND, secrets.token_hex(8), secrets.token_hex(20))


def new_user_token() -> ParsedToken:
    return ParsedToken(USER_KIND, secrets.token_hex(8), secrets.token_hex(20))


def token_kind(text: str) -> str:
    """The kind prefix of a token (`mat`, `mut`, `mjt`), or "" if it has none."""
    kind, dot, _ = text.strip().partition(".")
    return kind if dot else ""


def format_token(token: ParsedToken) -> str:
    parts = [token.kind, token.id, token.secret] + ([token.pin] if token.pin else [])
    return ".".join(parts)


def parse_token(text: str, kind: str) -> ParsedToken:
    parts = text.strip().split(".")
    want = 4 if kind == JOIN_KIND else 3
    if len(parts) != want or parts[0] != kind:
        label = {JOIN_KIND: "join", USER_KIND: "user"}.get(kind, "API")
        raise TokenFormatError(f"not a Moorage {label} token (expected {kind}.<id>.<secret>...)")
    if not all(_is_hex(p) for p in parts[1:]):
        raise TokenFormatError("token contains characters other than hexadecimal digits")
    return ParsedToken(*parts)


def _is_hex(text: str) -> bool:
    return bool(text) and all(c in "0123456789abcdef" for c in text)


def enrolment_refusal(
    machine_id: str, bound_to: str, enrolled: bool, revoked: bool
) -> tuple[int, str] | None:
    """Whether a valid join token may enrol `machine_id`: (status, reason) if not.

    An enrolled machine that is not revoked keeps its identity: an ordinary join token
    cannot take it over (409). Re-enrolling it needs an explicit operator act: revoke
    it first, or a token bound to that machine (`moorctl token create --machine ID`),
    which may only enrol that machine."""
    if bound_to and bound_to != machine_id:
        return 403, f"this join token is bound to machine {bound_to!r}"
    if enrolled and not revoked and not bound_to:
        return 409, (
            f"machine {machine_id} is already enrolled; revoke it first"
            f" (moorctl machine revoke {machine_id}) or create a re-enrolment token bound"
            f" to it (moorctl token create --machine {machine_id})"
        )
    return None
