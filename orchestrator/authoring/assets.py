"""Assets (Airflow 3's data-aware scheduling): `Asset`, and the `|` / `&` conditions over them.

A task names the assets it updates with `outlets=[Asset("s3://bucket/orders")]`; each success
of the task records an asset event. A DAG with `schedule=Asset(...)`, a list of assets (all of
them), or a condition such as `Asset("a") | (Asset("b") & Asset("c"))` runs when the condition is
met by events that arrived since its last asset-triggered run. Assets are identified by their
URI; the condition travels to the daemon as the JSON tree of `orchestrator.core.assets`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from orchestrator.core.validation import DagValidationError

#: longest URI accepted (Airflow's limit)
MAX_URI_LENGTH = 1500


def check_uri(uri: Any, where: str = "Asset") -> str:
    """`uri` if it can name an asset, else DagValidationError saying what to change."""
    if not isinstance(uri, str) or not uri.strip():
        raise DagValidationError(f"{where}: the asset URI must be a non-empty string, got {uri!r}")
    if len(uri) > MAX_URI_LENGTH:
        raise DagValidationError(f"{where}: the asset URI is longer than {MAX_URI_LENGTH} characters")
    if not uri.isprintable() or any(ch.isspace() for ch in uri) or not uri.isascii():
        raise DagValidationError(
            f"{where}: the asset URI {uri!r} must be printable ASCII without spaces "
            "(percent-encode other characters)"
        )
    return uri


class BaseAsset:
    """Something a DAG can be scheduled on: an asset or a condition over assets."""

    def __or__(self, other: BaseAsset) -> AssetAny:
        _check_operand(other, "|")
        return AssetAny(self, other)

    def __and__(self, other: BaseAsset) -> AssetAll:
        _check_operand(other, "&")
        return AssetAll(self, other)

    def to_condition(self) -> dict[str, Any]:
        raise NotImplementedError

    def iter_uris(self) -> Iterable[str]:
        raise NotImplementedError


class Asset(BaseAsset):
    """A piece of data a task updates, named by its URI (Airflow's `Asset`; `Dataset` in Airflow 2).

    `Asset("s3://bucket/orders")` names it by URI; `name` defaults to the URI and the URI to the name.
    """

    def __init__(
        self,
        name: str | None = None,
        uri: str | None = None,
        *,
        group: str = "asset",
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        self.uri = check_uri(uri if uri is not None else name)
        self.name = name if name is not None else self.uri
        self.group = group
        self.extra = dict(extra or {})

    def __repr__(self) -> str:
        return f"Asset({self.uri!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Asset) and other.uri == self.uri

    def __hash__(self) -> int:
        return hash(self.uri)

    def to_condition(self) -> dict[str, Any]:
        return {"asset": self.uri}

    def iter_uris(self) -> Iterable[str]:
        yield self.uri


class _Combination(BaseAsset):
    _word: str

    def __init__(self, *objects: BaseAsset) -> None:
        if not objects:
            raise DagValidationError(f"{type(self).__name__} needs at least one asset")
        for item in objects:
            _check_operand(item, self._word)
        self.objects = objects

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(map(repr, self.objects))})"

    def to_condition(self) -> dict[str, Any]:
        return {self._word: [item.to_condition() for item in self.objects]}

    def iter_uris(self) -> Iterable[str]:
        for item in self.objects:
            yield from item.iter_uris()


class AssetAny(_Combination):
    """Met when any of its members is (`a | b`)."""

    _word = "any"


class AssetAll(_Combination):
    """Met when all of its members are (`a & b`, or a list of assets as a schedule)."""

    _word = "all"


def _check_operand(value: Any, operator: str) -> None:
    if not isinstance(value, BaseAsset):
        raise DagValidationError(
            f"assets combine with {operator!r} only with other assets, got {type(value).__name__} {value!r}"
        )


def asset_condition(schedule: Any, where: str) -> dict[str, Any] | None:
    """The condition tree of an asset schedule (an asset, a condition, or a list of assets: all),
    or None when `schedule` is not about assets."""
    if isinstance(schedule, BaseAsset):
        return schedule.to_condition()
    if isinstance(schedule, list | tuple) and schedule:
        if not all(isinstance(item, BaseAsset) for item in schedule):
            raise DagValidationError(
                f"{where}: a list schedule must hold only assets (Asset(...)), got {schedule!r}"
            )
        return AssetAll(*schedule).to_condition()
    return None


def outlet_uris(outlets: Any, where: str) -> tuple[str, ...]:
    """The URIs of a task's `outlets` (assets, in order, without repeats)."""
    if outlets is None:
        return ()
    items = [outlets] if isinstance(outlets, Asset) else outlets
    if isinstance(items, str) or not isinstance(items, list | tuple):
        raise DagValidationError(f"{where}: outlets must be a list of Asset(...), got {outlets!r}")
    uris: dict[str, None] = {}
    for item in items:
        if not isinstance(item, Asset):
            raise DagValidationError(
                f"{where}: every outlet must be an Asset(...) (a condition cannot be updated), got {item!r}"
            )
        uris[item.uri] = None
    return tuple(uris)
