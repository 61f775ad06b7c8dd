"""Machine groups (Fleet Manager's cluster groups): who is in one, as a pure function."""

from __future__ import annotations

import re
from collections.abc import Iterable

from coordinator.models import Machine, MachineGroup

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
"""Names of groups, applications and deployments: they become file names (stickers)
and unit labels on machines, so they stay in a portable character set. Matched with
`fullmatch` (`$` would let a trailing newline through)."""

VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
"""Application version labels (`1`, `v2.3.0`, `2024-05-01+build.7`): they become unit
labels and sticker fields on machines."""


def name_problem(name: str, what: str) -> str:
    """Why `name` cannot name a group, application or deployment ("" if it can)."""
    if NAME.fullmatch(name):
        return ""
    return (
        f"{what} name {name!r} is invalid: use 1-128 letters, digits, '.', '_' or '-',"
        " starting with a letter or digit"
    )


def version_problem(label: str) -> str:
    """Why `label` cannot label an application version ("" if it can; "" is "next
    number"). `latest` is refused: deployments use it to mean the newest version."""
    if label == "":
        return ""
    if label == "latest":
        return "version 'latest' is reserved: it names the newest version"
    if VERSION.fullmatch(label):
        return ""
    return (
        f"version {label!r} is invalid: use 1-64 letters, digits, '.', '_', '+' or '-',"
        " starting with a letter or digit"
    )


def is_member(group: MachineGroup, machine: Machine) -> bool:
    """The built-in group holds every machine; another holds the machines it names and
    those whose metadata has every pair of its selector. Revoked machines are in none,
    and a group holds only machines of its own tenant."""
    if machine.revoked or machine.tenant != group.tenant:
        return False
    if group.builtin:
        return True
    if machine.id in group.machines:
        return True
    return bool(group.selector) and all(
        machine.metadata.get(k) == v for k, v in group.selector.items()
    )


def members(group: MachineGroup, machines: Iterable[Machine]) -> list[Machine]:
    """The group's machines, by id."""
    return sorted((m for m in machines if is_member(group, m)), key=lambda m: m.id)
