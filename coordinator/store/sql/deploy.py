"""Machine groups, applications and their versions, deployments, releases, jobs, and
which release each machine runs.

Every change of what a machine must run bumps that machine's desired revision inside
the same transaction.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping

import msgspec

from coordinator.errors import Conflict
from coordinator.models import (
    DEFAULT_TENANT,
    Application,
    ApplicationVersion,
    Deployment,
    DeploymentStatus,
    MachineGroup,
    Release,
    ReleaseJob,
)
from coordinator.store.ports import builtin_group_id
from coordinator.store.sql.core import SqlCore, _bump
from coordinator.store.sql.core import row_record as _record

_release_decoder = msgspec.json.Decoder(Release)


def _tenant_clause(tenant: str | None, column: str = "tenant") -> tuple[str, tuple[str, ...]]:
    """ " AND <column>=?" and its argument when scoped to one tenant; nothing for None."""
    return ("", ()) if tenant is None else (f" AND {column}=?", (tenant,))


class DeploySql(SqlCore):
    _targeted: frozenset[str] | None = None
    """Machines with any deployment on them, cached: every push of a machine's desired
    state asks, and most machines of a big fleet have none."""

    # --- machine groups -----------------------------------------------------------------

    def list_groups(self, *, tenant: str | None = None) -> list[MachineGroup]:
        where, args = _tenant_clause(tenant)
        rows = self._raw_all(
            f"SELECT * FROM machine_groups WHERE 1=1{where} ORDER BY builtin DESC, name", args
        )
        return [_group(r) for r in rows]

    def get_group(self, group_id: str, *, tenant: str | None = None) -> MachineGroup | None:
        where, args = _tenant_clause(tenant)
        row = self._raw_one(f"SELECT * FROM machine_groups WHERE id=?{where}", (group_id, *args))
        return _group(row) if row else None

    def group_by_name(self, name: str, *, tenant: str = DEFAULT_TENANT) -> MachineGroup | None:
        row = self._raw_one(
            "SELECT * FROM machine_groups WHERE tenant=? AND name=?", (tenant, name)
        )
        return _group(row) if row else None

    def ensure_builtin_group(self, tenant: str, now: float) -> None:
        """The tenant's built-in `default` group (every machine of the tenant), made once."""
        if self.get_group(builtin_group_id(tenant)) is not None:
            return
        with self._raw_tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO machine_groups (id, tenant, name, description, builtin,"
                " created_at, updated_at) VALUES (?, ?, 'default', ?, 1, ?, ?)",
                (builtin_group_id(tenant), tenant, "Every machine of the tenant", now, now),
            )

    def put_group(self, group: MachineGroup) -> None:
        """Create or replace (by id, in its tenant); a name used by another group of the
        tenant is a Conflict."""
        with self._raw_tx() as db:
            other = db.execute(
                "SELECT id FROM machine_groups WHERE tenant=? AND name=? AND id<>?",
                (group.tenant, group.name, group.id),
            ).fetchone()
            if other is not None:
                raise Conflict(f"a cluster group named {group.name!r} already exists")
            db.execute(
                "INSERT INTO machine_groups (id, tenant, name, description, selector, machines,"
                " builtin, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?)"
                " ON CONFLICT(id) DO"
                " UPDATE SET name=excluded.name, description=excluded.description,"
                " selector=excluded.selector, machines=excluded.machines,"
                " updated_at=excluded.updated_at WHERE tenant=excluded.tenant",
                (
                    group.id,
                    group.tenant,
                    group.name,
                    group.description,
                    json.dumps(group.selector, sort_keys=True),
                    json.dumps(sorted(set(group.machines))),
                    group.created_at,
                    group.updated_at,
                ),
            )

    def delete_group(self, group_id: str) -> bool:
        with self._raw_tx() as db:
            return (
                db.execute(
                    "DELETE FROM machine_groups WHERE id=? AND builtin=0", (group_id,)
                ).rowcount
                == 1
            )

    # --- applications ---------------------------------------------------------------------

    _APP_SQL = (
        "SELECT a.*, v.number AS version_number, v.label AS version, v.source_config,"
        " v.digest FROM applications a JOIN application_versions v ON v.application_id=a.id"
        " AND v.number=(SELECT MAX(number) FROM application_versions WHERE application_id=a.id)"
    )

    def list_applications(self, *, tenant: str | None = None) -> list[Application]:
        where, args = _tenant_clause(tenant, "a.tenant")
        rows = self._raw_all(self._APP_SQL + f" WHERE 1=1{where} ORDER BY a.created_at, a.id", args)
        return [_record(r, Application) for r in rows]

    def get_application(self, app_id: str, *, tenant: str | None = None) -> Application | None:
        where, args = _tenant_clause(tenant, "a.tenant")
        row = self._raw_one(self._APP_SQL + f" WHERE a.id=?{where}", (app_id, *args))
        return _record(row, Application) if row else None

    def application_by_name(self, name: str, *, tenant: str = DEFAULT_TENANT) -> Application | None:
        row = self._raw_one(self._APP_SQL + " WHERE a.tenant=? AND a.name=?", (tenant, name))
        return _record(row, Application) if row else None

    def put_application(self, app: Application, new_version: ApplicationVersion | None) -> None:
        """Create or update an application (by id, in its tenant), adding `new_version`
        if given."""
        with self._raw_tx() as db:
            other = db.execute(
                "SELECT id FROM applications WHERE tenant=? AND name=? AND id<>?",
                (app.tenant, app.name, app.id),
            ).fetchone()
            if other is not None:
                raise Conflict(f"an application named {app.name!r} already exists")
            db.execute(
                "INSERT INTO applications (id, tenant, name, description, source_type,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO"
                " UPDATE SET name=excluded.name, description=excluded.description,"
                " source_type=excluded.source_type, updated_at=excluded.updated_at"
                " WHERE tenant=excluded.tenant",
                (
                    app.id,
                    app.tenant,
                    app.name,
                    app.description,
                    app.source_type,
                    app.created_at,
                    app.updated_at,
                ),
            )
            if new_version is not None:
                taken = db.execute(
                    "SELECT 1 FROM application_versions WHERE application_id=? AND label=?",
                    (app.id, new_version.label),
                ).fetchone()
                if taken is not None:
                    raise Conflict(
                        f"application {app.name!r} already has a version {new_version.label!r}"
                        " with other content; give the new content a new version"
                    )
                db.execute(
                    "INSERT INTO application_versions (application_id, number, label,"
                    " source_config, digest, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        app.id,
                        new_version.number,
                        new_version.label,
                        new_version.source_config,
                        new_version.digest,
                        new_version.created_at,
                    ),
                )

    def delete_application(self, app_id: str) -> bool:
        with self._raw_tx() as db:
            return db.execute("DELETE FROM applications WHERE id=?", (app_id,)).rowcount == 1

    def versions(self, app_id: str) -> list[ApplicationVersion]:
        rows = self._raw_all(
            "SELECT * FROM application_versions WHERE application_id=? ORDER BY number",
            (app_id,),
        )
        return [_record(r, ApplicationVersion) for r in rows]

    def version(self, app_id: str, label: str) -> ApplicationVersion | None:
        row = self._raw_one(
            "SELECT * FROM application_versions WHERE application_id=? AND label=?",
            (app_id, label),
        )
        return _record(row, ApplicationVersion) if row else None

    # --- deployments ----------------------------------------------------------------------

    def list_deployments(self, *, tenant: str | None = None) -> list[Deployment]:
        where, args = _tenant_clause(tenant)
        rows = self._raw_all(
            f"SELECT * FROM deployments WHERE 1=1{where} ORDER BY created_at, id", args
        )
        return [_record(r, Deployment) for r in rows]

    def get_deployment(self, deployment_id: str, *, tenant: str | None = None) -> Deployment | None:
        where, args = _tenant_clause(tenant)
        row = self._raw_one(f"SELECT * FROM deployments WHERE id=?{where}", (deployment_id, *args))
        return _record(row, Deployment) if row else None

    def deployment_by_name(self, name: str, *, tenant: str = DEFAULT_TENANT) -> Deployment | None:
        row = self._raw_one("SELECT * FROM deployments WHERE tenant=? AND name=?", (tenant, name))
        return _record(row, Deployment) if row else None

    def deployments_using(
        self,
        *,
        application_id: str | None = None,
        group_id: str | None = None,
        tenant: str | None = None,
    ) -> list[Deployment]:
        return [
            d
            for d in self.list_deployments(tenant=tenant)
            if (application_id is None or d.application_id == application_id)
            and (group_id is None or d.group_id == group_id)
        ]

    def put_deployment(self, deployment: Deployment) -> None:
        with self._raw_tx() as db:
            other = db.execute(
                "SELECT id FROM deployments WHERE tenant=? AND name=? AND id<>?",
                (deployment.tenant, deployment.name, deployment.id),
            ).fetchone()
            if other is not None:
                raise Conflict(f"a deployment named {deployment.name!r} already exists")
            db.execute(
                "INSERT INTO deployments (id, tenant, name, application_id, group_id,"
                " application_version, status, current_release, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET"
                " name=excluded.name, application_id=excluded.application_id,"
                " group_id=excluded.group_id, application_version=excluded.application_version,"
                " updated_at=excluded.updated_at WHERE tenant=excluded.tenant",
                (
                    deployment.id,
                    deployment.tenant,
                    deployment.name,
                    deployment.application_id,
                    deployment.group_id,
                    deployment.application_version,
                    deployment.status,
                    deployment.current_release,
                    deployment.created_at,
                    deployment.updated_at,
                ),
            )

    def delete_deployment(self, deployment_id: str) -> set[str] | None:
        """Remove a deployment and what it put on machines; None if it did not exist,
        else the machines whose desired state changed (revisions bumped)."""
        with self._raw_tx() as db:
            machines = {
                r[0]
                for r in db.execute(
                    "SELECT machine_id FROM deployment_targets WHERE deployment_id=?",
                    (deployment_id,),
                )
            }
            if db.execute("DELETE FROM deployments WHERE id=?", (deployment_id,)).rowcount != 1:
                return None
            _bump(db, machines)
            self._targeted = None
            return machines

    def set_deployment_status(
        self,
        deployment_id: str,
        status: DeploymentStatus,
        now: float,
        *,
        current_release: str | None = None,
    ) -> None:
        with self._raw_tx() as db:
            db.execute(
                "UPDATE deployments SET status=?, updated_at=?,"
                " current_release=COALESCE(?, current_release) WHERE id=?",
                (status, now, current_release, deployment_id),
            )

    # --- releases and jobs ------------------------------------------------------------------

    def create_release(self, release: Release, jobs: list[ReleaseJob]) -> None:
        """Store a new release with its jobs and mark the deployment Running, at once."""
        with self._raw_tx() as db:
            db.execute(
                "INSERT INTO releases (id, deployment_id, seq, body, status, batch, message,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    release.id,
                    release.deployment_id,
                    release.seq,
                    msgspec.json.encode(release).decode(),
                    release.status,
                    release.batch,
                    release.message,
                    release.created_at,
                    release.updated_at,
                ),
            )
            db.executemany(
                "INSERT INTO release_jobs (id, release_id, machine_id, batch, status)"
                " VALUES (?, ?, ?, ?, ?)",
                [(j.id, j.release_id, j.machine_id, j.batch, j.status) for j in jobs],
            )
            db.execute(
                "UPDATE deployments SET status=?, updated_at=? WHERE id=?",
                (release.status, release.created_at, release.deployment_id),
            )

    def next_release_seq(self, deployment_id: str) -> int:
        row = self._raw_one(
            "SELECT COALESCE(MAX(seq), 0) FROM releases WHERE deployment_id=?", (deployment_id,)
        )
        return int(row[0]) + 1 if row is not None else 1

    def get_release(self, release_id: str, *, tenant: str | None = None) -> Release | None:
        """A release (of a deployment of `tenant` only, when given)."""
        if tenant is None:
            row = self._raw_one("SELECT * FROM releases WHERE id=?", (release_id,))
        else:
            row = self._raw_one(
                "SELECT r.* FROM releases r JOIN deployments d ON d.id=r.deployment_id"
                " WHERE r.id=? AND d.tenant=?",
                (release_id, tenant),
            )
        return _release(row) if row else None

    def list_releases(self, deployment_id: str) -> list[Release]:
        rows = self._raw_all(
            "SELECT * FROM releases WHERE deployment_id=? ORDER BY seq", (deployment_id,)
        )
        return [_release(r) for r in rows]

    def releases_with_status(self, status: DeploymentStatus) -> list[Release]:
        rows = self._raw_all("SELECT * FROM releases WHERE status=? ORDER BY created_at", (status,))
        return [_release(r) for r in rows]

    def update_release(
        self,
        release_id: str,
        *,
        status: DeploymentStatus,
        batch: int,
        message: str,
        now: float,
        finished: bool = False,
        rolled_back: bool = False,
    ) -> None:
        with self._raw_tx() as db:
            db.execute(
                "UPDATE releases SET status=?, batch=?, message=?, updated_at=?,"
                " finished_at=CASE WHEN ? THEN ? ELSE finished_at END,"
                " rolled_back=MAX(rolled_back, ?) WHERE id=?",
                (status, batch, message, now, finished, now, int(rolled_back), release_id),
            )

    def jobs(self, release_id: str) -> list[ReleaseJob]:
        rows = self._raw_all(
            "SELECT * FROM release_jobs WHERE release_id=? ORDER BY batch, machine_id",
            (release_id,),
        )
        return [_record(r, ReleaseJob) for r in rows]

    def update_jobs(self, jobs: Iterable[ReleaseJob]) -> None:
        with self._raw_tx() as db:
            db.executemany(
                "UPDATE release_jobs SET status=?, message=?, started_at=?, healthy_since=?,"
                " finished_at=? WHERE id=?",
                [
                    (j.status, j.message, j.started_at, j.healthy_since, j.finished_at, j.id)
                    for j in jobs
                ],
            )

    # --- which release each machine runs ------------------------------------------------

    def targets(self, deployment_id: str) -> dict[str, str]:
        """machine id -> release id it must run, for one deployment."""
        rows = self._raw_all(
            "SELECT machine_id, release_id FROM deployment_targets WHERE deployment_id=?",
            (deployment_id,),
        )
        return {str(r[0]): str(r[1]) for r in rows}

    def set_targets(self, deployment_id: str, changes: Mapping[str, str | None]) -> set[str]:
        """Point machines at a release (None: the deployment leaves the machine); returns
        the machines whose desired state changed, revisions bumped in the same transaction."""
        affected: set[str] = set()
        with self._raw_tx() as db:
            for machine_id, release_id in sorted(changes.items()):
                if release_id is None:
                    cur = db.execute(
                        "DELETE FROM deployment_targets WHERE deployment_id=? AND machine_id=?",
                        (deployment_id, machine_id),
                    )
                else:
                    cur = db.execute(
                        "INSERT INTO deployment_targets (deployment_id, machine_id, release_id)"
                        " VALUES (?, ?, ?) ON CONFLICT(deployment_id, machine_id) DO UPDATE SET"
                        " release_id=excluded.release_id WHERE release_id<>excluded.release_id",
                        (deployment_id, machine_id, release_id),
                    )
                if cur.rowcount:
                    affected.add(machine_id)
            _bump(db, affected)
            self._targeted = None
        return affected

    def targeted_machines(self) -> frozenset[str]:
        if self._targeted is None:
            rows = self._raw_all("SELECT DISTINCT machine_id FROM deployment_targets")
            self._targeted = frozenset(str(r[0]) for r in rows)
        return self._targeted

    def machine_targets(self, machine_id: str) -> list[tuple[str, str]]:
        """(deployment name, release id) of every deployment on one machine, by name."""
        if machine_id not in self.targeted_machines():
            return []
        rows = self._raw_all(
            # From the machine's targets (deployment_targets_by_machine), in this order.
            "SELECT d.name, t.release_id FROM deployment_targets t CROSS JOIN deployments d"
            " ON d.id=t.deployment_id CROSS JOIN machines m ON m.id=t.machine_id"
            " AND m.tenant=d.tenant WHERE t.machine_id=? ORDER BY d.name",
            (machine_id,),
        )
        return [(str(r[0]), str(r[1])) for r in rows]


def _group(row: sqlite3.Row) -> MachineGroup:
    return MachineGroup(
        id=row["id"],
        name=row["name"],
        description=row["description"],
        selector=json.loads(row["selector"]),
        machines=json.loads(row["machines"]),
        builtin=bool(row["builtin"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        tenant=row["tenant"],
    )


def _release(row: sqlite3.Row) -> Release:
    """The immutable body as cut, with the columns that a rollout moves on."""
    body = _release_decoder.decode(row["body"])
    return msgspec.structs.replace(
        body,
        status=row["status"],
        batch=row["batch"],
        message=row["message"],
        rolled_back=bool(row["rolled_back"]),
        updated_at=row["updated_at"],
        finished_at=row["finished_at"],
    )
