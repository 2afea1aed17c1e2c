"""`DagFileParser`: import DAG files in a dedicated worker process, never in the daemon.

User code can hang, crash or leak; in a separate process it can do none of that to the daemon.
One warm `executors.pyworker` process, apart from the task pool (long Python tasks never delay DAG
loading), imports the file fresh on every parse and sends the DagSpecs back as JSON
(`orchestrator.core.serialization`). Parses are serialised with a lock. A parse that takes longer
than `timeout` kills the worker, fails with a message saying so, and the next parse starts a new
worker; so does a worker that crashed.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping

from executors.errors import DagFileParseError, PythonWorkerExited
from executors.workers import PythonWorker, start_worker
from orchestrator.core.model import DagSpec
from orchestrator.core.serialization import spec_from_dict


class DagFileParser:
    """Parses DAG files in its own worker process; `parse` raises DagFileParseError(import error)."""

    def __init__(
        self,
        python_executable: str = sys.executable,
        timeout: float = 30.0,
        *,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self._python = python_executable
        self._timeout = timeout
        self._env = env
        self._worker: PythonWorker | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    async def start(self) -> None:
        """Start the worker now so the first parse does not pay for it."""
        async with self._lock:
            await self._ensure_worker()

    async def parse(self, path: str) -> list[DagSpec]:
        """The DAGs `path` defines. Raises DagFileParseError with the text users see as the error."""
        async with self._lock:
            if self._closed:
                raise DagFileParseError("the DAG file parser is closed: the daemon is shutting down")
            worker = await self._ensure_worker()
            try:
                reply = await worker.request({"op": "parse", "path": path}, timeout=self._timeout)
            except PythonWorkerExited as exc:
                self._worker = None
                if worker.stop_reason == "timed_out":
                    raise DagFileParseError(
                        f"DAG file took longer than {self._timeout:g} s to import: "
                        "move slow work out of the file's top level"
                    ) from None
                raise DagFileParseError(
                    f"the DAG file parser process crashed (exit code {exc.exit_code}) while importing "
                    f"{path}: the file's top-level code probably killed the interpreter"
                ) from None
        if not reply.get("ok"):
            raise DagFileParseError(str(reply.get("error")))
        try:
            return [spec_from_dict(data) for data in reply["dags"]]
        except Exception as exc:
            raise DagFileParseError(f"the parser returned DAGs that could not be read back: {exc}") from exc

    async def close(self) -> None:
        """Stop the worker (it exits on end of input; killed if it does not)."""
        async with self._lock:
            self._closed = True
            worker, self._worker = self._worker, None
        if worker is not None and worker.alive:
            worker.close_input()
            try:
                await asyncio.wait_for(asyncio.shield(worker.exited), 2.0)
            except TimeoutError:
                worker.terminate(0.0)
                await asyncio.shield(worker.exited)

    async def _ensure_worker(self) -> PythonWorker:
        worker = self._worker
        if worker is None or not worker.usable:
            if worker is not None and worker.alive:
                worker.terminate(0.0)
            try:
                worker = await start_worker(self._python, self._env, kill_grace=1.0)
            except Exception as exc:
                raise DagFileParseError(f"the DAG file parser process could not start: {exc}") from exc
            self._worker = worker
        return worker
