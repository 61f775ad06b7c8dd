"""Google API discovery documents for the fleet APIs (`GET …/discovery`).

fleet's Go client was generated from such a document; tools that generate clients
the same way need it. Built from small helpers rather than kept as a JSON blob.
"""

from __future__ import annotations

from typing import Any

Json = dict[str, Any]

_STR: Json = {"type": "string"}
_STATES: Json = {"type": "string", "enum": ["inactive", "loaded", "launched"]}


def _obj(name: str, props: Json) -> Json:
    return {"id": name, "type": "object", "properties": props}


def _page(name: str, field: str, item: str) -> Json:
    return _obj(name, {field: {"type": "array", "items": {"$ref": item}}, "nextPageToken": _STR})


def _method(
    api: str,
    op: str,
    verb: str,
    path: str,
    *,
    response: str = "",
    request: str = "",
    query: tuple[str, ...] = (),
    item: bool = False,
) -> Json:
    params: Json = {q: {"type": "string", "location": "query"} for q in query}
    method: Json = {"id": f"{api}.{op}", "httpMethod": verb, "path": path}
    if item:
        params["unitName"] = {"type": "string", "location": "path", "required": True}
        method["parameterOrder"] = ["unitName"]
    method["parameters"] = params
    if response:
        method["response"] = {"$ref": response}
    if request:
        method["request"] = {"$ref": request}
    return method


def _envelope(version: str, schemas: Json, resources: Json) -> Json:
    return {
        "kind": "discovery#restDescription",
        "discoveryVersion": "v1",
        "id": f"fleet:{version}",
        "name": "fleet",
        "version": version,
        "title": "fleet API (served by Moorage)",
        "description": "",
        "documentationLink": "https://github.com/coreos/fleet",
        "protocol": "rest",
        "icons": {"x16": "", "x32": ""},
        "labels": [],
        "baseUrl": f"$ENDPOINT/{_base(version)}/",
        "basePath": f"/{_base(version)}/",
        "rootUrl": "$ENDPOINT/",
        "servicePath": f"{_base(version)}/",
        "batchPath": "batch",
        "parameters": {},
        "auth": {},
        "schemas": schemas,
        "resources": resources,
    }


def _base(version: str) -> str:
    return "fleet/v1" if version == "v1" else version


def _machines(api: str) -> tuple[Json, Json]:
    """The Machine schemas and resource, identical in both versions."""
    machine = _obj(
        "Machine",
        {
            "id": _STR,
            "primaryIP": _STR,
            "metadata": {"type": "object", "additionalProperties": _STR},
        },
    )
    schemas = {"Machine": machine, "MachinePage": _page("MachinePage", "machines", "Machine")}
    resource = {
        "methods": {
            "List": _method(
                api,
                "Machine.List",
                "GET",
                "machines",
                response="MachinePage",
                query=("nextPageToken",),
            ),
        }
    }
    return schemas, resource


def _list_units(api: str) -> Json:
    return _method(api, "Unit.List", "GET", "units", response="UnitPage", query=("nextPageToken",))


def fleet_v1_discovery() -> Json:
    api = "fleet"
    machine_schemas, machines = _machines(api)
    option = _obj("UnitOption", {"section": _STR, "name": _STR, "value": _STR})
    unit = _obj(
        "Unit",
        {
            "name": _STR,
            "options": {"type": "array", "items": {"$ref": "UnitOption"}},
            "desiredState": _STATES,
            "currentState": _STATES,
            "machineID": {"type": "string", "required": True},
        },
    )
    state_fields = (
        "name",
        "hash",
        "machineID",
        "systemdLoadState",
        "systemdActiveState",
        "systemdSubState",
    )
    schemas = {
        **machine_schemas,
        "UnitOption": option,
        "Unit": unit,
        "UnitPage": _page("UnitPage", "units", "Unit"),
        "UnitState": _obj("UnitState", {k: _STR for k in state_fields}),
        "UnitStatePage": _page("UnitStatePage", "states", "UnitState"),
    }
    resources = {
        "Machines": machines,
        "Units": {
            "methods": {
                "List": _list_units(api),
                "Get": _method(
                    api, "Unit.Get", "GET", "units/{unitName}", response="Unit", item=True
                ),
                "Delete": _method(api, "Unit.Delete", "DELETE", "units/{unitName}", item=True),
                "Set": _method(
                    api, "Unit.Set", "PUT", "units/{unitName}", request="Unit", item=True
                ),
            }
        },
        "UnitState": {
            "methods": {
                "List": _method(
                    api,
                    "UnitState.List",
                    "GET",
                    "state",
                    response="UnitStatePage",
                    query=("nextPageToken", "unitName", "machineID"),
                ),
            }
        },
    }
    return _envelope("v1", schemas, resources)


def fleet_v1_alpha_discovery() -> Json:
    api = "fleet"
    machine_schemas, machines = _machines(api)
    unit_fields = (
        "name",
        "fileContents",
        "fileHash",
        "loadState",
        "activeState",
        "subState",
        "targetMachine",
    )
    unit = _obj(
        "Unit", {**{k: _STR for k in unit_fields}, "desiredState": _STATES, "currentState": _STATES}
    )
    schemas = {
        **machine_schemas,
        "Unit": unit,
        "UnitPage": _page("UnitPage", "units", "Unit"),
        "DeletableUnit": _obj("DeletableUnit", {"name": _STR}),
        "DeletableUnitCollection": _obj(
            "DeletableUnitCollection",
            {"units": {"type": "array", "items": {"$ref": "DeletableUnit"}}},
        ),
    }
    resources = {
        "Machines": machines,
        "Units": {
            "methods": {
                "List": _list_units(api),
                "Delete": _method(
                    api, "Unit.Delete", "DELETE", "units", request="DeletableUnitCollection"
                ),
            }
        },
    }
    return _envelope("v1-alpha", schemas, resources)
