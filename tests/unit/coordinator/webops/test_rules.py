"""WebOps decisions (pure) and the SQLite store of deployments and their logs."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.errors import Conflict
from coordinator.store.sql import SqlStore
from coordinator.store.sql.migrate import head
from coordinator.webops import rules
from coordinator.webops.records import WebDeployment, WebLogItem, WebQuery


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


@pytest.fixture
def store(tmp_path: Path) -> SqlStore:
    s = SqlStore(str(tmp_path / "db.sqlite"))
    assert s.schema_version == head()
    return s


def dep(name: str, tenant: str = "default", **kw: object) -> WebDeployment:
    return WebDeployment(tenant=tenant, name=name, repo_url="file:///r", **kw)  # type: ignore[arg-type]


def test_store_scopes_by_tenant_and_pages_newest_first(store: SqlStore) -> None:
    a = store.webops_create(dep("a", env={"K": "v"}, machine_id="m1", port=8001))
    b = store.webops_create(dep("b", status="running", machine_id="m1", port=8002))
    store.webops_create(dep("a", tenant="other"))
    with pytest.raises(Conflict):
        store.webops_create(dep("a"))
    assert store.webops_get("default", "a") == a
    assert store.webops_get_id(a.id, "other") is None
    found, total = store.webops_list("default", WebQuery())
    assert [d.name for d in found] == ["b", "a"] and total == 2
    found, total = store.webops_list("default", WebQuery(status="running"))
    assert [d.name for d in found] == ["b"] and total == 1
    assert [d.name for d in store.webops_list("default", WebQuery(search="A"))[0]] == ["a"]
    assert [d.port for d in store.webops_on_machine("m1")] == [8001, 8002]
    b.status = "stopped"
    store.webops_update(b)
    assert store.webops_get("default", "b").status == "stopped"  # type: ignore[union-attr]


def test_logs_are_append_only_and_go_with_their_deployment(store: SqlStore) -> None:
    a = store.webops_create(dep("a"))
    ids = [store.webops_log(a.id, "info", f"line {i}", float(i)) for i in range(3)]
    assert [i.id for i in store.webops_logs(a.id)] == ids
    assert [i.message for i in store.webops_logs(a.id, after_id=ids[0])] == ["line 1", "line 2"]
    store.webops_delete(a.id)
    assert store.webops_logs(a.id) == []
    assert store.webops_get("default", "a") is None
