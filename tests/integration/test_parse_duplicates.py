"""A DAG id defined by two files: the second gets "already defined", and takes the id (its error
cleared, nobody touching it) once the first file goes or stops defining it."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
import pytest

from executors.errors import DagFileParseError
from executors.parser import DagParserPool
from orchestrator.dagfolder import DagFolder
from orchestrator.engine.clock import SystemClock
from orchestrator.engine.registry import DagRegistry
from storage.postgres import PostgresStateStore

pytestmark = pytest.mark.anyio


def dag_file(dag_id: str) -> str:
    return f"from orchestrator import DAG, Bash\nwith DAG({dag_id!r}):\n    Bash('t', 'true')\n"


@pytest.fixture
async def parsers() -> AsyncIterator[DagParserPool]:
    pool = DagParserPool(2, timeout=20)
    await pool.start()
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
def make_folder(
    tmp_path: Path, parsers: DagParserPool, store: PostgresStateStore
) -> Callable[[], tuple[DagFolder, DagRegistry]]:
    def make() -> tuple[DagFolder, DagRegistry]:
        registry = DagRegistry()
        folder = DagFolder(
            tmp_path / "dags", parsers, store, registry, SystemClock(), parse_error=DagFileParseError
        )
        return folder, registry

    (tmp_path / "dags").mkdir()
    return make


async def errors_of(store: PostgresStateStore) -> dict[str, str]:
    return {Path(e.filename).name: e.message for e in await store.list_import_errors()}


async def owner_of(store: PostgresStateStore, dag_id: str) -> str | None:
    record = await store.get_dag(dag_id)
    return Path(record.fileloc).name if record is not None and record.is_active else None


async def test_the_second_file_takes_the_id_when_the_first_is_deleted(
    tmp_path: Path, make_folder: Callable[[], tuple[DagFolder, DagRegistry]], store: PostgresStateStore
) -> None:
    folder, registry = make_folder()
    first = tmp_path / "dags" / "first.py"
    second = tmp_path / "dags" / "second.py"
    first.write_text(dag_file("shared"))
    await folder.follow(first)
    second.write_text(dag_file("shared"))
    await folder.follow(second)
    assert "DAG id 'shared' is already defined in " + str(first) in (await errors_of(store))["second.py"]
    assert await owner_of(store, "shared") == "first.py"

    first.unlink()
    await folder.follow(first)  # what the watch does for a deleted file; second.py is not touched

    loaded = registry.get("shared")
    assert loaded is not None and loaded.spec.fileloc == str(second)
    assert await errors_of(store) == {}
    assert await owner_of(store, "shared") == "second.py"


async def test_the_second_file_takes_the_id_when_the_first_stops_defining_it(
    tmp_path: Path, make_folder: Callable[[], tuple[DagFolder, DagRegistry]], store: PostgresStateStore
) -> None:
    folder, registry = make_folder()
    first = tmp_path / "dags" / "first.py"
    second = tmp_path / "dags" / "second.py"
    first.write_text(dag_file("shared"))
    await folder.follow(first)
    second.write_text(dag_file("shared"))
    await folder.follow(second)
    assert "second.py" in await errors_of(store)

    first.write_text(dag_file("renamed"))
    await folder.follow(first)

    assert {d.spec.dag_id: Path(d.spec.fileloc).name for d in registry} == {
        "renamed": "first.py",
        "shared": "second.py",
    }
    assert await errors_of(store) == {}


async def test_the_store_s_owner_keeps_its_id_when_both_files_load_at_start(
    tmp_path: Path, make_folder: Callable[[], tuple[DagFolder, DagRegistry]], store: PostgresStateStore
) -> None:
    first = tmp_path / "dags" / "a_first.py"
    second = tmp_path / "dags" / "b_second.py"
    first.write_text(dag_file("shared"))
    second.write_text(dag_file("shared"))
    for _ in range(3):  # whichever file finishes parsing first, the known owner keeps the id
        folder, registry = make_folder()
        await folder.load_all(known_owners={"shared": str(second)})
        loaded = registry.get("shared")
        assert loaded is not None and loaded.spec.fileloc == str(second)
        assert list(await errors_of(store)) == ["a_first.py"]


async def test_the_watch_lets_the_second_file_take_the_id_of_a_deleted_first(
    tmp_path: Path, make_folder: Callable[[], tuple[DagFolder, DagRegistry]], store: PostgresStateStore
) -> None:
    folder, registry = make_folder()
    first = tmp_path / "dags" / "a_first.py"
    second = tmp_path / "dags" / "b_second.py"
    first.write_text(dag_file("shared"))
    second.write_text(dag_file("shared"))
    async with anyio.create_task_group() as group:
        group.start_soon(folder.run, {"shared": str(first)})
        await wait_until(lambda: registry.get("shared") is not None, "the first load")
        await wait_until(watching(tmp_path / "dags" / "probe.py", registry), "the watch to see a new file")
        first.unlink()

        def second_owns_it() -> bool:
            loaded = registry.get("shared")
            return loaded is not None and loaded.spec.fileloc == str(second)

        await wait_until(second_owns_it, "the second file to take the id")
        # the engine has the DAG first; the store's record (and the cleared error) follows
        deadline = time.monotonic() + 15
        while await errors_of(store) and time.monotonic() < deadline:
            await anyio.sleep(0.02)  # pacing between checks of a condition, not synchronisation
        folder.stop()
        group.cancel_scope.cancel()
    assert await errors_of(store) == {}


def watching(probe: Path, registry: DagRegistry) -> Callable[[], bool]:
    """True once the watch has loaded `probe`; (re)writes it meanwhile, as the watcher thread may
    not be listening yet when it is first written."""
    checks = [0]

    def seen() -> bool:
        if registry.get("probe") is not None:
            return True
        if checks[0] % 25 == 0:
            probe.write_text(dag_file("probe"))
        checks[0] += 1
        return False

    return seen


async def wait_until(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await anyio.sleep(0.02)  # pacing between checks of a condition, not synchronisation


async def test_import_errors_recorded_and_cleared_are_published_on_the_event_bus(
    tmp_path: Path, parsers: DagParserPool, store: PostgresStateStore
) -> None:
    from orchestrator.engine.events import EventBus
    from orchestrator.ports import ImportErrorChanged

    bus = EventBus()
    subscription = bus.subscribe()
    folder = DagFolder(
        tmp_path / "dags",
        parsers,
        store,
        DagRegistry(),
        SystemClock(),
        parse_error=DagFileParseError,
        events=bus,
    )
    (tmp_path / "dags").mkdir()
    path = tmp_path / "dags" / "flaky.py"
    path.write_text("raise RuntimeError('not today')\n")
    await folder.refresh(path)
    path.write_text(dag_file("flaky"))
    await folder.refresh(path)
    await folder.refresh(path)  # still fine: nothing more to say
    subscription.close()
    events = [event async for event in subscription]

    assert [type(e) for e in events] == [ImportErrorChanged, ImportErrorChanged]
    recorded, cleared = events
    assert isinstance(recorded, ImportErrorChanged) and isinstance(cleared, ImportErrorChanged)
    assert recorded.fileloc == cleared.fileloc == str(path)
    assert recorded.message is not None and "not today" in recorded.message
    assert cleared.message is None
