"""The ports: small Protocols through which the engine talks to the outside.

Adapters implement them: `storage.postgres.PostgresStateStore` (StateStore),
`executors.local.LocalExecutor` (Executor), `orchestrator.engine.clock.SystemClock`
(Clock). The engine imports only this module and the pure core, never an adapter.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from orchestrator.core.model import DagSpec, TaskKind
from orchestrator.core.records import (
    ChangeSet,
    DaemonRecord,
    DagRecord,
    ImportErrorRecord,
    NewRun,
    NewTaskInstance,
    RunRecord,
    TaskInstanceRecord,
    TaskKey,
    XComRecord,
)
from orchestrator.core.states import RunState


class Clock(Protocol):
    """Wall-clock time (timezone-aware UTC) and the monotonic time timers are armed with."""

    def now(self) -> datetime: ...

    def monotonic(self) -> float: ...


@dataclass(frozen=True, slots=True)
class ActiveRun:
    """A run that is not finished, with everything the engine needs to resume it."""

    run: RunRecord
    task_instances: list[TaskInstanceRecord]
    xcoms: list[XComRecord]


class StateStore(Protocol):
    """Durable state. Every method is one transaction; nothing is acted on before it commits."""

    # --- DAGs and DAG files -------------------------------------------------------
    async def sync_dag_file(self, fileloc: str, dags: Sequence[DagSpec], now: datetime) -> None:
        """Record a successful parse of one file: upsert its DAGs (active), deactivate DAGs
        that this file defined before but no longer does, and clear the file's import error."""

    async def record_import_error(self, fileloc: str, message: str, now: datetime) -> None:
        """Record that a file failed to load. Its DAGs stay as they were (still runnable)."""

    async def remove_dag_file(self, fileloc: str) -> None:
        """The file was deleted: deactivate its DAGs and drop its import error."""

    async def list_dags(
        self, limit: int, offset: int, only_active: bool = True
    ) -> tuple[list[DagRecord], int]:
        """A page of DAGs ordered by dag_id, and the total count."""

    async def get_dag(self, dag_id: str) -> DagRecord | None: ...

    async def set_dag_paused(self, dag_id: str, is_paused: bool) -> DagRecord | None: ...

    async def paused_dag_ids(self, dag_ids: Sequence[str]) -> set[str]:
        """The ids among `dag_ids` of DAGs that are paused."""

    async def list_import_errors(self) -> list[ImportErrorRecord]: ...

    # --- runs ----------------------------------------------------------------------
    async def create_run(self, run: NewRun, tasks: Sequence[NewTaskInstance]) -> tuple[RunRecord, bool]:
        """Insert the run (state queued) and its task instances (state none) in one transaction,
        unique on (dag_id, run_id), then NOTIFY. Returns the run and whether it was created;
        when it already existed, the existing run is returned and nothing is written."""

    async def get_run(self, dag_id: str, run_id: str) -> RunRecord | None: ...

    async def list_runs(
        self, dag_id: str, limit: int, offset: int, states: Sequence[RunState] | None = None
    ) -> tuple[list[RunRecord], int]:
        """A page of a DAG's runs, newest first (by queued_at, then pk), and the total count."""

    async def list_task_instances(self, run_pk: int) -> list[TaskInstanceRecord]:
        """The task instances of one run, ordered by task_id, map_index."""

    async def get_task_instance(self, key: TaskKey) -> TaskInstanceRecord | None: ...

    async def list_xcoms(self, run_pk: int) -> list[XComRecord]: ...

    async def load_active_runs(self) -> list[ActiveRun]:
        """Every queued or running run with its task instances and XComs, oldest first."""

    async def commit(self, changes: ChangeSet) -> None:
        """Write whole task-instance rows, whole run rows and new XComs in one transaction.
        A later row for the same key in the same change set wins. Raises ConnectionError when
        the database cannot be reached or the connection failed (the caller may retry: the
        rows are whole, so writing them again is harmless)."""

    # --- daemons -------------------------------------------------------------------
    async def register_daemon(self, daemon_id: str, hostname: str, pid: int, now: datetime) -> None: ...

    async def heartbeat(self, daemon_id: str, now: datetime) -> None: ...

    async def try_lock_single_daemon(self) -> bool:
        """Hold the database's daemon lock while the store is open; False if another holds it."""

    async def list_daemons(self) -> list[DaemonRecord]: ...

    async def deregister_daemon(self, daemon_id: str) -> None: ...

    async def close(self) -> None: ...


# --- executors -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PythonCall:
    """Where a Python task's callable lives and the (already resolved) arguments to call it with."""

    dag_file: str
    dag_id: str
    task_id: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LaunchRequest:
    """Everything an executor needs to run one try of one task instance. Templates are rendered."""

    key: TaskKey
    dag_id: str
    run_id: str
    try_number: int
    kind: TaskKind
    env: dict[str, str]
    log_path: Path
    bash_command: str | None = None
    python: PythonCall | None = None
    cwd: str | None = None
    timeout: float | None = None
    do_xcom_push: bool = True
    #: the Airflow-style context a Python task may ask for (JSON-able: ds, ts, run_id, params, ...)
    context: dict[str, Any] = field(default_factory=dict)


#: Sentinel meaning "the task pushed no XCom" (None is a legitimate return value).
NO_XCOM: Any = object()


@dataclass(frozen=True, slots=True)
class TaskOutcome:
    """How one try ended. `error` is a message a person can act on when success is False."""

    key: TaskKey
    try_number: int
    success: bool
    exit_code: int | None = None
    xcom_value: Any = NO_XCOM
    error: str | None = None
    timed_out: bool = False


class ExecutorEvents(Protocol):
    """What an executor reports back. Called from the event loop, in order, never concurrently."""

    def task_started(self, key: TaskKey, try_number: int, external_id: str) -> None: ...

    def task_finished(self, outcome: TaskOutcome) -> None: ...


class Executor(Protocol):
    """Runs task instances. `submit` never blocks: requests wait in the executor for a slot."""

    name: str

    async def start(self) -> None:
        """Prepare to run tasks (e.g. start warm workers); called once before any submit."""

    def submit(self, request: LaunchRequest) -> None: ...

    def cancel(self, key: TaskKey) -> None:
        """Stop the task if it is queued or running (SIGTERM, then SIGKILL of its process group)."""

    def running_count(self) -> int: ...

    async def adopt(self, task: TaskInstanceRecord) -> bool:
        """Re-attach to work started before a restart. True if adopted (its events will follow)."""

    async def drain(self, grace: float) -> None:
        """Stop taking new work; wait up to `grace` seconds for running tasks, then kill the rest."""

    async def close(self) -> None: ...


ExecutorFactory = Callable[[ExecutorEvents], Executor]
