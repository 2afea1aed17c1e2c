"""The OpenAPI 3.1 documents of /api/v1 and /api/v2, built from what the app really serves.

Each document is read from the app's router when it is asked for: every route under the
version's prefix is a path (with its `{parameters}`) and a method; its operationId is the
handler's name, its summary and description the handler's docstring, and the role it needs
(`orchestrator.api.roles.required_role`) is both its security requirement (bearer token or HTTP
basic, or none for a public route) and `x-required-role`. Bodies and query parameters of the
main endpoints come from `orchestrator.api.openapi_schemas`. A route added later (by any module)
is documented without further work; the documents themselves are public, as Airflow's are.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from orchestrator.api import openapi_schemas as registry
from orchestrator.api.meta import version
from orchestrator.api.params import json_response
from orchestrator.api.roles import public, required_role

_PARAMETER = re.compile(r"\{([^}:]+)(?::[^}]*)?\}")
_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
_SECURITY_SCHEMES = {
    "Bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "an API token, or one from POST /auth/token",
    },
    "Basic": {
        "type": "http",
        "scheme": "basic",
        "description": "any user name, an API token as the password",
    },
}


@dataclass(frozen=True)
class ApiVersion:
    """One documented API: its prefix, title and the schemas of its main endpoints."""

    prefix: str
    title: str
    schemas: dict[str, registry.Schema]
    operations: dict[tuple[str, str], registry.Operation]
    error_schema: str
    validation_schema: str | None


V1 = ApiVersion(
    "/api/v1",
    "orchestrator: Airflow 2's stable REST API (v1)",
    registry.V1_SCHEMAS,
    registry.V1_OPERATIONS,
    "Error",
    None,
)
V2 = ApiVersion(
    "/api/v2",
    "orchestrator: Airflow 3's REST API (v2)",
    registry.V2_SCHEMAS,
    registry.V2_OPERATIONS,
    "HTTPExceptionResponse",
    "HTTPValidationError",
)


def served_routes(router: web.UrlDispatcher, prefix: str) -> Iterator[tuple[str, str, Callable[..., Any]]]:
    """(method, path, handler) of every route under `prefix` (HEAD, which aiohttp adds beside
    each GET, is left out); paths as `/dags/{dag_id}`, without any regular expression."""
    for route in router.routes():
        if route.method not in _METHODS:
            continue
        path = route.resource.canonical if route.resource is not None else ""
        path = _PARAMETER.sub(lambda m: "{" + m.group(1) + "}", path)
        if path == prefix or path.startswith(prefix + "/"):
            yield route.method, path, route.handler


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _operation(
    api: ApiVersion, method: str, path: str, handler: Callable[..., Any], op_id: str
) -> dict[str, Any]:
    doc = inspect.getdoc(handler) or ""
    summary, _, rest = doc.partition("\n\n")
    known = api.operations.get((method, path), registry.Operation())
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _PARAMETER.findall(path)
    ]
    parameters += [
        {"name": name, "in": "query", "required": False, "schema": {"type": kind}}
        for name, kind in known.query.items()
    ]
    answer = _ref(known.response) if known.response else {"type": "object"}
    responses: dict[str, Any] = {str(known.status): _json(answer, "Successful Response")}
    for status, what in (("400", "Bad Request"), ("404", "Not Found")):
        responses[status] = _json(_ref(api.error_schema), what)
    if api.validation_schema is not None:
        responses["422"] = _json(_ref(api.validation_schema), "Validation Error")
    role = required_role(method, handler)
    operation: dict[str, Any] = {
        "operationId": op_id,
        "summary": " ".join(summary.split()) or op_id.replace("_", " "),
        "parameters": parameters,
        "responses": responses,
        "x-required-role": role.label if role is not None else "public",
    }
    if rest.strip():
        operation["description"] = rest.strip()
    if role is None:
        operation["security"] = []
    else:
        responses["401"] = _json(_ref(api.error_schema), "Unauthorized: no or unknown credentials")
        responses["403"] = _json(_ref(api.error_schema), f"Forbidden: needs the {role.label} role")
        operation["security"] = [{"Bearer": []}, {"Basic": []}]
    if known.request is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(known.request)}},
        }
    return operation


def build_document(router: web.UrlDispatcher, api: ApiVersion) -> dict[str, Any]:
    """The OpenAPI document of every route under `api.prefix` that `router` serves now."""
    paths: dict[str, dict[str, Any]] = {}
    taken: set[str] = set()
    for method, path, handler in served_routes(router, api.prefix):
        op_id = getattr(handler, "__name__", "handler")
        if op_id in taken:  # one handler on several paths (e.g. /assets and /datasets)
            where = re.sub(r"[^A-Za-z0-9]+", "_", path[len(api.prefix) :]).strip("_")
            op_id = f"{op_id}_{where}_{method.lower()}"
        taken.add(op_id)
        paths.setdefault(path, {})[method.lower()] = _operation(api, method, path, handler, op_id)
    return {
        "openapi": "3.1.0",
        "info": {"title": api.title, "version": version()},
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {"schemas": api.schemas, "securitySchemes": _SECURITY_SCHEMES},
        "security": [{"Bearer": []}, {"Basic": []}],
    }


@public
async def v1_openapi(request: web.Request) -> web.Response:
    """The OpenAPI document of /api/v1."""
    return json_response(build_document(request.app.router, V1))


@public
async def v2_openapi(request: web.Request) -> web.Response:
    """The OpenAPI document of /api/v2."""
    return json_response(build_document(request.app.router, V2))


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/api/v1/openapi.json", v1_openapi)
    router.add_get("/api/v2/openapi.json", v2_openapi)
