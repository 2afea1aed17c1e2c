"""Checks on the values a task returns, before they are committed as XComs.

A task's return value (a Python task's JSON, a Bash task's last line) is stored in a jsonb
column. Some values PostgreSQL refuses (a NUL character, ``\\u0000``, in any string or key),
some are too large to hold in a daemon shared by every DAG, and some JSON cannot express
(NaN, Infinity: JSON encoders write them as ``null``, so the value would vanish). Each of
these fails the try with a sentence that says why; none may reach the database and stop the
daemon. Pure: the JSON encoding is orjson's, the one the store writes with.

Decisions (documented in the README): NUL characters are refused, not rewritten, because a
silently changed value is worse than a failed try; NaN and ±Infinity fail the try, as Airflow
users expect a failure they can see rather than a ``null`` they did not return.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

#: the default of xcom.max_bytes: the most bytes of JSON one XCom value may take
DEFAULT_MAX_XCOM_BYTES = 1_000_000

#: how orjson writes a NUL character inside a JSON string
_NUL_ESCAPED = b"\\u0000"


def non_finite_path(value: Any, path: str = "the return value") -> str | None:
    """Where in `value` a NaN or ±Infinity float is (e.g. "the return value['a'][2]"), or None."""
    if isinstance(value, float):
        return None if math.isfinite(value) else path
    if isinstance(value, dict):
        for key, item in value.items():
            found = non_finite_path(item, f"{path}[{key!r}]")
            if found is not None:
                return found
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = non_finite_path(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def non_finite_refusal(value: Any) -> str | None:
    """Why `value` cannot be an XCom because it holds NaN or Infinity, or None."""
    where = non_finite_path(value)
    if where is None:
        return None
    return (
        f"{where} is NaN or Infinity, which JSON cannot represent (it would be stored as null): "
        "return None, a string, or a finite number instead"
    )


def xcom_refusal(value: Any, max_bytes: int = DEFAULT_MAX_XCOM_BYTES) -> str | None:
    """Why `value` cannot be stored as an XCom, or None if it can.

    Refused: a value orjson cannot encode, more than `max_bytes` bytes of JSON, a NUL
    character in any string or key, a NaN or Infinity anywhere. A string (a Bash task's last
    line, the common case) is checked without encoding it.
    """
    if isinstance(value, str):
        if "\x00" in value:
            return _nul_refusal()
        if len(value) * 4 + 2 > max_bytes:  # only long strings pay for encoding
            size = len(value.encode("utf-8", "surrogatepass")) + 2
            if size > max_bytes:
                return _size_refusal(size, max_bytes)
        return None
    try:
        encoded = orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError) as exc:
        return f"the return value cannot be stored as JSON ({exc}): return JSON-able values only"
    if len(encoded) > max_bytes:
        return _size_refusal(len(encoded), max_bytes)
    if _NUL_ESCAPED in encoded:
        return _nul_refusal()
    if b"null" in encoded:  # orjson writes NaN and Infinity as null: look for them only then
        return non_finite_refusal(value)
    return None


def _nul_refusal() -> str:
    return (
        "the return value contains a NUL character (\\u0000), which PostgreSQL cannot store in "
        "JSON: remove it (or encode binary data, e.g. as base64) before returning it"
    )


def _size_refusal(size: int, max_bytes: int) -> str:
    return (
        f"the return value is {size:,} bytes of JSON, more than xcom.max_bytes ({max_bytes:,}): "
        "return a smaller value (store large data in a file or a database and return its location), "
        "or raise xcom.max_bytes"
    )
