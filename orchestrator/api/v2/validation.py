"""Reading /api/v2 requests the way Airflow 3 (FastAPI, pydantic) validates them.

A value of the wrong type or out of bounds is a 422 naming where it is (`["query", "limit"]`,
`["body", "conf"]`), with pydantic's error types, so Airflow 3's clients read it. Bodies are read
with v1's reader (`orchestrator.api.bodies`: 415 unless JSON, 413 past the size limit); the
page bounds are v1's (`api.maximum_page_limit`). An unknown query parameter is a 400, as in v1:
a typo in a filter must not silently list everything.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import orjson
from aiohttp import web

from orchestrator.api.bodies import nul_location, read_body, require_json_content_type
from orchestrator.api.errors import BadRequest
from orchestrator.api.keys import SETTINGS
from orchestrator.api.listing import refuse_unknown
from orchestrator.api.params import DEFAULT_LIMIT, MAX_BIGINT, MAX_INTEGER
from orchestrator.api.v2.errors import ValidationFailed, invalid

E = TypeVar("E", bound=enum.Enum)

_TRUE = frozenset({"true", "1", "yes", "on", "t", "y"})
_FALSE = frozenset({"false", "0", "no", "off", "f", "n"})


def check_query(request: web.Request, allowed: Iterable[str]) -> None:
    """400 for a query parameter this route does not know (as v1 answers it)."""
    refuse_unknown(request.query, frozenset(allowed))


def query_int(request: web.Request, name: str, default: int, minimum: int, maximum: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise invalid(
            ["query", name],
            "Input should be a valid integer, unable to parse string as an integer",
            "int_parsing",
            raw,
        ) from None
    if value < minimum:
        raise invalid(
            ["query", name], f"Input should be greater than or equal to {minimum}", "greater_than_equal", raw
        )
    if value > maximum:
        raise invalid(
            ["query", name], f"Input should be less than or equal to {maximum}", "less_than_equal", raw
        )
    return value


def query_bool(request: web.Request, name: str, default: bool | None) -> bool | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise invalid(
        ["query", name], "Input should be a valid boolean, unable to interpret input", "bool_parsing", raw
    )


def query_enum(request: web.Request, name: str, kind: type[E]) -> list[E] | None:
    """A repeated (`state=a&state=b`) enum parameter; None when absent."""
    raws = request.query.getall(name, [])
    if not raws:
        return None
    values: list[E] = []
    for index, raw in enumerate(raws):
        try:
            values.append(kind(raw))
        except ValueError:
            choices = ", ".join(repr(member.value) for member in kind)
            raise invalid(["query", name, index], f"Input should be {choices}", "enum", raw) from None
    return values


def pagination(request: web.Request) -> tuple[int, int]:
    """(limit, offset) as v1 pages: limit clamped to api.maximum_page_limit."""
    maximum = request.app[SETTINGS].maximum_page_limit
    limit = query_int(request, "limit", min(DEFAULT_LIMIT, maximum), 0, MAX_BIGINT)
    offset = query_int(request, "offset", 0, 0, MAX_BIGINT)
    return min(limit, maximum), offset


def path_int(request: web.Request, name: str, minimum: int, maximum: int = MAX_INTEGER) -> int:
    raw = request.match_info[name]
    try:
        value = int(raw)
    except ValueError:
        raise invalid(
            ["path", name],
            "Input should be a valid integer, unable to parse string as an integer",
            "int_parsing",
            raw,
        ) from None
    if not minimum <= value <= maximum:
        raise invalid(
            ["path", name],
            f"Input should be between {minimum} and {maximum}",
            "greater_than_equal" if value < minimum else "less_than_equal",
            raw,
        )
    return value


class Kind(enum.Enum):
    """The JSON types a body field may have."""

    STRING = "string"
    BOOL = "bool"
    OBJECT = "object"
    DATETIME = "datetime"


@dataclass(frozen=True, slots=True)
class Field:
    kind: Kind
    required: bool = False
    nullable: bool = True


def _check_field(name: str, field: Field, value: Any) -> Any:
    loc = ["body", name]
    if value is None:
        if field.nullable:
            return None
        raise invalid(loc, f"Input should be a valid {field.kind.value}", f"{field.kind.value}_type", value)
    if field.kind is Kind.STRING and not isinstance(value, str):
        raise invalid(loc, "Input should be a valid string", "string_type", value)
    if field.kind is Kind.BOOL and not isinstance(value, bool):
        raise invalid(loc, "Input should be a valid boolean", "bool_type", value)
    if field.kind is Kind.OBJECT and not isinstance(value, dict):
        raise invalid(loc, "Input should be a valid dictionary", "dict_type", value)
    if field.kind is Kind.DATETIME:
        return _aware_datetime(loc, value)
    return value


def _aware_datetime(loc: Sequence[str | int], value: Any) -> datetime:
    if not isinstance(value, str):
        raise invalid(loc, "Input should be a valid datetime", "datetime_type", value)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
    except ValueError:
        raise invalid(loc, "Input should be a valid datetime", "datetime_from_date_parsing", value) from None
    if parsed.tzinfo is None:
        raise invalid(loc, "Input should have timezone info", "timezone_aware", value)
    return parsed


async def body(request: web.Request, fields: Mapping[str, Field]) -> dict[str, Any]:
    """The JSON object body, each field checked against `fields` (datetimes parsed); a missing
    required field, an extra one or a wrong type is a 422."""
    require_json_content_type(request)
    raw = await read_body(request)
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise invalid(["body", exc.pos], "JSON decode error", "json_invalid", {}) from None
    if not isinstance(data, dict):
        raise invalid(
            ["body"],
            "Input should be a valid dictionary or object to extract fields from",
            "model_attributes_type",
            data,
        )
    errors: list[dict[str, Any]] = []
    checked: dict[str, Any] = {}
    for name in data:
        if name not in fields:
            errors.append(
                {
                    "type": "extra_forbidden",
                    "loc": ["body", name],
                    "msg": "Extra inputs are not permitted",
                    "input": data[name],
                }
            )
    for name, field in fields.items():
        if name not in data:
            if field.required:
                errors.append(
                    {"type": "missing", "loc": ["body", name], "msg": "Field required", "input": data}
                )
            continue
        try:
            checked[name] = _check_field(name, field, data[name])
        except ValidationFailed as failed:
            errors.extend(failed.errors)
    if errors:
        raise ValidationFailed(errors)
    where = nul_location(data)
    if where is not None:
        raise BadRequest(
            f"{where} contains a NUL character (\\u0000), which PostgreSQL cannot store: remove it"
        )
    return checked
