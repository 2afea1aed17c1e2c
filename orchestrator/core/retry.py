"""Retry math: whether a failed try may run again, and when.

This follows Airflow's ``TaskInstance.next_retry_datetime`` so that DAGs moved from
Airflow retry on the same schedule. Without exponential backoff the wait is the task's
``retry_delay``. With it, the n-th try's failure waits between ``retry_delay * 2**(n-1)``
and twice that, the point in that window fixed by a hash of the task instance (the
"jitter": tasks that failed together do not all retry in the same second, yet a given
try always gets the same delay, so recomputing it after a restart changes nothing).
The wait is capped at 24 hours, and at the task's ``max_retry_delay`` when it has one.

Time is an argument and the jitter comes from a caller-supplied key: nothing here reads
the clock or draws random numbers.
"""

from __future__ import annotations

import hashlib
import math
from datetime import datetime, timedelta

from orchestrator.core.model import TaskSpec

#: Airflow's hard cap on an exponential-backoff delay, in seconds (one day).
MAX_RETRY_DELAY: float = 24 * 60 * 60.0


def should_retry(try_number: int, max_tries: int) -> bool:
    """Whether the try that just failed may be followed by another one.

    `try_number` is the 1-based number of the try that failed (= tries made so far) and
    `max_tries` is how many tries after the first are allowed (the task's retries), so a
    task with retries=2 runs at most three times: tries 1 and 2 are retried, try 3 is not.
    """
    return try_number <= max_tries


def retry_jitter_key(dag_id: str, task_id: str, logical_date: datetime, try_number: int) -> str:
    """The key Airflow hashes for the backoff jitter of one failed try."""
    return f"{dag_id}#{task_id}#{logical_date.isoformat()}#{try_number}"


def _jitter(jitter_key: str) -> int:
    # sha1 because Airflow uses it: the same inputs give the same spread as there.
    return int(hashlib.sha1(jitter_key.encode(), usedforsecurity=False).hexdigest(), 16)


def retry_delay(spec: TaskSpec, try_number: int, jitter_key: str) -> float:
    """Seconds to wait after try `try_number` (1-based, the try that just failed) before the next.

    With exponential backoff: ``min_backoff = ceil(retry_delay * 2**(try_number - 1))`` (at
    least 1), the delay is ``min_backoff + hash(jitter_key) % min_backoff`` -- somewhere in
    ``[min_backoff, 2 * min_backoff)`` -- capped at `MAX_RETRY_DELAY` and `spec.max_retry_delay`.
    Without it: `spec.retry_delay`, uncapped (as in Airflow).
    """
    delay = max(spec.retry_delay, 0.0)
    if not spec.retry_exponential_backoff:
        return delay
    try:
        min_backoff = max(math.ceil(delay * 2.0 ** (try_number - 1)), 1)
    except OverflowError:  # tries in the thousands: far past any cap
        backoff = MAX_RETRY_DELAY
    else:
        if min_backoff >= MAX_RETRY_DELAY:
            backoff = MAX_RETRY_DELAY
        else:
            backoff = min(float(min_backoff + _jitter(jitter_key) % min_backoff), MAX_RETRY_DELAY)
    if spec.max_retry_delay:
        backoff = min(backoff, spec.max_retry_delay)
    return backoff


def next_retry_at(spec: TaskSpec, try_number: int, failed_at: datetime, jitter_key: str) -> datetime:
    """When the failed try `try_number` may be queued again: `failed_at` plus `retry_delay`."""
    return failed_at + timedelta(seconds=retry_delay(spec, try_number, jitter_key))
