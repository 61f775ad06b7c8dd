"""WebOps decisions (pure); the store of deployments is tested in store/test_store_webops.py."""

from __future__ import annotations

from coordinator.webops import rules
from coordinator.webops.records import WebLogItem


def test_ports_fill_the_first_gap() -> None:
    assert rules.next_port([]) == rules.PORT_BASE
    assert rules.next_port([8001, 8002, 8004]) == 8003


def test_status_after_a_build() -> None:
    assert rules.after_build("building", True) == "running"
    assert rules.after_build("building", False) == "failed"


def test_log_paging() -> None:
    items = [WebLogItem(i, "error" if i % 2 else "info", f"m{i}", float(i)) for i in range(1, 7)]
    assert [i.id for i in rules.page_logs(items, tail=2)] == [5, 6]
    assert [i.id for i in rules.page_logs(items, level="error")] == [1, 3, 5]
    assert [i.id for i in rules.page_logs(items, since=4.0)] == [4, 5, 6]
    assert rules.page_logs(items, tail=0) == []


def test_env_validation_and_generation() -> None:
    example = {"A": "", "B": "default", "C": ""}
    assert rules.missing_env(example, {"A": "x"}) == ["C"]
    env = rules.generated_env(
        example, debug=False, domain="d.example", custom={"X": "1"}, token="tok"
    )
    assert env == {
        "B": "default",
        "SECRET_KEY": "tok",
        "DEBUG": "False",
        "ALLOWED_HOSTS": "d.example",
        "X": "1",
    }


def test_units_name_their_build() -> None:
    kw = dict(exec_start="/x", workdir="/w", image="img", env_file="/e", port=8001)
    a = rules.unit_options(name="n", build_id="b1", project_type="static", **kw)  # type: ignore[arg-type]
    b = rules.unit_options(name="n", build_id="b2", project_type="static", **kw)  # type: ignore[arg-type]
    assert a != b
    assert rules.unit_name("n", "docker") == "webops-n.container"
    assert rules.unit_name("n", "python") == "webops-n.service"
    docker = rules.unit_options(name="n", build_id="b1", project_type="docker", **kw)  # type: ignore[arg-type]
    assert {(o.section, o.name) for o in docker} >= {
        ("Container", "Image"),
        ("Container", "Network"),
    }
