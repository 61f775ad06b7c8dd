"""proto.units: fleet's unit names, serialisation, hash and unit-file parsing.

Expected values come from spec/fleet-v1-notes.md and from the test tables of fleet
v1.0.0 (unit/unit_test.go) and go-systemd's unit package (serialize_test.go,
deserialize_test.go), so Moorage hashes and parses exactly as fleetctl does.
"""

from __future__ import annotations

import hashlib

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proto.units import (
    CONTAINER_SUFFIX,
    DESIRED_STATES,
    LINE_MAX,
    SYSTEMD_SUFFIXES,
    TEMPLATE_SUFFIXES,
    UnitFileError,
    UnitNameError,
    UnitOption,
    backend_for,
    file_options,
    instance_of,
    is_template,
    parse_unit_file,
    render_unit_file,
    serialize,
    template_of,
    unit_hash,
    unit_suffix,
    validate_unit_name,
    xfleet_options,
)

Opt = UnitOption

# ------------------------------------------------------------------------ hash


def test_notes_hash_example() -> None:
    opts = [Opt("Service", "ExecStart", "/usr/bin/sleep 3000")]
    assert serialize(opts) == "[Service]\nExecStart=/usr/bin/sleep 3000\n"
    assert unit_hash(opts) == "248b997d6becee1b835b7ec7d9c8e68d7dd24623"


def test_fleet_unit_hash_test() -> None:
    # fleet unit/unit_test.go TestUnitHash: parse, then hash the serialised options.
    opts = parse_unit_file("[Service]\nExecStart=/bin/sleep 100\n")
    assert unit_hash(opts) == "1c6fb6f3684bafb0c173d8b8b957ceff031180c1"


def test_hash_covers_xfleet_section() -> None:
    base = [Opt("Service", "ExecStart", "/bin/true")]
    with_x = [*base, Opt("X-Fleet", "Global", "true")]
    assert unit_hash(with_x) != unit_hash(base)
    assert unit_hash(with_x) == hashlib.sha1(serialize(with_x).encode()).hexdigest()


def test_unit_option_json_is_fleet_shape() -> None:
    opt = Opt("Service", "ExecStart", "/bin/true")
    raw = b'{"section":"Service","name":"ExecStart","value":"/bin/true"}'
    assert msgspec.json.encode(opt) == raw
    extra = b'{"section":"Service","name":"ExecStart","value":"/bin/true","x":1}'
    assert msgspec.json.decode(extra, type=UnitOption) == opt


# ------------------------------------------------------------------- serialize


@pytest.mark.parametrize(
    ("options", "text"),
    [
        ([], ""),
        (
            [Opt("Unit", "Description", "Foo"), Opt("Unit", "BindsTo", "bar.service")],
            "[Unit]\nDescription=Foo\nBindsTo=bar.service\n",
        ),
        (
            [Opt("Unit", "Description", "Foo"), Opt("Unit", "Description", "Bar")],
            "[Unit]\nDescription=Foo\nDescription=Bar\n",
        ),
        (
            [
                Opt("Unit", "Description", "Foo"),
                Opt("Service", "ExecStart", "/usr/bin/sleep infinity"),
            ],
            "[Unit]\nDescription=Foo\n\n[Service]\nExecStart=/usr/bin/sleep infinity\n",
        ),
        (
            [
                Opt("Unit", "Description", "Foo"),
                Opt("Service", "ExecStart", "/usr/bin/sleep infinity"),
                Opt("Unit", "BindsTo", "bar.service"),
                Opt("X-Foo", "Bar", "baz"),
                Opt("Service", "ExecStop", "/usr/bin/sleep 1"),
                Opt("Unit", "Documentation", "https://foo.com"),
            ],
            "[Unit]\nDescription=Foo\nBindsTo=bar.service\nDocumentation=https://foo.com\n"
            "\n[Service]\nExecStart=/usr/bin/sleep infinity\nExecStop=/usr/bin/sleep 1\n"
            "\n[X-Foo]\nBar=baz\n",
        ),
        ([Opt("©", "µ☃", "ÇôrèÕ$")], "[©]\nµ☃=ÇôrèÕ$\n"),
        # go-systemd does no escaping or checking: newlines go out verbatim.
        ([Opt("Unit", "Description", "Fo\no")], "[Unit]\nDescription=Fo\no\n"),
        ([Opt("Unit", "Description", "")], "[Unit]\nDescription=\n"),
    ],
)
def test_serialize_matches_go_systemd(options: list[UnitOption], text: str) -> None:
    assert serialize(options) == text


def test_serialize_groups_reappearing_section_under_first() -> None:
    opts = [
        Opt("Unit", "Description", "web"),
        Opt("Service", "ExecStart", "/bin/a"),
        Opt("X-Fleet", "Global", "true"),
        Opt("Unit", "After", "net.target"),
        Opt("Service", "Restart", "always"),
    ]
    assert serialize(opts) == (
        "[Unit]\nDescription=web\nAfter=net.target\n\n"
        "[Service]\nExecStart=/bin/a\nRestart=always\n\n"
        "[X-Fleet]\nGlobal=true\n"
    )
    assert not serialize(opts).endswith("\n\n")


def test_xfleet_split_and_render() -> None:
    opts = [
        Opt("X-Fleet", "MachineMetadata", "region=eu"),
        Opt("Service", "ExecStart", "/bin/a"),
        Opt("x-fleet", "NotScheduling", "1"),  # section names are case-sensitive in fleet
        Opt("X-Fleet", "Conflicts", "web@*.service"),
    ]
    assert xfleet_options(opts) == [opts[0], opts[3]]
    assert file_options(opts) == [opts[1], opts[2]]
    assert render_unit_file(opts) == "[Service]\nExecStart=/bin/a\n\n[x-fleet]\nNotScheduling=1\n"
    assert render_unit_file(opts) == serialize(file_options(opts))
    assert render_unit_file([Opt("X-Fleet", "Global", "true")]) == ""


# ----------------------------------------------------------------------- names

VALID_NAMES = [
    "web.service",
    "foo@1.service",
    "foo@.service",
    "a:b_c-d.e.socket",
    "cache.container",
    "x\\y.timer",
    "ssh@.socket",
    "multi-user.target",
    "tick@daily.timer",
    "watch@.path",
    "db.mount",
    "foo@bar@baz.service",
    "a" * (256 - len(".service")) + ".service",
]

INVALID_NAMES = [
    ("", "empty"),
    ("@foo.service", 'start with "@"'),
    ("foo", 'must contain "."'),
    ("foo.", 'end in "."'),
    ("foo.bar", "invalid unit type"),
    (".service", "nothing before"),
    ("foo bar.service", "invalid character"),
    ("foo/bar.service", "invalid character"),
    ("a" * (257 - len(".service")) + ".service", "maximum length"),
    ("foo@.mount", "cannot be a template"),
    ("foo@1.mount", "cannot be a template or instance"),
    ("foo@.container", "cannot be a template"),
    ("ünïcode.service", "invalid character"),
    ("foo.Service", "invalid unit type"),
    ("foo.service.", 'end in "."'),
]


@pytest.mark.parametrize("name", VALID_NAMES)
def test_valid_unit_names(name: str) -> None:
    validate_unit_name(name)


def test_256_char_boundary() -> None:
    assert len(VALID_NAMES[-1]) == 256
    assert len(INVALID_NAMES[8][0]) == 257


@pytest.mark.parametrize(("name", "reason"), INVALID_NAMES)
def test_invalid_unit_names(name: str, reason: str) -> None:
    with pytest.raises(UnitNameError, match=reason):
        validate_unit_name(name)


def test_length_counts_utf8_bytes_like_fleet() -> None:
    with pytest.raises(UnitNameError, match="maximum length"):
        validate_unit_name("é" * 130 + ".service")


def test_every_known_suffix_is_valid_and_templates_only_where_allowed() -> None:
    for suffix in SYSTEMD_SUFFIXES:
        validate_unit_name(f"x.{suffix}")
        if suffix in TEMPLATE_SUFFIXES:
            validate_unit_name(f"x@.{suffix}")
            validate_unit_name(f"x@1.{suffix}")
        else:
            with pytest.raises(UnitNameError):
                validate_unit_name(f"x@.{suffix}")
    validate_unit_name("x" + CONTAINER_SUFFIX)
    assert set(TEMPLATE_SUFFIXES) <= set(SYSTEMD_SUFFIXES)
    assert DESIRED_STATES == ("inactive", "loaded", "launched")


def test_unit_name_error_is_value_error() -> None:
    with pytest.raises(ValueError):
        validate_unit_name("nope")


# fleet unit/unit_test.go TestNamedUnit, plus plain names.
@pytest.mark.parametrize(
    ("name", "template", "instance", "templ"),
    [
        ("foo.service", None, None, False),
        ("foo@.service", None, None, True),
        ("foo@bar.service", "foo@.service", "bar", False),
        ("foo@bar@baz.service", "foo@.service", "bar@baz", False),
        ("foo.1@.service", None, None, True),
        ("foo.1@2.service", "foo.1@.service", "2", False),
        ("ssh@.socket", None, None, True),
        ("ssh@1.socket", "ssh@.socket", "1", False),
        ("foo", None, None, False),
        ("bar@baz", None, None, False),
    ],
)
def test_template_helpers(
    name: str, template: str | None, instance: str | None, templ: bool
) -> None:
    assert template_of(name) == template
    assert instance_of(name) == instance
    assert is_template(name) is templ


def test_suffix_and_backend() -> None:
    assert unit_suffix("web.service") == "service"
    assert unit_suffix("foo@1.timer") == "timer"
    assert unit_suffix("cache.container") == "container"
    assert unit_suffix("noext") == ""
    assert backend_for("web.service") == "systemd"
    assert backend_for("web@2.socket") == "systemd"
    assert backend_for("cache.container") == "docker"
    with pytest.raises(UnitNameError):
        backend_for("foo.bar")
    with pytest.raises(UnitNameError):
        backend_for("foo")


# --------------------------------------------------------------------- parsing

# go-systemd unit/deserialize_test.go TestDeserialize (the version fleet v1.0.0 used),
# minus the two "ignored outside of sections" cases, which Moorage rejects.
GO_SYSTEMD_CASES = [
    (
        "[Unit]\nDescription=Foo\nDescription=Bar\nRequires=baz.service\nAfter=baz.service\n",
        [
            Opt("Unit", "Description", "Foo"),
            Opt("Unit", "Description", "Bar"),
            Opt("Unit", "Requires", "baz.service"),
            Opt("Unit", "After", "baz.service"),
        ],
    ),
    (
        "[Unit]\nDescription=Foo\n\n[Service]\nExecStart=/usr/bin/sleep infinity\n\n"
        "[X-Third-Party]\nPants=on\n\n",
        [
            Opt("Unit", "Description", "Foo"),
            Opt("Service", "ExecStart", "/usr/bin/sleep infinity"),
            Opt("X-Third-Party", "Pants", "on"),
        ],
    ),
    ("[Unit]\n[Service]\n[X-Third-Party]\n", []),
    (
        '[Service]\nEnvironment= "FOO=BAR" "BAZ=QUX"\n',
        [Opt("Service", "Environment", '"FOO=BAR" "BAZ=QUX"')],
    ),
    (
        "[Unit]\nDescription= Unnecessarily wrapped \\\n    words here\n",
        [Opt("Unit", "Description", "Unnecessarily wrapped      words here")],
    ),
    (
        "; comment alpha\n# comment bravo\n[Unit]\n; comment charlie\n# comment delta\n"
        "#Description=Foo\nDescription=Bar\n; comment echo\n# comment foxtrot\n",
        [Opt("Unit", "Description", "Bar")],
    ),
    (
        "[Unit]\nDescription=Bar\\\n# comment alpha\n\n"
        "Description=Bar\\\n# comment bravo \\\nBaz\n",
        [
            Opt("Unit", "Description", "Bar # comment alpha"),
            Opt("Unit", "Description", "Bar # comment bravo  Baz"),
        ],
    ),
    ("[Unit]\n<<<<<<<<=Bar\n", [Opt("Unit", "<<<<<<<<", "Bar")]),
    ("[Unit]\nSome Thing = Bar\n", [Opt("Unit", "Some Thing", "Bar")]),
    ("[Unit]\nDescription=Bar", [Opt("Unit", "Description", "Bar")]),
    ("[Unit]\nDescription=Bar \\", [Opt("Unit", "Description", "Bar")]),
    ("[©]\nµ☃=ÇôrèÕ$", [Opt("©", "µ☃", "ÇôrèÕ$")]),
    ("[Unit]\n Description   =words here\n", [Opt("Unit", "Description", "words here")]),
    ("[Unit]\nDescription= words here ", [Opt("Unit", "Description", "words here")]),
    ("[Unit]\nDescription= words here \\\n  ", [Opt("Unit", "Description", "words here")]),
    (
        '[Service]\nExecStart=/bin/bash -c "while true; do echo \\"ping\\"; sleep 1; done"\n',
        [
            Opt(
                "Service",
                "ExecStart",
                '/bin/bash -c "while true; do echo \\"ping\\"; sleep 1; done"',
            )
        ],
    ),
    (
        "[Service]\nExecStart=/bin/bash echo poof \\  ",
        [Opt("Service", "ExecStart", "/bin/bash echo poof \\")],
    ),
]


@pytest.mark.parametrize(("text", "options"), GO_SYSTEMD_CASES)
def test_parse_matches_go_systemd(text: str, options: list[UnitOption]) -> None:
    assert parse_unit_file(text) == options


def test_parse_fleet_escaped_multilines() -> None:
    # fleet unit/unit_test.go TestDeserializeEscapedMultilines.
    text = (
        '\n[Service]\nExecStart=echo \\\n  "pi\\\n  ng"\nExecStop=\\\necho "po\\\nng"\n'
        "# comments within continuation should not be ignored\n"
        "ExecStopPre=echo\\\n#pang\nExecStopPost=echo\\\n#peng\\\npung\n"
    )
    assert [(o.name, o.value) for o in parse_unit_file(text)] == [
        ("ExecStart", 'echo    "pi   ng"'),
        ("ExecStop", 'echo "po ng"'),
        ("ExecStopPre", "echo #pang"),
        ("ExecStopPost", "echo #peng pung"),
    ]


def test_parse_fleet_deserialize_in_section() -> None:
    text = (
        "[Unit]\n;ignore this guy\nDescription = Foo\n\n[Service]\n"
        'ExecStart=echo "ping";\nExecStop=echo "pong"\n# ignore me, too\nExecStop=echo post\n'
        "\n[X-Fleet]\nMachineMetadata=foo=bar\nMachineMetadata=baz=qux\n"
    )
    assert parse_unit_file(text) == [
        Opt("Unit", "Description", "Foo"),
        Opt("Service", "ExecStart", 'echo "ping";'),
        Opt("Service", "ExecStop", 'echo "pong"'),
        Opt("Service", "ExecStop", "echo post"),
        Opt("X-Fleet", "MachineMetadata", "foo=bar"),
        Opt("X-Fleet", "MachineMetadata", "baz=qux"),
    ]


def test_parse_comment_continuation_swallows_next_line() -> None:
    # go-systemd's ignoreLineFunc: a comment ending in "\" (one trailing space allowed)
    # continues onto the next line, which is then ignored too.
    text = "[Service]\n# note \\ \nExecStart=/bin/hidden\nExecStop=/bin/seen\n"
    assert parse_unit_file(text) == [Opt("Service", "ExecStop", "/bin/seen")]


def test_parse_crlf_and_indented_headers() -> None:
    text = "[Unit]\r\nDescription=Foo\r\n  [Service]  \r\n\tExecStart = /bin/a \r\n"
    assert parse_unit_file(text) == [
        Opt("Unit", "Description", "Foo"),
        Opt("Service", "ExecStart", "/bin/a"),
    ]
    # As in go-systemd, "\" before "\r\n" is not a continuation.
    assert parse_unit_file("[S]\r\nA=b\\\r\nC=d\r\n") == [Opt("S", "A", "b\\"), Opt("S", "C", "d")]


def test_parse_ignores_leading_bom_and_keeps_empty_values() -> None:
    assert parse_unit_file("\ufeff[Unit]\nDescription=\n=x\n") == [
        Opt("Unit", "Description", ""),
        Opt("Unit", "", "x"),
    ]


def test_parse_trims_go_whitespace_only() -> None:
    # U+001F is whitespace to Python's str.strip() but not to Go's strings.TrimSpace.
    assert parse_unit_file("[S]\nK= \x1fv\x1f \n") == [Opt("S", "K", "\x1fv\x1f")]
    assert parse_unit_file("[S]\nK=\u00a0v\u3000\n") == [Opt("S", "K", "v")]


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ("Description=Foo\n[Unit]\nDescription=Bar\n", 1, "outside of any section"),
        ("# c\n\n<<<<<<<<\n[Unit]\n", 3, "outside of any section"),
        ("[Unit]\nDescription\n", 2, 'expected "Name=Value"'),
        ("[Unit]\nDescription=a\n\n<<<<<<\nDescription=Foo\n", 4, 'expected "Name=Value"'),
        ("[Unit]\nDescription=Foo\n[Service", 3, 'no closing "]"'),
        ("[Unit\nDescription=Foo\n", 1, 'no closing "]"'),
        ("[Unit]\n\n[Service] pants\nExecStart=/bin/a\n", 3, "after section header"),
        ("[Unit]\nnonsense upon stilts\n", 2, 'expected "Name=Value"'),
        ("[Unit]\nKey\r=v\n", 2, "carriage return"),
        ("[Unit]\nA=b\nC=" + "x" * (LINE_MAX - 2) + "\n", 3, "too long"),
    ],
)
def test_parse_errors_name_the_line(text: str, line: int, problem: str) -> None:
    with pytest.raises(UnitFileError, match=problem) as info:
        parse_unit_file(text)
    assert info.value.line == line
    assert str(info.value).startswith(f"line {line}: ")
    assert isinstance(info.value, ValueError)


def test_line_length_boundary() -> None:
    ok = "[S]\nK=" + "x" * (LINE_MAX - 3)  # 2047 bytes
    assert parse_unit_file(ok)[0].value == "x" * (LINE_MAX - 3)
    with pytest.raises(UnitFileError, match="too long"):
        parse_unit_file(ok + "x")


def test_empty_and_blank_text() -> None:
    assert parse_unit_file("") == []
    assert parse_unit_file("\n \n\t\n# only a comment\n") == []


# ------------------------------------------------------------------ properties

_GO_SPACE = (
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007"
    "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)

sections = st.text(
    alphabet=st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_ "),
    min_size=1,
    max_size=20,
)
keys = st.text(
    alphabet=st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."),
    min_size=1,
    max_size=30,
)
values = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\n"),
    max_size=80,
).filter(lambda v: v == v.strip(_GO_SPACE) and not v.endswith("\\"))
options_lists = st.lists(st.builds(UnitOption, sections, keys, values), max_size=12)


def _grouped(opts: list[UnitOption]) -> list[UnitOption]:
    """The option order serialize produces: grouped by first appearance of a section."""
    order: dict[str, list[UnitOption]] = {}
    for o in opts:
        order.setdefault(o.section, []).append(o)
    return [o for group in order.values() for o in group]


@given(options_lists)
def test_round_trip(opts: list[UnitOption]) -> None:
    parsed = parse_unit_file(serialize(opts))
    assert parsed == _grouped(opts)
    assert serialize(parsed) == serialize(opts)
    assert unit_hash(parsed) == unit_hash(opts)


@given(
    st.lists(
        st.builds(UnitOption, sections, keys, values), max_size=12, unique_by=lambda o: o.section
    )
)
def test_round_trip_exact_when_sections_do_not_repeat(opts: list[UnitOption]) -> None:
    assert parse_unit_file(serialize(opts)) == opts


@given(options_lists)
def test_hash_is_stable_and_sha1_of_serialize(opts: list[UnitOption]) -> None:
    h = unit_hash(opts)
    assert h == unit_hash(list(opts)) == unit_hash(tuple(opts))
    assert len(h) == 40
    assert h == hashlib.sha1(serialize(opts).encode("utf-8")).hexdigest()


@given(
    st.lists(st.builds(UnitOption, sections, keys, values), min_size=1, max_size=8),
    st.data(),
)
def test_hash_changes_when_any_option_changes(opts: list[UnitOption], data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(opts) - 1))
    field = data.draw(st.sampled_from(["section", "name", "value"]))
    old = opts[i]
    new_val = getattr(old, field) + data.draw(st.sampled_from(["x", "Y", "0"]))
    changed = list(opts)
    changed[i] = msgspec.structs.replace(old, **{field: new_val})
    assert unit_hash(changed) != unit_hash(opts)


@given(st.lists(st.builds(UnitOption, sections, keys, values), min_size=1, max_size=8))
def test_hash_changes_when_option_dropped_or_added(opts: list[UnitOption]) -> None:
    assert unit_hash(opts[:-1]) != unit_hash(opts)
    assert unit_hash([*opts, Opt("X-Fleet", "Global", "true")]) != unit_hash(opts)
