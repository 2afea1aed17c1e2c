"""The ports: every small Protocol through which the engine, the API and the DAG folder talk
to the outside, in one module.

Adapters implement them: `storage.postgres.PostgresStateStore` (StateStore),
`executors.local.LocalExecutor` (Executor), `orchestrator.engine.clock.SystemClock` (Clock),
`orchestrator.engine.timers.LoopTimers` (Timers), `orchestrator.engine.events.EventBus`
(Events). The engine imports only this module and the pure core, never an adapter; the
API and the DAG folder see the engine only through `EngineApi`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from orchestrator.core.kinds import Payload
from orchestrator.core.listing import DagQuery, Order, Page, RunQuery, TaskInstanceQuery, XComEntry
from orchestrator.core.model import DagSpec
from orchestrator.core.records import (
    AssetEventRecord,
    AssetRecord,
    BackfillRecord,
    BackfillRunRecord,
    ChangeSet,
    DaemonRecord,
    DagRecord,
    ImportErrorRecord,
    NewAssetEvent,
    NewRun,
    NewTaskInstance,
    RunRecord,
    TaskInstanceRecord,
    TaskKey,
    XComRecord,
)
from orchestrator.core.states import RunState, TaskState


class Clock(Protocol):
    """Wall-clock time (timezone-aware UTC) and the monotonic time timers are armed with."""

    def now(self) -> datetime: ...

    def monotonic(self) -> float: ...


class TimerHandle(Protocol):
    """An armed timer; `cancel` is idempotent and harmless once it has fired."""

    def cancel(self) -> None: ...


class Timers(Protocol):
    """Every timer of the engine goes through here: retry delays, the writer's lazy commits,
    heartbeats, cron fire times, sensor wake-ups. Callbacks run in the event loop, never
    re-entrantly. A fake implementation (tests/fakes.py) lets tests advance time."""

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Call `callback` once, `delay` seconds from now (monotonic)."""

    def call_at(self, when: datetime, callback: Callable[[], None]) -> TimerHandle:
        """Call `callback` once the wall clock reaches `when` (at once if it has)."""

    async def sleep(self, delay: float) -> None:
        """Wait `delay` seconds (for loops such as the heartbeat that wait between beats)."""


@dataclass(frozen=True, slots=True)
class ActiveRun:
    """A run that is not finished, with everything the engine needs to resume it."""

    run: RunRecord
    task_instances: list[TaskInstanceRecord]
    xcoms: list[XComRecord]
    #: the DAG version the run was created with (None: none recorded; use the DAG as loaded)
    spec: DagSpec | None = None


@dataclass(frozen=True, slots=True)
class RunOwner:
    """The live replica that owns a run: where to send what concerns the run."""

    daemon_id: str
    hostname: str
    api_url: str | None


class Listener(Protocol):
    """A LISTEN connection (see StateStore.listen)."""

    async def close(self) -> None: ...


class ScheduleStore(Protocol):
    """What the scheduler and backfills keep in the store (storage/postgres_schedules.py)."""

    async def latest_scheduled_run(self, dag_id: str) -> tuple[datetime, datetime, datetime] | None:
        """(logical_date, data_interval_start, data_interval_end) of the DAG's latest scheduled run."""

    async def count_unfinished_runs(self, dag_id: str) -> int:
        """How many runs of the DAG are queued or running."""

    async def set_next_dagrun(
        self,
        dag_id: str,
        logical_date: datetime | None,
        data_interval_start: datetime | None,
        data_interval_end: datetime | None,
        create_after: datetime | None,
    ) -> None:
        """Record the DAG's next scheduled run (GET /dags' next_dagrun fields); all None: none.
        Never backwards: nothing is written when a scheduled run at or after `logical_date`
        exists (a replica that planned before another created that run is stale)."""

    async def create_sole_run(
        self,
        run: NewRun,
        tasks: Sequence[NewTaskInstance],
        source_hash: str | None,
        unless: Literal["unfinished", "scheduled"],
    ) -> RunRecord | None:
        """Create the run (as create_run does) unless the DAG has a run that forbids it, decided
        under a lock on the DAG so that concurrent callers (replicas) create at most one:
        "unfinished" (a queued or running run: @continuous) or "scheduled" (any scheduled run:
        @once). None, with nothing written, when it is forbidden."""

    async def create_backfill(
        self,
        *,
        dag_id: str,
        from_date: datetime,
        to_date: datetime,
        dag_run_conf: dict[str, Any],
        reprocess_behavior: str,
        max_active_runs: int,
        run_backwards: bool,
        now: datetime,
        runs: Sequence[BackfillRunRecord],
    ) -> BackfillRecord | None:
        """Write a backfill and the runs it plans (in their order) in one transaction; None, with
        nothing written, when the DAG has an unfinished backfill (decided under a lock on the DAG)."""

    async def runs_at_logical_dates(
        self, dag_id: str, dates: Sequence[datetime]
    ) -> list[tuple[datetime, str, str, int | None]]:
        """(logical_date, state, run_type, backfill_id) of the DAG's runs at these dates."""

    async def get_backfill(self, backfill_id: int) -> BackfillRecord | None: ...

    async def list_backfills(
        self, dag_id: str | None, limit: int, offset: int, only_unfinished: bool = False
    ) -> tuple[list[BackfillRecord], int]:
        """A page of backfills, newest first, and the total count."""

    async def set_backfill_paused(
        self, backfill_id: int, is_paused: bool, now: datetime
    ) -> BackfillRecord | None:
        """Pause or resume an unfinished backfill; None if there is no such unfinished backfill."""

    async def complete_backfill(self, backfill_id: int, now: datetime) -> BackfillRecord | None:
        """Mark it completed (done or cancelled); None if it was already."""

    async def list_backfill_runs(self, backfill_id: int) -> list[BackfillRunRecord]:
        """The runs a backfill plans, in order, with the run each created (if any)."""

    async def set_backfill_run(self, backfill_id: int, sort_ordinal: int, run_pk: int) -> None:
        """Record the run created for one planned logical date."""

    async def create_backfill_run(
        self,
        run: NewRun,
        tasks: Sequence[NewTaskInstance],
        source_hash: str | None,
        sort_ordinal: int,
    ) -> tuple[RunRecord, bool] | None:
        """In one transaction, while the backfill (`run.backfill_id`) is neither paused nor
        completed (its row locked against both): create the run (as create_run does: an existing
        (dag_id, run_id) is returned with False) and, if the run is the backfill's, record it for
        the planned date `sort_ordinal`. None, with nothing written, when the backfill is paused or
        completed."""


class AssetStore(Protocol):
    """Assets, their events and the consumer queues (`storage.postgres_assets`). Events of task
    outlets are written by `StateStore.commit` with the task's success (`ChangeSet.asset_events`),
    in the same transaction, together with the queue rows of every active DAG scheduled on them."""

    async def record_asset_event(
        self, event: NewAssetEvent, idempotency_key: str | None = None
    ) -> tuple[AssetEventRecord, bool, tuple[str, ...]]:
        """Record one event from outside (the asset is created if unknown) and queue it for every
        active DAG scheduled on it, in one transaction. Returns the event, whether it was created
        (False: `idempotency_key` was seen before: that event, nothing written) and the DAGs it
        was queued for."""

    async def asset_queues(self, dag_ids: Sequence[str]) -> dict[str, list[QueuedAsset]]:
        """What each of these DAGs that is not paused has queued, per asset URI."""

    async def create_asset_triggered_run(
        self,
        run: NewRun,
        tasks: Sequence[NewTaskInstance],
        source_hash: str | None,
        consumed: Sequence[QueuedAsset],
    ) -> tuple[RunRecord, list[AssetEventRecord]] | None:
        """In one transaction: delete the DAG's queue rows of `consumed` (its URIs, up to their last
        event id), create the run (as create_run does) and link it to the events deleted. None,
        with nothing written, when the rows deleted are not exactly those `consumed` counts
        (another evaluator consumed them first, or more arrived: read the queue again)."""

    async def drop_stale_asset_queue(self, dag_id: str, uris: Sequence[str]) -> int:
        """Delete the DAG's queue rows of assets other than `uris` (its condition changed)."""

    async def triggering_asset_events(
        self, run_pks: Sequence[int] | None = None
    ) -> dict[int, list[AssetEventRecord]]:
        """The events that triggered these runs (None: every unfinished asset-triggered run)."""

    async def list_assets(
        self, limit: int, offset: int, uri_pattern: str | None = None
    ) -> tuple[list[AssetRecord], int]:
        """A page of assets ordered by URI (`uri_pattern`: SQL LIKE), and the total count."""

    async def list_asset_events(
        self, limit: int, offset: int, uri: str | None = None, newest_first: bool = False
    ) -> tuple[list[AssetEventRecord], int]:
        """A page of events (of one asset if `uri`), oldest first by default, and the total count."""

    async def get_asset_event(self, event_id: int) -> AssetEventRecord | None: ...


class WebhookStore(Protocol):
    """The durable state of webhooks: the delivery log and the body-hash deduplication window."""

    async def record_webhook_deliveries(self, deliveries: Sequence[WebhookDelivery]) -> None:
        """Append entries to the delivery log (one statement for the batch)."""

    async def list_webhook_deliveries(
        self, webhook: str, limit: int, offset: int
    ) -> tuple[list[WebhookDelivery], int]:
        """A page of one webhook's deliveries, newest first, and their total count."""

    async def claim_webhook_body(
        self, webhook: str, body_sha256: str, key: str, now: datetime, expires_at: datetime
    ) -> tuple[str, bool]:
        """The idempotency key in force for this body: `key` and True if this delivery claimed it
        (none was in force before `now`, until `expires_at`), else the earlier key and False."""

    async def prune_webhook_deliveries(self, before: datetime, now: datetime) -> int:
        """Delete log entries received before `before` and deduplication claims expired at `now`;
        returns how many log entries went."""


class ActionStore(Protocol):
    """What the API's operations on runs and DAGs read and delete (storage/postgres_actions.py).
    Their state changes are whole rows committed through the engine's writer, like any other."""

    async def list_runs_between(
        self, dag_id: str, run_id: str | None, start: datetime | None, end: datetime | None
    ) -> list[RunRecord]:
        """The DAG's runs, oldest logical date first: the one named `run_id` if given, else those
        whose logical date is within [start, end] (either bound may be None)."""

    async def list_task_instances_of(self, run_pks: Sequence[int]) -> list[TaskInstanceRecord]:
        """The task instances of these runs, ordered by run, task_id, map_index."""

    async def delete_finished_run(self, run_pk: int) -> bool:
        """Delete a finished run with its task instances, XComs and version link; False (nothing
        deleted) if it is queued or running, or gone."""

    async def delete_dag_records(self, dag_id: str) -> tuple[bool, int]:
        """Delete a DAG's row, runs, versions, backfills and queued asset events in one transaction,
        unless it has queued or running runs. Returns (the DAG existed, its active runs); with
        active runs nothing is deleted."""


class ListingStore(Protocol):
    """The API's lists: filtered and ordered in SQL (orchestrator.core.listing), one page and its
    total read together."""

    async def find_runs(self, query: RunQuery) -> tuple[list[RunRecord], int]:
        """A page of the DAG runs `query` selects, in its order, and their total count."""

    async def find_task_instances(
        self, query: TaskInstanceQuery
    ) -> tuple[list[tuple[TaskInstanceRecord, RunRecord]], int]:
        """A page of the task instances `query` selects (each with its run) and their total."""

    async def find_dags(self, query: DagQuery) -> tuple[list[DagRecord], int]:
        """A page of the DAGs `query` selects, in its order, and their total count."""

    async def find_xcom_entries(
        self, run_pk: int, task_id: str, map_index: int | None, key: str | None, limit: int, offset: int
    ) -> tuple[list[XComEntry], int]:
        """A page of one task's XComs in a run (None: any map index, any key), and the total."""

    async def find_import_errors(self, order: Order, page: Page) -> tuple[list[ImportErrorRecord], int]:
        """A page of the current import errors in `order`, and their total count."""

    async def is_dag_file(self, fileloc: str) -> bool:
        """Whether `fileloc` is the file of a DAG the store knows (active or not)."""


@dataclass(frozen=True, slots=True)
class EventLogEntry:
    """One entry of the audit trail (Airflow's event log): who (`owner`, the token's name) did
    what (`event`, named after the API handler) to which DAG, run or task, and how it ended
    (`extra`: the status and the body's keys, never a value of conf or anything secret).
    `event_log_id` and `execution_date` (the run's logical date) are set when read back."""

    when: datetime
    event: str
    owner: str
    dag_id: str | None = None
    task_id: str | None = None
    run_id: str | None = None
    map_index: int | None = None
    try_number: int | None = None
    extra: dict[str, Any] | None = None
    event_log_id: int | None = None
    execution_date: datetime | None = None


@dataclass(frozen=True, slots=True)
class EventLogQuery:
    """Which entries of the audit trail to list (None or empty: any); `before` is exclusive,
    `after` inclusive."""

    dag_id: str | None = None
    task_id: str | None = None
    run_id: str | None = None
    map_index: int | None = None
    try_number: int | None = None
    event: str | None = None
    owner: str | None = None
    before: datetime | None = None
    after: datetime | None = None
    included_events: tuple[str, ...] = ()
    excluded_events: tuple[str, ...] = ()


class AuditStore(Protocol):
    """The audit trail of the API (`storage.postgres_audit`)."""

    async def record_event_log(self, entry: EventLogEntry) -> None:
        """Append one entry (one INSERT)."""

    async def list_event_logs(
        self, query: EventLogQuery, order_by: str, limit: int, offset: int
    ) -> tuple[list[EventLogEntry], int]:
        """A page of the entries `query` selects, in `order_by` order (event_log_id, when,
        dag_id, task_id, run_id, event or owner; "-" first: descending), and their total count."""

    async def get_event_log(self, event_log_id: int) -> EventLogEntry | None: ...


class StateStore(ScheduleStore, AssetStore, WebhookStore, ActionStore, ListingStore, AuditStore, Protocol):
    """Durable state. Every method is one transaction; nothing is acted on before it commits."""

    # --- DAGs and DAG files -------------------------------------------------------
    async def sync_dag_file(
        self, fileloc: str, dags: Sequence[DagSpec], now: datetime, paused_on_creation: bool = False
    ) -> None:
        """Record a successful parse of one file: upsert its DAGs (active), deactivate DAGs
        that this file defined before but no longer does, and clear the file's import error.
        A DAG seen for the first time is paused if its spec says so, else if `paused_on_creation`."""

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
    async def create_run(
        self, run: NewRun, tasks: Sequence[NewTaskInstance], source_hash: str | None = None
    ) -> tuple[RunRecord, bool]:
        """Insert the run (state queued) and its task instances (state none) in one transaction,
        unique on (dag_id, run_id), then NOTIFY. Returns the run and whether it was created;
        when it already existed, the existing run is returned and nothing is written."""

    async def create_runs(
        self, items: Sequence[tuple[NewRun, Sequence[NewTaskInstance], str | None]]
    ) -> list[tuple[RunRecord, bool]]:
        """`create_run` for many (run, task instances, source hash) at once, in one transaction;
        the answers in the order of `items` (a run repeated in `items` is created once)."""

    async def create_and_admit_runs(
        self,
        items: Sequence[tuple[NewRun, Sequence[NewTaskInstance], str | None]],
        limit: int,
        exclude: Sequence[int] = (),
    ) -> tuple[list[tuple[RunRecord, bool]], list[ActiveRun]]:
        """`create_runs`, then, in the same transaction, `admit_queued_runs` for each DAG that got
        a new run: the answers, and the runs this store's owner now drives (one commit for a
        trigger whose DAG has room)."""

    async def get_run(self, dag_id: str, run_id: str) -> RunRecord | None: ...

    async def set_run_note(self, dag_id: str, run_id: str, note: str) -> RunRecord | None:
        """Replace a run's note (the engine never writes it); None if the run does not exist."""

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

    async def commit(self, changes: ChangeSet) -> frozenset[int]:
        """Write whole task-instance rows, whole run rows, new XComs and the asset events of
        task outlets (with their consumer queue rows, see AssetStore) in one transaction.
        A later row for the same key in the same change set wins. Raises ConnectionError when
        the database cannot be reached or the connection failed (the caller may retry: the
        rows are whole, so writing them again is harmless).

        Fenced: only the rows of runs this store's owner owns, while its lease holds, are
        written. Returns the pks of the runs whose rows were refused (another replica owns
        them now); empty when everything was written."""

    async def check_database(self, timeout: float) -> None:
        """Raise an OrchestratorError unless the database answers a trivial query within `timeout` seconds
        (GET /health's metadatabase status)."""

    # --- daemons -------------------------------------------------------------------
    async def installation_id(self) -> str:
        """The database's installation id (made by the first caller, the same ever after)."""

    async def register_daemon(
        self,
        daemon_id: str,
        hostname: str,
        pid: int,
        now: datetime,
        *,
        version: str = "",
        lease_seconds: float = 10.0,
    ) -> None:
        """Record this daemon (again, if it restarted with the same id) with a lease of
        `lease_seconds` from the database's now()."""

    async def set_daemon_api_url(self, daemon_id: str, api_url: str) -> None:
        """Where this daemon's REST API listens (other replicas proxy logs and operations there)."""

    async def renew_lease(self, daemon_id: str, lease_seconds: float) -> bool:
        """Heartbeat: the lease holds `lease_seconds` from the database's now(). False if the
        daemon's row is gone (others retired it as dead): register again."""

    async def expire_daemon(self, daemon_id: str) -> None:
        """End that daemon's lease now (a dead incarnation found at start-up): its runs are
        claimable at once."""

    async def retire_daemon(self, daemon_id: str) -> int:
        """A daemon leaves (its drain is done): its active runs lose their owner (and wake the
        survivors, who claim them at once) and its row is deleted. Returns how many runs it let go."""

    async def list_daemons(self) -> list[DaemonRecord]:
        """Every registered daemon with its lease, heartbeat age and owned runs, by the database's clock."""

    async def deregister_daemon(self, daemon_id: str) -> None: ...

    async def replica_secret(self) -> bytes:
        """The replicas' shared secret (made by the first caller, the same ever after): it signs
        the requests one replica forwards to another. Never logged, never answered."""

    # --- ownership (see storage/migrations/0009_run_ownership.sql) ---------------------
    def set_owner(self, daemon_id: str) -> None:
        """The daemon this store commits for: every `commit` is fenced on runs it owns."""

    async def admit_queued_runs(
        self, dag_id: str, limit: int, exclude: Sequence[int] = ()
    ) -> list[ActiveRun]:
        """Start up to `limit` of the DAG's waiting runs, oldest first, as far as its
        max_active_runs (counted in the database, over every replica) and its pause allow: each
        becomes `running` and owned by this store's owner in one transaction (runs in `exclude`
        are left waiting). Returns them with their task instances, XComs and recorded DAG version."""

    async def load_runs(self, run_pks: Sequence[int]) -> list[ActiveRun]:
        """These runs with everything to drive them (as `load_active_runs` returns them)."""

    async def dags_with_waiting_runs(self) -> list[str]:
        """The DAGs that have unowned `queued` runs."""

    async def claim_orphaned_runs(
        self, limit: int, held: Sequence[int] = (), *, take_expired: bool = True
    ) -> list[ActiveRun]:
        """Claim running runs nobody drives: without an owner, this store's owner's own that it
        does not hold (`held`: the runs it has in memory), and with `take_expired` those of
        replicas whose lease ran out. At most `limit`, and at most this replica's fair share of
        the running runs, with FOR UPDATE SKIP LOCKED. Returns them as `load_active_runs` does."""

    async def legacy_daemon_lock_holder(self) -> int | None:
        """The database session of a daemon from before replicas (which holds the old
        single-daemon advisory lock), if one runs: no replica may start beside it."""

    async def claim_run(self, run_pk: int) -> RunOwner | None:
        """Take a run that no live replica drives (finished, waiting, or its owner is dead) for
        an operation on it; None when taken (or already ours), else its live owner."""

    async def owned_runs(self, run_pks: Sequence[int]) -> set[int]:
        """Which of these runs this store's owner still owns, with its lease holding."""

    async def run_owner(self, run_pk: int) -> RunOwner | None:
        """The live replica (not this store's owner) that owns this run, if any."""

    async def listen(
        self, channels: Mapping[str, Callable[[str], None]], on_lost: Callable[[], None]
    ) -> Listener:
        """LISTEN on these channels on a connection of its own; each notification's payload goes
        to its channel's callback, except those sent by this store's own pool (this replica
        acted on them already). `on_lost` is called once if the connection ends."""

    async def close(self) -> None: ...


# --- assets ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QueuedAsset:
    """What one consumer DAG has queued of one asset: events not yet consumed by a run."""

    uri: str
    events: int
    last_event_id: int
    first_at: datetime
    last_at: datetime


# --- executors -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LaunchRequest:
    """Everything an executor needs to run one try of one task instance. Templates are rendered;
    `payload` is the kind's own tagged value (`orchestrator.core.kinds`)."""

    key: TaskKey
    dag_id: str
    run_id: str
    try_number: int
    payload: Payload
    env: dict[str, str]
    log_path: Path
    cwd: str | None = None
    timeout: float | None = None
    do_xcom_push: bool = True

    @property
    def kind(self) -> str:
        return self.payload.kind


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
    """Runs task instances. `submit` never blocks: requests wait in the executor for a slot.
    The engine holds executors by name (`orchestrator.engine.dispatch`) and routes a task to
    the one its `executor=` names, which must list the task's kind in `kinds`."""

    #: the task kinds (payload tags) this executor can run
    kinds: frozenset[str]

    async def start(self) -> None:
        """Prepare to run tasks (e.g. start warm workers); called once before any submit."""

    def submit(self, request: LaunchRequest) -> None: ...

    def cancel(self, key: TaskKey) -> None:
        """Stop the task if it is queued or running (SIGTERM, then SIGKILL of its process group)."""

    def running_count(self) -> int: ...

    async def find_started(self, task: TaskInstanceRecord, token: str) -> bool:
        """After a restart: whether a try recorded as `queued` had in fact started (its work is
        alive, identified by `token`, the value of its ORCHESTRATOR_TRY_TOKEN)."""

    async def adopt(self, task: TaskInstanceRecord, token: str) -> bool:
        """Re-attach to work started before a restart. True if adopted (its events will follow);
        False once what is left of it is stopped (the engine counts the try as failed)."""

    async def drain(self, grace: float) -> None:
        """Stop taking new work; wait up to `grace` seconds for running tasks, then kill the rest."""

    async def close(self) -> None: ...


# --- events out ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunChanged:
    """A run's row was committed with this content."""

    run: RunRecord


@dataclass(frozen=True, slots=True)
class TaskInstanceChanged:
    """A task instance's row was committed with this content."""

    task_instance: TaskInstanceRecord


@dataclass(frozen=True, slots=True)
class ImportErrorChanged:
    """A DAG file's import error was recorded (`message`) or cleared (None)."""

    fileloc: str
    message: str | None


@dataclass(frozen=True, slots=True)
class WebhookDeliveryRecorded:
    """A webhook delivery (accepted or refused) was written to the delivery log."""

    delivery: WebhookDelivery


Event = RunChanged | TaskInstanceChanged | ImportErrorChanged | WebhookDeliveryRecorded


class Subscription(Protocol):
    """Committed state changes, in commit order. `dropped` counts events lost because this
    subscriber fell more than its buffer behind (it should then re-read the state)."""

    dropped: int

    def __aiter__(self) -> AsyncIterator[Event]: ...

    async def __anext__(self) -> Event: ...

    def close(self) -> None: ...


class Events(Protocol):
    """The in-process event bus: every committed state change is published here, once."""

    def publish(self, event: Event) -> None: ...

    def publish_changes(self, changes: ChangeSet) -> None:
        """Publish every run and task-instance row of a committed change set."""

    def subscribe(self, buffer: int = 10_000) -> Subscription: ...


# --- what the API and the DAG folder ask of the engine ------------------------------------


@dataclass(frozen=True, slots=True)
class ClearSelection:
    """Which task instances of a DAG to clear (Airflow's ClearTaskInstances body)."""

    #: only these tasks (and their relatives below); empty: every task
    task_ids: tuple[str, ...] = ()
    #: only this run; None: every run whose logical date is within [start_date, end_date]
    run_id: str | None = None
    start_date: datetime | None = None
    end_date: datetime | None = None
    #: only task instances that failed (failed or upstream_failed)
    only_failed: bool = True
    #: only task instances running now
    only_running: bool = False
    include_upstream: bool = False
    include_downstream: bool = False
    #: set finished runs of the cleared task instances back to queued (they run again)
    reset_dag_runs: bool = True


class EngineApi(Protocol):
    """What the API asks of the engine."""

    def is_ready(self) -> bool:
        """True once the engine has recovered its state and is scheduling (drives GET /health)."""

    async def trigger_run(
        self,
        dag_id: str,
        *,
        run_id: str | None,
        conf: dict[str, Any],
        logical_date: datetime | None,
        run_type: str = "manual",
        note: str | None = None,
    ) -> tuple[RunRecord, bool]:
        """Create a run (unique on dag_id, run_id) and return it and whether it was created.
        Raises orchestrator.errors.DagNotFound or InvalidRequest."""

    async def set_paused(self, dag_id: str, is_paused: bool) -> DagRecord | None:
        """Pause or unpause a DAG (unpausing starts its runs held while it was paused).
        None if the DAG is unknown."""

    async def create_run(self, new_run: NewRun) -> tuple[RunRecord, bool]:
        """Create a run of a loaded DAG (unique on dag_id, run_id), whatever triggered it; returns
        the run and whether it was created. Raises DagNotFound (not loaded) or ShuttingDown."""

    # --- operations (orchestrator.engine.operations): committed before anything is acted on --
    async def set_run_state(self, dag_id: str, run_id: str, state: RunState) -> RunRecord:
        """Mark a run success or failed (its unfinished task instances too, their work stopped),
        or queued (a finished run runs again). Raises RunNotFound, OperationConflict."""

    async def clear_task_instances(
        self, dag_id: str, selection: ClearSelection, *, dry_run: bool
    ) -> list[tuple[RunRecord, TaskInstanceRecord]]:
        """Clear the selected task instances (back to `none`, their work stopped, run again), or
        with `dry_run` only say which they are. Raises DagNotFound, RunNotFound, InvalidRequest."""

    async def set_task_instance_state(
        self, dag_id: str, run_id: str, task_id: str, map_index: int, state: TaskState, *, dry_run: bool
    ) -> tuple[RunRecord, TaskInstanceRecord]:
        """Mark one task instance success, failed or skipped (its work stopped; in a running run
        its downstream tasks go on per their trigger rules). Raises RunNotFound,
        TaskInstanceNotFound."""

    async def delete_run(self, dag_id: str, run_id: str) -> None:
        """Delete a finished run and its task instances. Raises RunNotFound, OperationConflict."""

    async def delete_dag(self, dag_id: str) -> None:
        """Delete a DAG's runs and records (a DAG still in a loaded file is recorded again at
        once, with no history). Raises DagNotFound, OperationConflict."""


class AssetEventSink(Protocol):
    """Where events of assets updated outside any task go (POST /api/v1/assets/events, and
    webhooks declared with `asset_uri`): recorded, then every DAG they complete is triggered."""

    async def record_asset_event(
        self, uri: str, extra: dict[str, Any], *, idempotency_key: str | None = None
    ) -> tuple[int, bool]:
        """Record one event of the asset `uri` (known from then on if it was not); returns the
        event's id and whether it was created (False: `idempotency_key` was seen before, and the
        id is that of the event recorded then)."""


# --- webhooks --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    """One entry of the webhook delivery log: what was received and what was answered. It never
    holds a secret, a token or a signature value."""

    webhook: str
    delivery_id: str | None
    received_at: datetime
    status: int
    created: bool = False
    dag_id: str | None = None
    run_id: str | None = None
    asset_uri: str | None = None
    asset_event_id: int | None = None
    reason: str | None = None


# --- what the DAG folder asks of its parser -------------------------------------------------


class DagParser(Protocol):
    """Parses one DAG file outside the daemon; raises an exception whose text is the import error."""

    async def parse(self, path: str) -> list[DagSpec]: ...


# --- task logs -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TryLog:
    """Names the log of one try of one task instance."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    try_number: int


class TaskLogs(Protocol):
    """The logs of tries: the daemon and the executors append, the API and the CLI read, the
    UI and streaming clients follow. `storage.filelogs.FileTaskLogs` (one file per try) is the
    implementation; reads are in chunks, so no log is ever held in memory whole."""

    def append(self, log: TryLog, text: str) -> None:
        """Append `text` (whole lines) to the log, creating it. Raises OSError."""

    def prepare(self, launches: Sequence[LaunchRequest]) -> None:
        """A hint that these tries are about to start (their logs may be created now)."""

    async def size(self, log: TryLog) -> int | None:
        """The log's size in bytes now, or None when the try has no log (yet)."""

    def read(self, log: TryLog, offset: int = 0, end: int | None = None) -> AsyncGenerator[bytes, None]:
        """The log's bytes from `offset` to `end` (default: its end now), in bounded chunks."""

    def follow(self, log: TryLog, offset: int = 0) -> AsyncGenerator[bytes, None]:
        """The log's bytes from `offset`, then new chunks as they are written, until the try's
        log is closed (the try ended). A log nobody is writing ends after what it holds."""
