"""An engine under test: the real Engine, group-commit writer and LocalExecutor on a real store.

`running_engine` wires the parts the way `orchestrator.daemon` does (registry filled from DAG
files loaded in-process, Engine + executors attached to each other through a Dispatcher, the writer loop in a
task group, `recover` before anything is triggered) and takes them down again on exit: drained
like a SIGTERM, or -- with `engine.crash()` -- cut off like a killed daemon, so that nothing the
engine decides afterwards reaches the database.

Waiting is on a condition with a deadline: the store is asked again every 10 ms until the
condition holds, and the wait fails with what it was waiting for once the deadline passes.
"""

from __future__ import annotations

import os
import socket
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import anyio

from executors.local import LocalExecutor
from orchestrator.authoring.loader import load_dag_specs
from orchestrator.core.records import RunRecord, TaskInstanceRecord
from orchestrator.core.states import FINISHED_RUN_STATES, RunState, TaskState
from orchestrator.engine.clock import SystemClock
from orchestrator.engine.dispatch import Dispatcher
from orchestrator.engine.engine import Engine
from orchestrator.engine.registry import DagRegistry
from orchestrator.engine.timers import LoopTimers
from orchestrator.logpaths import task_log_path
from orchestrator.ports import Clock, Executor, ExecutorEvents, Timers
from storage.filelogs import FileTaskLogs, LogFiles
from storage.postgres import PostgresStateStore

T = TypeVar("T")

POLL_INTERVAL = 0.01
DEFAULT_TIMEOUT = 15.0


def write_dag(dags_dir: Path, name: str, body: str, work: Path) -> Path:
    """Write a DAG file `name`.py whose code sees `W`, the test's work directory (a str).

    `body` is dedented; it may use the authoring API (DAG, Bash, Python, task, TriggerRule).
    """
    dags_dir.mkdir(parents=True, exist_ok=True)
    path = dags_dir / f"{name}.py"
    header = "from orchestrator import DAG, Bash, Python, TriggerRule, task\n\n" + f"W = {str(work)!r}\n\n"
    path.write_text(header + textwrap.dedent(body))
    return path


def gate_wait(gate: Path) -> str:
    """A bash snippet that blocks until the file `gate` exists (the test creates it)."""
    return f"while [ ! -e {gate} ]; do sleep 0.01; done"


async def wait_for(condition: Callable[[], Awaitable[T | None]], timeout: float, what: str) -> T:
    """Await `condition` every 10 ms until it returns something truthy; fail after `timeout` s."""
    last: T | None = None
    try:
        with anyio.fail_after(timeout):
            while True:
                last = await condition()
                if last:
                    return last
                await anyio.sleep(POLL_INTERVAL)  # pacing between checks of a condition
    except TimeoutError:
        raise AssertionError(
            f"timed out after {timeout} s waiting for {what} (last seen: {last!r})"
        ) from None


async def wait_run(
    store: PostgresStateStore, dag_id: str, run_id: str, timeout: float = DEFAULT_TIMEOUT
) -> RunRecord:
    """The run once it is success or failed (fails the test after `timeout` s)."""

    async def finished() -> RunRecord | None:
        run = await store.get_run(dag_id, run_id)
        return run if run is not None and run.state in FINISHED_RUN_STATES else None

    return await wait_for(finished, timeout, f"run {dag_id}/{run_id} to finish")


async def wait_run_state(
    store: PostgresStateStore, dag_id: str, run_id: str, state: RunState, timeout: float = DEFAULT_TIMEOUT
) -> RunRecord:
    async def reached() -> RunRecord | None:
        run = await store.get_run(dag_id, run_id)
        return run if run is not None and run.state == state else None

    return await wait_for(reached, timeout, f"run {dag_id}/{run_id} to be {state.value}")


async def task_instances(store: PostgresStateStore, run_pk: int) -> dict[str, TaskInstanceRecord]:
    """The run's (unmapped) task instances by task_id."""
    return {ti.task_id: ti for ti in await store.list_task_instances(run_pk) if ti.map_index == -1}


async def wait_ti(
    store: PostgresStateStore,
    run_pk: int,
    task_id: str,
    states: Iterable[TaskState],
    timeout: float = DEFAULT_TIMEOUT,
    *,
    require: Callable[[TaskInstanceRecord], bool] = lambda ti: True,
) -> TaskInstanceRecord:
    """The task instance once its state is one of `states` (and `require` holds)."""
    wanted = frozenset(states)

    async def reached() -> TaskInstanceRecord | None:
        ti = (await task_instances(store, run_pk)).get(task_id)
        return ti if ti is not None and ti.state in wanted and require(ti) else None

    names = ", ".join(sorted(state.value for state in wanted))
    return await wait_for(reached, timeout, f"task {task_id} of run {run_pk} to be {names}")


@dataclass
class EngineHarness:
    """The parts of one running engine, plus shortcuts the tests use."""

    store: PostgresStateStore
    engine: Engine
    executor: LocalExecutor
    registry: DagRegistry
    logs_dir: Path
    versions_dir: Path
    task_logs: FileTaskLogs
    crashed: bool = False
    _stop_writer: Callable[[], None] = field(default=lambda: None, repr=False)

    async def trigger(
        self, dag_id: str, run_id: str = "r1", conf: dict[str, Any] | None = None
    ) -> tuple[RunRecord, bool]:
        return await self.engine.trigger_run(dag_id, run_id=run_id, conf=conf or {}, logical_date=None)

    async def run(self, dag_id: str, run_id: str = "r1", timeout: float = DEFAULT_TIMEOUT) -> RunRecord:
        """Trigger a run and wait for it to finish."""
        _, created = await self.trigger(dag_id, run_id)
        assert created, f"run {dag_id}/{run_id} already existed"
        return await wait_run(self.store, dag_id, run_id, timeout)

    def log_path(self, dag_id: str, run_id: str, task_id: str, try_number: int) -> Path:
        return task_log_path(self.logs_dir, dag_id, run_id, task_id, -1, try_number)

    def log_text(self, dag_id: str, run_id: str, task_id: str, try_number: int) -> str:
        return self.log_path(dag_id, run_id, task_id, try_number).read_text()

    def log_files(self, dag_id: str, run_id: str, task_id: str) -> list[str]:
        """The tries of one task that have a log file, as ["attempt=1.log", ...]."""
        folder = self.log_path(dag_id, run_id, task_id, 1).parent
        prefix = f"task_id={task_id}."
        if not folder.exists():
            return []
        return sorted(p.name.removeprefix(prefix) for p in folder.glob(f"{prefix}attempt=*.log"))

    async def reload(self, path: Path) -> None:
        """Parse a changed DAG file again, as the daemon's DAG folder would."""
        await load_dag_file(self.store, self.registry, path, self.versions_dir, SystemClock().now())

    async def drain(self, grace: float) -> None:
        """Shut down like SIGTERM: running tasks get `grace` s, queued ones stay queued."""
        await self.engine.drain(grace)

    def crash(self) -> None:
        """Die like a killed daemon: from now on nothing the engine decides is committed.

        The writer loop is cancelled at once; on exit the executor's processes are killed and
        the events that follow go into a writer that never commits again.
        """
        self.crashed = True
        self._stop_writer()


async def load_dag_file(
    store: PostgresStateStore, registry: DagRegistry, path: Path, versions_dir: Path, now: datetime
) -> None:
    """Load a DAG file in process, keep its version's source, register and store its DAGs."""
    specs = load_dag_specs(str(path), versions_dir=str(versions_dir))
    registry.check_file(str(path), specs)
    before = {dag.spec.dag_id for dag in registry if dag.spec.fileloc == str(path)}
    registry.replace_file(str(path), specs)
    await store.sync_dag_file(str(path), specs, now)
    registry.announce(before | {spec.dag_id for spec in specs})


@asynccontextmanager
async def running_engine(
    store: PostgresStateStore,
    logs_dir: Path,
    dag_files: Sequence[Path],
    *,
    slots: int = 8,
    python_workers: int = 1,
    kill_grace: float = 1.0,
    drain_grace: float = 5.0,
    clock: Clock | None = None,
    timers: Timers | None = None,
    extra_executors: Mapping[str, Callable[[ExecutorEvents], Executor]] | None = None,
    state_dir: Path | None = None,
    log_max_bytes: int | None = None,
    engine_options: Mapping[str, Any] | None = None,
    before_recover: Callable[[EngineHarness], Awaitable[None]] | None = None,
    daemon_id: str = "test",
) -> AsyncIterator[EngineHarness]:
    """An Engine + LocalExecutor + writer on `store`, with the DAGs of `dag_files` loaded and
    the store's active runs recovered. Drains on exit (running tasks get `drain_grace` s, none
    if the test failed) unless the test crashed it. `clock` and `timers` default to the real
    ones (tests/fakes.py has fakes that advance time); `extra_executors` adds executors by name;
    `engine_options` are more keyword arguments of Engine (check_value, template_limits);
    `before_recover` is awaited with the harness before the engine recovers (to wire a trigger
    the way the daemon does); `daemon_id` names the replica the engine is (its runs' owner)."""
    clock = clock or SystemClock()
    timers = timers or LoopTimers(clock)
    registry = DagRegistry()
    state_dir = state_dir or logs_dir.parent / "state"
    versions_dir = state_dir / "dag_versions"
    for path in dag_files:
        await load_dag_file(store, registry, path, versions_dir, clock.now())
    logs_dir.mkdir(parents=True, exist_ok=True)
    log_files = LogFiles() if log_max_bytes is None else LogFiles(log_max_bytes)
    task_logs = FileTaskLogs(logs_dir, log_files)
    engine = Engine(
        store,
        clock,
        timers,
        registry,
        logs_dir,
        daemon_id=daemon_id,
        hostname=socket.gethostname(),
        base_env=os.environ,
        task_logs=task_logs,
        **(engine_options or {}),
    )
    engine.set_installation(await store.installation_id())
    executor = LocalExecutor(
        engine,
        slots=slots,
        python_workers=python_workers,
        kill_grace=kill_grace,
        state_dir=state_dir,
        versions_dir=versions_dir,
        log_files=log_files,
    )
    executors: dict[str, Executor] = {"local": executor}
    for name, factory in (extra_executors or {}).items():
        executors[name] = factory(engine)
    dispatcher = Dispatcher(executors, default="local")
    engine.attach_executors(dispatcher)
    await dispatcher.start()
    try:
        async with anyio.create_task_group() as group:
            writer_scope = anyio.CancelScope()

            async def writer_loop() -> None:
                with writer_scope:
                    await engine.writer.run()

            group.start_soon(writer_loop)
            harness = EngineHarness(
                store,
                engine,
                executor,
                registry,
                logs_dir,
                versions_dir,
                task_logs,
                _stop_writer=writer_scope.cancel,
            )
            if before_recover is not None:
                await before_recover(harness)
            await engine.recover({})
            grace = drain_grace
            try:
                yield harness
            except BaseException:
                grace = 0.0  # the test failed: do not wait for tasks blocked on a gate
                raise
            finally:
                with anyio.CancelScope(shield=True):
                    if not harness.crashed:
                        await engine.drain(grace)
                    group.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await engine.supervisor.cancel_all()
            await dispatcher.close()
