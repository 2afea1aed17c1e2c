"""Supervision: no background task or callback of the engine fails silently.

Two tools. `Supervisor.spawn` runs a coroutine as a background task whose failure is fatal:
the daemon is told (through `on_fatal`) and stops with the error as its last word, rather
than run on with memory and the database apart. `guarded` wraps a synchronous callback (an
executor event, a timer, an after-commit action) so that an exception is handed to a
recovery function with the traceback: the engine fails the task instance concerned, with the
error in its log, and only if that fails too is the failure fatal. Nothing is left hanging
between the two.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from typing import Any, Generic, TypeVar

log = logging.getLogger("orchestrator.engine.supervision")

FatalHandler = Callable[[str], None]

K = TypeVar("K", bound=Hashable)


class Supervisor:
    """Owns the engine's background tasks and knows whom to tell when something is beyond repair."""

    def __init__(self, on_fatal: FatalHandler | None = None) -> None:
        self._on_fatal = on_fatal
        self._tasks: set[asyncio.Task[Any]] = set()
        self.fatal_message: str | None = None

    def set_fatal_handler(self, on_fatal: FatalHandler) -> None:
        self._on_fatal = on_fatal

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run `coro` in the background; if it raises, the daemon stops with the error."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            trace = "".join(traceback.format_exception(exc))
            self.fatal(f"background task {task.get_name()!r} failed: {exc!r}\n{trace}")

    def fatal(self, message: str) -> None:
        """Something cannot be repaired in place: log it and ask the daemon to stop."""
        log.critical("%s; the daemon stops so that a restart recovers from the database", message)
        if self.fatal_message is None:
            self.fatal_message = message.splitlines()[0] if message else "fatal error"
        if self._on_fatal is not None:
            try:
                self._on_fatal(self.fatal_message)
            except Exception:
                log.exception("the fatal-error handler failed")

    async def cancel_all(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except BaseException:
                pass


def guarded(
    callback: Callable[..., None],
    recover: Callable[[BaseException, str], None],
) -> Callable[..., None]:
    """`callback`, but an exception goes to `recover(exc, traceback_text)` instead of the loop."""

    def run(*args: Any) -> None:
        try:
            callback(*args)
        except Exception as exc:
            recover(exc, traceback.format_exc())

    return run


class OnePassAtATime(Generic[K]):
    """Supervised background passes of `work(key)`, one at a time per key. A pass asked for while
    one for the same key runs is not started beside it: the running one goes round once more when
    it ends, so what changed meanwhile is seen and two passes never race on one key."""

    def __init__(self, supervisor: Supervisor, work: Callable[[K], Awaitable[None]], name: str) -> None:
        self._supervisor = supervisor
        self._work = work
        self._name = name
        self._busy: set[K] = set()
        self._again: set[K] = set()
        #: callers of `run` waiting for the next pass of a key to end
        self._waiters: dict[K, list[asyncio.Future[None]]] = {}

    def request(self, key: K) -> None:
        """Run a pass for `key` now, or once more after the one running."""
        if key in self._busy:
            self._again.add(key)
            return
        self._busy.add(key)
        self._supervisor.spawn(self._passes(key), name=f"{self._name} {key}")

    async def run(self, key: K) -> None:
        """Ask for a pass for `key` (as `request`) and wait until one that started after this
        call has ended."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(key, []).append(done)
        self.request(key)
        await done

    def again_if_running(self) -> None:
        """Every pass running now goes round once more when it ends."""
        self._again.update(self._busy)

    async def _passes(self, key: K) -> None:
        try:
            while True:
                self._again.discard(key)
                waiting = self._waiters.pop(key, [])
                try:
                    await self._work(key)
                finally:
                    _wake(waiting)
                if key not in self._again:
                    return
        finally:
            self._busy.discard(key)
            _wake(self._waiters.pop(key, []))


def _wake(waiting: list[asyncio.Future[None]]) -> None:
    for future in waiting:
        if not future.done():
            future.set_result(None)
