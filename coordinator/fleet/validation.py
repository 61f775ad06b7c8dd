"""Everything a unit must satisfy before it is accepted, whichever API submitted it.

Problems are found at submit time, with a message naming the field, never later on
a machine: a `.container` unit's `[Container]` keys, `[X-Fleet]` scheduling options
and their forbidden combinations, fleet's limits on names and lines.
"""

from __future__ import annotations

from collections.abc import Sequence

from coordinator.fleet.scheduler import XFleetError, parse_xfleet
from coordinator.limits import unit_size_problem
from proto.units import (
    UnitFileError,
    UnitNameError,
    UnitOption,
    backend_for,
    parse_unit_file,
    serialize,
    validate_unit_name,
)


class UnitInvalid(ValueError):
    """The unit cannot be accepted; the message is for the client as it is."""


def validate_name(name: str) -> None:
    try:
        validate_unit_name(name)
    except UnitNameError as exc:
        raise UnitInvalid(str(exc)) from None


def validate_unit(name: str, options: Sequence[UnitOption]) -> None:
    validate_name(name)
    too_big = unit_size_problem(list(options))
    if too_big:
        raise UnitInvalid(too_big)
    for opt in options:
        if not opt.section or not opt.name:
            raise UnitInvalid("every option needs a section and a name")
        if "\n" in opt.section or "]" in opt.section or "=" in opt.name or "\n" in opt.name:
            raise UnitInvalid(f"invalid option [{opt.section}] {opt.name}")
    try:
        # fleet re-parses the serialised unit to enforce systemd's line limits.
        parse_unit_file(serialize(options))
    except UnitFileError as exc:
        raise UnitInvalid(f"invalid unit file: {exc}") from None
    try:
        parse_xfleet(options)
    except XFleetError as exc:
        raise UnitInvalid(str(exc)) from None
    if backend_for(name) == "docker":
        from proto.container import ContainerOptionError, parse_container

        try:
            parse_container(options)
        except ContainerOptionError as exc:
            raise UnitInvalid(str(exc)) from None
