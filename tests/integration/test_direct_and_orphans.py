"""The bash fast path (exec without bash when bash would only exec) and the orphan killer."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from executors.direct import direct_argv
from executors.orphans import (
    TRY_TOKEN_VARIABLE,
    WORKER_MARKERS_VARIABLE,
    kill_pids,
    orphan_workers,
    try_processes,
)

ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin"}


@pytest.mark.parametrize(
    ("command", "argv"),
    [
        ("true", ["/usr/bin/true"]),
        ("  false  ", ["/usr/bin/false"]),
        ("sleep 0.1", ["/usr/bin/sleep", "0.1"]),
        ("/bin/true", ["/bin/true"]),
        ("env --ignore-environment A=1", ["/usr/bin/env", "--ignore-environment", "A=1"]),
        ("date +%Y-%m-%d", ["/usr/bin/date", "+%Y-%m-%d"]),
    ],
)
def test_plain_commands_of_programs_are_execed_directly(command: str, argv: list[str]) -> None:
    assert direct_argv(command, ENV) == argv


@pytest.mark.parametrize(
    "command",
    [
        "echo hi",  # a builtin that differs from /bin/echo in corner cases
        "cd /tmp",
        "test -e x",
        "exit 3",
        "A=1 env",  # an assignment prefix
        "true; false",
        "true && false",
        "true | cat",
        "cat < /etc/hostname",
        "echo $HOME",
        "ls *.py",
        "ls ~",
        "echo 'quoted'",
        'echo "quoted"',
        "true # comment",
        "true\nfalse",
        "sleep 1 &",
        "ls {a,b}",
        "(true)",
        "no-such-program-anywhere",
        "",
    ],
)
def test_anything_with_shell_syntax_or_builtins_goes_through_bash(command: str) -> None:
    assert direct_argv(command, ENV) is None


def test_the_program_is_looked_up_on_the_task_path() -> None:
    assert direct_argv("true", {"PATH": "/nonexistent"}) is None


def _start_session(argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, start_new_session=True, env=env)


def _wait_gone(process: subprocess.Popen[bytes], timeout: float = 5.0) -> int:
    return process.wait(timeout)


def test_the_processes_of_a_try_are_found_by_their_token_and_killed_with_their_children() -> None:
    env = {**os.environ, TRY_TOKEN_VARIABLE: "inst:1:-1:1:t"}
    leader = _start_session(["/bin/bash", "-c", "sleep 300 & sleep 300"], env=env)
    try:
        deadline = time.monotonic() + 5
        found: list[int] = []
        while time.monotonic() < deadline and len(found) < 3:  # bash and its two sleeps
            found = try_processes("inst:1:-1:1:t")
        assert leader.pid in found and len(found) >= 2
        assert kill_pids(found, "test") >= 2
        assert _wait_gone(leader) == -9
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and try_processes("inst:1:-1:1:t"):
            pass
        assert try_processes("inst:1:-1:1:t") == []
    finally:
        if leader.poll() is None:
            leader.kill()


def test_a_process_without_the_token_is_not_taken_for_the_try() -> None:
    """A reused pid (another process) never carries the try's token: it is not found."""
    other = _start_session(["/bin/sleep", "300"], env={**os.environ, TRY_TOKEN_VARIABLE: "inst:1:-1:1:other"})
    try:
        assert other.pid not in try_processes("inst:1:-1:1:t")
        assert try_processes("") == []
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_orphaned_python_workers_say_which_try_they_run(tmp_path: Path) -> None:
    markers = tmp_path / "workers"
    markers.mkdir()
    worker = _start_session(["/bin/sleep", "300"], env={**os.environ, WORKER_MARKERS_VARIABLE: str(markers)})
    try:
        (markers / str(worker.pid)).write_text("inst:7:-1:2:py")
        deadline = time.monotonic() + 5
        found: dict[int, str] = {}
        while time.monotonic() < deadline and not found:
            found = orphan_workers(markers, own=set())
        assert found == {worker.pid: "inst:7:-1:2:py"}
        assert orphan_workers(markers, own={worker.pid}) == {}
    finally:
        worker.kill()
        worker.wait()
