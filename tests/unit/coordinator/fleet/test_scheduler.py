"""The scheduler on plain values: every [X-Fleet] option and forbidden combination."""

from __future__ import annotations

import fnmatch
import shlex

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from coordinator.fleet.scheduler import (
    NO_XFLEET,
    MachineView,
    UnitView,
    XFleet,
    XFleetError,
    _words,
    glob_match,
    parse_xfleet,
    schedule,
    unplaced_reasons,
)
from moorctl.fleet import is_global as fleet_is_global
from proto.units import UnitOption, is_global


def xf(*pairs: tuple[str, str]) -> XFleet:
    return parse_xfleet([UnitOption("X-Fleet", k, v) for k, v in pairs])


def m(
    mid: str, state: str = "connected", caps: tuple[str, ...] = ("systemd",), **meta: str
) -> MachineView:
    return MachineView(mid, dict(meta), caps, state)  # type: ignore[arg-type]


def u(
    name: str,
    *pairs: tuple[str, str],
    on: tuple[str, ...] = (),
    active: bool = True,
    backend: str = "systemd",
) -> UnitView:
    return UnitView(name, xf(*pairs), backend, active, on)


THREE = [m("m1"), m("m2"), m("m3")]


def test_parse_all_options() -> None:
    x = xf(
        ("MachineMetadata", "region=us disk=ssd"),
        ("MachineMetadata", "region=eu"),
        ("Conflicts", "web@*.service db.service"),
    )
    assert x.metadata == {"disk": ("ssd",), "region": ("us", "eu")}
    assert x.conflicts == ("web@*.service", "db.service")
    assert xf(("Global", "true")).is_global
    assert not xf(("Global", "false")).is_global
    assert xf(("X-ConditionMachineID", "abc")).machine_id == "abc"
    assert xf(("MachineOf", "a.service")).machine_of == ("a.service",)
    assert xf(("Replaces", "old.service")).replaces == ("old.service",)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (("MachineID", "m1"), ("MachineOf", "x.service")),
        (("MachineID", "m1"), ("Conflicts", "x*")),
        (("MachineID", "m1"), ("Global", "true")),
        (("MachineID", "m1"), ("Replaces", "x.service")),
        (("Global", "true"), ("MachineOf", "x.service")),
        (("Global", "true"), ("Replaces", "x.service")),
        (("Conflicts", "x*"), ("Replaces", "x.service")),
    ],
)
def test_forbidden_combinations(a: tuple[str, str], b: tuple[str, str]) -> None:
    with pytest.raises(XFleetError, match="cannot be combined"):
        xf(a, b)


@pytest.mark.parametrize(
    "bad",
    [
        ("Global", "maybe"),
        ("MachineMetadata", "novalue"),
        ("Bogus", "1"),
        ("MachineID", ""),
        ("MachineID", "a b"),
    ],
)
def test_invalid_options(bad: tuple[str, str]) -> None:
    with pytest.raises(XFleetError):
        xf(bad)


def test_global_false_with_machine_id_is_fine() -> None:
    assert xf(("Global", "false"), ("MachineID", "m1")).machine_id == "m1"


def test_machine_id_pins() -> None:
    assert schedule([u("a.service", ("MachineID", "m2"))], THREE) == {"a.service": ["m2"]}


def test_machine_id_of_an_absent_machine_stays_unplaced() -> None:
    assert schedule([u("a.service", ("MachineID", "nope"))], THREE) == {"a.service": []}


def test_spread_by_load_deterministically() -> None:
    units = [u(f"u{i}.service") for i in range(6)]
    placed = schedule(units, THREE)
    counts = {mid: sum(mid in v for v in placed.values()) for mid in ("m1", "m2", "m3")}
    assert counts == {"m1": 2, "m2": 2, "m3": 2}
    assert schedule(list(reversed(units)), list(reversed(THREE))) == placed


def test_metadata_and_across_keys_or_within() -> None:
    machines = [
        m("m1", region="us", disk="hdd"),
        m("m2", region="eu", disk="ssd"),
        m("m3", region="us", disk="ssd"),
    ]
    only = u("a.service", ("MachineMetadata", "region=us"), ("MachineMetadata", "disk=ssd"))
    assert schedule([only], machines)["a.service"] == ["m3"]
    either = u(
        "g.service",
        ("Global", "true"),
        ("MachineMetadata", "region=us region=eu"),
        ("MachineMetadata", "disk=ssd"),
    )
    assert schedule([either], machines)["g.service"] == ["m2", "m3"]


def test_machine_of_colocates_even_when_anchor_sorts_later() -> None:
    units = [
        u("a-sidecar.service", ("MachineOf", "z-main.service")),
        u("z-main.service"),
        u("other.service"),
    ]
    placed = schedule(units, THREE)
    assert placed["a-sidecar.service"] == placed["z-main.service"] != []


def test_machine_of_unplaced_anchor_keeps_unit_unplaced() -> None:
    units = [
        u("side.service", ("MachineOf", "main.service")),
        u("main.service", ("MachineID", "absent")),
    ]
    assert schedule(units, THREE) == {"side.service": [], "main.service": []}


def test_conflicts_both_ways() -> None:
    units = [u(f"web@{i}.service", ("Conflicts", "web@*.service")) for i in range(3)]
    placed = schedule(units, THREE)
    assert sorted(v[0] for v in placed.values()) == ["m1", "m2", "m3"]
    fourth = [*units, u("web@9.service", ("Conflicts", "web@*.service"))]
    assert schedule(fourth, THREE)["web@9.service"] == []
    # a unit without Conflicts is still kept off machines whose units conflict with it
    plain = schedule(
        [
            u("db.service", ("MachineID", "m1")),
            u("x.service", ("Conflicts", "db.*"), ("MachineMetadata", "k=v")),
        ],
        [m("m1", k="v"), m("m2")],
    )
    assert plain["x.service"] == []


def test_global_on_every_matching_machine_and_new_ones() -> None:
    g = u("g.service", ("Global", "true"))
    assert schedule([g], THREE)["g.service"] == ["m1", "m2", "m3"]
    assert schedule([g], [*THREE, m("m4")])["g.service"] == ["m1", "m2", "m3", "m4"]


def test_a_lost_machine_keeps_its_global_units_and_gets_no_new_ones() -> None:
    """Dropping them would make its agent stop and start them again when it returns."""
    g = u("g.service", ("Global", "true"), on=("m1", "m2", "m3"))
    lost = [m("m1"), m("m2"), m("m3", state="lost")]
    assert schedule([g], lost)["g.service"] == ["m1", "m2", "m3"]
    fresh = u("h.service", ("Global", "true"))
    assert schedule([fresh], lost)["h.service"] == ["m1", "m2"]
    # ...unless it no longer matches
    meta = u("k.service", ("Global", "true"), ("MachineMetadata", "k=v"), on=("m1", "m3"))
    assert schedule([meta], [m("m1", k="v"), m("m3", state="lost")])["k.service"] == ["m1"]


def test_a_backend_gone_for_a_while_moves_nothing_already_there() -> None:
    """dockerd restarting: the agent's Facts lack "docker" for a few seconds; the
    container stays placed (and a new one goes where docker is)."""
    box = u("box.container", backend="docker", on=("m1",))
    gbox = u("g.container", ("Global", "true"), backend="docker", on=("m1",))
    machines = [m("m1", caps=("systemd",)), m("m2", caps=("systemd", "docker"))]
    placed = schedule([box, gbox, u("new.container", backend="docker")], machines)
    assert placed == {
        "box.container": ["m1"],
        "g.container": ["m1", "m2"],
        "new.container": ["m2"],
    }


def test_a_unit_that_fits_nowhere_else_stays_on_its_lost_machine() -> None:
    """Pinned there: unplacing it would only make its agent stop it when it is back."""
    pinned = u("box.service", ("MachineID", "m1"), on=("m1",))
    free = u("web.service", on=("m1",))
    machines = [m("m1", state="lost"), m("m2")]
    assert schedule([pinned, free], machines) == {"box.service": ["m1"], "web.service": ["m2"]}


def test_replaces_moves_the_replaced_unit_away() -> None:
    old = u("old.service", on=("m1",))
    new = u("new.service", ("Replaces", "old.service"), ("MachineMetadata", "k=v"))
    machines = [m("m1", k="v"), m("m2")]
    placed = schedule([old, new], machines)
    assert placed == {"new.service": ["m1"], "old.service": ["m2"]}


def test_existing_placement_is_kept() -> None:
    units = [u("a.service", on=("m3",)), u("b.service", on=("m3",))]
    assert schedule(units, THREE) == {"a.service": ["m3"], "b.service": ["m3"]}


def test_lost_machine_units_are_rescheduled_disconnected_not() -> None:
    units = [u("a.service", on=("m1",)), u("b.service", on=("m2",))]
    machines = [m("m1", state="lost"), m("m2", state="disconnected"), m("m3")]
    assert schedule(units, machines) == {"a.service": ["m3"], "b.service": ["m2"]}


def test_new_units_only_on_connected_machines_with_the_backend() -> None:
    machines = [m("m1", state="disconnected"), m("m2", caps=()), m("m3", caps=("docker",))]
    assert schedule([u("a.service")], machines) == {"a.service": []}
    assert schedule([u("c.container", backend="docker")], machines) == {"c.container": ["m3"]}


def test_inactive_units_are_not_placed() -> None:
    assert schedule([u("a.service", active=False, on=("m1",))], THREE) == {"a.service": []}


def test_metadata_change_moves_a_unit() -> None:
    unit = u("a.service", ("MachineMetadata", "role=web"), on=("m1",))
    assert schedule([unit], [m("m1", role="db"), m("m2", role="web")]) == {"a.service": ["m2"]}


@given(
    st.text(alphabet="ab.@*?[]!", max_size=8),
    st.text(alphabet="ab.@", max_size=8),
)
def test_glob_match_is_fnmatchcase(pattern: str, name: str) -> None:
    assert glob_match(name, pattern) == fnmatch.fnmatchcase(name, pattern)


@given(st.text(alphabet="ab =\t\n\x0c\u00a0'\"\\", max_size=12))
def test_words_are_shlex_split(value: str) -> None:
    try:
        expected = shlex.split(value)
    except ValueError:
        with pytest.raises(ValueError):
            _words(value)
        return
    assert _words(value) == expected


def reasons(units: list[UnitView], machines: list[MachineView]) -> dict[str, str]:
    return unplaced_reasons(units, machines, schedule(units, machines))


def test_placed_and_inactive_units_have_no_reason() -> None:
    units = [u("a.service"), u("b.service", active=False)]
    assert reasons(units, THREE) == {}


@pytest.mark.parametrize(
    ("unit", "machines", "reason"),
    [
        (u("a.service", ("MachineID", "nope")), THREE, "MachineID=nope: no such machine"),
        (
            u("a.service", ("MachineID", "m1")),
            [m("m1", "disconnected")],
            "MachineID=m1: the machine is disconnected",
        ),
        (
            u("c.container", ("MachineID", "m1"), backend="docker"),
            THREE,
            "MachineID=m1: the machine cannot run docker units",
        ),
        (
            u("a.service", ("MachineID", "m1"), ("MachineMetadata", "role=db")),
            [m("m1", role="web")],
            "MachineID=m1: the machine does not match MachineMetadata",
        ),
        (u("a.service"), [m("m1", "lost")], "no machine is connected"),
        (
            u("a.service"),
            [m("m1", caps=("docker",))],
            "no connected machine can run systemd units (none reports systemd)",
        ),
        (
            u("a.service", ("MachineMetadata", "role=db")),
            [m("m1", role="web"), m("m2")],
            "no connected machine that can run systemd units has MachineMetadata role=db",
        ),
        (
            u("a.service", ("MachineOf", "b.service")),
            THREE,
            "MachineOf=b.service, which is not scheduled",
        ),
    ],
)
def test_why_a_unit_is_not_scheduled(
    unit: UnitView, machines: list[MachineView], reason: str
) -> None:
    assert reasons([unit], machines) == {unit.name: reason}


def test_conflicts_everywhere_is_the_reason() -> None:
    units = [u("a.service"), u("b.service", ("Conflicts", "a.service"))]
    assert reasons(units, [m("m1")]) == {
        "b.service": "every machine that could take it runs a unit it conflicts with "
        "(Conflicts) or that replaces it"
    }
    clash = [u("a.service", ("Conflicts", "z.service")), u("z.service", ("MachineID", "m1"))]
    assert reasons(clash, [m("m1")]) == {
        "z.service": "MachineID=m1: the machine runs a unit it conflicts with"
    }


@pytest.mark.parametrize(
    "values",
    [[], ["true"], ["yes"], ["1"], ["false"], [""], ["true", "no"], ["off", "on"], [" True "]],
)
def test_global_is_read_by_clients_as_the_scheduler_reads_it(values: list[str]) -> None:
    """moorctl (which may not import the scheduler) reads Global with proto.units.is_global."""
    options = [UnitOption("X-Fleet", "Global", v) for v in values]
    assert is_global(options) == parse_xfleet(options).is_global
    assert fleet_is_global({"options": msgspec.to_builtins(options)}) == is_global(options)


def test_a_global_that_is_not_a_boolean_is_refused_by_both_readings() -> None:
    options = [UnitOption("X-Fleet", "Global", "maybe")]
    with pytest.raises(ValueError, match="Global='maybe' is not a boolean"):
        is_global(options)
    with pytest.raises(XFleetError):
        parse_xfleet(options)
    assert not fleet_is_global({"options": msgspec.to_builtins(options)})


def test_units_without_scheduling_options_share_one_value() -> None:
    """The unit service keeps one per unit version: 1,000 plain units, one struct."""
    plain = [UnitOption("Service", "ExecStart", "/bin/true")]
    assert parse_xfleet(plain) is NO_XFLEET and parse_xfleet([]) is NO_XFLEET
    assert xf(("Global", "false")) is NO_XFLEET  # spelled out, still the defaults
    assert xf(("Global", "true")) is not NO_XFLEET and xf(("Global", "true")).is_global
    assert xf(("MachineMetadata", "a=b")).metadata == {"a": ("b",)}
    assert XFleet() == NO_XFLEET and NO_XFLEET.metadata == {}
