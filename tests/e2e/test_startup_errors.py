"""Start-up failures end in one clear line and exit code 1: `orchestrator run` as a process, with
an API port already taken, and with a database server that accepts connections but never answers.
And a daemon started with the limit keys (and the deprecated log-level variable) applies them."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import Daemon

pytestmark = pytest.mark.e2e


def run_daemon(root: Path, config: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    (root / "dags").mkdir(exist_ok=True)
    path = root / "config.toml"
    path.write_text(config)
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", "run", "--config", str(path)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port on 127.0.0.1 that something else is listening on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP server on 127.0.0.1 that accepts connections and never says a word."""
    loop = asyncio.new_event_loop()
    held: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # keep the connection open, answer nothing

    server = loop.run_until_complete(asyncio.start_server(accept, "127.0.0.1", 0))
    port = server.sockets[0].getsockname()[1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        server.close()
        for writer in held:
            writer.transport.abort()
        loop.close()


def test_an_api_port_in_use_is_one_clear_line_and_exit_code_1(
    workdir: Path, database_dsn: str, taken_port: int
) -> None:
    result = run_daemon(
        workdir,
        f"""
[daemon]
state_dir = "state"
[database]
dsn = "{database_dsn}"
[api]
host = "127.0.0.1"
port = {taken_port}
""",
    )
    assert result.returncode == 1, result.stderr
    expected = f"error: cannot listen on 127.0.0.1:{taken_port}: address already in use; set api.port"
    assert expected in result.stderr.splitlines(), result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "ExceptionGroup" not in result.stderr, result.stderr[-3000:]


def test_a_database_that_never_answers_gives_up_after_connect_timeout_naming_the_server(
    workdir: Path, silent_server: int
) -> None:
    result = run_daemon(
        workdir,
        f"""
[daemon]
state_dir = "state"
[database]
dsn = "postgresql://orchestrator:secret@127.0.0.1:{silent_server}/orchestrator"
connect_timeout = 0.5
[api]
port = 0
""",
    )
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: PostgreSQL at 127.0.0.1:{silent_server} did not answer within 0.5 s"), (
        last
    )
    assert "database.connect_timeout" in last and "secret" not in result.stderr
    assert "Traceback" not in result.stderr, result.stderr[-3000:]


def test_db_migrate_on_a_database_that_never_answers_names_the_timeout_too(
    workdir: Path, silent_server: int
) -> None:
    path = workdir / "config.toml"
    path.write_text(
        f"""
[database]
dsn = "postgresql://orchestrator@127.0.0.1:{silent_server}/orchestrator"
connect_timeout = 0.5
"""
    )
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator", "db", "migrate", "--config", str(path)],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert f"PostgreSQL at 127.0.0.1:{silent_server} did not answer within 0.5 s" in result.stderr


LIMITS_DAG = textwrap.dedent(
    """
    from orchestrator import DAG, Bash, Python

    def nul():
        return "a\\x00b"

    def large():
        return {"rows": list(range(1000))}

    with DAG("limits", schedule=None):
        Python("nul", nul)
        Python("large", large)
        Bash("spin", "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}true")
        Bash("fine", "echo {{ params.day | default('x') | shquote }}")
    """
)


def test_the_daemon_applies_the_configured_limits_and_the_deprecated_log_level(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon(
        extra_config="\n[xcom]\nmax_bytes = 1024\n\n[templates]\nrender_timeout = 0.05\n",
        env={"ORCHESTRATOR_LOG_LEVEL": "DEBUG"},  # refused by config validation before
    )
    daemon.write_dag("limits.py", LIMITS_DAG)
    daemon.start()
    daemon.wait_dag("limits")
    daemon.trigger("limits", dag_run_id="r1")
    run = daemon.wait_run("limits", "r1")
    tis = daemon.task_instances("limits", "r1")
    assert run["state"] == "failed"
    assert {task_id: ti["state"] for task_id, ti in tis.items()} == {
        "nul": "failed",
        "large": "failed",
        "spin": "failed",
        "fine": "success",
    }
    assert "NUL character" in daemon.task_log("limits", "r1", "nul", 1)
    assert "more than xcom.max_bytes (1,024)" in daemon.task_log("limits", "r1", "large", 1)
    assert "templates.render_timeout (0.05 s)" in daemon.task_log("limits", "r1", "spin", 1)
    assert daemon.get("/health").status == 200
    assert "ORCHESTRATOR_LOG_LEVEL is deprecated" in daemon.logs()
    assert daemon.stop() == 0
