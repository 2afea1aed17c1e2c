"""What a task may return as an XCom: JSON that PostgreSQL's jsonb stores, within xcom.max_bytes."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.core.values import non_finite_path, xcom_refusal

LIMIT = 1000


@pytest.mark.parametrize(
    "value",
    [
        "a line of output",
        "",
        "é" * 300,
        {"rows": 3, "ok": True, "none": None, "ratio": 0.5},
        [1, 2.5, "x", None, [None]],
        12,
        -1.5e300,
        True,
        "x" * (LIMIT - 2),
    ],
)
def test_values_that_can_be_stored(value: Any) -> None:
    assert xcom_refusal(value, LIMIT) is None


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("a\x00b", "NUL character"),
        ({"k": "a\x00b"}, "NUL character"),
        ({"a\x00": 1}, "NUL character"),
        (["ok", ["\x00"]], "NUL character"),
        ("x" * (LIMIT - 1), "more than xcom.max_bytes (1,000)"),
        ("é" * 600, "1,202 bytes of JSON, more than xcom.max_bytes"),
        ({"rows": list(range(400))}, "more than xcom.max_bytes (1,000)"),
        (float("nan"), "the return value is NaN or Infinity"),
        ({"a": [1, float("inf")]}, "the return value['a'][1] is NaN or Infinity"),
        ([None, -float("inf")], "the return value[1] is NaN or Infinity"),
        ({"x": object()}, "cannot be stored as JSON"),
        (2**70, "cannot be stored as JSON"),
    ],
)
def test_values_that_are_refused_say_why(value: Any, fragment: str) -> None:
    refusal = xcom_refusal(value, LIMIT)
    assert refusal is not None and fragment in refusal


def test_non_finite_path_finds_nothing_in_finite_values() -> None:
    assert non_finite_path({"a": [0.0, 1e308, -2.5], "b": "nan"}) is None
