"""DagParserPool imports DAG files in its worker processes: good, broken, changed, hanging, crashing."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from executors.errors import DagFileParseError
from executors.parser import DagParserPool

pytestmark = pytest.mark.anyio

GOOD = """
from orchestrator import DAG, Bash, Python

def hello():
    return "hi"

with DAG("good", schedule="@daily", tags=["t"]):
    a = Bash("a", "echo a")
    b = Python("b", hello)
    a >> b
"""


@asynccontextmanager
async def parser(timeout: float = 30.0) -> AsyncIterator[DagParserPool]:
    dag_parser = DagParserPool(timeout=timeout)
    await dag_parser.start()
    try:
        yield dag_parser
    finally:
        await dag_parser.close()


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


async def test_good_file_gives_its_dag_specs(tmp_path: Path) -> None:
    path = write(tmp_path, "good.py", GOOD)
    async with parser() as dag_parser:
        (spec,) = await dag_parser.parse(path)
    assert spec.dag_id == "good"
    assert spec.fileloc == path
    assert spec.schedule == "@daily"
    assert [(t.task_id, t.kind, t.upstream) for t in spec.tasks] == [
        ("a", "bash", ()),
        ("b", "python", ("a",)),
    ]
    # the daemon (this process) never imported the user's module
    assert not any((getattr(m, "__file__", None) or "") == path for m in list(sys.modules.values()))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("x = 1 / 0\n", "ZeroDivisionError while importing the DAG file: division by zero"),
        ("def broken(:\n", "SyntaxError"),
        ("import no_such_module_xyz\n", "No module named 'no_such_module_xyz'"),
        ("import sys\nsys.exit(3)\n", "sys.exit(3)"),
    ],
)
async def test_broken_file_gives_the_loader_message(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, "broken.py", text)
    async with parser() as dag_parser:
        with pytest.raises(DagFileParseError) as caught:
            await dag_parser.parse(path)
        assert expected in str(caught.value)
        assert path in str(caught.value)
        # the same worker keeps serving
        assert [s.dag_id for s in await dag_parser.parse(write(tmp_path, "good.py", GOOD))] == ["good"]


async def test_file_changed_between_parses_is_seen(tmp_path: Path) -> None:
    path = write(tmp_path, "changing.py", GOOD)
    async with parser() as dag_parser:
        (before,) = await dag_parser.parse(path)
        Path(path).write_text(GOOD + '    c = Bash("c", "echo c")\n')
        (after,) = await dag_parser.parse(path)
        Path(path).write_text("x = undefined_name\n")
        with pytest.raises(DagFileParseError, match="NameError"):
            await dag_parser.parse(path)
    assert [t.task_id for t in before.tasks] == ["a", "b"]
    assert [t.task_id for t in after.tasks] == ["a", "b", "c"]


async def test_hanging_file_times_out_and_the_parser_recovers(tmp_path: Path) -> None:
    hanging = write(tmp_path, "hangs.py", "import time\ntime.sleep(100)\n")
    good = write(tmp_path, "good.py", GOOD)
    async with parser(timeout=1.0) as dag_parser:
        started = time.monotonic()
        with pytest.raises(DagFileParseError) as caught:
            await dag_parser.parse(hanging)
        assert time.monotonic() - started < 5.0
        assert str(caught.value).startswith("DAG file took longer than 1 s to import")
        assert [s.dag_id for s in await dag_parser.parse(good)] == ["good"]


async def test_crashing_file_is_reported_and_the_parser_recovers(tmp_path: Path) -> None:
    crashing = write(tmp_path, "crashes.py", "import os\nos._exit(9)\n")
    good = write(tmp_path, "good.py", GOOD)
    async with parser() as dag_parser:
        with pytest.raises(DagFileParseError, match=r"parser process crashed \(exit code 9\)"):
            await dag_parser.parse(crashing)
        assert [s.dag_id for s in await dag_parser.parse(good)] == ["good"]


async def test_concurrent_parses_are_all_answered(tmp_path: Path) -> None:
    paths = [write(tmp_path, f"dag{i}.py", GOOD.replace('"good"', f'"dag{i}"')) for i in range(8)]
    async with parser() as dag_parser:
        results = await asyncio.gather(*(dag_parser.parse(p) for p in paths))
    assert [[s.dag_id for s in specs] for specs in results] == [[f"dag{i}"] for i in range(8)]


async def test_parse_after_close_is_refused(tmp_path: Path) -> None:
    dag_parser = DagParserPool()
    await dag_parser.start()
    await dag_parser.close()
    with pytest.raises(DagFileParseError, match="closed"):
        await dag_parser.parse(write(tmp_path, "good.py", GOOD))
