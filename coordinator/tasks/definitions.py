"""Task definitions: what a create, update or execute may carry, how it is checked,
and how a list is filtered, sorted and paged (pure functions over plain values)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import msgspec

from coordinator.errors import Invalid
from coordinator.tasks.records import EnvVar, TaskDefinition

MAX_TEXT = 64 << 10
"""Longest command accepted."""
MAX_NAME = 256
"""Longest alias, image, group name, tag, env name."""
MAX_ITEMS = 256
"""Most env entries, tags or run tags."""
MAX_MEMORY_MB = 1 << 24
MAX_CPU_MILLIS = 1 << 20
MAX_RETRIES = 1
DEFAULT_GROUP = "default"
DEFINITION_SORTS = ("alias", "image", "group_name", "memory")
DEFAULT_LIMIT = 1024
MAX_LIMIT = 10000


Memory = Annotated[int, msgspec.Meta(ge=0, le=MAX_MEMORY_MB, description="MB")]
Cpu = Annotated[int, msgspec.Meta(ge=0, le=MAX_CPU_MILLIS, description="millicores")]
Retries = Annotated[int, msgspec.Meta(ge=0, le=MAX_RETRIES)]
Name = Annotated[str, msgspec.Meta(max_length=MAX_NAME)]
Command = Annotated[str, msgspec.Meta(max_length=MAX_TEXT)]


class DefinitionInput(msgspec.Struct, frozen=True, kw_only=True):
    """A create or update body (keys already lower-cased). Unknown keys are ignored."""

    alias: Name | None = None
    image: Name | None = None
    group_name: Name | None = None
    command: Command | None = None
    memory: Memory | None = None
    cpu: Cpu | None = None
    env: list[EnvVar] | None = None
    tags: list[str] | None = None
    retries: Retries | None = None
    """Moorage's addition: run again once (1) when the run's machine is lost."""


class ExecuteInput(msgspec.Struct, frozen=True, kw_only=True):
    cluster: Name | None = None
    env: list[EnvVar] | None = None
    command: Command | None = None
    cpu: Cpu | None = None
    memory: Memory | None = None
    run_tags: dict[str, str] | None = None
    engine: Name | None = None
    node_lifecycle: Name | None = None
    description: Command | None = None
    retries: Retries | None = None


def _problems_common(body: DefinitionInput | ExecuteInput) -> list[str]:
    out: list[str] = []
    if body.memory is not None and not 0 <= body.memory <= MAX_MEMORY_MB:
        out.append(f"int [memory] must be between 0 and {MAX_MEMORY_MB} (MB)")
    if body.cpu is not None and not 0 <= body.cpu <= MAX_CPU_MILLIS:
        out.append(f"int [cpu] must be between 0 and {MAX_CPU_MILLIS} (millicores)")
    if body.command is not None and len(body.command) > MAX_TEXT:
        out.append(f"string [command] is longer than {MAX_TEXT} characters")
    if body.env is not None:
        if len(body.env) > MAX_ITEMS:
            out.append(f"array [env] has more than {MAX_ITEMS} entries")
        for var in body.env:
            if not var.name or len(var.name) > MAX_NAME or "=" in var.name or "\0" in var.name:
                out.append(f"env name {var.name[:40]!r} is invalid")
                break
            if len(var.value) > MAX_TEXT or "\0" in var.value:
                out.append(f"env value of {var.name!r} is invalid")
                break
    if body.retries is not None and not 0 <= body.retries <= MAX_RETRIES:
        out.append(f"int [retries] must be between 0 and {MAX_RETRIES}")
    return out


def _name_problem(field: str, value: str | None) -> str:
    if value is None:
        return ""
    if len(value) > MAX_NAME or any(c in value for c in "\0\n\r"):
        return f"string [{field}] must be at most {MAX_NAME} characters on one line"
    return ""


def definition_problems(body: DefinitionInput, *, create: bool) -> list[str]:
    """Why a create (every required field) or update body cannot be taken."""
    out: list[str] = []
    if create:
        for field in ("image", "alias"):
            if not getattr(body, field):
                out.append(f"string [{field}] must be specified")
    for field in ("image", "alias", "group_name"):
        problem = _name_problem(field, getattr(body, field))
        if problem:
            out.append(problem)
    if body.tags is not None:
        if len(body.tags) > MAX_ITEMS:
            out.append(f"array [tags] has more than {MAX_ITEMS} entries")
        elif any(_name_problem("tags", t) for t in body.tags):
            out.append(f"array [tags] entries must be at most {MAX_NAME} characters on one line")
    for field in ("group_name", "alias"):
        value = getattr(body, field)
        if value is not None and "/" in value:
            out.append(f"string [{field}] must not contain '/'")
    return out + _problems_common(body)


def execute_problems(body: ExecuteInput, *, require_owner: bool) -> list[str]:
    out: list[str] = []
    if require_owner and not (body.run_tags or {}).get("owner_id"):
        out.append("run_tags must exist in body and contain [owner_id]")
    if body.run_tags is not None and len(body.run_tags) > MAX_ITEMS:
        out.append(f"object [run_tags] has more than {MAX_ITEMS} entries")
    for field in ("cluster", "engine", "node_lifecycle"):
        problem = _name_problem(field, getattr(body, field))
        if problem:
            out.append(problem)
    return out + _problems_common(body)


def check(problems: list[str]) -> None:
    if problems:
        raise Invalid("\n".join(problems))


def new_definition(
    body: DefinitionInput, *, definition_id: str, tenant: str, now: float
) -> TaskDefinition:
    return TaskDefinition(
        definition_id=definition_id,
        tenant=tenant,
        alias=body.alias or "",
        image=body.image or "",
        group_name=body.group_name or DEFAULT_GROUP,
        command=body.command or "",
        memory=body.memory or 0,
        cpu=body.cpu or 0,
        env=list(body.env or []),
        tags=list(body.tags or []),
        retries=body.retries or 0,
        created_at=now,
        updated_at=now,
    )


def merged(old: TaskDefinition, body: DefinitionInput, now: float) -> TaskDefinition:
    """An update: the non-empty fields of the body replace the definition's (the
    group, part of the id, stays)."""
    changes: dict[str, Any] = {"updated_at": now}
    for field in ("alias", "image", "command", "memory", "cpu", "env", "tags", "retries"):
        value = getattr(body, field)
        given = value is not None if field == "retries" else value not in (None, "", [], 0)
        if given:  # Flotilla's zero values mean "not given"
            changes[field] = value
    return msgspec.structs.replace(old, **changes)


def merged_env(base: Sequence[EnvVar], overrides: Sequence[EnvVar], run_id: str) -> list[EnvVar]:
    """The run's env: the definition's, the execute's overrides (by name), and
    FLOTILLA_RUN_ID."""
    env: dict[str, str] = {v.name: v.value for v in base}
    env.update({v.name: v.value for v in overrides})
    env["FLOTILLA_RUN_ID"] = run_id
    return [EnvVar(k, v) for k, v in env.items()]


class DefinitionQuery(msgspec.Struct, frozen=True, kw_only=True):
    alias: list[str] = []
    group_name: list[str] = []
    image: list[str] = []
    command: list[str] = []
    tag: list[str] = []
    sort_by: str = "group_name"
    order: str = "asc"
    limit: int = DEFAULT_LIMIT
    offset: int = 0


def _text_match(value: str, wanted: list[str]) -> bool:
    """One value: substring match; several: exact `IN`."""
    if not wanted:
        return True
    if len(wanted) == 1:
        return wanted[0] in value
    return value in wanted


def select_definitions(
    definitions: Sequence[TaskDefinition], query: DefinitionQuery
) -> tuple[int, list[TaskDefinition]]:
    """(total matching, the requested page) of a definition list."""
    chosen = [
        d
        for d in definitions
        if _text_match(d.alias, query.alias)
        and _text_match(d.group_name, query.group_name)
        and _text_match(d.image, query.image)
        and _text_match(d.command, query.command)
        and (not query.tag or any(t in d.tags for t in query.tag))
    ]
    key = query.sort_by if query.sort_by in DEFINITION_SORTS else "group_name"
    chosen.sort(key=lambda d: (getattr(d, key), d.alias, d.definition_id))
    if query.order == "desc":
        chosen.reverse()
    return len(chosen), chosen[query.offset : query.offset + query.limit]
