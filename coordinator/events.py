"""Domain events: the one in-process seam through which the domain says what happened
(a deployment started, a rollout batch finished, drift was detected, a task run
finished, a user or token changed...). The audit log, webhooks and the dashboard
subscribe here instead of each service keeping callback lists of its own.

Publishing never fails the publisher: a subscriber that raises is logged and the
others still run. Subscribers run synchronously on the publisher's thread (the event
loop), so they must be quick; slow work (delivering a webhook) is queued by the
subscriber itself.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import msgspec

log = logging.getLogger(__name__)


class Event(msgspec.Struct, frozen=True, omit_defaults=True):
    """Something that happened, in one tenant. `kind` is dotted, noun first
    (`deployment.started`, `task.run.finished`, `user.created`)."""

    kind: str
    tenant: str = "default"
    subject: str = ""
    """What it happened to: a deployment's name, a run id, a username..."""
    data: dict[str, Any] = {}
    actor: str = ""
    """Who caused it, when a request did (`user:alice`, `certificate:admin`...)."""
    at: float = 0.0


Subscriber = Callable[[Event], None]

LIVE_ONLY: frozenset[str] = frozenset({"unit.reported", "task.run.output"})
"""Kinds published for live views (the dashboard) only: frequent, and no decision or
change anyone made, so the audit log does not record them."""

ACTOR: contextvars.ContextVar[str] = contextvars.ContextVar("moorage_actor", default="")
"""Who the code running now acts for (`token:ci`, `certificate:admin`), set by the
server's middleware for each request: an event published without an actor gets it,
so services need not pass the principal down. Background work has none."""


class EventBus:
    def __init__(self) -> None:
        self._subscribers: list[tuple[frozenset[str] | None, Subscriber]] = []

    def subscribe(self, subscriber: Subscriber, kinds: Iterable[str] | None = None) -> None:
        """Call `subscriber` for every event, or only for these kinds (exact, or a prefix
        ending in `.`: `deployment.` matches every deployment event)."""
        self._subscribers.append((None if kinds is None else frozenset(kinds), subscriber))

    def publish(self, event: Event) -> None:
        actor = event.actor or ACTOR.get()
        if not event.at or actor != event.actor:
            event = msgspec.structs.replace(event, at=event.at or time.time(), actor=actor)
        for kinds, subscriber in list(self._subscribers):
            if kinds is not None and not matches(event.kind, kinds):
                continue
            try:
                subscriber(event)
            except Exception:
                log.exception("event subscriber %r failed on %s", subscriber, event.kind)

    def emit(self, kind: str, *, tenant: str = "default", subject: str = "", **data: Any) -> None:
        """Shorthand for publish(Event(...))."""
        self.publish(Event(kind, tenant=tenant, subject=subject, data=data))


def matches(kind: str, kinds: frozenset[str]) -> bool:
    """Pure: exact kinds, or prefixes ending in '.'."""
    return kind in kinds or any(k.endswith(".") and kind.startswith(k) for k in kinds)
