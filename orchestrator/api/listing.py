"""Reading a list's filters, order and page, from a query string or a JSON body, the same way
for every list.

A list names the parameters it takes; anything else is a 400 that names the stranger and the
parameters the list does take (Airflow's connexion rejects unknown parameters too, and a typo
silently ignored would answer the wrong question). `order_by` is checked against the list's
allowed columns (orchestrator.core.listing) and is only ever compared to them in SQL.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiohttp import web

from orchestrator.api.bodies import parse_datetime
from orchestrator.api.errors import BadRequest
from orchestrator.api.keys import SETTINGS
from orchestrator.api.params import MAX_BIGINT, list_param, pagination
from orchestrator.core.listing import Order, Page, Range
from orchestrator.core.states import RunState, TaskState


def refuse_unknown(given: Iterable[str], allowed: Collection[str], where: str = "query parameter") -> None:
    """400 naming every parameter in `given` that is not in `allowed`, and the allowed ones."""
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise BadRequest(
            f"unknown {where}(s) {', '.join(map(repr, unknown))}: this route takes "
            f"{', '.join(sorted(allowed)) or 'none'}"
        )


def parse_order(text: str | None, columns: Collection[str], default: Order) -> Order:
    """`order_by` (a column, `-` in front for descending) checked against `columns`."""
    if text is None or text == "":
        return default
    order = Order.parse(text.strip())
    if order.column not in columns:
        raise BadRequest(
            f"order_by={text!r} is not allowed: order by one of {', '.join(columns)} "
            "(prefix - for descending, e.g. order_by=-start_date)"
        )
    return order


def _query_datetime(raw: str, name: str) -> datetime:
    # A '+' in a query string reads as a space: '2026-01-01T00:00:00+00:00' sent unencoded.
    return parse_datetime(raw.replace(" ", "+"), name)


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise BadRequest(f"{name} must be a number of seconds, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise BadRequest(f"{name}={value!r} is not a number of seconds") from None
    if not math.isfinite(number):
        raise BadRequest(f"{name}={value!r} must be a finite number of seconds")
    return number


@dataclass(frozen=True, slots=True)
class Arguments:
    """A list's arguments: a query string (`body` None) or a JSON body, read the same way."""

    request: web.Request
    body: Mapping[str, Any] | None = None

    def names(self) -> set[str]:
        return set(self.request.query) if self.body is None else set(self.body)

    def given(self, name: str) -> bool:
        if self.body is None:
            return self.request.query.get(name, "") != ""
        return self.body.get(name) is not None

    def text(self, name: str) -> str | None:
        if not self.given(name):
            return None
        value = self.request.query[name] if self.body is None else self.body[name]
        if not isinstance(value, str):
            raise BadRequest(f"{name} must be a string, got {value!r}")
        return value

    def strings(self, name: str) -> tuple[str, ...] | None:
        """A repeated or comma-separated query parameter, or a JSON list of strings; None if absent."""
        if self.body is None:
            values = list_param(self.request, name)
            return tuple(values) if values else None
        value = self.body.get(name)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise BadRequest(f"{name} must be a list of strings, got {value!r}")
        return tuple(value)

    def time_range(self, name: str) -> Range:
        """`{name}_gte` and `{name}_lte` as datetimes."""
        bounds: list[Any] = []
        for side in ("gte", "lte"):
            field = f"{name}_{side}"
            if not self.given(field):
                bounds.append(None)
            elif self.body is None:
                bounds.append(_query_datetime(self.request.query[field], field))
            else:
                bounds.append(parse_datetime(self.body[field], field))
        return Range(bounds[0], bounds[1])

    def number_range(self, name: str) -> Range:
        """`{name}_gte` and `{name}_lte` as numbers."""
        bounds: list[Any] = []
        for side in ("gte", "lte"):
            field = f"{name}_{side}"
            if not self.given(field):
                bounds.append(None)
            else:
                value = self.request.query[field] if self.body is None else self.body[field]
                bounds.append(_number(value, field))
        return Range(bounds[0], bounds[1])

    def page(self) -> Page:
        """limit/offset from the query string, or Airflow's page_limit/page_offset in a body."""
        if self.body is None:
            limit, offset = pagination(self.request)
            return Page(limit, offset)
        maximum = self.request.app[SETTINGS].maximum_page_limit
        limit = self._body_int("page_limit", min(100, maximum), 1)
        offset = self._body_int("page_offset", 0, 0)
        return Page(min(limit, maximum), offset)

    def _body_int(self, name: str, default: int, minimum: int) -> int:
        assert self.body is not None
        value = self.body.get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadRequest(f"{name} must be an integer, got {value!r}")
        if not minimum <= value <= MAX_BIGINT:
            raise BadRequest(f"{name}={value} must be at least {minimum}")
        return value

    def flag(self, name: str) -> bool | None:
        if not self.given(name):
            return None
        value: Any = self.request.query[name] if self.body is None else self.body[name]
        if isinstance(value, bool):
            return value
        lowered = str(value).lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise BadRequest(f"{name}={value!r} must be true or false")


def run_states(names: tuple[str, ...] | None, field: str = "state") -> tuple[str, ...] | None:
    """DAG-run state names, checked."""
    if names is None:
        return None
    valid = [state.value for state in RunState]
    for name in names:
        if name not in valid:
            raise BadRequest(f"{field} {name!r} is not a DAG run state; use one of: {', '.join(valid)}")
    return names


def task_states(names: tuple[str, ...] | None, field: str = "state") -> tuple[str, ...] | None:
    """Task-instance state names, checked; Airflow's null (and `None`) is our `none`."""
    if names is None:
        return None
    valid = {state.value for state in TaskState}
    checked = []
    for name in names:
        name = "none" if name in ("null", "None") else name
        if name not in valid:
            raise BadRequest(
                f"{field} {name!r} is not a task instance state; use one of: {', '.join(sorted(valid))}"
            )
        checked.append(name)
    return tuple(checked)
