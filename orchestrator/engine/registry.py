"""The DAGs the daemon knows, by id and by file, each with its precomputed graph.

Filled by the DAG folder loader after every parse. A DAG id belongs to one file: a second
file defining the same id is refused (an import error for that file), as silently
replacing someone else's DAG would be worse.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from orchestrator.core.kinds import UnknownTaskKind, get_kind
from orchestrator.core.model import DagSpec, TaskSpec
from orchestrator.core.resolver import DagGraph

log = logging.getLogger("orchestrator.engine.registry")


@dataclass(frozen=True, slots=True)
class LoadedDag:
    """A DAG ready to schedule: its spec, its graph, its tasks by id."""

    spec: DagSpec
    graph: DagGraph
    tasks: dict[str, TaskSpec]
    #: the Airflow operator name of each task (from its kind), as task-instance rows record it
    operators: dict[str, str]

    @classmethod
    def of(cls, spec: DagSpec) -> LoadedDag:
        return cls(
            spec,
            DagGraph.from_spec(spec),
            {task.task_id: task for task in spec.tasks},
            {task.task_id: operator_name(task.kind) for task in spec.tasks},
        )


def operator_name(kind: str) -> str:
    """The Airflow operator a task of `kind` stands for (the kind's name if it is unknown)."""
    try:
        return get_kind(kind).operator
    except UnknownTaskKind:
        return kind


class DuplicateDagId(Exception):
    """A file defines a DAG id that another file already defines."""


class DagRegistry:
    """dag_id → LoadedDag, plus which file defined which ids."""

    def __init__(self) -> None:
        self._dags: dict[str, LoadedDag] = {}
        self._by_file: dict[str, tuple[str, ...]] = {}
        #: told of the ids of DAGs (re)defined or dropped by a file (triggers plan them again)
        self._listeners: list[Callable[[tuple[str, ...]], None]] = []

    def add_listener(self, callback: Callable[[tuple[str, ...]], None]) -> None:
        """Call `callback(dag_ids)` with the DAGs a file (re)defined or stopped defining, each
        time the loader `announce`s them: once the store has recorded the change too."""
        self._listeners.append(callback)

    def announce(self, dag_ids: Iterable[str]) -> None:
        """Tell the listeners these DAGs changed (the loader calls it after the store's sync)."""
        ids = tuple(sorted(set(dag_ids)))
        if not ids:
            return
        for listener in tuple(self._listeners):
            try:
                listener(ids)
            except Exception:
                log.exception("a listener of DAG changes failed on %s", ", ".join(ids))

    def get(self, dag_id: str) -> LoadedDag | None:
        return self._dags.get(dag_id)

    def __iter__(self) -> Iterator[LoadedDag]:
        return iter(self._dags.values())

    def __len__(self) -> int:
        return len(self._dags)

    def check_file(self, fileloc: str, specs: Sequence[DagSpec]) -> None:
        """Raise DuplicateDagId if one of these ids is already owned by another file."""
        for spec in specs:
            owner = self._dags.get(spec.dag_id)
            if owner is not None and owner.spec.fileloc != fileloc:
                raise DuplicateDagId(
                    f"DAG id {spec.dag_id!r} is already defined in {owner.spec.fileloc}: "
                    "rename one of the two DAGs"
                )

    def replace_file(self, fileloc: str, specs: Sequence[DagSpec]) -> None:
        """The file now defines exactly these DAGs (call check_file first)."""
        for dag_id in self._by_file.get(fileloc, ()):
            self._dags.pop(dag_id, None)
        for spec in specs:
            self._dags[spec.dag_id] = LoadedDag.of(spec)
        self._by_file[fileloc] = tuple(spec.dag_id for spec in specs)

    def remove_file(self, fileloc: str) -> None:
        for dag_id in self._by_file.pop(fileloc, ()):
            self._dags.pop(dag_id, None)

    def files(self) -> list[str]:
        return list(self._by_file)
