"""The WebOps store (deployments, logs, webhooks, databases, samples, errors) on both
engines: the ports' contract (ordering, conflicts, ids, tenancy) holds on SQLite and
on PostgreSQL alike."""

from __future__ import annotations

import pytest

from coordinator.errors import Conflict
from coordinator.store.sql import SqlStore
from coordinator.webops.records import (
    Database,
    DatabaseBackup,
    OutboxItem,
    Sample,
    WebDeployment,
    Webhook,
    WebhookDelivery,
    WebQuery,
)


def dep(name: str, tenant: str = "default", **kw: object) -> WebDeployment:
    return WebDeployment(tenant=tenant, name=name, repo_url="file:///r", **kw)  # type: ignore[arg-type]


def test_store_scopes_by_tenant_and_pages_newest_first(store: SqlStore) -> None:
    a = store.webops_create(dep("a", env={"K": "v"}, machine_id="m1", port=8001))
    b = store.webops_create(dep("b", status="running", machine_id="m1", port=8002))
    store.webops_create(dep("a", tenant="other"))
    with pytest.raises(Conflict):
        store.webops_create(dep("a"))
    assert a.id > 0 and b.id > a.id
    assert store.webops_get("default", "a") == a
    assert store.webops_get_id(a.id, "default") == a
    assert store.webops_get_id(a.id, None) == a
    assert store.webops_get_id(a.id, "other") is None
    found, total = store.webops_list("default", WebQuery())
    assert [d.name for d in found] == ["b", "a"] and total == 2
    found, total = store.webops_list("default", WebQuery(status="running"))
    assert [d.name for d in found] == ["b"] and total == 1
    assert [d.name for d in store.webops_list("default", WebQuery(search="A"))[0]] == ["a"]
    assert [d.port for d in store.webops_on_machine("m1")] == [8001, 8002]
    b.status = "stopped"
    b.files = ["app.py", "requirements.txt"]
    b.env_example = {"PORT": ""}
    store.webops_update(b)
    assert store.webops_get("default", "b") == b


def test_list_pages_and_filters_compose(store: SqlStore) -> None:
    for i in range(5):
        store.webops_create(dep(f"site-{i}", project_type="node" if i % 2 else "python"))
    store.webops_create(dep("other-site", tenant="t2", project_type="node"))
    found, total = store.webops_list("default", WebQuery(limit=2, offset=1))
    assert [d.name for d in found] == ["site-3", "site-2"] and total == 5
    found, total = store.webops_list("default", WebQuery(project_type="node", search="SITE"))
    assert [d.name for d in found] == ["site-3", "site-1"] and total == 2
    found, total = store.webops_list("default", WebQuery(search="%"))
    assert found == [] and total == 0  # no wildcard characters in a search
    page = store.webops_after("default", 0, 3)
    assert [d.name for d in page] == ["site-0", "site-1", "site-2"]
    assert [d.name for d in store.webops_after("default", page[-1].id, 3)] == ["site-3", "site-4"]


def test_a_conflict_inside_a_batch_leaves_the_batch_usable(store: SqlStore) -> None:
    store.webops_create(dep("a"))
    with store.batch():
        with pytest.raises(Conflict):
            store.webops_create(dep("a"))
        store.webops_create(dep("b"))
    assert [d.name for d in store.webops_list("default", WebQuery())[0]] == ["b", "a"]


def test_logs_are_append_only_and_go_with_their_deployment(store: SqlStore) -> None:
    a = store.webops_create(dep("a"))
    ids = [store.webops_log(a.id, "info", f"line {i}", float(i)) for i in range(3)]
    assert ids == sorted(ids) and ids[0] > 0
    assert [i.id for i in store.webops_logs(a.id)] == ids
    assert [i.message for i in store.webops_logs(a.id, after_id=ids[0])] == ["line 1", "line 2"]
    store.webops_delete(a.id)
    assert store.webops_logs(a.id) == []
    assert store.webops_get("default", "a") is None


def test_errors_are_newest_first_by_level_time_and_text(store: SqlStore) -> None:
    site = store.webops_create(dep("site"))
    other = store.webops_create(dep("site", tenant="t2"))
    store.webops_log(site.id, "info", "fine", 10.0)
    store.webops_log(site.id, "error", "build b1 failed: npm", 20.0)
    store.webops_log(site.id, "warning", "slow", 30.0)
    store.webops_log(other.id, "error", "not ours", 25.0)
    kw = {"since": 0.0, "until": 0.0, "search": "", "offset": 0, "limit": 10}
    items, total = store.webops_errors("default", levels=("error", "warning"), **kw)  # type: ignore[arg-type]
    assert [(e.deployment, e.message) for e in items] == [
        ("site", "slow"),
        ("site", "build b1 failed: npm"),
    ]
    assert total == 2
    items, total = store.webops_errors(
        "default", levels=("error", "warning"), since=0.0, until=0.0, search="", offset=1, limit=1
    )
    assert [e.message for e in items] == ["build b1 failed: npm"] and total == 2
    items, _ = store.webops_errors(
        "default", levels=("error",), since=0.0, until=0.0, search="NPM", offset=0, limit=10
    )
    assert [e.level for e in items] == ["error"]
    items, total = store.webops_errors(
        "default", levels=("error", "warning"), since=15.0, until=25.0, search="", offset=0, limit=9
    )
    assert [e.created_at for e in items] == [20.0] and total == 1


def test_webhooks_and_their_delivery_log(store: SqlStore) -> None:
    hook = store.webhook_create(
        Webhook(
            tenant="default", url="http://r/", events=["deployment."], secret="s", created_at=1.0
        )
    )
    off = store.webhook_create(Webhook(tenant="default", url="http://q/", active=False))
    store.webhook_create(Webhook(tenant="t2", url="http://z/"))
    assert hook.id > 0 and off.id > hook.id
    assert store.webhooks("default") == [hook, off]
    assert store.webhook_get(hook.id, "default") == hook
    assert store.webhook_get(hook.id, "t2") is None
    for attempt in (1, 2, 3):
        store.webhook_delivered(
            WebhookDelivery(
                webhook_id=hook.id,
                delivery="d1",
                event="deployment.completed",
                attempt=attempt,
                status_code=500 if attempt < 3 else 200,
                ok=attempt == 3,
                duration_ms=7,
                at=float(attempt),
            )
        )
    log = store.webhook_deliveries(hook.id, 2)
    assert [(d.attempt, d.ok, d.status_code) for d in log] == [(3, True, 200), (2, False, 500)]
    assert log[0].id > log[1].id and log[0].webhook_id == hook.id
    store.webhook_delete(hook.id)
    assert store.webhook_get(hook.id, "default") is None
    assert store.webhook_deliveries(hook.id, 10) == []
    assert store.webhooks("default") == [off]


def test_databases_conflict_on_either_name_and_keep_backups(store: SqlStore) -> None:
    def database(name: str, pg_name: str, tenant: str = "default") -> Database:
        return Database(
            tenant=tenant, name=name, pg_name=pg_name, password="pw", host="h", port=5432
        )

    app = store.database_create(database("app", "default_app"))
    with pytest.raises(Conflict):
        store.database_create(database("app", "default_app2"))
    with pytest.raises(Conflict):
        store.database_create(database("app2", "default_app", tenant="t2"))
    other = store.database_create(database("app", "t2_app", tenant="t2"))
    assert app.id > 0 and other.id > app.id
    assert store.databases("default") == [app]
    assert store.database_get("default", "app") == app
    assert store.database_get_id(app.id, "t2") is None
    app.deployment_id = 42
    store.database_update(app)
    assert store.database_get_id(app.id, "default") == app
    first = store.backup_add(
        DatabaseBackup(database_id=app.id, path="/b/1", size=10, sha256="aa", created_at=1.0)
    )
    second = store.backup_add(
        DatabaseBackup(database_id=app.id, path="/b/2", size=2**40, sha256="bb", created_at=2.0)
    )
    assert store.backups(app.id) == [second, first]
    store.database_delete(app.id)
    assert store.backups(app.id) == [] and store.databases("default") == []


def test_samples_upsert_per_minute_prune_and_resume(store: SqlStore) -> None:
    def sample(machine: str, minute: int, cpu: float = 1.0, tenant: str = "default") -> Sample:
        return Sample(machine_id=machine, minute=minute, tenant=tenant, cpu_percent=cpu)

    for minute in (100, 101, 102):
        store.sample_put(sample("m2", minute), 0)
        store.sample_put(sample("m1", minute), 0)
    store.sample_put(sample("m1", 101, cpu=9.0), 0)  # the last report of a minute wins
    store.sample_put(sample("m3", 100, tenant="t2"), 0)
    store.sample_put(sample("m2", 103), 102)  # m2 keeps minutes >= 102 only
    got = store.samples("default", 0)
    assert [(s.machine_id, s.minute) for s in got] == [
        ("m1", 100),
        ("m1", 101),
        ("m1", 102),
        ("m2", 102),
        ("m2", 103),
    ]
    assert got[1].cpu_percent == 9.0
    assert [s.minute for s in store.samples("default", 101)] == [101, 102, 102, 103]
    page = store.samples("default", 0, after=("m1", 101), limit=2)
    assert [(s.machine_id, s.minute) for s in page] == [("m1", 102), ("m2", 102)]
    assert [s.machine_id for s in store.samples("t2", 0)] == ["m3"]


def test_samples_are_averaged_by_hour_as_they_come_and_kept_longer(store: SqlStore) -> None:
    def sample(minute: int, cpu: float, used: int) -> Sample:
        return Sample(
            machine_id="m1", minute=minute, cpu_percent=cpu, memory_total=100, memory_used=used
        )

    store.sample_put(sample(60, 10.0, 10), 0, 0)  # hour 1 (minutes 60-119)
    store.sample_put(sample(61, 30.0, 30), 0, 0)
    store.sample_put(sample(125, 50.0, 50), 0, 0)  # hour 2
    hours = store.samples("default", 0, hourly=True)
    assert [(h.minute, h.cpu_percent, h.memory_used) for h in hours] == [
        (60, 20.0, 20),
        (120, 50.0, 50),
    ]
    # Minutes go after their window; the hours stay until theirs
    store.sample_put(sample(200, 70.0, 70), 190, 100)
    assert [s.minute for s in store.samples("default", 0)] == [200]
    assert [h.minute for h in store.samples("default", 0, hourly=True)] == [120, 180]


def test_the_webhook_outbox_claims_each_due_delivery_once(store: SqlStore) -> None:
    hook = store.webhook_create(Webhook(tenant="default", url="http://h/"))
    store.outbox_add(
        [
            OutboxItem(
                webhook_id=hook.id,
                tenant="default",
                event="deployment.completed",
                delivery=f"d{i}",
                body="{}",
                next_at=10.0 + i,
            )
            for i in range(3)
        ]
    )
    assert store.outbox_count() == 3 and store.outbox_next_at() == 10.0
    first = store.outbox_claim(11.5, 5, until=100.0)  # due: d0, d1
    assert [i.delivery for i in first] == ["d0", "d1"]
    assert [i.delivery for i in store.outbox_claim(12.0, 5, until=100.0)] == ["d2"]
    assert store.outbox_claim(50.0, 5, until=200.0) == []  # all claimed until 100
    store.outbox_retry(first[0].id, 1, 20.0)
    again = store.outbox_claim(50.0, 5, until=200.0)
    assert [(i.delivery, i.attempts) for i in again] == [("d0", 1)]
    store.outbox_done(first[1].id)
    assert store.outbox_count() == 2
    store.webhook_delete(hook.id)  # its waiting deliveries go with it
    assert store.outbox_count() == 0 and store.outbox_next_at() is None


def test_runtime_output_lands_by_machine_and_name_and_is_pruned(store: SqlStore) -> None:
    site = store.webops_create(dep("site", machine_id="m1", port=8001))
    store.webops_create(dep("site", tenant="other", machine_id="m2", port=8001))
    for i in range(5):
        store.webops_runtime_log("m1", "site", "info", f"out {i}", float(i))
    store.webops_runtime_log("m1", "gone", "info", "nobody's", 9.0)  # no such deployment
    assert [i.message for i in store.webops_logs(site.id)] == [f"out {i}" for i in range(5)]
    assert store.webops_logs_prune("m1", "site", keep=2) == 3
    assert [i.message for i in store.webops_logs(site.id)] == ["out 3", "out 4"]
    assert store.webops_logs_prune("m1", "site", keep=2) == 0


def test_bulk_jobs_are_stored_per_tenant_kept_newest_and_interrupted(store: SqlStore) -> None:
    from coordinator.webops.records import BulkJob, BulkResult

    def job(i: int, runner: str = "A") -> BulkJob:
        return BulkJob(
            id=f"j{i}",
            tenant="default",
            action="restart",
            total=2,
            runner=runner,
            created_at=float(i),
        )

    first = job(1)
    store.bulk_job_save(first, keep=2)
    first.results.append(BulkResult(7, True, "site", "running"))
    store.bulk_job_save(first)  # progress, read by any coordinator
    got = store.bulk_job_get("j1", "default")
    assert got is not None and got.results == [BulkResult(7, True, "site", "running")]
    assert store.bulk_job_get("j1", "other") is None
    store.bulk_job_save(job(2, runner="B"), keep=2)
    store.bulk_job_save(job(3), keep=2)
    assert store.bulk_job_get("j1", "default") is None  # only the newest 2 are kept
    assert store.bulk_jobs_interrupt("A", 9.0) == 1  # A restarted: j3 will not go on
    j3, j2 = store.bulk_job_get("j3", "default"), store.bulk_job_get("j2", "default")
    assert j3 is not None and (j3.status, j3.finished_at) == ("interrupted", 9.0)
    assert j2 is not None and j2.status == "running"
