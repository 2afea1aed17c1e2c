"""The `orchestrator` command as a user runs it: a subprocess talking HTTP to a real API server.

The server is the real aiohttp app on 127.0.0.1 with a real PostgreSQL store, started in the
test's event loop; the CLI runs as `python -m orchestrator ...` in a child process.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.api import create_app
from orchestrator.cli import render_table, resolve_base_url
from orchestrator.errors import ConfigError
from orchestrator.ports import StateStore
from tests.apiauth import TOKENS, api_settings, headers
from tests.integration.test_api import Api, StoreEngine, seed, serve, start_extract, ticking_clock, write_log
from tests.pgserver import PgServer

pytestmark = pytest.mark.anyio

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    env.update(extra)
    return env


async def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> Result:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "orchestrator",
        *args,
        cwd=cwd,
        env=env or clean_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return Result(process.returncode, out.decode(), err.decode())


@dataclass
class Server:
    api: Api
    cwd: Path

    async def run(self, *args: str) -> Result:
        return await cli(
            *args, "--url", self.api.url, cwd=self.cwd, env=clean_env(ORCHESTRATOR_TOKEN=TOKENS["admin"])
        )


@pytest.fixture
async def server(store: StateStore, tmp_path: Path) -> AsyncIterator[Server]:
    import aiohttp

    await seed(store)
    engine = StoreEngine(store, ticking_clock())
    logs_dir = tmp_path / "logs"
    runner, url = await serve(create_app(store, engine, logs_dir, settings=api_settings()))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    try:
        async with aiohttp.ClientSession(headers=headers()) as http:
            yield Server(Api(url, http, store, engine, logs_dir), cwd)
    finally:
        await runner.cleanup()


async def test_version(tmp_path: Path) -> None:
    result = await cli("--version", cwd=tmp_path)
    assert result.code == 0
    assert result.out.startswith("orchestrator 0.1.0")


async def test_trigger_prints_the_run_id_and_state(server: Server) -> None:
    result = await server.run("trigger", "etl", "--run-id", "r1", "--conf", '{"day": "2026-01-02"}')
    assert result.code == 0, result.err
    assert result.out == "triggered etl run r1 (state queued)\n"
    run = await server.api.store.get_run("etl", "r1")
    assert run is not None and run.conf == {"day": "2026-01-02"}


async def test_trigger_with_logical_date_and_json_output(server: Server) -> None:
    result = await server.run(
        "trigger", "other", "--logical-date", "2026-04-05T06:07:08+00:00", "--output", "json"
    )
    assert result.code == 0, result.err
    run = json.loads(result.out)
    assert run["logical_date"] == "2026-04-05T06:07:08+00:00"
    assert run["dag_run_id"].startswith("manual__")


async def test_trigger_the_same_run_id_twice_exits_1_with_the_message(server: Server) -> None:
    assert (await server.run("trigger", "etl", "--run-id", "dup")).code == 0
    result = await server.run("trigger", "etl", "--run-id", "dup")
    assert result.code == 1
    assert "already exists" in result.err and "'dup'" in result.err
    assert result.out == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["trigger", "nope"], "DAG 'nope' not found"),
        (["trigger", "etl", "--conf", "[1]"], "--conf must be a JSON object"),
        (["trigger", "etl", "--conf", "{bad"], "--conf is not valid JSON"),
        (["trigger", "etl", "--run-id", "bad id"], "dag_run_id 'bad id' is invalid"),
        (
            ["trigger", "etl", "--logical-date", "tomorrow"],
            "logical_date 'tomorrow' is not an ISO 8601 datetime",
        ),
        (["runs", "nope"], "DAG 'nope' not found"),
        (["runs", "etl", "--limit", "0"], "limit=0 must be at least 1"),
        (["tasks", "etl", "no-such-run"], "DAG run 'no-such-run' of DAG 'etl' not found"),
        (["logs", "etl", "no-such-run", "extract"], "DAG run 'no-such-run' of DAG 'etl' not found"),
    ],
)
async def test_api_errors_print_the_detail_and_exit_1(server: Server, args: list[str], message: str) -> None:
    result = await server.run(*args)
    assert result.code == 1
    assert message in result.err
    assert result.err.startswith("error: ")


async def test_runs_table_and_json(server: Server) -> None:
    for run_id in ("first", "second"):
        assert (await server.run("trigger", "etl", "--run-id", run_id)).code == 0
    result = await server.run("runs", "etl")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].split() == ["dag_run_id", "state", "run_type", "logical_date", "start_date", "end_date"]
    assert set(lines[1]) == {"-", " "}
    assert [line.split()[0] for line in lines[2:]] == ["second", "first"]  # newest first
    assert lines[2].split()[1:3] == ["queued", "manual"]
    assert lines[0].index("state") == lines[2].index("queued")  # aligned columns
    result = await server.run("runs", "etl", "--limit", "1", "--output", "json")
    data = json.loads(result.out)
    assert data["total_entries"] == 2
    assert [run["dag_run_id"] for run in data["dag_runs"]] == ["second"]


async def test_tasks_table_and_json(server: Server) -> None:
    await start_extract(server.api, "r1")
    result = await server.run("tasks", "etl", "r1")
    assert result.code == 0, result.err
    rows = {line.split()[0]: line.split() for line in result.out.splitlines()[2:]}
    assert set(rows) == {"extract", "load", "report", "transform"}
    assert rows["extract"][1:5] == ["-1", "running", "1", "BashOperator"]
    assert rows["transform"][1:5] == ["-1", "none", "0", "PythonOperator"]
    data = json.loads((await server.run("tasks", "etl", "r1", "-o", "json")).out)
    assert data["total_entries"] == 4


async def test_logs_of_the_latest_try_of_a_given_try_and_as_json(server: Server) -> None:
    run = await start_extract(server.api, "r1")
    write_log(server.api, run, "extract", 1, "hello from try 1\n")
    result = await server.run("logs", "etl", "r1", "extract")
    assert result.code == 0, result.err
    assert result.out == "hello from try 1\n"
    result = await server.run("logs", "etl", "r1", "extract", "--try", "1", "--output", "json")
    assert json.loads(result.out) == {"content": "hello from try 1\n", "continuation_token": None}
    result = await server.run("logs", "etl", "r1", "extract", "--try", "2")
    assert result.code == 1
    assert "no log for try 2 of task 'extract'" in result.err


async def test_logs_of_a_task_that_has_not_started(server: Server) -> None:
    await start_extract(server.api, "r1")
    result = await server.run("logs", "etl", "r1", "transform")
    assert result.code == 1
    assert "task 'transform' has not started yet (state none): no log" in result.err


async def test_dags_list_and_errors(server: Server) -> None:
    result = await server.run("dags", "list")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].split() == ["dag_id", "is_paused", "schedule", "next_dagrun", "tags", "fileloc"]
    assert lines[2].split() == ["etl", "no", "0", "3", "*", "*", "*", "team-a,daily", "/dags/etl.py"]
    assert lines[3].split() == ["other", "no", "/dags/other.py"]
    data = json.loads((await server.run("dags", "list", "--output", "json")).out)
    assert [dag["dag_id"] for dag in data["dags"]] == ["etl", "other"]

    result = await server.run("dags", "errors")
    assert result.out == "no import errors\n"
    await server.api.store.record_import_error(
        "/dags/broken.py", "Traceback:\nSyntaxError: bad", ticking_clock()()
    )
    result = await server.run("dags", "errors")
    assert result.code == 0
    assert result.out.splitlines() == [
        "/dags/broken.py (2026-01-01T00:00:01+00:00):",
        "    Traceback:",
        "    SyntaxError: bad",
    ]
    data = json.loads((await server.run("dags", "errors", "-o", "json")).out)
    assert data["import_errors"][0]["filename"] == "/dags/broken.py"


async def test_an_unreachable_daemon_exits_2(tmp_path: Path) -> None:
    result = await cli("dags", "list", "--url", "http://127.0.0.1:9", cwd=tmp_path)
    assert result.code == 2
    assert "cannot reach the orchestrator at http://127.0.0.1:9: is `orchestrator run` running?" in result.err


async def test_the_url_and_token_come_from_the_state_dir(server: Server) -> None:
    """A daemon without api.tokens writes api.url and its generated admin token, api-token,
    into its state dir; the CLI on the same machine finds both."""
    (server.cwd / "config.toml").write_text('[daemon]\nstate_dir = "st"\n[api]\nport = 9\n')
    (server.cwd / "st").mkdir()
    (server.cwd / "st" / "api.url").write_text(server.api.url + "\n")
    result = await cli("dags", "list", cwd=server.cwd)
    assert result.code == 1 and "needs a token and the CLI found none" in result.err
    (server.cwd / "st" / "api-token").write_text(TOKENS["admin"] + "\n")
    result = await cli("dags", "list", cwd=server.cwd)
    assert result.code == 0, result.err
    assert "etl" in result.out


async def test_the_url_and_token_come_from_the_environment(server: Server) -> None:
    env = clean_env(ORCHESTRATOR_URL=server.api.url, ORCHESTRATOR_TOKEN=TOKENS["viewer"])
    result = await cli("runs", "etl", cwd=server.cwd, env=env)
    assert result.code == 0, result.err
    assert result.out == "(none)\n"


async def test_the_token_comes_from_api_token_file(server: Server) -> None:
    (server.cwd / "operator.token").write_text(TOKENS["operator"] + "\n")
    (server.cwd / "config.toml").write_text('[api]\ntoken_file = "operator.token"\n')
    result = await cli("trigger", "etl", "--run-id", "from-file", "--url", server.api.url, cwd=server.cwd)
    assert result.code == 0, result.err
    assert await server.api.store.get_run("etl", "from-file") is not None


async def test_a_token_whose_role_is_too_low_exits_1_naming_the_role_needed(server: Server) -> None:
    env = clean_env(ORCHESTRATOR_TOKEN=TOKENS["viewer"])
    result = await cli("trigger", "etl", "--url", server.api.url, cwd=server.cwd, env=env)
    assert result.code == 1
    assert "token 'viewer' has the role viewer" in result.err and "needs operator" in result.err
    env = clean_env(ORCHESTRATOR_TOKEN="not-a-configured-token-at-all")
    result = await cli("dags", "list", "--url", server.api.url, cwd=server.cwd, env=env)
    assert result.code == 1 and "not one of api.tokens" in result.err
    assert "not-a-configured" not in result.err


async def test_the_state_dir_token_is_never_sent_to_another_host(tmp_path: Path) -> None:
    from orchestrator.cli import resolve_token

    (tmp_path / "st").mkdir()
    (tmp_path / "st" / "api-token").write_text("local-secret-token\n")
    (tmp_path / "config.toml").write_text(f'[daemon]\nstate_dir = "{tmp_path / "st"}"\n')
    config = tmp_path / "config.toml"
    assert resolve_token("http://127.0.0.1:8080", config, {}) == "local-secret-token"
    assert resolve_token("http://[::1]:8080", config, {}) == "local-secret-token"
    assert resolve_token("https://orchestrator.example.com", config, {}) is None
    assert resolve_token("https://orchestrator.example.com", config, {"ORCHESTRATOR_TOKEN": "t"}) == "t"


async def test_a_bad_config_is_reported_when_it_is_needed(tmp_path: Path) -> None:
    result = await cli("dags", "list", cwd=tmp_path, env=clean_env(ORCHESTRATOR_API__PORT="abc"))
    assert result.code == 1
    assert result.err == "error: ORCHESTRATOR_API__PORT='abc' is not an integer\n"


async def test_a_usage_error_exits_2(tmp_path: Path) -> None:
    result = await cli("trigger", cwd=tmp_path)
    assert result.code == 2
    assert "dag_id" in result.err


def test_db_migrate_applies_the_migrations_then_reports_up_to_date(
    pg_server: PgServer, tmp_path: Path
) -> None:
    name = pg_server.create_database()  # empty: no template
    try:
        env = clean_env(ORCHESTRATOR_DATABASE__DSN=pg_server.dsn(name))
        command = [sys.executable, "-m", "orchestrator", "db", "migrate"]
        first = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert first.returncode == 0, first.stderr
        assert first.stdout.startswith("applied migrations: 1")
        second = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 0, second.stderr
        assert second.stdout == "the database is up to date: no migrations to apply\n"
    finally:
        pg_server.drop_database(name)


# --- pure helpers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config_text", "environ", "expected"),
    [
        ("", {"ORCHESTRATOR_URL": "http://env:1"}, "http://env:1"),
        ('[api]\nhost = "10.0.0.5"\nport = 9000\n', {}, "http://10.0.0.5:9000"),
        ('[api]\nhost = "0.0.0.0"\nport = 9000\n', {}, "http://127.0.0.1:9000"),
        ('[api]\nhost = "::"\nport = 9000\n', {}, "http://[::1]:9000"),
        ("", {"ORCHESTRATOR_API__PORT": "7000"}, "http://127.0.0.1:7000"),
    ],
)
def test_resolve_base_url(tmp_path: Path, config_text: str, environ: dict[str, str], expected: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(config_text)
    assert resolve_base_url(None, config, environ) == expected


def test_resolve_base_url_prefers_the_flag_and_validates_the_config_only_when_needed(tmp_path: Path) -> None:
    assert resolve_base_url("http://flag:1", None, {"ORCHESTRATOR_API__PORT": "abc"}) == "http://flag:1"
    with pytest.raises(ConfigError):
        resolve_base_url(None, tmp_path / "missing.toml", {})


def test_render_table_aligns_columns() -> None:
    table = render_table([{"a": "x", "b": None}, {"a": "longer", "b": True}], ["a", "b"])
    assert table.splitlines() == ["a       b", "------  ---", "x", "longer  yes"]
