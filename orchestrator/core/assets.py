"""Asset conditions: the JSON tree a DAG scheduled on assets waits on, checked and evaluated.

A condition is one of ``{"asset": uri}``, ``{"all": [condition, ...]}`` (Airflow's `AssetAll`,
`a & b`, or a list of assets as a schedule) and ``{"any": [condition, ...]}`` (`AssetAny`,
`a | b`). The authoring API builds it (`orchestrator.authoring.assets`); the daemon keeps it
in `DagSpec.asset_condition` and asks here whether the assets that have new events since the
DAG's last asset-triggered run meet it. Pure: no I/O, the set of updated URIs is an argument.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any

from orchestrator.core.records import AssetEventRecord
from orchestrator.errors import OrchestratorError

#: longest asset URI accepted (Airflow's limit; the authoring API checks the same)
MAX_URI_LENGTH = 1500
#: deepest nesting of all/any accepted (a tree is walked recursively)
MAX_DEPTH = 32

_COMBINATIONS = ("all", "any")


class InvalidAssetCondition(OrchestratorError, ValueError):
    """The asset condition is malformed: build it with Asset(...), `|`, `&` or a list of assets."""


def uri_problem(uri: Any) -> str | None:
    """Why `uri` cannot name an asset, or None if it can."""
    if not isinstance(uri, str) or not uri.strip():
        return f"an asset URI must be a non-empty string, got {uri!r}"
    if len(uri) > MAX_URI_LENGTH:
        return f"the asset URI {uri[:40]!r}... is longer than {MAX_URI_LENGTH} characters"
    if not uri.isascii() or not uri.isprintable() or any(ch.isspace() for ch in uri):
        return f"the asset URI {uri!r} must be printable ASCII without spaces (percent-encode the rest)"
    return None


def condition_problems(condition: Any) -> list[str]:
    """Every problem of a condition tree, each saying where it is ([] when it is valid)."""
    problems: list[str] = []
    _check(condition, "the asset condition", 0, problems)
    return problems


def check_condition(condition: Any) -> Mapping[str, Any]:
    """`condition` if it is a valid tree, else InvalidAssetCondition listing its problems."""
    problems = condition_problems(condition)
    if problems:
        raise InvalidAssetCondition("; ".join(problems))
    return condition  # type: ignore[no-any-return]


def _check(node: Any, where: str, depth: int, problems: list[str]) -> None:
    if depth > MAX_DEPTH:
        problems.append(f"{where} is nested more than {MAX_DEPTH} levels deep")
        return
    if not isinstance(node, Mapping) or len(node) != 1:
        problems.append(
            f'{where} must be an object with one key, "asset", "all" or "any", got {_short(node)}'
        )
        return
    ((word, value),) = node.items()
    if word == "asset":
        problem = uri_problem(value)
        if problem is not None:
            problems.append(f"{where}: {problem}")
    elif word in _COMBINATIONS:
        if not isinstance(value, list) or not value:
            problems.append(f'{where}: "{word}" needs a non-empty list of conditions, got {_short(value)}')
            return
        for index, item in enumerate(value):
            _check(item, f"{where}.{word}[{index}]", depth + 1, problems)
    else:
        problems.append(f'{where} has the unknown key {word!r}: use "asset", "all" or "any"')


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def condition_uris(condition: Mapping[str, Any]) -> tuple[str, ...]:
    """The URIs a (valid) condition names, in order of appearance, without repeats."""
    return tuple(dict.fromkeys(_walk_uris(condition)))


def _walk_uris(node: Mapping[str, Any]) -> Iterator[str]:
    ((word, value),) = node.items()
    if word == "asset":
        yield value
    else:
        for item in value:
            yield from _walk_uris(item)


def condition_met(condition: Mapping[str, Any], updated: Collection[str]) -> bool:
    """Whether the assets in `updated` (the URIs with new events) meet a (valid) condition."""
    ((word, value),) = condition.items()
    if word == "asset":
        return value in updated
    if word == "all":
        return all(condition_met(item, updated) for item in value)
    return any(condition_met(item, updated) for item in value)


def triggering_asset_events(events: Iterable[AssetEventRecord]) -> dict[str, list[dict[str, Any]]]:
    """A run's `triggering_asset_events` for its templates and Python tasks: asset URI -> its
    events, oldest first, each a JSON-able dict (Airflow 3's AssetEvent fields)."""
    by_uri: dict[str, list[dict[str, Any]]] = {}
    for event in sorted(events, key=lambda e: e.id):
        by_uri.setdefault(event.uri, []).append(
            {
                "id": event.id,
                "uri": event.uri,
                "asset_uri": event.uri,
                "extra": event.extra,
                "timestamp": event.timestamp.isoformat(),
                "source_dag_id": event.source_dag_id,
                "source_task_id": event.source_task_id,
                "source_run_id": event.source_run_id,
                "source_map_index": event.source_map_index,
            }
        )
    return by_uri


def asset_triggered_run_id(created_at: datetime, last_event_id: int) -> str:
    """The run id of an asset-triggered run: Airflow's ``asset_triggered__<time>`` plus the last
    event it consumed, which no other run of the DAG can have consumed (so it is unique)."""
    return f"asset_triggered__{created_at.isoformat()}_{last_event_id}"
