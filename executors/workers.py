"""Warm Python worker processes, seen from the daemon's event loop.

A `PythonWorker` is one `executors.pyworker` process: started once (its own session), spoken to
with length-prefixed orjson frames (requests on its stdin, replies on its fd 3), watched through
a pidfd. It serves one request at a time. A request that outlives its timeout, or that is
cancelled, gets the worker's whole process group terminated (SIGTERM, then SIGKILL after a
grace); a worker that dies fails the request it was running with `PythonWorkerExited`.

A `PythonWorkerPool` keeps `size` of them: it hands out idle workers, takes them back, and
replaces any that die (with a backoff if replacements die at start-up, so a broken Python
environment does not spin).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import orjson

from executors.errors import PythonWorkerExited, PythonWorkerStartError
from executors.pyworker import HEADER_SIZE, REPLY_FD, encode_frame, frame_length
from executors.spawn import ExitWatcher, kill_group, spawn_session

log = logging.getLogger("executors.workers")

StopReason = Literal["timed_out", "terminated"]
#: the directory that holds the `executors` and `orchestrator` packages
_PROJECT_ROOT = str(Path(__file__).resolve().parent.parent)


def worker_environment(base: Mapping[str, str] | None) -> dict[str, str]:
    """The worker's environment: `base` (default: the daemon's) with our packages importable."""
    env = dict(os.environ if base is None else base)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if _PROJECT_ROOT not in paths:
        env["PYTHONPATH"] = os.pathsep.join([_PROJECT_ROOT, *paths])
    return env


class PythonWorker:
    """One warm worker process. Create with `start_worker`."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        pid: int,
        request_fd: int,
        reply_fd: int,
        kill_grace: float,
        on_exit: Callable[[PythonWorker], None] | None,
    ) -> None:
        self.pid = pid
        self.exit_code: int | None = None
        self.stop_reason: StopReason | None = None
        self._loop = loop
        self._request_fd: int | None = request_fd
        self._reply_fd: int | None = reply_fd
        self._kill_grace = kill_grace
        self._on_exit = on_exit
        self._buffer = bytearray()
        self._pending_write = b""
        self._next_id = 0
        self._pending: asyncio.Future[dict[str, Any]] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._kill_timer: asyncio.TimerHandle | None = None
        self.ready: asyncio.Future[None] = loop.create_future()
        self.exited: asyncio.Future[int] = loop.create_future()
        os.set_blocking(request_fd, False)
        os.set_blocking(reply_fd, False)
        self._watcher = ExitWatcher(loop, pid, self._process_exited)
        loop.add_reader(reply_fd, self._reply_readable)

    # --- state -------------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return self.exit_code is None

    @property
    def busy(self) -> bool:
        return self._pending is not None

    @property
    def usable(self) -> bool:
        """Alive, started, and not being stopped: may be given a request."""
        return self.alive and self.ready.done() and self.stop_reason is None

    # --- requests ------------------------------------------------------------------------------
    def send(self, message: dict[str, Any], timeout: float | None = None) -> asyncio.Future[dict[str, Any]]:
        """Send one request; the future resolves with the reply or fails with PythonWorkerExited.

        Raises TypeError at once if the message is not JSON-able. With a timeout, the worker's
        process group is terminated when it expires (stop_reason "timed_out").
        """
        if not self.usable or self._pending is not None:
            raise RuntimeError(f"python worker {self.pid} is not idle: this is a bug in the executor")
        self._next_id += 1
        frame = encode_frame({**message, "id": self._next_id})
        future: asyncio.Future[dict[str, Any]] = self._loop.create_future()
        future.add_done_callback(_mark_retrieved)
        self._pending = future
        self._write(frame)
        if timeout is not None:
            self._timer = self._loop.call_later(timeout, self._time_out)
        return future

    async def request(self, message: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """`send` and wait. If the waiter is cancelled, the worker is stopped (its state is unknown)."""
        future = self.send(message, timeout)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            self.terminate(0.0)
            raise

    def terminate(self, grace: float | None = None, reason: StopReason = "terminated") -> None:
        """SIGTERM the worker's process group, SIGKILL it after `grace` seconds (default kill_grace)."""
        if not self.alive:
            return
        if self.stop_reason is None:
            self.stop_reason = reason
        kill_group(self.pid, signal.SIGTERM)
        delay = self._kill_grace if grace is None else grace
        if self._kill_timer is None:
            self._kill_timer = self._loop.call_later(delay, self._kill)

    def kill_now(self) -> None:
        """SIGKILL the group and reap at once (cleanup paths that cannot wait for the loop)."""
        if not self.alive:
            return
        kill_group(self.pid, signal.SIGKILL)
        self._process_exited()

    def close_input(self) -> None:
        """Close the worker's stdin: an idle worker exits on its own."""
        if self._request_fd is not None:
            self._loop.remove_writer(self._request_fd)
            os.close(self._request_fd)
            self._request_fd = None

    # --- internals ---------------------------------------------------------------------------
    def _time_out(self) -> None:
        self._timer = None
        if self._pending is not None:
            self.terminate(reason="timed_out")

    def _kill(self) -> None:
        self._kill_timer = None
        if self.alive:
            kill_group(self.pid, signal.SIGKILL)

    def _write(self, data: bytes) -> None:
        if self._request_fd is None:
            return
        if self._pending_write:
            self._pending_write += data
            return
        try:
            written = os.write(self._request_fd, data)
        except BlockingIOError:
            written = 0
        except BrokenPipeError:
            return  # the worker is gone; its pidfd reports the exit
        if written < len(data):
            self._pending_write = data[written:]
            self._loop.add_writer(self._request_fd, self._writable)

    def _writable(self) -> None:
        fd = self._request_fd
        if fd is None:
            return
        try:
            written = os.write(fd, self._pending_write)
        except BlockingIOError:
            return
        except BrokenPipeError:
            written = len(self._pending_write)
        self._pending_write = self._pending_write[written:]
        if not self._pending_write:
            self._loop.remove_writer(fd)

    def _reply_readable(self) -> None:
        self._read_replies()

    def _read_replies(self) -> None:
        fd = self._reply_fd
        while fd is not None:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                break
            except OSError:
                data = b""
            if not data:
                self._loop.remove_reader(fd)
                os.close(fd)
                self._reply_fd = fd = None
                break
            self._buffer += data
        self._dispatch_frames()

    def _dispatch_frames(self) -> None:
        while len(self._buffer) >= HEADER_SIZE:
            try:
                length = frame_length(bytes(self._buffer[:HEADER_SIZE]))
            except ValueError:
                log.error("python worker %s sent garbage; stopping it", self.pid)
                self._buffer.clear()
                self.terminate(0.0)
                return
            if len(self._buffer) < HEADER_SIZE + length:
                return
            body = bytes(self._buffer[HEADER_SIZE : HEADER_SIZE + length])
            del self._buffer[: HEADER_SIZE + length]
            message = orjson.loads(body)
            if message.get("op") == "ready":
                if not self.ready.done():
                    self.ready.set_result(None)
                continue
            self._resolve(message)

    def _resolve(self, reply: dict[str, Any]) -> None:
        future, self._pending = self._pending, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if future is not None and not future.done():
            future.set_result(reply)

    def _process_exited(self) -> None:
        self._read_replies()  # a reply written just before the exit still counts
        if self._reply_fd is not None:
            self._loop.remove_reader(self._reply_fd)
            os.close(self._reply_fd)
            self._reply_fd = None
        self.close_input()
        for timer in (self._timer, self._kill_timer):
            if timer is not None:
                timer.cancel()
        self._timer = self._kill_timer = None
        self.exit_code = self._watcher.reap()
        future, self._pending = self._pending, None
        if future is not None and not future.done():
            future.set_exception(PythonWorkerExited(self.exit_code))
        if not self.ready.done():
            self.ready.set_exception(
                PythonWorkerStartError(
                    f"python worker exited with code {self.exit_code} during start-up: "
                    "see the daemon's stderr for its traceback; check python_executable and worker_env"
                )
            )
            self.ready.exception()  # mark retrieved: nobody may be waiting any more
        self.exited.set_result(self.exit_code)
        if self._on_exit is not None:
            self._on_exit(self)


def _mark_retrieved(future: asyncio.Future[Any]) -> None:
    # A waiter that was cancelled no longer reads the outcome; do not warn about it.
    if not future.cancelled():
        future.exception()


async def start_worker(
    python_executable: str = sys.executable,
    env: Mapping[str, str] | None = None,
    *,
    kill_grace: float = 5.0,
    startup_timeout: float = 60.0,
    on_exit: Callable[[PythonWorker], None] | None = None,
) -> PythonWorker:
    """Start one worker and wait until it has imported what it needs and said it is ready."""
    loop = asyncio.get_running_loop()
    request_read, request_write = os.pipe()
    reply_read, reply_write = os.pipe()
    try:
        pid = spawn_session(
            [python_executable, "-u", "-m", "executors.pyworker"],
            worker_environment(env),
            [
                (os.POSIX_SPAWN_DUP2, request_read, 0),
                (os.POSIX_SPAWN_DUP2, 2, 1),
                (os.POSIX_SPAWN_DUP2, reply_write, REPLY_FD),
            ],
        )
    except OSError as exc:
        os.close(request_write)
        os.close(reply_read)
        raise PythonWorkerStartError(
            f"cannot start the python worker {python_executable!r}: {exc.strerror or exc}: "
            "check the python_executable setting"
        ) from exc
    finally:
        os.close(request_read)
        os.close(reply_write)
    worker = PythonWorker(loop, pid, request_write, reply_read, kill_grace, on_exit)
    try:
        await asyncio.wait_for(asyncio.shield(worker.ready), startup_timeout)
    except TimeoutError:
        worker.kill_now()
        raise PythonWorkerStartError(
            f"python worker {pid} did not become ready within {startup_timeout:g} s: "
            "check that importing orchestrator is not blocked"
        ) from None
    except BaseException:
        worker.kill_now()
        raise
    return worker


class PythonWorkerPool:
    """`size` warm workers; `acquire` an idle one, `release` it when its request is done."""

    def __init__(
        self,
        size: int,
        *,
        python_executable: str = sys.executable,
        env: Mapping[str, str] | None = None,
        kill_grace: float = 5.0,
        on_idle: Callable[[], None] | None = None,
    ) -> None:
        self.size = size
        self._python = python_executable
        self._env = env
        self._kill_grace = kill_grace
        self._on_idle = on_idle
        self._idle: list[PythonWorker] = []
        self._workers: set[PythonWorker] = set()
        self._starting: set[asyncio.Task[None]] = set()
        self._failures = 0
        self._closing = False

    async def start(self) -> None:
        """Start every worker; raises PythonWorkerStartError if none can start."""
        results = await asyncio.gather(*(self._start_one() for _ in range(self.size)), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors and len(errors) == self.size:
            raise errors[0]
        for error in errors:
            log.error("a python worker failed to start (%s); retrying in the background", error)
            self._schedule_replacement()

    def idle_count(self) -> int:
        return len(self._idle)

    def workers(self) -> list[PythonWorker]:
        return list(self._workers)

    def acquire(self) -> PythonWorker | None:
        """An idle worker (the most recently used: its caches are warm), or None."""
        while self._idle:
            worker = self._idle.pop()
            if worker.usable:
                return worker
        return None

    def release(self, worker: PythonWorker) -> None:
        """Take a worker back after its request. A stopped or dead one is replaced instead."""
        if worker.usable and not worker.busy and not self._closing:
            self._idle.append(worker)
            self._notify_idle()

    async def close(self, grace: float = 2.0) -> None:
        """Stop all workers: idle ones exit on end of input; the rest are killed after `grace`."""
        self._closing = True
        for task in list(self._starting):
            task.cancel()
        if self._starting:
            await asyncio.gather(*self._starting, return_exceptions=True)
        workers = list(self._workers)
        for worker in workers:
            worker.close_input()
        waits = [w.exited for w in workers if w.alive]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=grace)
            for worker in workers:
                if worker.alive:
                    worker.terminate(0.0)
            if pending:
                await asyncio.wait(pending, timeout=grace + 5.0)
            for worker in workers:
                worker.kill_now()  # no-op for the ones that exited
        self._idle.clear()

    # --- internals ---------------------------------------------------------------------------
    async def _start_one(self) -> None:
        worker = await start_worker(
            self._python, self._env, kill_grace=self._kill_grace, on_exit=self._worker_exited
        )
        if self._closing:
            worker.close_input()
            return
        self._workers.add(worker)
        self._idle.append(worker)
        self._failures = 0

    def _worker_exited(self, worker: PythonWorker) -> None:
        self._workers.discard(worker)
        if worker in self._idle:
            self._idle.remove(worker)
        if not self._closing and worker.ready.done() and not worker.ready.exception():
            if worker.stop_reason is None:
                log.warning(
                    "python worker %s exited with code %s; starting a replacement",
                    worker.pid,
                    worker.exit_code,
                )
            self._schedule_replacement()

    def _schedule_replacement(self) -> None:
        if self._closing:
            return
        task = asyncio.get_running_loop().create_task(self._replace())
        self._starting.add(task)
        task.add_done_callback(self._replacement_done)

    async def _replace(self) -> None:
        while not self._closing:
            delay = min(30.0, 0.1 * (2 ** (self._failures - 1))) if self._failures else 0.0
            if delay:
                await asyncio.sleep(delay)  # backoff after failed starts, not a polling loop
            try:
                await self._start_one()
            except PythonWorkerStartError as exc:
                self._failures += 1
                log.error("%s (retrying)", exc)
                continue
            self._notify_idle()
            return

    def _replacement_done(self, task: asyncio.Task[None]) -> None:
        self._starting.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("replacing a python worker failed", exc_info=task.exception())

    def _notify_idle(self) -> None:
        if self._on_idle is not None:
            self._on_idle()
