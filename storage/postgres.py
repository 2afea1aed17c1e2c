"""`PostgresStateStore`: the `orchestrator.ports.StateStore` on PostgreSQL, through asyncpg.

Every method is one transaction (or one statement, which PostgreSQL runs as one), so nothing the
engine acts on is ever half-written. `commit` is the hot path of the whole daemon: any number of
rows is written with one statement per kind of row (arrays unnested server-side), so a task state
change costs one round trip, not one per row. The SQL lives in storage/sql/queries.sql.
"""

from __future__ import annotations

import asyncio
import logging
import re
import urllib.parse
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, TypeAlias

import asyncpg
import orjson

from orchestrator.core.model import DagSpec
from orchestrator.core.records import (
    ChangeSet,
    DagRecord,
    ImportErrorRecord,
    NewRun,
    NewTaskInstance,
    RunRecord,
    TaskInstanceRecord,
    TaskKey,
    XComRecord,
)
from orchestrator.core.serialization import spec_from_dict, spec_to_dict
from orchestrator.core.states import RunState, TaskState
from orchestrator.ports import ActiveRun
from storage.errors import StorageError
from storage.postgres_actions import PostgresActionStore
from storage.postgres_assets import PostgresAssetStore, write_asset_events
from storage.postgres_audit import PostgresAuditStore
from storage.postgres_listing import PostgresListingStore, dag_from_row
from storage.postgres_ownership import PostgresOwnershipStore
from storage.postgres_replicas import PostgresReplicaStore
from storage.postgres_schedules import ScheduleQueries
from storage.postgres_webhooks import PostgresWebhookStore
from storage.sql import QUERIES

logger = logging.getLogger(__name__)

#: DagSpec's default, for rows whose nullable max_active_* columns were written by hand

Row: TypeAlias = asyncpg.Record


# --- codecs ------------------------------------------------------------------------------------


def _encode_jsonb(value: Any) -> bytes:
    # jsonb's binary format is a version byte (1) followed by the JSON text.
    return b"\x01" + orjson.dumps(value)


def _decode_jsonb(data: bytes) -> Any:
    return orjson.loads(data[1:])


def _json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset: nothing to reset. No query through the pool leaves session state behind
    (the advisory lock of migrations, and the replicas' LISTEN, are on connections of their
    own), so a released connection skips asyncpg's reset query (`pg_advisory_unlock_all`,
    `CLOSE ALL`, `UNLISTEN *`, `RESET ALL`): one round trip less per use of the pool. asyncpg still
    rolls back a transaction left open and drops listeners before calling this."""


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "jsonb", schema="pg_catalog", encoder=_encode_jsonb, decoder=_decode_jsonb, format="binary"
    )


# --- connecting --------------------------------------------------------------------------------

#: seconds to wait for the server to answer a new connection (database.connect_timeout)
DEFAULT_CONNECT_TIMEOUT = 10.0
_KEYWORD = re.compile(r"(\w+)\s*=\s*('(?:[^'\\]|\\.)*'|\S*)")


def dsn_address(dsn: str) -> str:
    """The host and port a DSN points at, for messages (never the user or the password)."""
    if "://" in dsn:
        parts = urllib.parse.urlsplit(dsn)
        query = urllib.parse.parse_qs(parts.query)
        host = parts.hostname or (query.get("host") or ["localhost"])[0]
        try:
            port = parts.port or (query.get("port") or ["5432"])[0]
        except ValueError:
            port = "5432"
    else:
        keywords = {key: value.strip("'") for key, value in _KEYWORD.findall(dsn)}
        host, port = keywords.get("host", "localhost"), keywords.get("port", "5432")
    return f"{host}:{port}" if not str(host).startswith("/") else f"{host} (port {port})"


def connect_failure(dsn: str, exc: BaseException, timeout: float, doing: str) -> str:
    """One line saying why connecting to `dsn` failed, naming the server and what to check."""
    where = dsn_address(dsn)
    if isinstance(exc, TimeoutError):
        return (
            f"PostgreSQL at {where} did not answer within {timeout:g} s (database.connect_timeout) "
            f"when {doing}: check database.dsn, that the server is up and that nothing else listens there"
        )
    reason = str(exc).strip() or type(exc).__name__
    return (
        f"cannot connect to PostgreSQL at {where} when {doing}: {reason}. "
        "Check database.dsn and that the server is up"
    )


# --- rows -> records ---------------------------------------------------------------------------


def _version(spec: Any) -> DagSpec | None:
    """A run's recorded DAG version, or None (none recorded, or written by an older format)."""
    if spec is None:
        return None
    try:
        return spec_from_dict(spec)
    except Exception as exc:
        logger.warning("a stored DAG version is unreadable (%s): the run uses the DAG as loaded", exc)
        return None


def _run(row: Row) -> RunRecord:
    return RunRecord(
        pk=row["pk"],
        dag_id=row["dag_id"],
        run_id=row["run_id"],
        state=RunState(row["state"]),
        run_type=row["run_type"],
        conf=row["conf"],
        logical_date=row["logical_date"],
        data_interval_start=row["data_interval_start"],
        data_interval_end=row["data_interval_end"],
        queued_at=row["queued_at"],
        start_date=row["start_date"],
        end_date=row["end_date"],
        external_trigger=row["external_trigger"],
        note=row["note"],
        backfill_id=row.get("backfill_id"),
    )


def _import_error(row: Row) -> ImportErrorRecord:
    return ImportErrorRecord(
        import_error_id=row["id"],
        filename=row["filename"],
        message=row["message"],
        timestamp=row["timestamp"],
    )


def _task_instance(row: Row) -> TaskInstanceRecord:
    return TaskInstanceRecord(
        row[0], row[1], row[2], row[3], row[4], TaskState(row[5]), row[6], row[7], row[8], row[9],
        row[10], row[11], row[12], row[13], row[14], row[15], row[16], row[17], row[18], row[19],
        row[20],
    )  # fmt: skip


def _xcom(row: Row) -> XComRecord:
    return XComRecord(row[0], row[1], row[2], row[3], row[4])


#: the row decoders the store's mixins share (a run by column name; a task instance by position)
decode_run = _run
decode_task_instance = _task_instance


# --- change sets -> column arrays --------------------------------------------------------------


#: The advisory lock daemons held before replicas (one daemon per database); see
#: `legacy_daemon_lock_holder`.
LEGACY_DAEMON_LOCK_KEY = 0x6F72636865737472  # "orchestr"

#: Errors about the rows of a change set (not about the connection, which stays usable).
_DATA_ERRORS = (
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.DataError,
    asyncpg.SyntaxOrAccessError,
    # a value too large for PostgreSQL (54xxx): the rows again, not the connection
    asyncpg.ProgramLimitExceededError,
)


#: Change sets of task rows only, up to this many, are written as a pipelined batch of fenced
#: one-row UPDATEs (update_task_instance), which PostgreSQL runs in about two thirds of the time of
#: the whole-change-set statement (commit_changes); larger ones and mixed ones use the latter.
SMALL_TASK_BATCH = 32


def _run_pks(changes: ChangeSet) -> set[int]:
    """The runs a change set writes rows of (its fence)."""
    runs = {t.run_pk for t in changes.tasks}
    runs.update(r.pk for r in changes.runs)
    runs.update(x.run_pk for x in changes.xcoms)
    return runs


def _events_of(changes: ChangeSet, owned: set[int]) -> list[Any]:
    """The asset events of the successes that were written (those of a fenced run are not)."""
    written = {(t.dag_id, t.run_id) for t in changes.tasks if t.run_pk in owned}
    return [e for e in changes.asset_events if (e.source_dag_id, e.source_run_id) in written]


def _unique_tasks(tasks: Iterable[TaskInstanceRecord]) -> list[TaskInstanceRecord]:
    # Last row per key wins: UPDATE ... FROM applies only one of several matching source rows.
    unique = {(t.run_pk, t.task_id, t.map_index): t for t in tasks}
    return [unique[key] for key in sorted(unique)]  # a stable lock order across concurrent commits


def _task_row(t: TaskInstanceRecord) -> tuple[Any, ...]:
    """One task instance in the column order of update_task_instance(s)."""
    return (
        t.run_pk,
        t.task_id,
        t.map_index,
        t.state.value,
        t.try_number,
        t.max_tries,
        t.operator,
        t.queued_at,
        t.start_date,
        t.end_date,
        t.duration,
        t.next_retry_at,
        t.external_id,
        t.daemon_id,
        t.hostname,
        t.exit_code,
        t.trigger_classpath,
        None if t.trigger_kwargs is None else _json_text(t.trigger_kwargs),
        t.next_wakeup,
    )


def _task_columns(tasks: Iterable[TaskInstanceRecord]) -> list[list[Any]]:
    rows = [_task_row(t) for t in _unique_tasks(tasks)]
    return [list(column) for column in zip(*rows, strict=True)] if rows else [[] for _ in range(19)]


def _run_columns(runs: Iterable[RunRecord]) -> list[list[Any]]:
    unique = {r.pk: r for r in runs}
    rows = [unique[pk] for pk in sorted(unique)]
    return [
        [r.pk for r in rows],
        [r.state.value for r in rows],
        [r.run_type for r in rows],
        [_json_text(r.conf) for r in rows],
        [r.logical_date for r in rows],
        [r.data_interval_start for r in rows],
        [r.data_interval_end for r in rows],
        [r.queued_at for r in rows],
        [r.start_date for r in rows],
        [r.end_date for r in rows],
        [r.external_trigger for r in rows],
    ]


def _xcom_columns(xcoms: Iterable[XComRecord]) -> list[list[Any]]:
    # ON CONFLICT DO UPDATE refuses to touch one row twice in a statement: dedupe, last wins.
    unique = {(x.run_pk, x.task_id, x.map_index, x.key): x for x in xcoms}
    rows = [unique[key] for key in sorted(unique)]
    return [
        [x.run_pk for x in rows],
        [x.task_id for x in rows],
        [x.map_index for x in rows],
        [x.key for x in rows],
        [_json_text(x.value) for x in rows],
    ]


async def insert_run_rows(
    conn: asyncpg.Connection, run: NewRun, tasks: Sequence[NewTaskInstance], source_hash: str | None
) -> RunRecord | None:
    """Insert a run (queued), its task instances and its DAG version inside the caller's
    transaction; None when (dag_id, run_id) exists already (nothing is written then)."""
    row = await conn.fetchrow(
        QUERIES["insert_run"],
        run.dag_id,
        run.run_id,
        run.run_type,
        run.conf,
        run.logical_date,
        run.data_interval_start,
        run.data_interval_end,
        run.queued_at,
        run.external_trigger,
        run.note,
        run.backfill_id,
    )
    if row is None:
        return None
    created = _run(row)
    if tasks:
        await conn.execute(
            QUERIES["insert_task_instances"],
            created.pk,
            created.dag_id,
            created.run_id,
            [t.task_id for t in tasks],
            [t.map_index for t in tasks],
            [t.max_tries for t in tasks],
            [t.operator for t in tasks],
        )
    if source_hash:
        await conn.execute(QUERIES["insert_run_version"], created.pk, created.dag_id, source_hash)
    return created


class PostgresStateStore(
    ScheduleQueries,
    PostgresAssetStore,
    PostgresWebhookStore,
    PostgresActionStore,
    PostgresListingStore,
    PostgresAuditStore,
    PostgresOwnershipStore,
    PostgresReplicaStore,
):
    """The state store on one PostgreSQL database (see `orchestrator.ports.StateStore`; its
    `ScheduleStore` methods are in `storage.postgres_schedules`, its `AssetStore` methods in
    `storage.postgres_assets`, its `WebhookStore` methods in `storage.postgres_webhooks`, its
    `ActionStore` methods in `storage.postgres_actions`, its `ListingStore` methods in
    `storage.postgres_listing`, its `AuditStore` methods in `storage.postgres_audit`, its replica
    and ownership methods in `storage.postgres_ownership`)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        dsn: str,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        sessions: set[int] | None = None,
    ) -> None:
        self._pool = pool
        #: the server pids of this store's pool connections (its own NOTIFYs are not delivered)
        self._sessions: set[int] = sessions if sessions is not None else set()
        self._dsn = dsn
        self._connect_timeout = connect_timeout
        # commits go through one connection of their own: a pool round trip (acquire, and the
        # reset query on release) costs as much as the commit itself
        self._commit_conn: asyncpg.Connection | None = None
        self._commit_lock = asyncio.Lock()
        #: the daemon this store commits for (set_owner): commits are fenced on its runs
        self._owner: str | None = None

    @classmethod
    async def connect(
        cls,
        dsn: str,
        *,
        min_size: int = 2,
        max_size: int = 10,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> PostgresStateStore:
        """Open a connection pool on a migrated database (see `storage.migrate`). A server that
        does not answer within `connect_timeout` seconds is a StorageError naming it."""
        sessions: set[int] = set()

        async def init(conn: asyncpg.Connection) -> None:
            await _init_connection(conn)
            sessions.add(conn.get_server_pid())

        try:
            pool = await asyncpg.create_pool(
                dsn,
                min_size=min_size,
                max_size=max_size,
                init=init,
                reset=_keep_session,
                timeout=connect_timeout,
            )
        except (OSError, asyncpg.PostgresError) as exc:  # TimeoutError is an OSError
            raise StorageError(connect_failure(dsn, exc, connect_timeout, "opening the pool")) from exc
        return cls(pool, dsn, connect_timeout, sessions)

    async def close(self) -> None:
        if self._commit_conn is not None:
            conn, self._commit_conn = self._commit_conn, None
            await conn.close()
        await self._pool.close()

    # --- DAGs and DAG files --------------------------------------------------------------------
    async def sync_dag_file(
        self, fileloc: str, dags: Sequence[DagSpec], now: datetime, paused_on_creation: bool = False
    ) -> None:
        rows = [
            (
                spec.dag_id,
                fileloc,
                paused_on_creation if spec.is_paused_upon_creation is None else spec.is_paused_upon_creation,
                spec.schedule_summary,
                spec.description,
                spec.max_active_runs,
                spec.max_active_tasks,
                list(spec.tags),
                now,
                spec_to_dict(spec),
                sorted({task.owner for task in spec.tasks}),
            )
            for spec in dags
        ]
        versions = [
            (spec.dag_id, spec.source_hash, spec_to_dict(spec), now) for spec in dags if spec.source_hash
        ]
        async with self._pool.acquire() as conn, conn.transaction():
            if rows:
                await conn.executemany(QUERIES["upsert_dag"], rows)
            if versions:
                await conn.executemany(QUERIES["insert_dag_version"], versions)
            await conn.execute(
                QUERIES["deactivate_dags_missing_from_file"], fileloc, [s.dag_id for s in dags]
            )
            await conn.execute(QUERIES["delete_import_error"], fileloc)

    async def record_import_error(self, fileloc: str, message: str, now: datetime) -> None:
        await self._pool.execute(QUERIES["upsert_import_error"], fileloc, message, now)

    async def remove_dag_file(self, fileloc: str) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(QUERIES["deactivate_dags_of_file"], fileloc)
            await conn.execute(QUERIES["delete_import_error"], fileloc)

    async def list_dags(
        self, limit: int, offset: int, only_active: bool = True
    ) -> tuple[list[DagRecord], int]:
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            rows = await conn.fetch(QUERIES["list_dags"], only_active, limit, offset)
            total = await conn.fetchval(QUERIES["count_dags"], only_active)
        return [dag_from_row(row) for row in rows], total

    async def get_dag(self, dag_id: str) -> DagRecord | None:
        row = await self._pool.fetchrow(QUERIES["get_dag"], dag_id)
        return None if row is None else dag_from_row(row)

    async def set_dag_paused(self, dag_id: str, is_paused: bool) -> DagRecord | None:
        row = await self._pool.fetchrow(QUERIES["set_dag_paused"], dag_id, is_paused)
        return None if row is None else dag_from_row(row)

    async def paused_dag_ids(self, dag_ids: Sequence[str]) -> set[str]:
        rows = await self._pool.fetch(QUERIES["paused_dag_ids"], list(dag_ids))
        return {row["dag_id"] for row in rows}

    async def list_import_errors(self) -> list[ImportErrorRecord]:
        rows = await self._pool.fetch(QUERIES["list_import_errors"])
        return [_import_error(row) for row in rows]

    # --- runs ----------------------------------------------------------------------------------
    async def create_run(
        self, run: NewRun, tasks: Sequence[NewTaskInstance], source_hash: str | None = None
    ) -> tuple[RunRecord, bool]:
        async with self._pool.acquire() as conn, conn.transaction():
            created = await insert_run_rows(conn, run, tasks, source_hash)
            if created is None:
                existing = await conn.fetchrow(QUERIES["get_run"], run.dag_id, run.run_id)
                if existing is None:  # deleted between the two statements; cannot happen in practice
                    raise StorageError(
                        f"Run {run.run_id!r} of DAG {run.dag_id!r} conflicted but no longer exists: retry"
                    )
                return _run(existing), False
        return created, True

    async def create_runs(
        self, items: Sequence[tuple[NewRun, Sequence[NewTaskInstance], str | None]]
    ) -> list[tuple[RunRecord, bool]]:
        """`create_run` for many runs in one transaction of four statements, whatever their
        number; the answers are in the order of `items` (a pair repeated in `items` is created
        once: its later copies answer the run and False)."""
        if not items:
            return []
        async with self._pool.acquire() as conn, conn.transaction():
            return await self._insert_runs(conn, items)

    async def create_and_admit_runs(
        self,
        items: Sequence[tuple[NewRun, Sequence[NewTaskInstance], str | None]],
        limit: int,
        exclude: Sequence[int] = (),
    ) -> tuple[list[tuple[RunRecord, bool]], list[ActiveRun]]:
        """`create_runs`, then in the same transaction what `admit_queued_runs` does for each of
        their DAGs: one transaction, one commit, for a trigger whose DAG has room."""
        if not items:
            return [], []
        async with self._pool.acquire() as conn, conn.transaction():
            answers = await self._insert_runs(conn, items)
            admitted: list[int] = []
            for dag_id in sorted({record.dag_id for record, created in answers if created}):
                admitted += await self._admit_waiting(conn, dag_id, limit, exclude)
            return answers, (await self._load_runs_by_pk(conn, admitted) if admitted else [])

    async def _insert_runs(
        self, conn: asyncpg.Connection, items: Sequence[tuple[NewRun, Sequence[NewTaskInstance], str | None]]
    ) -> list[tuple[RunRecord, bool]]:
        runs = [run for run, _, _ in items]
        rows = await conn.fetch(
            QUERIES["insert_runs"],
            [r.dag_id for r in runs],
            [r.run_id for r in runs],
            [r.run_type for r in runs],
            [_json_text(r.conf) for r in runs],
            [r.logical_date for r in runs],
            [r.data_interval_start for r in runs],
            [r.data_interval_end for r in runs],
            [r.queued_at for r in runs],
            [r.external_trigger for r in runs],
            [r.note for r in runs],
            [r.backfill_id for r in runs],
        )
        created = {(row["dag_id"], row["run_id"]): _run(row) for row in rows}
        missing = [(r.dag_id, r.run_id) for r in runs if (r.dag_id, r.run_id) not in created]
        existing: dict[tuple[str, str], RunRecord] = {}
        if missing:
            found = await conn.fetch(
                QUERIES["get_runs_by_ids"], [key[0] for key in missing], [key[1] for key in missing]
            )
            existing = {(row["dag_id"], row["run_id"]): _run(row) for row in found}
        ti_columns: list[list[Any]] = [[], [], [], [], [], [], []]
        versions: list[list[Any]] = [[], [], []]
        filled: set[tuple[str, str]] = set()
        for run, tasks, source_hash in items:
            key = (run.dag_id, run.run_id)
            record = created.get(key)
            if record is None or key in filled:
                continue  # it existed, or an earlier copy in the batch created it
            filled.add(key)
            for t in tasks:
                for column, value in zip(
                    ti_columns,
                    (record.pk, run.dag_id, run.run_id, t.task_id, t.map_index, t.max_tries, t.operator),
                    strict=True,
                ):
                    column.append(value)
            if source_hash:
                versions[0].append(record.pk)
                versions[1].append(record.dag_id)
                versions[2].append(source_hash)
        if ti_columns[0]:
            await conn.execute(QUERIES["insert_task_instances_of_runs"], *ti_columns)
        if versions[0]:
            await conn.execute(QUERIES["insert_run_versions"], *versions)
        answers: list[tuple[RunRecord, bool]] = []
        seen: set[tuple[str, str]] = set()
        for run in runs:
            key = (run.dag_id, run.run_id)
            record = created.get(key) or existing.get(key)
            if record is None:  # deleted between the statements; cannot happen in practice
                raise StorageError(
                    f"Run {run.run_id!r} of DAG {run.dag_id!r} conflicted but no longer exists: retry"
                )
            answers.append((record, key in created and key not in seen))
            seen.add(key)
        return answers

    async def get_run(self, dag_id: str, run_id: str) -> RunRecord | None:
        row = await self._pool.fetchrow(QUERIES["get_run"], dag_id, run_id)
        return None if row is None else _run(row)

    async def set_run_note(self, dag_id: str, run_id: str, note: str) -> RunRecord | None:
        row = await self._pool.fetchrow(QUERIES["set_run_note"], dag_id, run_id, note)
        return None if row is None else _run(row)

    async def list_runs(
        self, dag_id: str, limit: int, offset: int, states: Sequence[RunState] | None = None
    ) -> tuple[list[RunRecord], int]:
        state_values = None if states is None else [RunState(s).value for s in states]
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            rows = await conn.fetch(QUERIES["list_runs"], dag_id, state_values, limit, offset)
            total = await conn.fetchval(QUERIES["count_runs"], dag_id, state_values)
        return [_run(row) for row in rows], total

    async def list_task_instances(self, run_pk: int) -> list[TaskInstanceRecord]:
        rows = await self._pool.fetch(QUERIES["list_task_instances"], run_pk)
        return [_task_instance(row) for row in rows]

    async def get_task_instance(self, key: TaskKey) -> TaskInstanceRecord | None:
        row = await self._pool.fetchrow(QUERIES["get_task_instance"], key.run_pk, key.task_id, key.map_index)
        return None if row is None else _task_instance(row)

    async def list_xcoms(self, run_pk: int) -> list[XComRecord]:
        rows = await self._pool.fetch(QUERIES["list_xcoms"], run_pk)
        return [_xcom(row) for row in rows]

    async def load_active_runs(self) -> list[ActiveRun]:
        return await self._load_runs(QUERIES["list_active_runs"])

    async def _load_runs(self, query: str, *args: Any) -> list[ActiveRun]:
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            return await self._read_runs(conn, await conn.fetch(query, *args))

    async def _load_runs_by_pk(self, conn: asyncpg.Connection, pks: Sequence[int]) -> list[ActiveRun]:
        """The runs `pks` with everything to drive them, read on `conn` (in the caller's transaction)."""
        return await self._read_runs(conn, await conn.fetch(QUERIES["list_runs_by_pk"], list(pks)))

    @staticmethod
    async def _read_runs(conn: asyncpg.Connection, run_rows: list[Row]) -> list[ActiveRun]:
        pks = [row[0] for row in run_rows]
        ti_rows = await conn.fetch(QUERIES["list_task_instances_of_runs"], pks) if pks else []
        xcom_rows = await conn.fetch(QUERIES["list_xcoms_of_runs"], pks) if pks else []
        version_rows = await conn.fetch(QUERIES["list_versions_of_runs"], pks) if pks else []
        versions = {row[0]: row[1] for row in version_rows}
        active = {row[0]: ActiveRun(_run(row), [], [], _version(versions.get(row[0]))) for row in run_rows}
        for row in ti_rows:
            active[row[0]].task_instances.append(_task_instance(row))
        for row in xcom_rows:
            active[row[0]].xcoms.append(_xcom(row))
        return list(active.values())

    async def commit(self, changes: ChangeSet) -> frozenset[int]:
        runs = _run_pks(changes)
        if not runs and not changes.asset_events:
            return frozenset()
        async with self._commit_lock:
            if self._commit_conn is None or self._commit_conn.is_closed():
                try:
                    self._commit_conn = await self._connect_for_commits()
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    raise ConnectionError(f"cannot reach PostgreSQL to commit: {exc!r}") from exc
            conn = self._commit_conn
            try:
                if changes.asset_events:
                    async with conn.transaction():
                        owned = await self._write(conn, changes, runs)
                        await write_asset_events(conn, _events_of(changes, owned))
                else:
                    owned = await self._write(conn, changes, runs)
            except _DATA_ERRORS:
                if conn.is_closed():
                    await self._drop_commit_connection(conn)
                raise  # the change set was refused; the connection is fine and stays
            except asyncio.CancelledError:
                await self._drop_commit_connection(conn)  # cancelled mid-statement: never reuse it
                raise
            except Exception as exc:
                # lost, shut down by the server, or left in a state asyncpg refuses: whatever
                # the symptom, the connection is done. Say so as a connection error, which the
                # writer retries on a fresh connection (rewriting whole rows is idempotent).
                await self._drop_commit_connection(conn)
                raise ConnectionError(f"the commit connection to PostgreSQL failed: {exc!r}") from exc
        return frozenset(runs.difference(owned))

    async def _write(self, conn: asyncpg.Connection, changes: ChangeSet, runs: set[int]) -> set[int]:
        """One round trip (one transaction) for the whole change set, fenced on the runs this
        store's owner owns; returns those whose rows were written."""
        if (
            changes.tasks
            and not changes.runs
            and not changes.xcoms
            and len(changes.tasks) <= SMALL_TASK_BATCH
        ):
            rows = [(*_task_row(t), self._owner) for t in _unique_tasks(changes.tasks)]
            return {row[0] for row in await conn.fetchmany(QUERIES["update_task_instance"], rows)}
        args = [
            *_task_columns(changes.tasks),
            *_run_columns(changes.runs),
            *_xcom_columns(changes.xcoms),
            sorted(runs),
            self._owner,
        ]
        owned: list[int] = await conn.fetchval(QUERIES["commit_changes"], *args)
        return set(owned)

    async def _connect_for_commits(self) -> asyncpg.Connection:
        """The commit connection: outside the pool, so nothing else ever shares or reclaims it."""
        conn = await asyncpg.connect(self._dsn, timeout=self._connect_timeout)
        await _init_connection(conn)
        return conn

    async def _drop_commit_connection(self, conn: asyncpg.Connection) -> None:
        self._commit_conn = None
        conn.terminate()

    async def check_database(self, timeout: float) -> None:
        """Raise StorageError unless one query through the pool answers within `timeout` seconds."""
        try:
            async with asyncio.timeout(timeout):
                await self._pool.fetchval(QUERIES["check_database"])
        except TimeoutError:
            raise StorageError(f"PostgreSQL did not answer within {timeout:g} s") from None
        except Exception as exc:  # whatever the symptom (lost, refused, pool closed): not healthy
            raise StorageError(f"PostgreSQL is unreachable: {exc!r}") from exc

    # --- daemons -------------------------------------------------------------------------------
    async def installation_id(self) -> str:
        """This database's installation id, created by the first caller (see schema.sql)."""
        return str(await self._pool.fetchval(QUERIES["ensure_installation_id"], uuid.uuid4().hex[:16]))

    async def legacy_daemon_lock_holder(self) -> int | None:
        """The server pid of a daemon from before replicas that holds the old single-daemon lock."""
        query = QUERIES["legacy_daemon_lock_holder"]
        pid: int | None = await self._pool.fetchval(query, LEGACY_DAEMON_LOCK_KEY)
        return pid
