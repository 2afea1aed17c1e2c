"""`DagParserPool`: import DAG files in a few parser processes, never in the daemon, each parse bounded.

User code can hang, crash, leak or fork; in separate processes it can do none of that to the
daemon. The pool keeps `size` warm `executors.pyworker` processes apart from the task pool (long
Python tasks never delay DAG loading), so one file that hangs occupies one of them and the others
go on parsing. Each parse runs in a child the worker forks for it (`executors.parse_process`):
it is killed, with its whole process group, when it runs past `timeout` seconds, its address
space is capped at `memory_mb`, and whatever it started is killed when it ends. A limit that is
hit becomes an import error naming the config key that raises it.

A worker that stops answering (the worker itself, not the file: it is given a margin over the
parse timeout) is killed and replaced, and so is one that crashed. A worker whose own resident
memory grew past `recycle_rss_mb` (read from /proc after each parse) is replaced too, so that no
parse leaves a large process behind.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from executors.errors import DagFileParseError, PythonWorkerExited
from executors.workers import PythonWorker, start_worker
from orchestrator.core.model import DagSpec
from orchestrator.core.serialization import spec_from_dict

log = logging.getLogger("executors.parser")

#: seconds a worker may take beyond the parse timeout to answer (its own work: fork, reap, reply)
WORKER_MARGIN = 10.0
#: without a memory limit, a worker is recycled once its RSS passes this many MB
DEFAULT_RECYCLE_RSS_MB = 512


class DagParserPool:
    """Parses DAG files in `size` worker processes; `parse` raises DagFileParseError(import error)."""

    def __init__(
        self,
        size: int = 2,
        *,
        timeout: float = 30.0,
        memory_mb: int = 0,
        python_executable: str = sys.executable,
        env: Mapping[str, str] | None = None,
        recycle_rss_mb: int | None = None,
        versions_dir: Path | None = None,
    ) -> None:
        if size < 1:
            raise ValueError("a DAG parser pool needs at least one process")
        self.size = size
        self._timeout = timeout
        self._memory_mb = memory_mb
        self._python = python_executable
        self._env = env
        #: where each parsed DAG version's source is kept (by hash) for the runs that use it
        self._versions_dir = None if versions_dir is None else str(versions_dir)
        self._recycle_rss_mb = recycle_rss_mb or (memory_mb // 2 if memory_mb else DEFAULT_RECYCLE_RSS_MB)
        self._idle: list[PythonWorker] = []
        self._busy: set[PythonWorker] = set()
        self._free = asyncio.Semaphore(size)
        self._closed = False

    async def start(self) -> None:
        """Start the workers now so the first parses do not pay for them."""
        starts = (self._start_worker() for _ in range(self.size))
        results = await asyncio.gather(*starts, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        self._idle.extend(r for r in results if isinstance(r, PythonWorker))
        if len(errors) == self.size:
            raise errors[0]

    def worker_pids(self) -> list[int]:
        """The pids of the live workers (idle or parsing)."""
        return [w.pid for w in (*self._idle, *self._busy) if w.alive]

    async def parse(self, path: str) -> list[DagSpec]:
        """The DAGs `path` defines. Raises DagFileParseError with the text users see as the error."""
        async with self._free:
            if self._closed:
                raise DagFileParseError("the DAG file parser is closed: the daemon is shutting down")
            worker = await self._take_worker()
            self._busy.add(worker)
            try:
                reply = await self._request(worker, path)
            finally:
                self._busy.discard(worker)
                self._give_back(worker)
        return self._specs(path, reply)

    async def close(self) -> None:
        """Stop the workers (idle ones exit on end of input; the others are killed)."""
        self._closed = True
        workers = [*self._idle, *self._busy]
        self._idle.clear()
        for worker in workers:
            worker.close_input()
        waits = [w.exited for w in workers if w.alive]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=2.0)
            for worker in workers:
                worker.terminate(0.0)
            if pending:
                await asyncio.wait(pending, timeout=5.0)
            for worker in workers:
                worker.kill_now()  # no-op for the ones that exited

    # --- internals ---------------------------------------------------------------------------
    async def _start_worker(self) -> PythonWorker:
        try:
            return await start_worker(self._python, self._env, kill_grace=1.0)
        except Exception as exc:
            raise DagFileParseError(f"the DAG file parser process could not start: {exc}") from exc

    async def _take_worker(self) -> PythonWorker:
        while self._idle:
            worker = self._idle.pop()
            if worker.usable:
                return worker
            worker.terminate(0.0)
        return await self._start_worker()

    def _give_back(self, worker: PythonWorker) -> None:
        if not worker.usable:
            worker.terminate(0.0)
            return
        rss_mb = resident_mb(worker.pid)
        if self._closed or (rss_mb is not None and rss_mb > self._recycle_rss_mb):
            if not self._closed:
                log.info(
                    "DAG parser process %s uses %d MB after a parse (more than %d MB): replacing it",
                    worker.pid,
                    rss_mb,
                    self._recycle_rss_mb,
                )
            worker.close_input()  # it exits on end of input; the next parse starts a fresh one
            return
        self._idle.append(worker)

    async def _request(self, worker: PythonWorker, path: str) -> dict[str, Any]:
        message = {
            "op": "parse",
            "path": path,
            "timeout": self._timeout,
            "memory_mb": self._memory_mb,
            "versions_dir": self._versions_dir,
        }
        try:
            return await worker.request(message, timeout=self._timeout + WORKER_MARGIN)
        except PythonWorkerExited as exc:
            if worker.stop_reason == "timed_out":
                raise DagFileParseError(
                    f"the DAG file parser process did not answer within {self._timeout + WORKER_MARGIN:g} s "
                    f"while importing {path}; it was replaced"
                ) from None
            raise DagFileParseError(
                f"the DAG file parser process exited (code {exc.exit_code}) while importing {path}"
            ) from None

    def _specs(self, path: str, reply: Mapping[str, Any]) -> list[DagSpec]:
        if not reply.get("ok"):
            raise DagFileParseError(self._error_text(path, reply))
        try:
            return [spec_from_dict(data) for data in reply["dags"]]
        except Exception as exc:
            raise DagFileParseError(f"the parser returned DAGs that could not be read back: {exc}") from exc

    def _error_text(self, path: str, reply: Mapping[str, Any]) -> str:
        error = str(reply.get("error"))
        limit = reply.get("limit")
        if limit == "time":
            return (
                f"DAG file took longer than {self._timeout:g} s to import (dags.parse_timeout) and was "
                f"stopped: {path}; move slow work out of the file's top level, or raise dags.parse_timeout"
            )
        if limit == "memory":
            return (
                f"DAG file needed more than {self._memory_mb} MB of memory to import "
                f"(dags.parse_memory_mb): {path}; allocate less at the file's top level, or raise "
                f"dags.parse_memory_mb\n{error}"
            )
        if limit == "crash":
            hint = (
                f"; if it needs more than {self._memory_mb} MB of memory, raise dags.parse_memory_mb"
                if self._memory_mb
                else ""
            )
            return (
                f"the DAG file parser process crashed (exit code {reply.get('exit_code')}) while importing "
                f"{path}: the file's top-level code probably killed the interpreter{hint}"
            )
        return error


def resident_mb(pid: int) -> int | None:
    """A process's resident set size in MB (VmRSS in /proc/PID/status), or None if unreadable."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
