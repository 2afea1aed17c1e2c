"""The DAG folder: parse every DAG file at start, then follow changes as they happen.

Files are parsed in a worker process (`executors.parser`), never imported by the daemon, so
a file that hangs, crashes or leaks cannot hurt it. Changes arrive from the kernel's file
notifications (watchfiles, inotify) with a short debounce: a new file can be triggered well
within a second. A file that fails to load becomes an import error with its message; its
DAGs keep their last good version, and every other file is untouched. Fixing the file
clears the error.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import anyio
import watchfiles

from orchestrator.core.model import DagSpec
from orchestrator.engine.registry import DagRegistry, DuplicateDagId
from orchestrator.ports import Clock, StateStore

log = logging.getLogger("orchestrator.dagfolder")


class DagFileParser(Protocol):
    """Parses one DAG file outside the daemon; raises an exception whose text is the import error."""

    async def parse(self, path: str) -> list[DagSpec]: ...


def is_dag_file(path: Path) -> bool:
    """Python files, except hidden ones, `_private.py` helpers and caches."""
    return (
        path.suffix == ".py"
        and not path.name.startswith((".", "_"))
        and "__pycache__" not in path.parts
        and not any(part.startswith(".") for part in path.parts[-3:-1])
    )


class DagFolder:
    """Keeps the registry and the store in step with the files of one folder."""

    def __init__(
        self,
        folder: Path,
        parser: DagFileParser,
        store: StateStore,
        registry: DagRegistry,
        clock: Clock,
        parse_error: type[Exception] = Exception,
    ) -> None:
        self.folder = folder.resolve()
        self._parser = parser
        self._store = store
        self._registry = registry
        self._clock = clock
        self._parse_error = parse_error
        # watchfiles only checks this between waits of its watcher thread: setting it (rather
        # than cancelling) stops the watch within milliseconds instead of its 5 s timeout
        self._stop = anyio.Event()

    def dag_files(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(path for path in self.folder.rglob("*.py") if is_dag_file(path))

    async def load_all(self, known_files: Iterable[str] = ()) -> None:
        """Parse every file now; forget files the store knows that are gone."""
        if not self.folder.is_dir():
            log.warning(
                "the DAG folder %s does not exist: no DAGs are loaded until it is created", self.folder
            )
        present = self.dag_files()
        for path in present:
            await self.refresh(path)
        present_names = {str(path) for path in present}
        for fileloc in set(known_files) - present_names:
            if fileloc.startswith(str(self.folder)) or not Path(fileloc).exists():
                await self.forget(Path(fileloc))
        log.info("loaded %d DAGs from %d files in %s", len(self._registry), len(present), self.folder)

    async def refresh(self, path: Path) -> None:
        """Parse one file and record the result: its DAGs, or its import error."""
        fileloc = str(path)
        now = self._clock.now()
        try:
            specs = await self._parser.parse(fileloc)
            self._registry.check_file(fileloc, specs)
        except (self._parse_error, DuplicateDagId) as exc:
            message = str(exc)
            log.warning(
                "import error in %s: %s", fileloc, message.strip().splitlines()[-1] if message else ""
            )
            await self._store.record_import_error(fileloc, message, now)
            return
        await self._store.sync_dag_file(fileloc, specs, now)
        self._registry.replace_file(fileloc, specs)
        log.info("loaded %s: %s", fileloc, ", ".join(spec.dag_id for spec in specs) or "no DAGs")

    async def forget(self, path: Path) -> None:
        fileloc = str(path)
        self._registry.remove_file(fileloc)
        await self._store.remove_dag_file(fileloc)
        log.info("removed %s", fileloc)

    def stop(self) -> None:
        """Make `watch` return promptly."""
        self._stop.set()

    async def watch(self) -> None:
        """Follow the folder until `stop` is called (or the watch is cancelled)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        async for changes in watchfiles.awatch(
            self.folder, debounce=40, step=10, recursive=True, stop_event=self._stop
        ):
            paths = sorted({Path(raw) for _change, raw in changes})
            for path in paths:
                if not is_dag_file(path):
                    continue
                try:
                    if path.exists():
                        await self.refresh(path)
                    else:
                        await self.forget(path)
                except Exception:
                    log.exception("could not record the change to %s", path)
