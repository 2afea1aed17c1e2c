"""The DAG folder: parse every DAG file at start, then follow changes as they happen.

Files are parsed outside the daemon (a `DagParser`, in the daemon a pool of parser processes),
never imported by it, so a file that hangs, crashes or leaks cannot hurt it. Files are parsed
concurrently, as many at once as the parser allows: a file that hangs holds up only itself.
Changes arrive from the kernel's file notifications (watchfiles, inotify) with a short debounce:
a new file can be triggered well within a second. Changes to one file are handled one at a time,
newest last (a change seen while the file is being parsed parses it again afterwards).

A file that fails to load becomes an import error with its message; its DAGs keep their last
good version, and every other file is untouched. Fixing the file clears the error.

A DAG id belongs to one file. A second file that defines it gets an "already defined" import
error; when the owner goes away or stops defining the id, the refused file is parsed again and
takes it, without anyone touching it. During the first load, an id is kept for the file the
store last knew as its owner, so which of two files owns an id does not depend on which
finished parsing first.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import anyio
import watchfiles

from orchestrator.core.model import DagSpec
from orchestrator.engine.registry import DagRegistry
from orchestrator.ports import Clock, DagParser, Events, ImportErrorChanged, StateStore

log = logging.getLogger("orchestrator.dagfolder")


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
        parser: DagParser,
        store: StateStore,
        registry: DagRegistry,
        clock: Clock,
        parse_error: type[Exception] = Exception,
        events: Events | None = None,
        paused_on_creation: bool = False,
    ) -> None:
        self.folder = folder.resolve()
        #: whether a DAG seen for the first time starts paused (dags.paused_on_creation)
        self._paused_on_creation = paused_on_creation

        self._events = events
        #: files whose import error is recorded (a clearing is published only for these)
        self._errored: set[str] = set()
        self._parser = parser
        self._store = store
        self._registry = registry
        self._clock = clock
        self._parse_error = parse_error
        # watchfiles only checks this between waits of its watcher thread: setting it (rather
        # than cancelling) stops the watch within milliseconds instead of its 5 s timeout
        self._stop = anyio.Event()
        #: files being parsed or recorded, and those changed again meanwhile
        self._busy: set[Path] = set()
        self._again: set[Path] = set()
        #: recording a result (check ids, write, update the registry) is one step at a time
        self._recording = anyio.Lock()
        #: files refused for defining ids other files own: fileloc -> those ids
        self._refused: dict[str, set[str]] = {}
        #: during the first load: dag_id -> the file the store knew as its owner, until it is parsed
        self._reserved: dict[str, str] = {}

    def dag_files(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(path for path in self.folder.rglob("*.py") if is_dag_file(path))

    async def run(self, known_owners: Mapping[str, str] | None = None) -> None:
        """Load every file and follow changes meanwhile and afterwards, until `stop`."""
        async with anyio.create_task_group() as group:
            group.start_soon(self.watch)
            await self.load_all(known_owners)

    async def load_all(self, known_owners: Mapping[str, str] | None = None) -> None:
        """Parse every file now (concurrently); forget files the store knows that are gone.

        `known_owners` is what the store knows: dag_id -> the file that defined it.
        """
        known = dict(known_owners or {})
        if not self.folder.is_dir():
            log.warning(
                "the DAG folder %s does not exist: no DAGs are loaded until it is created", self.folder
            )
        present = self.dag_files()
        present_names = {str(path) for path in present}
        self._reserved = {dag_id: fileloc for dag_id, fileloc in known.items() if fileloc in present_names}
        async with anyio.create_task_group() as group:
            for path in present:
                group.start_soon(self.follow, path)
        for fileloc in sorted(set(known.values()) - present_names):
            if fileloc.startswith(str(self.folder)) or not Path(fileloc).exists():
                await self.forget(Path(fileloc))
        log.info("loaded %d DAGs from %d files in %s", len(self._registry), len(present), self.folder)

    async def follow(self, path: Path) -> None:
        """Bring one file's DAGs up to date with the file (parse it, or forget it if it is gone).

        A call for a file already being handled only asks that handling to run once more.
        """
        if path in self._busy:
            self._again.add(path)
            return
        self._busy.add(path)
        try:
            while True:
                self._again.discard(path)
                try:
                    if path.exists():
                        await self.refresh(path)
                    else:
                        await self.forget(path)
                except Exception:
                    log.exception("could not record the change to %s", path)
                if path not in self._again:
                    return
        finally:
            self._busy.discard(path)

    async def refresh(self, path: Path) -> None:
        """Parse one file and record the result: its DAGs, or its import error."""
        fileloc = str(path)
        error: str | None = None
        specs: list[DagSpec] = []
        try:
            specs = await self._parser.parse(fileloc)
        except self._parse_error as exc:
            error = str(exc)
        async with self._recording:
            before = self._ids_of(fileloc) | self._unreserve(fileloc)
            if error is None:
                error = self._refuse_taken_ids(fileloc, specs)
            else:
                self._refused.pop(fileloc, None)
            now = self._clock.now()
            if error is not None:
                summary = error.strip().splitlines()[-1] if error.strip() else ""
                log.warning("import error in %s: %s", fileloc, summary)
                await self._store.record_import_error(fileloc, error, now)
                self._errored.add(fileloc)
                self._publish(fileloc, error)
            else:
                # the engine first: once the store lists a DAG (what API clients see), a
                # trigger for it must find it loaded
                self._registry.replace_file(fileloc, specs)
                await self._store.sync_dag_file(fileloc, specs, now, self._paused_on_creation)
                self._cleared(fileloc)
                # triggers plan these DAGs again, now that the store knows them (pause flags)
                self._registry.announce(before | {spec.dag_id for spec in specs})
                log.info("loaded %s: %s", fileloc, ", ".join(spec.dag_id for spec in specs) or "no DAGs")
            freed = before - self._ids_of(fileloc)
        await self._reevaluate(freed)

    async def forget(self, path: Path) -> None:
        fileloc = str(path)
        async with self._recording:
            freed = self._ids_of(fileloc) | self._unreserve(fileloc)
            self._refused.pop(fileloc, None)
            self._registry.remove_file(fileloc)
            await self._store.remove_dag_file(fileloc)
            self._cleared(fileloc)
            self._registry.announce(freed)
            log.info("removed %s", fileloc)
        await self._reevaluate(freed)

    def _cleared(self, fileloc: str) -> None:
        if fileloc in self._errored:
            self._errored.discard(fileloc)
            self._publish(fileloc, None)

    def _publish(self, fileloc: str, message: str | None) -> None:
        """Tell the event bus, once the store has the change."""
        if self._events is not None:
            self._events.publish(ImportErrorChanged(fileloc, message))

    def stop(self) -> None:
        """Make `watch` return promptly."""
        self._stop.set()

    async def watch(self) -> None:
        """Follow the folder until `stop` is called (or the watch is cancelled)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        async with anyio.create_task_group() as group:
            async for changes in watchfiles.awatch(
                self.folder, debounce=40, step=5, recursive=True, stop_event=self._stop
            ):
                for path in sorted({Path(raw) for _change, raw in changes}):
                    if is_dag_file(path):
                        group.start_soon(self.follow, path)
            group.cancel_scope.cancel()

    # --- DAG ids and their owners ----------------------------------------------------------
    def _ids_of(self, fileloc: str) -> set[str]:
        return {dag.spec.dag_id for dag in self._registry if dag.spec.fileloc == fileloc}

    def _unreserve(self, fileloc: str) -> set[str]:
        ids = {dag_id for dag_id, owner in self._reserved.items() if owner == fileloc}
        for dag_id in ids:
            del self._reserved[dag_id]
        return ids

    def _refuse_taken_ids(self, fileloc: str, specs: Sequence[DagSpec]) -> str | None:
        """The "already defined" error if another file owns (or is kept) one of these ids."""
        taken: dict[str, str] = {}
        for spec in specs:
            loaded = self._registry.get(spec.dag_id)
            owner = loaded.spec.fileloc if loaded is not None else self._reserved.get(spec.dag_id)
            if owner is not None and owner != fileloc:
                taken[spec.dag_id] = owner
        if not taken:
            self._refused.pop(fileloc, None)
            return None
        self._refused[fileloc] = set(taken)
        return (
            "; ".join(f"DAG id {dag_id!r} is already defined in {owner}" for dag_id, owner in taken.items())
            + ": rename one of the two DAGs"
        )

    async def _reevaluate(self, freed: set[str]) -> None:
        """Parse again the files refused for ids that are now free: one of them may take each."""
        if not freed:
            return
        waiting = sorted(fileloc for fileloc, ids in self._refused.items() if ids & freed)
        for fileloc in waiting:
            log.info("%s defines a DAG id that is free now: parsing it again", fileloc)
            await self.follow(Path(fileloc))
