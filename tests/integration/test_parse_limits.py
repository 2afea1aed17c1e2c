"""DagParserPool bounds every parse: a pool (a hanging file holds up only itself), a time limit,
a memory limit, no process left behind, no memory kept, and the environment tasks get."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from executors.errors import DagFileParseError
from executors.parser import DagParserPool, resident_mb
from orchestrator.config import Config, DagsConfig
from orchestrator.daemon import build_parser

pytestmark = pytest.mark.anyio

GOOD = """
from orchestrator import DAG, Bash

with DAG("good"):
    Bash("a", "echo a")
"""


@asynccontextmanager
async def pool(size: int = 2, **kwargs: Any) -> AsyncIterator[DagParserPool]:
    parsers = DagParserPool(size, **kwargs)
    await parsers.start()
    try:
        yield parsers
    finally:
        await parsers.close()


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


async def wait_until(condition: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)  # pacing between checks of a condition, not synchronisation


def is_gone(pid: int) -> bool:
    """The process has exited (a zombie nobody reaps yet counts: it runs nothing)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def pid_written_to(marker: Path) -> int:
    return int(marker.read_text())


async def test_a_hanging_file_does_not_hold_up_the_others(tmp_path: Path) -> None:
    started = tmp_path / "started"
    hanging = write(
        tmp_path, "hangs.py", f"import time\nopen({str(started)!r}, 'w').close()\ntime.sleep(300)\n"
    )
    good = write(tmp_path, "good.py", GOOD)
    async with pool(size=2, timeout=60) as parsers:
        hang = asyncio.ensure_future(parsers.parse(hanging))
        await wait_until(started.exists, "the hanging file to start")
        assert [s.dag_id for s in await parsers.parse(good)] == ["good"]
        assert [s.dag_id for s in await parsers.parse(good)] == ["good"]
        assert not hang.done()  # still hanging, and it held nothing else up
        hang.cancel()
        with pytest.raises(asyncio.CancelledError):
            await hang


async def test_a_file_past_parse_timeout_is_stopped_with_what_it_started(tmp_path: Path) -> None:
    marker = tmp_path / "child.pid"
    hanging = write(
        tmp_path,
        "hangs.py",
        "import subprocess, time\n"
        f"open({str(marker)!r}, 'w').write(str(subprocess.Popen(['sleep', '1000']).pid))\n"
        "time.sleep(300)\n",
    )
    async with pool(size=1, timeout=1.0) as parsers:
        with pytest.raises(DagFileParseError) as caught:
            await parsers.parse(hanging)
        message = str(caught.value)
        assert message.startswith("DAG file took longer than 1 s to import (dags.parse_timeout)")
        assert hanging in message
        assert "raise dags.parse_timeout" in message
        await wait_until(lambda: is_gone(pid_written_to(marker)), "the file's child to be killed")
        # the same pool serves the next file at once
        assert [s.dag_id for s in await parsers.parse(write(tmp_path, "good.py", GOOD))] == ["good"]


async def test_a_file_past_parse_memory_mb_gets_an_import_error_naming_the_limit(tmp_path: Path) -> None:
    greedy = write(tmp_path, "greedy.py", "blob = b'x' * (1024 * 1024 * 1024)\n")
    async with pool(size=1, memory_mb=256) as parsers:
        with pytest.raises(DagFileParseError) as caught:
            await parsers.parse(greedy)
        message = str(caught.value)
        assert message.startswith(
            "DAG file needed more than 256 MB of memory to import (dags.parse_memory_mb)"
        )
        assert greedy in message and "MemoryError" in message
        assert [s.dag_id for s in await parsers.parse(write(tmp_path, "good.py", GOOD))] == ["good"]


async def test_a_child_the_file_starts_is_killed_when_its_parse_ends(tmp_path: Path) -> None:
    marker = tmp_path / "child.pid"
    spawner = write(
        tmp_path,
        "spawner.py",
        "import subprocess\n"
        f"open({str(marker)!r}, 'w').write(str(subprocess.Popen(['sleep', '1000']).pid))\n" + GOOD,
    )
    async with pool(size=1) as parsers:
        assert [s.dag_id for s in await parsers.parse(spawner)] == ["good"]
        child = pid_written_to(marker)
        await wait_until(lambda: is_gone(child), f"the file's child {child} to be killed")


async def test_no_parser_process_keeps_the_memory_of_a_large_file(tmp_path: Path) -> None:
    large = write(tmp_path, "large.py", "blob = b'x' * (300 * 1024 * 1024)\n" + GOOD)
    async with pool(size=1, memory_mb=1024) as parsers:
        assert [s.dag_id for s in await parsers.parse(large)] == ["good"]
        for pid in parsers.worker_pids():
            rss = resident_mb(pid)
            assert rss is not None and rss < 150, f"parser process {pid} keeps {rss} MB"


async def test_a_parser_process_grown_past_its_threshold_is_replaced(tmp_path: Path) -> None:
    good = write(tmp_path, "good.py", GOOD)
    async with pool(size=1, recycle_rss_mb=1) as parsers:
        (first,) = parsers.worker_pids()
        assert [s.dag_id for s in await parsers.parse(good)] == ["good"]
        await wait_until(lambda: is_gone(first), "the grown parser process to exit")
        assert [s.dag_id for s in await parsers.parse(good)] == ["good"]
        assert first not in parsers.worker_pids()


async def test_dag_files_do_not_see_the_daemons_configuration_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORCHESTRATOR_DATABASE__DSN", "postgresql://orchestrator:secret@db/orchestrator")
    monkeypatch.setenv("SOME_TASK_SETTING", "visible")
    probe = write(
        tmp_path,
        "probe.py",
        "import os\nfrom orchestrator import DAG, Bash\n"
        "with DAG('probe', description=os.environ.get('ORCHESTRATOR_DATABASE__DSN', 'unset'),\n"
        "         tags=[os.environ.get('SOME_TASK_SETTING', 'unset')]):\n"
        "    Bash('a', 'true')\n",
    )
    parsers = build_parser(Config(dags=DagsConfig(parser_processes=1)))
    await parsers.start()
    try:
        (spec,) = await parsers.parse(probe)
    finally:
        await parsers.close()
    assert spec.description == "unset"
    assert spec.tags == ("visible",)
    assert os.environ["ORCHESTRATOR_DATABASE__DSN"]  # the daemon itself still has it
