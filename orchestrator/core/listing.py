"""What a list of DAGs, runs or task instances asks the store for: filters, an order, a page.

The API parses query strings and JSON bodies into these values (orchestrator.api.listing); the
store turns them into the parameters of fixed, named SQL queries. An order is one of the
columns named here, never text spliced into SQL: the store's queries hold one `CASE` arm per
allowed column, and the column's name is passed as a parameter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

#: the columns a list of DAG runs may be ordered by (Airflow 2's allowed sort attributes)
RUN_ORDER_COLUMNS = (
    "id",
    "state",
    "dag_id",
    "execution_date",
    "dag_run_id",
    "start_date",
    "end_date",
    "updated_at",
    "external_trigger",
    "conf",
)
#: the columns a list of task instances may be ordered by
TASK_INSTANCE_ORDER_COLUMNS = (
    "dag_id",
    "dag_run_id",
    "task_id",
    "map_index",
    "execution_date",
    "start_date",
    "end_date",
    "duration",
    "state",
    "try_number",
    "queued_when",
    "pool",
    "queue",
    "priority_weight",
)
#: the columns a list of DAGs may be ordered by
DAG_ORDER_COLUMNS = ("dag_id", "fileloc", "is_paused", "is_active", "last_parsed_time", "next_dagrun")

#: the columns a list of import errors may be ordered by (Airflow's)
IMPORT_ERROR_ORDER_COLUMNS = ("import_error_id", "timestamp", "filename")
#: the attributes a DAG's list of tasks may be ordered by (sorted in memory: tasks live in the spec)
TASK_ORDER_COLUMNS = ("task_id", "owner", "retries", "trigger_rule")

#: orders used when the caller names none (not offered to callers: queued_at is not Airflow's;
#: "key" matches no column, so task instances come in their key's order: run, task, map index)
NEWEST_RUN_FIRST = "-queued_at"
TASK_INSTANCE_KEY_ORDER = "key"


@dataclass(frozen=True, slots=True)
class Order:
    """One column, ascending or descending; `key` is what the store's queries compare against."""

    column: str
    descending: bool = False

    @property
    def key(self) -> str:
        return f"-{self.column}" if self.descending else self.column

    @classmethod
    def parse(cls, text: str) -> Order:
        """`start_date` or `-start_date` (descending)."""
        if text.startswith("-"):
            return cls(text[1:], True)
        return cls(text)


@dataclass(frozen=True, slots=True)
class Range:
    """An inclusive range of values (datetimes or numbers); None on a side means unbounded."""

    gte: Any = None
    lte: Any = None


@dataclass(frozen=True, slots=True)
class Page:
    limit: int = 100
    offset: int = 0


@dataclass(frozen=True, slots=True)
class RunQuery:
    """Which DAG runs to list. None in a tuple field means "any"."""

    dag_ids: tuple[str, ...] | None = None
    states: tuple[str, ...] | None = None
    run_types: tuple[str, ...] | None = None
    execution_date: Range = field(default_factory=Range)
    start_date: Range = field(default_factory=Range)
    end_date: Range = field(default_factory=Range)
    #: a run's latest change: the latest of its queued, start and end times
    updated_at: Range = field(default_factory=Range)
    order: Order = field(default_factory=lambda: Order.parse(NEWEST_RUN_FIRST))
    page: Page = field(default_factory=Page)


@dataclass(frozen=True, slots=True)
class TaskInstanceQuery:
    """Which task instances to list, across runs and DAGs. None in a tuple field means "any"."""

    dag_ids: tuple[str, ...] | None = None
    run_ids: tuple[str, ...] | None = None
    task_ids: tuple[str, ...] | None = None
    states: tuple[str, ...] | None = None
    pools: tuple[str, ...] | None = None
    queues: tuple[str, ...] | None = None
    execution_date: Range = field(default_factory=Range)
    start_date: Range = field(default_factory=Range)
    end_date: Range = field(default_factory=Range)
    updated_at: Range = field(default_factory=Range)
    duration: Range = field(default_factory=Range)
    order: Order = field(default_factory=lambda: Order(TASK_INSTANCE_KEY_ORDER))
    page: Page = field(default_factory=Page)


@dataclass(frozen=True, slots=True)
class DagQuery:
    """Which DAGs to list."""

    only_active: bool = True
    paused: bool | None = None
    #: DAGs with any of these tags
    tags: tuple[str, ...] | None = None
    #: a substring of the dag_id (Airflow's dag_id_pattern is a SQL ILIKE %pattern%)
    dag_id_pattern: str | None = None
    order: Order = field(default_factory=lambda: Order("dag_id"))
    page: Page = field(default_factory=Page)


@dataclass(frozen=True, slots=True)
class XComEntry:
    """One stored XCom with what the API shows beside its value."""

    dag_id: str
    run_id: str
    logical_date: datetime
    task_id: str
    map_index: int
    key: str
    value: Any
    timestamp: datetime
