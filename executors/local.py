"""`LocalExecutor`: runs task instances on this machine, bounded by a number of slots.

Bash tasks are subprocesses (`executors.spawn`: posix_spawn in their own process group, exit
watched through a pidfd); Python tasks run in warm worker processes (`executors.workers`). At most
`slots` tasks run at once, bash and python together. Requests wait in FIFO order; a slot that frees
starts the next request at once, from the callback that saw the task end: no polling, and no
asyncio task per request (per-task overhead is the figure this product is judged on). A Python
request waiting for a free worker keeps its place but does not hold back bash requests behind it.

Every submitted request is reported exactly once with `task_finished`, including launch errors
and cancellations. `submit` and `cancel` never call the event handlers re-entrantly: events are
delivered from later loop callbacks, in order.

Two deliberate exceptions, both during shutdown: `drain` does not start and does not report
requests that are still queued (nor anything submitted afterwards). They stay
`queued` in the state store and the engine queues them again on the next start; reporting them as
failed would burn a retry for a shutdown the task had nothing to do with.

Local processes cannot be re-attached after a restart, so `adopt` kills what is left of a try
that was running on this host and answers False: the engine counts the try as failed. The
try's processes are identified for certain by the token in their environment, or, for a
Python try, by the marker its worker writes (`executors.orphans`); `find_started` tells the
engine whether a try it believed queued had in fact started. A bash command with no shell
syntax is exec'd directly (`executors.direct`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
import traceback
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from executors.direct import direct_argv
from executors.errors import ExecutorError, LaunchError, PythonWorkerExited
from executors.orphans import WORKER_MARKERS_VARIABLE, kill_pids, orphan_workers, try_processes
from executors.spawn import CommandResult, Launched, RunningCommand, launch, watch
from executors.workers import PythonWorker, PythonWorkerPool
from orchestrator.core.kinds import BashPayload, PythonPayload
from orchestrator.core.records import TaskInstanceRecord, TaskKey
from orchestrator.ports import NO_XCOM, ExecutorEvents, LaunchRequest, TaskOutcome
from storage.filelogs import LogFiles, TryLogWriter

log = logging.getLogger("executors.local")

SHUTDOWN_ERROR = "killed: daemon shut down before the task finished"
CANCELLED_ERROR = "cancelled"


@dataclass(slots=True)
class _Running:
    """A request that has been started: its process or worker, and why it was stopped, if it was."""

    request: LaunchRequest
    started: float
    command: RunningCommand | None = None
    worker: PythonWorker | None = None
    stop_error: str | None = None
    #: the footer went out with the command's own log writer (bash tasks)
    footer_written: bool = False
    #: the log writer of a Python try (header and footer; its worker writes the output)
    log: TryLogWriter | None = None


def _now() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}+00:00"


def _header(request: LaunchRequest, what: str) -> str:
    return f"[{_now()}] try {request.try_number} of {_label(request)} started: {what}\n"


def _footer(request: LaunchRequest, started: float, error: str | None, exit_code: int | None) -> str:
    status = "success" if error is None else f"failed: {error}"
    if exit_code is not None:
        status += f" (exit code {exit_code})"
    duration = time.monotonic() - started
    return (
        f"[{_now()}] try {request.try_number} of {_label(request)} finished in {duration:.3f} s: {status}\n"
    )


def _bash_error(running: _Running, result: CommandResult) -> str | None:
    """Why a bash try failed (None: it succeeded)."""
    code = result.exit_code
    if running.stop_error is not None:
        return running.stop_error
    if result.log_error is not None:
        return result.log_error
    if result.timed_out:
        return f"timed out after {running.request.timeout:g} s: the process group was terminated"
    if code < 0:
        return f"bash command was killed by {_signal_name(-code)}"
    if code != 0:
        return f"bash command exited with code {code}"
    return None


def _label(request: LaunchRequest) -> str:
    task = request.key.task_id
    if request.key.map_index >= 0:
        task = f"{task}[{request.key.map_index}]"
    return f"{request.dag_id}/{request.run_id}/{task}"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class LocalExecutor:
    """Runs bash commands as subprocesses and Python callables in warm workers (see module doc)."""

    kinds = frozenset({BashPayload.kind, PythonPayload.kind})

    def __init__(
        self,
        events: ExecutorEvents,
        *,
        slots: int,
        python_workers: int,
        worker_env: Mapping[str, str] | None = None,
        kill_grace: float = 5.0,
        python_executable: str = sys.executable,
        state_dir: Path | None = None,
        log_files: LogFiles | None = None,
        versions_dir: Path | None = None,
    ) -> None:
        if slots < 1:
            raise ExecutorError(f"the local executor needs at least 1 slot, got {slots}: raise `slots`")
        self._events = events
        self._slots = slots
        #: every log line of a try goes through here (capped at logs.max_bytes_per_try)
        self._logs = log_files if log_files is not None else LogFiles()
        #: where the DAG versions' sources are kept (Python tasks run their run's version)
        self._versions_dir = None if versions_dir is None else str(versions_dir)
        self._kill_grace = kill_grace
        #: where Python workers say which try they are running (found again after a restart)
        self._markers: Path | None = None
        env = worker_env
        if state_dir is not None:
            self._markers = (state_dir / "workers").resolve()
            env = {**(os.environ if worker_env is None else worker_env)}
            env[WORKER_MARKERS_VARIABLE] = str(self._markers)
        self._orphans: dict[int, str] | None = None
        self._pool = PythonWorkerPool(
            python_workers,
            python_executable=python_executable,
            env=env,
            kill_grace=kill_grace,
            on_idle=self._dispatch,
        )
        self._seq = 0
        self._bash_queue: OrderedDict[TaskKey, tuple[int, LaunchRequest]] = OrderedDict()
        self._python_queue: OrderedDict[TaskKey, tuple[int, LaunchRequest]] = OrderedDict()
        self._running: dict[TaskKey, _Running] = {}
        self._draining = False
        self._dispatch_scheduled = False
        self._idle = asyncio.Event()
        self._idle.set()

    # --- the Executor port -----------------------------------------------------------------------
    async def start(self) -> None:
        """Start the Python worker pool. Call once, before submitting Python tasks."""
        if self._markers is not None:
            self._markers.mkdir(parents=True, exist_ok=True)
        if self._pool.size:
            await self._pool.start()
        self._dispatch()

    def submit(self, request: LaunchRequest) -> None:
        """Queue a request; it starts as soon as a slot (and, for Python, a worker) is free."""
        if self._draining:
            log.info("not starting %s: the executor is draining (it stays queued)", _label(request))
            return
        key = request.key
        if key in self._running or key in self._bash_queue or key in self._python_queue:
            raise ExecutorError(
                f"task instance {_label(request)} is already queued or running in the local executor: "
                "wait for its task_finished event before submitting it again"
            )
        self._seq += 1
        queue = self._python_queue if isinstance(request.payload, PythonPayload) else self._bash_queue
        queue[key] = (self._seq, request)
        self._schedule_dispatch()

    def cancel(self, key: TaskKey) -> None:
        """Drop a queued request (reported as "cancelled") or stop a running one's processes."""
        for queue in (self._bash_queue, self._python_queue):
            entry = queue.pop(key, None)
            if entry is not None:
                outcome = TaskOutcome(key, entry[1].try_number, success=False, error=CANCELLED_ERROR)
                asyncio.get_running_loop().call_soon(self._report, outcome)
                return
        running = self._running.get(key)
        if running is not None:
            self._stop(running, f"{CANCELLED_ERROR}: the task was stopped while it was running")

    def running_count(self) -> int:
        return len(self._running)

    def _orphan_workers(self) -> dict[int, str]:
        """Python workers a previous daemon left on this host, with the token each is running."""
        if self._orphans is None:
            own = {worker.pid for worker in self._pool.workers()}
            self._orphans = orphan_workers(self._markers, own) if self._markers is not None else {}
        return self._orphans

    async def find_started(self, task: TaskInstanceRecord, token: str) -> bool:
        """Whether a try recorded as queued has processes alive on this host (it had started)."""
        if task.hostname not in (None, socket.gethostname()):
            return False
        if try_processes(token):
            return True
        return bool(token) and token in self._orphan_workers().values()

    async def adopt(self, task: TaskInstanceRecord, token: str = "") -> bool:
        """Local processes cannot be re-attached (they are not our children, their exit status
        is lost): what is left of the try on this host is killed instead, so that its retry does
        not run beside it. Always False: the engine counts the try as failed."""
        if task.hostname not in (None, socket.gethostname()):
            return False
        label = f"try {task.try_number} of {task.dag_id}.{task.task_id}"
        kill_pids(try_processes(token), label)
        workers = [pid for pid, running in self._orphan_workers().items() if token and running == token]
        kill_pids(workers, f"the python worker of {label}")
        return False

    async def drain(self, grace: float) -> None:
        """Start nothing more; wait up to `grace` s for running tasks, then kill the rest.

        Queued requests are dropped without a report (see the module doc).
        """
        self._draining = True
        dropped = len(self._bash_queue) + len(self._python_queue)
        self._bash_queue.clear()
        self._python_queue.clear()
        if dropped:
            log.info("drain: %d queued task(s) left queued for the next start", dropped)
        if self._running:
            try:
                await asyncio.wait_for(self._idle.wait(), grace)
            except TimeoutError:
                pass
        for running in list(self._running.values()):
            self._stop(running, SHUTDOWN_ERROR)
        if self._running:
            try:
                await asyncio.wait_for(self._idle.wait(), self._kill_grace + 5.0)
            except TimeoutError:
                log.error("drain: %d task(s) did not exit after SIGKILL", len(self._running))

    async def close(self) -> None:
        """Kill whatever still runs and stop the Python workers."""
        if self._running or not self._draining:
            await self.drain(0.0)
        await self._pool.close()

    # --- dispatching -----------------------------------------------------------------------------
    def _schedule_dispatch(self) -> None:
        # submit() and cancel() never call the event handlers themselves: the engine may be in
        # the middle of a loop over its own state. The dispatch runs on the next loop iteration.
        if not self._dispatch_scheduled:
            self._dispatch_scheduled = True
            asyncio.get_running_loop().call_soon(self._scheduled_dispatch)

    def _scheduled_dispatch(self) -> None:
        self._dispatch_scheduled = False
        self._dispatch()

    def _dispatch(self) -> None:
        """Start queued requests while slots (and workers, for Python) are free, oldest first."""
        while not self._draining and len(self._running) < self._slots:
            bash = next(iter(self._bash_queue.values()), None)
            python = next(iter(self._python_queue.values()), None)
            if python is not None and not self._pool.size:
                self._python_queue.popitem(last=False)
                self._launch_failed(python[1], "no python workers are configured: set python_workers >= 1")
                continue
            if python is not None and not self._pool.idle_count():
                python = None  # waits for a worker; bash requests behind it may go first
            if bash is None and python is None:
                return
            if python is None or (bash is not None and bash[0] < python[0]):
                self._bash_queue.popitem(last=False)
                self._guarded_start(bash[1])  # type: ignore[index]
            else:
                self._python_queue.popitem(last=False)
                self._guarded_start(python[1])

    def _guarded_start(self, request: LaunchRequest) -> None:
        try:
            if isinstance(request.payload, PythonPayload):
                self._start_python(request, request.payload)
            elif isinstance(request.payload, BashPayload):
                self._start_bash(request, request.payload)
            else:
                raise LaunchError(f"the local executor cannot run {request.kind!r} tasks")
        except LaunchError as exc:
            self._launch_failed(request, str(exc))
        except Exception:
            self._crashed(request, traceback.format_exc())

    def _begin(self, request: LaunchRequest, what: str) -> TryLogWriter:
        """Open a Python try's log with its header; its worker appends the output."""
        writer = self._logs.writer(request.log_path, _header(request, what), capped=False)
        try:
            writer.write(b"")
        except OSError as exc:
            writer.close()
            raise LaunchError(
                f"cannot write the task log {str(request.log_path)!r}: {exc.strerror}: "
                "check that the logs folder is writable"
            ) from exc
        return writer

    def _start_bash(self, request: LaunchRequest, payload: BashPayload) -> None:
        command = payload.bash_command
        argv = direct_argv(command, request.env) or ["/bin/bash", "-c", command]
        launched = launch(
            argv,
            env=request.env,
            log_path=request.log_path,
            cwd=request.cwd,
            header=_header(request, command),
        )
        self._watch_bash(_Running(request, time.monotonic(), footer_written=True), launched)

    def _watch_bash(self, running: _Running, launched: Launched) -> None:
        request = running.request
        command = watch(
            launched,
            timeout=request.timeout,
            kill_grace=self._kill_grace,
            footer=lambda result: _footer(
                request, running.started, _bash_error(running, result), result.exit_code
            ),
            logs=self._logs,
        )
        running.command = command
        self._add_running(running, f"pid:{command.pid}")
        command.add_done_callback(lambda result: self._bash_done(running, result))

    def _start_python(self, request: LaunchRequest, call: PythonPayload) -> None:
        worker = self._pool.acquire()
        if worker is None:  # dispatch checked; a worker died in between
            self._python_queue[request.key] = (0, request)
            self._python_queue.move_to_end(request.key, last=False)
            return
        log_writer: TryLogWriter | None = None
        try:
            log_writer = self._begin(request, f"python {call.task_id} from {call.dag_file}")
            future = worker.send(
                {
                    "op": "run",
                    "dag_file": call.dag_file,
                    "dag_id": call.dag_id,
                    "task_id": call.task_id,
                    "args": call.args,
                    "kwargs": call.kwargs,
                    "context": call.context,
                    "source_hash": call.source_hash,
                    "versions_dir": self._versions_dir,
                    "env": request.env,
                    "cwd": request.cwd,
                    "log_path": str(request.log_path),
                    "log_max_bytes": self._logs.max_bytes_per_try,
                    "do_xcom_push": request.do_xcom_push,
                },
                timeout=request.timeout,
            )
        except TypeError as exc:
            self._pool.release(worker)
            if log_writer is not None:
                log_writer.close()
            raise LaunchError(f"the arguments of {_label(request)} are not JSON serialisable: {exc}") from exc
        except BaseException:
            self._pool.release(worker)
            if log_writer is not None:
                log_writer.close()
            raise
        running = _Running(request, time.monotonic(), worker=worker, log=log_writer)
        self._add_running(running, f"worker:{worker.pid}")
        future.add_done_callback(lambda done: self._python_done(running, done))

    def _add_running(self, running: _Running, external_id: str) -> None:
        request = running.request
        self._running[request.key] = running
        self._idle.clear()
        try:
            self._events.task_started(request.key, request.try_number, external_id)
        except Exception:
            log.exception("the task_started handler failed for %s", _label(request))

    def _stop(self, running: _Running, error: str) -> None:
        if running.stop_error is not None:
            return
        running.stop_error = error
        if running.command is not None:
            running.command.terminate(self._kill_grace)
        elif running.worker is not None:
            running.worker.terminate(self._kill_grace)

    # --- endings -----------------------------------------------------------------------------------
    def _bash_done(self, running: _Running, result: CommandResult) -> None:
        request = running.request
        try:
            code = result.exit_code
            error = _bash_error(running, result)
            xcom: Any = NO_XCOM
            if error is None and request.do_xcom_push and result.last_line is not None:
                xcom = result.last_line
            outcome = TaskOutcome(
                request.key,
                request.try_number,
                success=error is None,
                exit_code=code,
                xcom_value=xcom,
                error=error,
                timed_out=result.timed_out,
            )
        except Exception:
            self._finish_crashed(running, traceback.format_exc())
            return
        self._finish(running, outcome)

    def _python_done(self, running: _Running, done: asyncio.Future[dict[str, Any]]) -> None:
        request = running.request
        worker = running.worker
        try:
            if worker is not None:
                self._pool.release(worker)
            try:
                reply = done.result()
            except PythonWorkerExited as exc:
                timed_out = worker is not None and worker.stop_reason == "timed_out"
                if running.stop_error is not None:
                    error = running.stop_error
                elif timed_out:
                    error = (
                        f"timed out after {request.timeout:g} s: the python worker was killed and replaced"
                    )
                else:
                    error = str(exc)
                outcome = TaskOutcome(
                    request.key,
                    request.try_number,
                    success=False,
                    exit_code=None if timed_out or running.stop_error else exc.exit_code,
                    error=error,
                    timed_out=timed_out and running.stop_error is None,
                )
            else:
                if reply.get("ok"):
                    outcome = TaskOutcome(
                        request.key,
                        request.try_number,
                        success=True,
                        xcom_value=reply["value"] if reply.get("has_value") else NO_XCOM,
                    )
                else:
                    outcome = TaskOutcome(
                        request.key, request.try_number, success=False, error=str(reply.get("error"))
                    )
        except Exception:
            self._finish_crashed(running, traceback.format_exc())
            return
        self._finish(running, outcome)

    def _finish(self, running: _Running, outcome: TaskOutcome) -> None:
        request = running.request
        if not running.footer_written:
            footer = _footer(
                request, running.started, None if outcome.success else outcome.error, outcome.exit_code
            )
            try:
                if running.log is not None:
                    running.log.close(footer.encode("utf-8", "backslashreplace"))
                else:
                    self._logs.append(request.log_path, footer)
            except OSError:
                log.warning("cannot append the footer to %s", request.log_path)
        self._running.pop(request.key, None)
        self._report(outcome)
        if not self._running:
            self._idle.set()
        self._dispatch()

    def _finish_crashed(self, running: _Running, trace: str) -> None:
        request = running.request
        log.error("the local executor failed while finishing %s:\n%s", _label(request), trace)
        self._note(request, f"internal error in the local executor:\n{trace}")
        self._finish(
            running,
            TaskOutcome(
                request.key,
                request.try_number,
                success=False,
                error=f"internal error in the local executor: {trace.strip().splitlines()[-1]}",
            ),
        )

    def _launch_failed(self, request: LaunchRequest, message: str) -> None:
        self._note(request, f"could not start the task: {message}")
        self._report(
            TaskOutcome(
                request.key, request.try_number, success=False, error=f"could not start the task: {message}"
            )
        )

    def _crashed(self, request: LaunchRequest, trace: str) -> None:
        log.error("the local executor failed while starting %s:\n%s", _label(request), trace)
        self._note(request, f"internal error in the local executor:\n{trace}")
        self._report(
            TaskOutcome(
                request.key,
                request.try_number,
                success=False,
                error=f"internal error in the local executor: {trace.strip().splitlines()[-1]}",
            )
        )

    def _note(self, request: LaunchRequest, message: str) -> None:
        try:
            self._logs.append(
                request.log_path, f"[{_now()}] try {request.try_number} of {_label(request)}: {message}\n"
            )
        except OSError:
            pass  # the log is what failed; the outcome carries the message

    def _report(self, outcome: TaskOutcome) -> None:
        try:
            self._events.task_finished(outcome)
        except Exception:
            log.exception("the task_finished handler failed for %s", outcome.key)
