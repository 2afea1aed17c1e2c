"""Asset conditions (orchestrator.core.assets): checked with clear messages, evaluated against the
URIs that have new events, table-tested; and the run id and template view of triggering events."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from orchestrator.authoring.assets import Asset
from orchestrator.core.assets import (
    InvalidAssetCondition,
    asset_triggered_run_id,
    check_condition,
    condition_met,
    condition_problems,
    condition_uris,
    triggering_asset_events,
)
from orchestrator.core.ids import check_run_id
from orchestrator.core.model import DagSpec, TaskSpec
from orchestrator.core.records import AssetEventRecord
from orchestrator.core.validation import DagValidationError, validate_dag

A, B, C = {"asset": "s3://a"}, {"asset": "s3://b"}, {"asset": "s3://c"}

MET = [
    # (condition, updated URIs, met?)
    (A, set(), False),
    (A, {"s3://a"}, True),
    (A, {"s3://b"}, False),
    ({"all": [A, B]}, {"s3://a"}, False),
    ({"all": [A, B]}, {"s3://a", "s3://b"}, True),
    ({"any": [A, B]}, {"s3://b"}, True),
    ({"any": [A, B]}, set(), False),
    ({"any": [A, {"all": [B, C]}]}, {"s3://b"}, False),
    ({"any": [A, {"all": [B, C]}]}, {"s3://b", "s3://c"}, True),
    ({"any": [A, {"all": [B, C]}]}, {"s3://a"}, True),
    ({"all": [A, {"any": [B, C]}]}, {"s3://a", "s3://c"}, True),
    ({"all": [A, {"any": [B, C]}]}, {"s3://b", "s3://c"}, False),
    ({"all": [A]}, {"s3://a", "s3://zzz"}, True),
]


@pytest.mark.parametrize(("condition", "updated", "met"), MET)
def test_condition_met(condition: dict[str, Any], updated: set[str], met: bool) -> None:
    assert check_condition(condition) is condition
    assert condition_met(condition, updated) is met


def test_authoring_operators_build_the_trees_evaluated_here() -> None:
    tree = (Asset("s3://a") | (Asset("s3://b") & Asset("s3://c"))).to_condition()
    assert condition_problems(tree) == []
    assert condition_met(tree, {"s3://b", "s3://c"}) and not condition_met(tree, {"s3://c"})


@pytest.mark.parametrize(
    ("condition", "uris"),
    [
        (A, ("s3://a",)),
        ({"all": [A, {"any": [B, A]}, C]}, ("s3://a", "s3://b", "s3://c")),
        ({"any": [{"any": [{"any": [C]}]}]}, ("s3://c",)),
    ],
)
def test_condition_uris_in_order_without_repeats(condition: dict[str, Any], uris: tuple[str, ...]) -> None:
    assert condition_uris(condition) == uris


MALFORMED = [
    ({}, "one key"),
    (None, "one key"),
    ([A], "one key"),
    ({"asset": "s3://a", "all": [B]}, "one key"),
    ({"asset": ""}, "non-empty string"),
    ({"asset": 3}, "non-empty string"),
    ({"asset": "s3://a b"}, "without spaces"),
    ({"asset": "x" * 1501}, "longer than 1500"),
    ({"all": []}, "non-empty list"),
    ({"any": "s3://a"}, "non-empty list"),
    ({"none": [A]}, "unknown key 'none'"),
    ({"all": [A, {"any": [B, {"asset": None}]}]}, "the asset condition.all[1].any[1]"),
]


@pytest.mark.parametrize(("condition", "message"), MALFORMED)
def test_malformed_conditions_say_what_and_where(condition: Any, message: str) -> None:
    problems = condition_problems(condition)
    assert problems and message in "; ".join(problems)
    with pytest.raises(InvalidAssetCondition, match="asset condition"):
        check_condition(condition)


def test_a_tree_nested_too_deep_is_refused_not_recursed() -> None:
    tree: dict[str, Any] = A
    for _ in range(100):
        tree = {"all": [tree]}
    assert any("nested more than" in problem for problem in condition_problems(tree))


def test_validate_dag_checks_the_condition_and_outlets() -> None:
    good = DagSpec(
        "consumer",
        "/d.py",
        asset_condition={"any": [A, B]},
        tasks=(TaskSpec("t", "bash", args={"bash_command": "true"}, outlets=("s3://c",)),),
    )
    validate_dag(good)
    bad = DagSpec(
        "consumer",
        "/d.py",
        asset_condition={"all": []},
        tasks=(TaskSpec("t", "bash", args={"bash_command": "true"}, outlets=("has space",)),),
    )
    with pytest.raises(DagValidationError) as caught:
        validate_dag(bad)
    assert "schedule:" in str(caught.value) and "outlets" in str(caught.value)


def test_triggering_asset_events_by_uri_oldest_first() -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    events = [
        AssetEventRecord(7, 1, "s3://a", {"n": 2}, at, "p", "t", "r", -1),
        AssetEventRecord(5, 1, "s3://a", {"n": 1}, at),
        AssetEventRecord(6, 2, "s3://b", {}, at),
    ]
    view = triggering_asset_events(events)
    assert list(view) == ["s3://a", "s3://b"]
    assert [event["extra"]["n"] for event in view["s3://a"]] == [1, 2]
    assert view["s3://a"][1] == {
        "id": 7,
        "uri": "s3://a",
        "asset_uri": "s3://a",
        "extra": {"n": 2},
        "timestamp": "2026-01-02T03:04:05+00:00",
        "source_dag_id": "p",
        "source_task_id": "t",
        "source_run_id": "r",
        "source_map_index": -1,
    }


def test_asset_triggered_run_ids_are_valid_and_differ_by_event() -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, 678, tzinfo=UTC)
    first, second = asset_triggered_run_id(at, 41), asset_triggered_run_id(at, 42)
    assert first.startswith("asset_triggered__2026-01-02T03:04:05.000678+00:00")
    assert first != second and check_run_id(first) is None
