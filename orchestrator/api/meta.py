"""About the daemon itself: GET /api/v1/version and GET /api/v1/config (admins only).

/config answers Airflow's Config shape, `{"sections": [{"name", "options": [{"key", "value"}]}]}`,
built from the daemon's effective configuration (orchestrator.config.Config): one section per
table (`executors.local`, `webhooks.<name>` for nested ones), every value as a string as Airflow
gives them. Secrets are masked as Airflow masks them ("< hidden >"): the password in a database
DSN, and every value whose option name says it is a secret (token digests, keys, passwords).
Environment variables named by `*_env` options are never read here: only their names show.
"""

from __future__ import annotations

import dataclasses
import re
import urllib.parse
from collections.abc import Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from orchestrator.api.errors import NotFound
from orchestrator.api.keys import CONFIG
from orchestrator.api.listing import refuse_unknown
from orchestrator.api.params import json_response
from orchestrator.api.roles import Role, public, requires
from orchestrator.config import Config

HIDDEN = "< hidden >"
#: option names whose values are secrets (an option ending in _env names a variable: not secret)
_SECRET_NAME = re.compile(r"password|secret|token|sha256|key|credential", re.IGNORECASE)
_KEYWORD_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def version() -> str:
    """The installed orchestrator's version."""
    try:
        return metadata.version("orchestrator")
    except metadata.PackageNotFoundError:
        return "0.1.0"


@public  # Airflow 2's spec has no security on /version
async def get_version(request: web.Request) -> web.Response:
    """Airflow's GET /version."""
    refuse_unknown(request.query, ())
    return json_response({"version": version(), "git_version": None})


def mask_dsn(dsn: str) -> str:
    """`dsn` with its password replaced by HIDDEN (URL form and keyword form)."""
    if "://" in dsn:
        parts = urllib.parse.urlsplit(dsn)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, host = netloc.rpartition("@")
            user, colon, _password = userinfo.partition(":")
            if colon:
                netloc = f"{user}:{HIDDEN}@{host}"
        pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        query = parts.query
        if any(k.lower() == "password" for k, _ in pairs):
            query = urllib.parse.urlencode(
                [(k, HIDDEN if k.lower() == "password" else v) for k, v in pairs],
                safe="<> /",
                quote_via=urllib.parse.quote,
            )
        if (netloc, query) == (parts.netloc, parts.query):
            return dsn  # nothing to hide (and urlunsplit would drop an empty "//" host)
        return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    return _KEYWORD_PASSWORD.sub(lambda m: m.group(1) + HIDDEN, dsn)


def _is_secret(name: str) -> bool:
    return bool(_SECRET_NAME.search(name)) and not name.endswith("_env")


def _plain(name: str, value: Any) -> Any:
    """`value` as JSON-able data with every secret in it masked."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(f.name, getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(name, item) for item in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    if name == "dsn":
        return mask_dsn(str(value))
    if _is_secret(name):
        return HIDDEN
    return str(value) if isinstance(value, Path) else value


def _text(value: Any) -> str:
    """An option's value as the string Airflow's Config shape carries."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return str(value)
    return orjson.dumps(value).decode()


def _section(name: str, table: Any) -> Iterator[dict[str, Any]]:
    """The section of one config table, then one per nested table (`name.child`)."""
    options = []
    nested = []
    for field in dataclasses.fields(table):
        value = getattr(table, field.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            nested.append((f"{name}.{field.name}", value))
        else:
            options.append({"key": field.name, "value": _text(_plain(field.name, value))})
    yield {"name": name, "options": options}
    for child_name, child in nested:
        yield from _section(child_name, child)


def config_sections(config: Config) -> list[dict[str, Any]]:
    """Airflow's Config sections of `config`, secrets masked."""
    sections: list[dict[str, Any]] = []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            sections.extend(_section(field.name, value))
        elif field.name == "webhooks":
            for hook_name, hook in sorted(value.items()):
                sections.extend(_section(f"webhooks.{hook_name}", hook))
    return sections


@requires(Role.ADMIN)
async def get_config(request: web.Request) -> web.Response:
    """Airflow's GET /config (optionally ?section=), the daemon's effective configuration."""
    refuse_unknown(request.query, ("section",))
    config = request.app.get(CONFIG)
    if config is None:
        raise NotFound("this API was started without the daemon's configuration", title="Config not found")
    sections = config_sections(config)
    wanted = request.query.get("section")
    if wanted:
        sections = [s for s in sections if s["name"] == wanted]
        if not sections:
            names = ", ".join(s["name"] for s in config_sections(config))
            raise NotFound(f"section {wanted!r} not found in the configuration; its sections: {names}")
    return json_response({"sections": sections})


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/api/v1/version", get_version)
    router.add_get("/api/v1/config", get_config)
