"""`orchestrator xcoms DAG RUN TASK [--key KEY] [--json]`: a subprocess of the real CLI talking
HTTP to the real API on a real PostgreSQL (the `server` fixture of test_cli)."""

from __future__ import annotations

import json

import pytest

from orchestrator.core.records import ChangeSet, XComRecord
from tests.integration.test_api import start_extract
from tests.integration.test_cli import Server, server

pytestmark = pytest.mark.anyio

__all__ = ["server"]  # the fixture, imported for the tests below


async def write_xcoms(server: Server) -> None:
    run = await start_extract(server.api, "r1")
    await server.api.store.commit(
        ChangeSet(
            xcoms=[
                XComRecord(run.pk, "extract", -1, "return_value", {"rows": 3}),
                XComRecord(run.pk, "extract", -1, "path", "/data/out.csv"),
            ]
        )
    )


async def test_xcoms_lists_keys_with_their_values(server: Server) -> None:
    await write_xcoms(server)
    result = await server.run("xcoms", "etl", "r1", "extract")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].split() == ["key", "map_index", "timestamp", "value"]
    rows = {line.split()[0]: line for line in lines[2:]}
    assert set(rows) == {"path", "return_value"}
    assert rows["path"].endswith("/data/out.csv")
    assert rows["return_value"].endswith('{"rows": 3}')

    data = json.loads((await server.run("xcoms", "etl", "r1", "extract", "--json")).out)
    assert data["total_entries"] == 2
    assert {e["key"]: e["value"] for e in data["xcom_entries"]} == {
        "path": "/data/out.csv",
        "return_value": {"rows": 3},
    }


async def test_xcoms_key_prints_one_value(server: Server) -> None:
    await write_xcoms(server)
    result = await server.run("xcoms", "etl", "r1", "extract", "--key", "return_value")
    assert result.code == 0, result.err
    assert json.loads(result.out) == {"rows": 3}
    result = await server.run("xcoms", "etl", "r1", "extract", "--key", "path")
    assert result.out == "/data/out.csv\n"
    result = await server.run("xcoms", "etl", "r1", "extract", "--key", "path", "--json")
    assert json.loads(result.out)["value"] == "/data/out.csv"


async def test_xcoms_of_an_unknown_key_exits_1_with_the_detail(server: Server) -> None:
    await write_xcoms(server)
    result = await server.run("xcoms", "etl", "r1", "extract", "--key", "nope")
    assert result.code == 1
    assert "XCom entry 'nope'" in result.err
