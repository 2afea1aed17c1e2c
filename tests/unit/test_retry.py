"""Retry math follows Airflow's TaskInstance.next_retry_datetime."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest

from orchestrator.core.model import TaskSpec
from orchestrator.core.retry import (
    MAX_RETRY_DELAY,
    next_retry_at,
    retry_delay,
    retry_jitter_key,
    should_retry,
)

DAY = 24 * 3600.0


def spec(
    retry_delay: float = 300.0, exponential: bool = False, max_retry_delay: float | None = None
) -> TaskSpec:
    return TaskSpec(
        task_id="t",
        kind="bash",
        retries=3,
        retry_delay=retry_delay,
        retry_exponential_backoff=exponential,
        max_retry_delay=max_retry_delay,
        args={"bash_command": "false"},
    )


def sha1_int(key: str) -> int:
    return int(hashlib.sha1(key.encode()).hexdigest(), 16)


@pytest.mark.parametrize(
    ("try_number", "max_tries", "expected"),
    [
        (1, 0, False),  # retries=0: the first failure is final
        (1, 1, True),
        (2, 1, False),
        (1, 3, True),
        (3, 3, True),
        (4, 3, False),
    ],
)
def test_should_retry(try_number: int, max_tries: int, expected: bool) -> None:
    assert should_retry(try_number, max_tries) is expected


@pytest.mark.parametrize("try_number", [1, 2, 5, 50])
def test_plain_delay_is_the_retry_delay_on_every_try(try_number: int) -> None:
    assert retry_delay(spec(retry_delay=42.5), try_number, "k") == 42.5


def test_plain_delay_is_not_capped_by_max_retry_delay_as_in_airflow() -> None:
    assert retry_delay(spec(retry_delay=600, max_retry_delay=60), 1, "k") == 600


@pytest.mark.parametrize(
    ("base", "try_number", "min_backoff"),
    [
        (10.0, 1, 10),  # first failure: between retry_delay and twice it
        (10.0, 2, 20),
        (10.0, 3, 40),
        (10.0, 5, 160),
        (0.3, 1, 1),  # ceil
        (0.3, 3, 2),  # ceil(1.2)
        (0.0, 4, 1),  # a zero delay still backs off at least one second
    ],
)
def test_exponential_backoff_lies_in_its_window(base: float, try_number: int, min_backoff: int) -> None:
    for n in range(20):
        key = f"dag#task#2024-01-01T00:00:00+00:00#{n}"
        delay = retry_delay(spec(retry_delay=base, exponential=True), try_number, key)
        assert min_backoff <= delay < 2 * min_backoff
        assert delay == min_backoff + sha1_int(key) % min_backoff  # Airflow's exact formula


def test_exponential_backoff_is_deterministic_per_key_and_spread_across_keys() -> None:
    s = spec(retry_delay=60, exponential=True)
    assert retry_delay(s, 3, "a") == retry_delay(s, 3, "a")
    assert len({retry_delay(s, 3, f"key{i}") for i in range(50)}) > 10


@pytest.mark.parametrize(
    ("base", "try_number", "max_retry_delay", "expected"),
    [
        (10.0, 5, 100.0, 100.0),  # capped by the task's max_retry_delay
        (3600.0, 10, None, MAX_RETRY_DELAY),  # capped at one day by default
        (3600.0, 10, 2 * DAY, MAX_RETRY_DELAY),  # the one-day cap applies first, as in Airflow
        (1.0, 5000, None, MAX_RETRY_DELAY),  # no overflow after thousands of tries
        (1.0, 5000, 30.0, 30.0),
    ],
)
def test_exponential_backoff_caps(
    base: float, try_number: int, max_retry_delay: float | None, expected: float
) -> None:
    s = spec(retry_delay=base, exponential=True, max_retry_delay=max_retry_delay)
    assert retry_delay(s, try_number, "k") == expected


def test_next_retry_at_adds_the_delay_to_the_failure_time() -> None:
    failed_at = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
    assert next_retry_at(spec(retry_delay=90), 1, failed_at, "k") == failed_at + timedelta(seconds=90)
    s = spec(retry_delay=10, exponential=True)
    assert next_retry_at(s, 2, failed_at, "k") == failed_at + timedelta(seconds=retry_delay(s, 2, "k"))


def test_jitter_key_is_airflows() -> None:
    logical_date = datetime(2024, 1, 1, tzinfo=UTC)
    assert retry_jitter_key("d", "t", logical_date, 2) == "d#t#2024-01-01T00:00:00+00:00#2"
