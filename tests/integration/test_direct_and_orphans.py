"""The bash fast path (exec without bash when bash would only exec) and the orphan killer."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from executors.direct import direct_argv
from executors.orphans import kill_orphaned_group, orphan_session_leader

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


def _start_session(argv: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, start_new_session=True)


def _wait_gone(process: subprocess.Popen[bytes], timeout: float = 5.0) -> int:
    return process.wait(timeout)


def test_an_orphaned_session_is_killed_with_its_whole_group(tmp_path: os.PathLike[str]) -> None:
    leader = _start_session(["/bin/bash", "-c", "sleep 300 & sleep 300"])
    assert orphan_session_leader(f"pid:{leader.pid}") == leader.pid
    assert kill_orphaned_group(f"pid:{leader.pid}")
    assert _wait_gone(leader) == -9
    # the background sleep was in the same group: no process of that group is left
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        survivors = subprocess.run(["pgrep", "-g", str(leader.pid)], capture_output=True).stdout.split()
        if not survivors:
            break
    assert not survivors


def test_a_pid_that_is_not_a_session_leader_is_left_alone() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])  # our session
    try:
        assert orphan_session_leader(f"pid:{child.pid}") is None
        assert not kill_orphaned_group(f"pid:{child.pid}")
        assert child.poll() is None
    finally:
        child.kill()
        child.wait()


@pytest.mark.parametrize("external_id", [None, "", "pod:ns/name", "pid:abc", "pid:999999999"])
def test_unknown_or_dead_ids_are_ignored(external_id: str | None) -> None:
    assert not kill_orphaned_group(external_id)
