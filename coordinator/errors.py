"""Domain errors: what a service refuses, and why, without knowing HTTP.

Services raise these; each API family maps them to its status codes and error body
once, in its conventions (coordinator/api/routing.py), never per handler.
"""

from __future__ import annotations


class DomainError(Exception):
    """A refusal whose message names the problem for the caller."""


class NotFound(DomainError, LookupError):
    """The object named does not exist."""


class Conflict(DomainError):
    """A write that would break a uniqueness or state rule; the message names it."""


class Invalid(DomainError, ValueError):
    """The request cannot be carried out as given; the message names the field."""


class Forbidden(DomainError):
    """The caller may not do this."""


class Unavailable(DomainError):
    """Cannot be done right now (a machine is not connected, or did not answer in
    time): try again later. ``timed_out`` tells a wait that ran out from a refusal."""

    timed_out: bool = False
