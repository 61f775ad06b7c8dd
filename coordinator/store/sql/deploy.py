"""Machine groups, applications and their versions, deployments, releases, jobs, and
which release each machine runs.

Every change of what a machine must run bumps that machine's desired revision inside
the same transaction.

A name taken by another record of the tenant is a `Conflict`: found by a read before
the write, and, when another coordinator sharing PostgreSQL takes the name between
that read and this write, by the unique constraint the write then breaks.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection, RowMapping

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
from coordinator.store.sql import schema
from coordinator.store.sql.core import SqlCore, bump, in_chunks, unique_name
from coordinator.store.sql.core import row_record as _record

# One implementation of "a unique name taken in a race is the check's Conflict", envs'
# (it belongs in core, which this change may not edit).

_release_decoder = msgspec.json.Decoder(Release)


groups_t = schema.machine_groups
apps_t = schema.applications
versions_t = schema.application_versions
deployments_t = schema.deployments
releases_t = schema.releases
jobs_t = schema.release_jobs
targets_t = schema.deployment_targets


def _in_tenant(column: sa.ColumnElement[str], tenant: str | None) -> sa.ColumnElement[bool]:
    """`column` is `tenant`; always true for None (any tenant)."""
    return sa.true() if tenant is None else column == tenant


def target_changes(
    current: Mapping[str, str], changes: Mapping[str, str | None]
) -> tuple[dict[str, str], set[str]]:
    """What `set_targets` writes: (machine -> release to point at, machines to remove),
    only the machines whose target actually changes. Pure."""
    point = {m: r for m, r in changes.items() if r is not None and current.get(m) != r}
    remove = {m for m, r in changes.items() if r is None and m in current}
    return point, remove


def _applications() -> sa.Select[Any]:
    """Applications with their latest version's columns."""
    latest = versions_t.alias("latest")
    newest = (
        sa.select(sa.func.max(latest.c.number))
        .where(latest.c.application_id == apps_t.c.id)
        .correlate(apps_t)
        .scalar_subquery()
    )
    return sa.select(
        apps_t,
        versions_t.c.number.label("version_number"),
        versions_t.c.label.label("version"),
        versions_t.c.source_config,
        versions_t.c.digest,
    ).select_from(
        apps_t.join(
            versions_t,
            sa.and_(versions_t.c.application_id == apps_t.c.id, versions_t.c.number == newest),
        )
    )


class DeploySql(SqlCore):
    _targeted: frozenset[str] | None = None
    """Machines with any deployment on them, cached: every push of a machine's desired
    state asks, and most machines of a big fleet have none. SQLite only (one
    coordinator writes it); on PostgreSQL another coordinator may point a machine at a
    release, which this process would never hear of."""

    # --- machine groups -----------------------------------------------------------------

    def _put_named(
        self,
        db: Connection,
        table: sa.Table,
        values: dict[str, object],
        changing: tuple[str, ...],
        taken: str,
    ) -> None:
        """Create or update a named record by id, in its tenant (an update never moves
        a record into another tenant); a name another record of the tenant holds, now
        or by the time the write lands, is a Conflict saying `taken`."""
        if _other_named(db, table, str(values["tenant"]), str(values["name"]), str(values["id"])):
            raise Conflict(taken)
        stmt = self._insert(table).values(**values)
        new = stmt.excluded
        with unique_name(taken):
            db.execute(
                stmt.on_conflict_do_update(
                    index_elements=[table.c.id],
                    set_={column: new[column] for column in changing},
                    where=table.c.tenant == new.tenant,
                )
            )

    def list_groups(self, *, tenant: str | None = None) -> list[MachineGroup]:
        rows = self._maps(
            sa.select(groups_t)
            .where(_in_tenant(groups_t.c.tenant, tenant))
            .order_by(groups_t.c.builtin.desc(), groups_t.c.name)
        )
        return [_group(r) for r in rows]

    def get_group(self, group_id: str, *, tenant: str | None = None) -> MachineGroup | None:
        row = self._first(
            sa.select(groups_t).where(
                groups_t.c.id == group_id, _in_tenant(groups_t.c.tenant, tenant)
            )
        )
        return _group(row) if row else None

    def group_by_name(self, name: str, *, tenant: str = DEFAULT_TENANT) -> MachineGroup | None:
        row = self._first(
            sa.select(groups_t).where(groups_t.c.tenant == tenant, groups_t.c.name == name)
        )
        return _group(row) if row else None

    def ensure_builtin_group(self, tenant: str, now: float) -> None:
        """The tenant's built-in `default` group (every machine of the tenant), made once."""
        if self.get_group(builtin_group_id(tenant)) is not None:
            return
        with self._tx() as db:
            db.execute(
                self._insert(groups_t)
                .values(
                    id=builtin_group_id(tenant),
                    tenant=tenant,
                    name="default",
                    description="Every machine of the tenant",
                    builtin=1,
                    created_at=now,
                    updated_at=now,
                )
                .on_conflict_do_nothing()
            )

    def put_group(self, group: MachineGroup) -> None:
        """Create or replace (by id, in its tenant); a name used by another group of the
        tenant is a Conflict."""
        values = {
            "id": group.id,
            "tenant": group.tenant,
            "name": group.name,
            "description": group.description,
            "selector": json.dumps(group.selector, sort_keys=True),
            "machines": json.dumps(sorted(set(group.machines))),
            "builtin": 0,
            "created_at": group.created_at,
            "updated_at": group.updated_at,
        }
        changing = ("name", "description", "selector", "machines", "updated_at")
        taken = f"a cluster group named {group.name!r} already exists"
        with self._tx() as db:
            self._put_named(db, groups_t, values, changing, taken)

    def delete_group(self, group_id: str) -> bool:
        with self._tx() as db:
            result = db.execute(
                sa.delete(groups_t).where(groups_t.c.id == group_id, groups_t.c.builtin == 0)
            )
            return result.rowcount == 1

    # --- applications ---------------------------------------------------------------------

    def list_applications(self, *, tenant: str | None = None) -> list[Application]:
        rows = self._maps(
            _applications()
            .where(_in_tenant(apps_t.c.tenant, tenant))
            .order_by(apps_t.c.created_at, apps_t.c.id)
        )
        return [_record(r, Application) for r in rows]

    def get_application(self, app_id: str, *, tenant: str | None = None) -> Application | None:
        row = self._first(
            _applications().where(apps_t.c.id == app_id, _in_tenant(apps_t.c.tenant, tenant))
        )
        return _record(row, Application) if row else None

    def application_by_name(self, name: str, *, tenant: str = DEFAULT_TENANT) -> Application | None:
        row = self._first(_applications().where(apps_t.c.tenant == tenant, apps_t.c.name == name))
        return _record(row, Application) if row else None

    def put_application(self, app: Application, new_version: ApplicationVersion | None) -> None:
        """Create or update an application (by id, in its tenant), adding `new_version`
        if given."""
        values = {
            "id": app.id,
            "tenant": app.tenant,
            "name": app.name,
            "description": app.description,
            "source_type": app.source_type,
            "created_at": app.created_at,
            "updated_at": app.updated_at,
        }
        changing = ("name", "description", "source_type", "updated_at")
        with self._tx() as db:
            self._put_named(
                db, apps_t, values, changing, f"an application named {app.name!r} already exists"
            )
            if new_version is None:
                return
            label_taken = (
                f"application {app.name!r} already has a version {new_version.label!r}"
                " with other content; give the new content a new version"
            )
            labelled = db.execute(
                sa.select(sa.literal(1)).where(
                    versions_t.c.application_id == app.id,
                    versions_t.c.label == new_version.label,
                )
            ).first()
            if labelled is not None:
                raise Conflict(label_taken)
            with unique_name(label_taken):
                db.execute(
                    sa.insert(versions_t).values(
                        application_id=app.id,
                        number=new_version.number,
                        label=new_version.label,
                        source_config=new_version.source_config,
                        digest=new_version.digest,
                        created_at=new_version.created_at,
                    )
                )

    def delete_application(self, app_id: str) -> bool:
        with self._tx() as db:
            return db.execute(sa.delete(apps_t).where(apps_t.c.id == app_id)).rowcount == 1

    def versions(self, app_id: str) -> list[ApplicationVersion]:
        rows = self._maps(
            sa.select(versions_t)
            .where(versions_t.c.application_id == app_id)
            .order_by(versions_t.c.number)
        )
        return [_record(r, ApplicationVersion) for r in rows]

    def version(self, app_id: str, label: str) -> ApplicationVersion | None:
        row = self._first(
            sa.select(versions_t).where(
                versions_t.c.application_id == app_id, versions_t.c.label == label
            )
        )
        return _record(row, ApplicationVersion) if row else None

    # --- deployments ----------------------------------------------------------------------

    def list_deployments(self, *, tenant: str | None = None) -> list[Deployment]:
        rows = self._maps(
            sa.select(deployments_t)
            .where(_in_tenant(deployments_t.c.tenant, tenant))
            .order_by(deployments_t.c.created_at, deployments_t.c.id)
        )
        return [_record(r, Deployment) for r in rows]

    def get_deployment(self, deployment_id: str, *, tenant: str | None = None) -> Deployment | None:
        row = self._first(
            sa.select(deployments_t).where(
                deployments_t.c.id == deployment_id, _in_tenant(deployments_t.c.tenant, tenant)
            )
        )
        return _record(row, Deployment) if row else None

    def deployment_by_name(self, name: str, *, tenant: str = DEFAULT_TENANT) -> Deployment | None:
        row = self._first(
            sa.select(deployments_t).where(
                deployments_t.c.tenant == tenant, deployments_t.c.name == name
            )
        )
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
        values = {
            "id": deployment.id,
            "tenant": deployment.tenant,
            "name": deployment.name,
            "application_id": deployment.application_id,
            "group_id": deployment.group_id,
            "application_version": deployment.application_version,
            "status": deployment.status,
            "current_release": deployment.current_release,
            "created_at": deployment.created_at,
            "updated_at": deployment.updated_at,
        }
        changing = ("name", "application_id", "group_id", "application_version", "updated_at")
        taken = f"a deployment named {deployment.name!r} already exists"
        with self._tx() as db:
            self._put_named(db, deployments_t, values, changing, taken)

    def delete_deployment(self, deployment_id: str) -> set[str] | None:
        """Remove a deployment and what it put on machines; None if it did not exist,
        else the machines whose desired state changed (revisions bumped)."""
        with self._tx() as db:
            machines = set(
                db.execute(
                    sa.select(targets_t.c.machine_id).where(
                        targets_t.c.deployment_id == deployment_id
                    )
                ).scalars()
            )
            gone = db.execute(sa.delete(deployments_t).where(deployments_t.c.id == deployment_id))
            if gone.rowcount != 1:
                return None
            bump(db, machines)
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
        values: dict[str, Any] = {"status": status, "updated_at": now}
        if current_release is not None:
            values["current_release"] = current_release
        with self._tx() as db:
            db.execute(
                sa.update(deployments_t).where(deployments_t.c.id == deployment_id).values(**values)
            )

    # --- releases and jobs ------------------------------------------------------------------

    def create_release(self, release: Release, jobs: list[ReleaseJob]) -> None:
        """Store a new release with its jobs and mark the deployment Running, at once;
        a Conflict if the deployment is Running already. That is decided here, by the
        database, not by the service's lock alone: two coordinators may take a deploy of
        the same deployment at once, and only one of them may start a release."""
        running = f"deployment {release.deployment_id!r} already has a release running"
        with self._tx() as db:
            if release.status == "Running":
                claimed = db.execute(
                    sa.update(deployments_t)
                    .where(
                        deployments_t.c.id == release.deployment_id,
                        deployments_t.c.status != "Running",
                    )
                    .values(status="Running", updated_at=release.created_at)
                )
                if claimed.rowcount != 1:
                    raise Conflict(running)
            with unique_name(running):  # the same release number, taken meanwhile
                db.execute(
                    sa.insert(releases_t).values(
                        id=release.id,
                        deployment_id=release.deployment_id,
                        seq=release.seq,
                        body=msgspec.json.encode(release).decode(),
                        status=release.status,
                        batch=release.batch,
                        message=release.message,
                        created_at=release.created_at,
                        updated_at=release.updated_at,
                    )
                )
            if jobs:
                db.execute(
                    sa.insert(jobs_t),
                    [
                        {
                            "id": j.id,
                            "release_id": j.release_id,
                            "machine_id": j.machine_id,
                            "batch": j.batch,
                            "status": j.status,
                        }
                        for j in jobs
                    ],
                )
            db.execute(
                sa.update(deployments_t)
                .where(deployments_t.c.id == release.deployment_id)
                .values(status=release.status, updated_at=release.created_at)
            )

    def next_release_seq(self, deployment_id: str) -> int:
        last = self._scalar(
            sa.select(sa.func.coalesce(sa.func.max(releases_t.c.seq), 0)).where(
                releases_t.c.deployment_id == deployment_id
            )
        )
        return int(last or 0) + 1

    def get_release(self, release_id: str, *, tenant: str | None = None) -> Release | None:
        """A release (of a deployment of `tenant` only, when given)."""
        stmt = sa.select(releases_t).where(releases_t.c.id == release_id)
        if tenant is not None:
            stmt = stmt.join(deployments_t, deployments_t.c.id == releases_t.c.deployment_id).where(
                deployments_t.c.tenant == tenant
            )
        row = self._first(stmt)
        return _release(row) if row else None

    def list_releases(self, deployment_id: str) -> list[Release]:
        rows = self._maps(
            sa.select(releases_t)
            .where(releases_t.c.deployment_id == deployment_id)
            .order_by(releases_t.c.seq)
        )
        return [_release(r) for r in rows]

    def releases_with_status(self, status: DeploymentStatus) -> list[Release]:
        rows = self._maps(
            sa.select(releases_t)
            .where(releases_t.c.status == status)
            .order_by(releases_t.c.created_at)
        )
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
        values: dict[str, Any] = {
            "status": status,
            "batch": batch,
            "message": message,
            "updated_at": now,
        }
        if finished:
            values["finished_at"] = now
        if rolled_back:  # once rolled back, a release stays so
            values["rolled_back"] = 1
        with self._tx() as db:
            db.execute(sa.update(releases_t).where(releases_t.c.id == release_id).values(**values))

    def jobs(self, release_id: str) -> list[ReleaseJob]:
        rows = self._maps(
            sa.select(jobs_t)
            .where(jobs_t.c.release_id == release_id)
            .order_by(jobs_t.c.batch, jobs_t.c.machine_id)
        )
        return [_record(r, ReleaseJob) for r in rows]

    def update_jobs(self, jobs: Iterable[ReleaseJob]) -> None:
        rows = [
            {
                "job_id": j.id,
                "status": j.status,
                "message": j.message,
                "started_at": j.started_at,
                "healthy_since": j.healthy_since,
                "finished_at": j.finished_at,
            }
            for j in jobs
        ]
        if not rows:
            return
        with self._tx() as db:
            db.execute(sa.update(jobs_t).where(jobs_t.c.id == sa.bindparam("job_id")), rows)

    # --- which release each machine runs ------------------------------------------------

    def targets(self, deployment_id: str) -> dict[str, str]:
        """machine id -> release id it must run, for one deployment."""
        rows = self._rows(
            sa.select(targets_t.c.machine_id, targets_t.c.release_id).where(
                targets_t.c.deployment_id == deployment_id
            )
        )
        return {str(r[0]): str(r[1]) for r in rows}

    def set_targets(self, deployment_id: str, changes: Mapping[str, str | None]) -> set[str]:
        """Point machines at a release (None: the deployment leaves the machine); returns
        the machines whose desired state changed, revisions bumped in the same transaction."""
        if not changes:
            return set()
        with self._tx() as db:
            current: dict[str, str] = {}
            for chunk in in_chunks(sorted(changes)):
                for machine_id, release_id in db.execute(
                    sa.select(targets_t.c.machine_id, targets_t.c.release_id).where(
                        targets_t.c.deployment_id == deployment_id,
                        targets_t.c.machine_id.in_(chunk),
                    )
                ):
                    current[machine_id] = release_id
            point, remove = target_changes(current, changes)
            if remove:
                db.execute(
                    sa.delete(targets_t).where(
                        targets_t.c.deployment_id == deployment_id,
                        targets_t.c.machine_id == sa.bindparam("mid"),
                    ),
                    [{"mid": m} for m in sorted(remove)],
                )
            if point:
                upsert = self._insert(targets_t)
                db.execute(
                    upsert.on_conflict_do_update(
                        index_elements=[targets_t.c.deployment_id, targets_t.c.machine_id],
                        set_={"release_id": upsert.excluded.release_id},
                    ),
                    [
                        {"deployment_id": deployment_id, "machine_id": m, "release_id": r}
                        for m, r in sorted(point.items())
                    ],
                )
            affected = set(point) | remove
            bump(db, affected)
            self._targeted = None
        return affected

    def targeted_machines(self) -> frozenset[str]:
        if self._targeted is None:
            rows = self._rows(sa.select(targets_t.c.machine_id).distinct())
            self._targeted = frozenset(str(r[0]) for r in rows)
        return self._targeted

    def machine_targets(self, machine_id: str) -> list[tuple[str, str]]:
        """(deployment name, release id) of every deployment on one machine, by name."""
        if self.dialect == "sqlite" and machine_id not in self.targeted_machines():
            return []
        m = schema.machines
        rows = self._rows(
            # From the machine's targets (deployment_targets_by_machine).
            sa.select(deployments_t.c.name, targets_t.c.release_id)
            .select_from(
                targets_t.join(deployments_t, deployments_t.c.id == targets_t.c.deployment_id).join(
                    m,
                    sa.and_(m.c.id == targets_t.c.machine_id, m.c.tenant == deployments_t.c.tenant),
                )
            )
            .where(targets_t.c.machine_id == machine_id)
            .order_by(deployments_t.c.name)
        )
        return [(str(r[0]), str(r[1])) for r in rows]


def _other_named(db: Connection, table: sa.Table, tenant: str, name: str, own_id: str) -> bool:
    """Whether another record (not `own_id`) of the tenant has this name."""
    found = db.execute(
        sa.select(table.c.id).where(
            table.c.tenant == tenant, table.c.name == name, table.c.id != own_id
        )
    ).first()
    return found is not None


def _group(row: RowMapping) -> MachineGroup:
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


def _release(row: RowMapping) -> Release:
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
