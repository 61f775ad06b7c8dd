"""WebOps databases over HTTP (#21): two thin surfaces over `DatabaseService`, both
needing the `databases` permission (which is also what lets a caller see passwords).

- `/api/v1/databases/...`: the documented API, by id, in the envelope.
- `/api/databases/...`: the WebOps command-line client's (`spec/webops-notes.md`), by
  name, no envelope.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from aiohttp import web

from coordinator.api.errors import ApiError, decode_body, json_response
from coordinator.api.identity import Envelope, ok
from coordinator.api.routing import ENVELOPE, WEBOPS_CLI, Family, RouteTable, tenant_of
from coordinator.timefmt import iso
from coordinator.trust import permissions as perms
from coordinator.trust.auth import PRINCIPAL
from coordinator.webops.databases import DatabaseService
from coordinator.webops.records import Database, DatabaseBackup

V1 = "/api/v1/databases"
CLI = "/api/databases"


class DatabaseCreate(msgspec.Struct, frozen=True):
    name: Annotated[str, msgspec.Meta(max_length=64)]
    username: Annotated[str, msgspec.Meta(max_length=64)] = ""
    """Accepted and ignored: the role is named after the database (see docs/webops.md)."""
    deployment_id: Annotated[int, msgspec.Meta(ge=1)] | None = None


class LinkBody(msgspec.Struct, frozen=True):
    deployment_id: Annotated[int, msgspec.Meta(ge=1)]


class RestoreBody(msgspec.Struct, frozen=True):
    backup_id: Annotated[int, msgspec.Meta(ge=1)]


def backup_out(b: DatabaseBackup) -> dict[str, Any]:
    return {"id": b.id, "size": b.size, "sha256": b.sha256, "created_at": iso(b.created_at)}


def flag(request: web.Request, key: str) -> bool:
    raw = request.query.get(key, "")
    if raw not in ("", "0", "1", "true", "false"):
        raise ApiError(400, f"{key} must be true or false")
    return raw in ("1", "true")


def routes(service: DatabaseService) -> list[Family]:
    r = RouteTable(permission=perms.DATABASES)
    c = RouteTable(permission=perms.DATABASES)

    def linked(db: Database) -> dict[str, Any] | None:
        dep = service.storage_dep(db) if db.deployment_id else None
        return None if dep is None else {"id": dep.id, "name": dep.name}

    def out(db: Database, *, secret: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": db.id,
            "name": db.name,
            "database": db.pg_name,
            "username": db.pg_name,
            "host": db.host,
            "port": db.port,
            "created_at": iso(db.created_at),
            "deployment": linked(db),
        }
        if secret:
            data["password"] = db.password
            data["url"] = service.url(db)
        return data

    def db_of(request: web.Request) -> Database:
        raw = request.match_info["id"]
        if not raw.isdigit() or len(raw) > 18:
            raise ApiError(404, f"database {raw!r} does not exist")
        return service.get_id(tenant_of(request), int(raw))

    @r.get(V1 + "/", "Databases of the tenant", response=Envelope)
    async def list_(request: web.Request) -> web.Response:
        return ok([out(db) for db in service.all(tenant_of(request))])

    @r.post(
        V1 + "/",
        "Create a PostgreSQL database and its role (generated password, shown here),"
        " linked to a deployment when deployment_id is given",
        request=DatabaseCreate,
        response=Envelope,
        ok=201,
        errors=(400, 404, 409, 415, 503),
    )
    async def create(request: web.Request) -> web.Response:
        body = await decode_body(request, DatabaseCreate, max_bytes=1 << 14)
        tenant = tenant_of(request)
        if body.deployment_id is not None:
            service.webops.get_id(tenant, body.deployment_id)  # 404 before making anything
        db = await service.create(tenant, body.name, actor=str(request[PRINCIPAL].name))
        if body.deployment_id is not None:
            db = await service.link(db, body.deployment_id)
        return ok(out(db, secret=True), "Database created", 201)

    @r.get(V1 + "/{id}/", "One database, with its credentials", response=Envelope, errors=(404,))
    async def get(request: web.Request) -> web.Response:
        return ok(out(db_of(request), secret=True))

    @r.delete(
        V1 + "/{id}/",
        "Drop a database and its role (409 while a deployment is linked unless force=true)",
        response=Envelope,
        errors=(400, 404, 409, 503),
        query=("force",),
    )
    async def delete(request: web.Request) -> web.Response:
        db = db_of(request)
        await service.delete(db, force=flag(request, "force"))
        return ok({"id": db.id, "name": db.name}, "Database deleted")

    @r.post(
        V1 + "/{id}/link/",
        "Link to a deployment (sets its DATABASE_URL)",
        request=LinkBody,
        response=Envelope,
        errors=(400, 404, 415),
    )
    async def link(request: web.Request) -> web.Response:
        body = await decode_body(request, LinkBody)
        db = await service.link(db_of(request), body.deployment_id)
        return ok(out(db), "Database linked")

    @r.post(
        V1 + "/{id}/unlink/",
        "Unlink from its deployment (removes DATABASE_URL)",
        response=Envelope,
        errors=(404,),
    )
    async def unlink(request: web.Request) -> web.Response:
        return ok(out(await service.unlink(db_of(request))), "Database unlinked")

    @r.post(
        V1 + "/{id}/backup/",
        "pg_dump to a stored backup (id, size, checksum)",
        response=Envelope,
        ok=201,
        errors=(404, 503),
    )
    async def backup(request: web.Request) -> web.Response:
        b = await service.backup(db_of(request))
        return ok(backup_out(b), "Backup created", 201)

    @r.get(V1 + "/{id}/backups/", "Backups, newest first", response=Envelope, errors=(404,))
    async def backups(request: web.Request) -> web.Response:
        return ok([backup_out(b) for b in service.backups(db_of(request))])

    @r.post(
        V1 + "/{id}/restore/",
        "Restore a backup by id (pg_restore --clean; checked against its checksum)",
        request=RestoreBody,
        response=Envelope,
        errors=(400, 404, 409, 415, 503),
    )
    async def restore(request: web.Request) -> web.Response:
        body = await decode_body(request, RestoreBody)
        b = await service.restore(db_of(request), body.backup_id)
        return ok(backup_out(b), "Database restored")

    @r.get(
        V1 + "/{id}/metrics/",
        "Size and connection count, from PostgreSQL",
        response=Envelope,
        errors=(404, 503),
    )
    async def metrics(request: web.Request) -> web.Response:
        m = await service.metrics(db_of(request))
        return ok(
            {
                "size_bytes": m["size_bytes"],
                "size_mb": round(m["size_bytes"] / (1 << 20), 2),
                "connection_count": m["connections"],
            }
        )

    # --- the WebOps CLI ---------------------------------------------------------------

    def cli_out(db: Database, *, secret: bool = False) -> dict[str, Any]:
        data = out(db, secret=secret)
        dep = data["deployment"]
        data["deployment"] = None if dep is None else dep["name"]
        return data

    @c.get(CLI + "/", "Databases")
    async def cli_list(request: web.Request) -> web.Response:
        return json_response({"databases": [cli_out(db) for db in service.all(tenant_of(request))]})

    @c.get(CLI + "/{name}/", "One database, with its credentials", errors=(404,))
    async def cli_get(request: web.Request) -> web.Response:
        db = service.get(tenant_of(request), request.match_info["name"])
        return json_response(cli_out(db, secret=True))

    return [Family(V1, ENVELOPE, r.routes), Family(CLI, WEBOPS_CLI, c.routes)]
