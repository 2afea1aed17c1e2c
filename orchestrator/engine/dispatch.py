"""Dispatch: the executors the daemon holds, by name, and which one runs a task.

A task runs on the executor its `executor=` names (set on the task or through the DAG's
`default_args`), else on the configured default (`executors.default`). The executor must
be configured and must run the task's kind; otherwise the try fails at once with a message
saying which executors there are. Adding an executor is a module that implements the
`Executor` port plus its registration in the composition root: nothing here changes.

The dispatcher also knows which tries are in an executor (submitted or adopted, their end not
reported yet), so that a user's operation can stop one (`stop`) and a new try of the same task
instance (it was cleared) is held until the old one has ended: an executor runs one try of a
task instance at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping

from orchestrator.core.model import TaskSpec
from orchestrator.core.records import TaskKey
from orchestrator.errors import OrchestratorError
from orchestrator.ports import Executor, LaunchRequest

log = logging.getLogger("orchestrator.engine.dispatch")


class NoExecutorForTask(OrchestratorError):
    """No configured executor can run this task: name one that is configured and runs its kind."""


class Dispatcher:
    """Executors by name and the routing rule."""

    def __init__(self, executors: Mapping[str, Executor], default: str) -> None:
        if default not in executors:
            raise OrchestratorError(
                f"the default executor {default!r} is not configured; configured: {', '.join(executors)}"
            )
        self._executors = dict(executors)
        self.default = default
        #: the tries in an executor now (submitted or adopted, their end not reported): the
        #: executor's name by task instance
        self._in_flight: dict[TaskKey, str] = {}
        #: launches of a task instance whose earlier try is still in an executor (being stopped)
        self._held: dict[TaskKey, tuple[str, LaunchRequest]] = {}

    def __iter__(self) -> Iterator[tuple[str, Executor]]:
        return iter(self._executors.items())

    def names(self) -> list[str]:
        return list(self._executors)

    def route(self, task: TaskSpec) -> str:
        """The name of the executor that runs `task`; raises NoExecutorForTask."""
        name = task.executor or self.default
        executor = self._executors.get(name)
        if executor is None:
            raise NoExecutorForTask(
                f"task {task.task_id!r} asks for executor {name!r}, which is not configured; "
                f"configured executors: {', '.join(self._executors)}"
            )
        if task.kind not in executor.kinds:
            raise NoExecutorForTask(
                f"executor {name!r} cannot run {task.kind!r} tasks such as {task.task_id!r} "
                f"(it runs {', '.join(sorted(executor.kinds))}); give the task an executor that does"
            )
        return name

    def submit(self, executor: str, request: LaunchRequest) -> None:
        """Hand a try to its executor; held while an earlier try of its task instance is in one."""
        if request.key in self._in_flight:
            log.info("try %d of %s waits for its earlier try to end", request.try_number, request.key)
            self._held[request.key] = (executor, request)
            return
        self._executors[executor].submit(request)
        self._in_flight[request.key] = executor

    def adopted(self, key: TaskKey, executor: str) -> None:
        """An executor re-attached to this try's work after a restart: it is in flight."""
        self._in_flight[key] = executor

    def stop(self, key: TaskKey) -> None:
        """Stop the work of this task instance: its try in an executor (its end is reported as
        usual), and a launch held for it."""
        self._held.pop(key, None)
        executor = self._in_flight.get(key)
        if executor is not None:
            self._executors[executor].cancel(key)

    def finished(self, key: TaskKey) -> tuple[str, LaunchRequest] | None:
        """The executor reported the end of this task instance's try: the launch held for it
        (the caller submits it), if any."""
        self._in_flight.pop(key, None)
        return self._held.pop(key, None)

    def get(self, name: str) -> Executor:
        return self._executors[name]

    async def start(self) -> None:
        for executor in self._executors.values():
            await executor.start()

    async def drain(self, grace: float) -> None:
        for executor in self._executors.values():
            await executor.drain(grace)

    async def close(self) -> None:
        for name, executor in self._executors.items():
            try:
                await executor.close()
            except Exception:
                log.exception("executor %s failed to close", name)
