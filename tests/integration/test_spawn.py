"""The spawn module runs real processes on stock asyncio and on uvloop (the daemon's loop)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest
import uvloop

from executors.errors import LaunchError
from executors.spawn import CommandResult, launch, start_command, watch
from storage.filelogs import LogFiles

pytestmark = pytest.mark.anyio

ENV = {"PATH": "/usr/bin:/bin"}


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {}), id="asyncio"),
        pytest.param(("asyncio", {"loop_factory": uvloop.new_event_loop}), id="uvloop"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, object]]:
    return request.param  # type: ignore[no-any-return]


async def bash(
    command: str, tmp_path: Path, *, env: dict[str, str] | None = None, **kwargs: Any
) -> CommandResult:
    running = start_command(
        ["/bin/bash", "-c", command], env=env or ENV, log_path=tmp_path / "task.log", **kwargs
    )
    return await running.wait()


def alive(pid: int) -> bool:
    """True if pid is a live (not zombie) process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def wait_until_gone(pids: list[int], deadline: float = 5.0) -> list[int]:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        left = [pid for pid in pids if alive(pid)]
        if not left:
            return []
        await asyncio.sleep(0.01)
    return [pid for pid in pids if alive(pid)]


@pytest.mark.parametrize(
    ("command", "exit_code"),
    [("true", 0), ("exit 3", 3), ("false", 1), ("kill -TERM $$", -15), ("kill -KILL $$", -9)],
)
async def test_exit_code_is_the_status_or_minus_the_signal(
    tmp_path: Path, command: str, exit_code: int
) -> None:
    result = await bash(command, tmp_path)
    assert result.exit_code == exit_code
    assert not result.timed_out and not result.terminated


@pytest.mark.parametrize(
    ("command", "last_line"),
    [
        ("echo a; echo b", "b"),
        ("echo a; echo b; echo; echo '   '", "b"),
        ("printf 'x\\ny'", "y"),
        ("echo 'trailing spaces   '", "trailing spaces"),
        ("true", None),
        ("echo only-stderr >&2", "only-stderr"),  # stderr is merged into stdout, as in Airflow
        ("head -c 300000 /dev/zero | tr '\\0' 'a'; echo; echo last", "last"),
    ],
)
async def test_last_non_empty_stdout_line_is_kept(
    tmp_path: Path, command: str, last_line: str | None
) -> None:
    result = await bash(command, tmp_path)
    assert result.exit_code == 0
    assert result.last_line == last_line


async def test_stdout_and_stderr_both_reach_the_log(tmp_path: Path) -> None:
    (tmp_path / "task.log").write_text("header\n")
    result = await bash("echo to-out; echo to-err >&2; echo more-out", tmp_path)
    assert result.exit_code == 0
    log = (tmp_path / "task.log").read_text()
    assert log.startswith("header\n")
    for text in ("to-out", "to-err", "more-out"):
        assert text in log


async def test_large_stdout_is_logged_completely(tmp_path: Path) -> None:
    result = await bash("head -c 1000000 /dev/zero | tr '\\0' 'z'", tmp_path)
    assert result.exit_code == 0
    assert (tmp_path / "task.log").read_text().count("z") == 1_000_000


async def test_env_is_passed_as_given(tmp_path: Path) -> None:
    result = await bash(
        'echo "$GREETING/${HOME:-unset}"', tmp_path, env={"GREETING": "hello", "PATH": "/bin"}
    )
    assert result.last_line == "hello/unset"


async def test_cwd_is_used(tmp_path: Path) -> None:
    workdir = tmp_path / "work dir"
    workdir.mkdir()
    result = await bash("pwd", tmp_path, cwd=str(workdir))
    assert result.last_line == str(workdir)


async def test_missing_cwd_is_a_launch_error(tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match="not a directory"):
        await bash("pwd", tmp_path, cwd=str(tmp_path / "missing"))


async def test_unknown_program_is_a_launch_error(tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match="not found"):
        start_command(["no-such-program-xyz"], env=ENV, log_path=tmp_path / "task.log")
    with pytest.raises(LaunchError, match="cannot start"):
        start_command(["/no/such/program"], env=ENV, log_path=tmp_path / "task.log")


async def test_unwritable_log_is_a_launch_error(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    with pytest.raises(LaunchError, match="cannot open the task log"):
        start_command(["/bin/true"], env=ENV, log_path=tmp_path / "a-file" / "task.log")


async def test_a_missing_log_folder_is_created_and_header_and_footer_share_the_log(tmp_path: Path) -> None:
    log_path = tmp_path / "new" / "folder" / "task.log"
    command = start_command(
        ["/bin/sh", "-c", "echo out; echo err >&2"],
        env=ENV,
        log_path=log_path,
        header="HEADER\n",
        footer=lambda result: f"FOOTER exit={result.exit_code}\n",
    )
    await command.wait()
    lines = log_path.read_text().splitlines()
    assert lines[0] == "HEADER" and lines[-1] == "FOOTER exit=0"
    assert sorted(lines[1:-1]) == ["err", "out"]


async def test_child_runs_in_its_own_session_with_default_signals(tmp_path: Path) -> None:
    result = await bash(
        'read -r -a f < <(sed "s/.*) //" /proc/$$/stat); '
        "echo $(grep SigIgn /proc/$$/status | tr -d '\\t ') sid=${f[3]} pgrp=${f[2]}",
        tmp_path,
    )
    ignored, sid, pgrp = result.last_line.split()  # type: ignore[union-attr]
    assert sid == f"sid={result.pid}"
    assert pgrp == f"pgrp={result.pid}"
    # SIGPIPE is ignored in the (Python) parent; the child must get the default back.
    assert int(ignored.split(":")[1], 16) & (1 << (13 - 1)) == 0


async def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    result = await bash("sleep 1000 & echo $!; sleep 1000", tmp_path, timeout=0.3, kill_grace=5.0)
    assert result.timed_out
    assert result.exit_code == -15  # SIGTERM was enough: no SIGKILL after the 5 s grace
    background = int(result.last_line)  # type: ignore[arg-type]
    assert await wait_until_gone([result.pid, background]) == []


async def test_timeout_escalates_to_sigkill_after_the_grace(tmp_path: Path) -> None:
    result = await bash(
        "trap '' TERM; sleep 1000 & echo $!; while :; do sleep 0.05; done",
        tmp_path,
        timeout=0.2,
        kill_grace=0.3,
    )
    assert result.timed_out
    assert result.exit_code == -9
    assert await wait_until_gone([int(result.last_line)]) == []  # type: ignore[arg-type]


async def test_terminate_stops_the_group(tmp_path: Path) -> None:
    running = start_command(
        ["/bin/bash", "-c", "sleep 1000 & echo $!; sleep 1000"], env=ENV, log_path=tmp_path / "task.log"
    )
    log = tmp_path / "task.log"
    end = time.monotonic() + 5
    while not (log.exists() and log.read_text().strip()) and time.monotonic() < end:
        await asyncio.sleep(0.01)
    running.terminate(grace=1.0)
    result = await running.wait()
    assert result.terminated and not result.timed_out
    assert result.exit_code == -15
    assert await wait_until_gone([int(result.last_line)]) == []  # type: ignore[arg-type]


async def test_processes_left_behind_are_killed_when_the_task_ends(tmp_path: Path) -> None:
    result = await bash("sleep 1000 >/dev/null 2>&1 & echo $!", tmp_path)
    assert result.exit_code == 0
    assert await wait_until_gone([int(result.last_line)]) == []  # type: ignore[arg-type]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_no_fd_leak_over_10000_tasks(tmp_path: Path) -> None:
    log = tmp_path / "task.log"

    async def one(i: int) -> None:
        if i % 1000 == 999:
            # error paths must not leak either
            with pytest.raises(LaunchError):
                start_command(["/no/such"], env=ENV, log_path=log)
            with pytest.raises(LaunchError):
                start_command(["/bin/true"], env=ENV, log_path=log, cwd="/no/such/dir")
        running = start_command(["/bin/true"], env=ENV, log_path=log, timeout=60)
        result = await running.wait()
        assert result.exit_code == 0

    async def lane(lane_no: int, count: int) -> None:
        for i in range(count):
            await one(lane_no * count + i)

    await lane(0, 10)  # warm up whatever the loop opens lazily
    before = open_fds()
    await asyncio.gather(*(lane(n, 1000) for n in range(10)))
    assert open_fds() == before


async def test_a_quiet_success_leaves_no_log_file_but_a_failure_always_does(tmp_path: Path) -> None:
    def footer(result: CommandResult) -> str:
        return f"FOOTER exit={result.exit_code}\n"

    quiet = await start_command(
        ["/bin/true"], env=ENV, log_path=tmp_path / "ok.log", header="H\n", footer=footer
    ).wait()
    assert quiet.exit_code == 0 and not (tmp_path / "ok.log").exists()
    failed = await start_command(
        ["/bin/false"], env=ENV, log_path=tmp_path / "ko.log", header="H\n", footer=footer
    ).wait()
    assert failed.exit_code == 1
    assert (tmp_path / "ko.log").read_text() == "H\nFOOTER exit=1\n"


async def test_stdout_and_stderr_are_one_stream_whose_last_line_is_the_result(tmp_path: Path) -> None:
    launched = launch(["/bin/sh", "-c", "echo out; echo err >&2"], env=ENV, log_path=tmp_path / "task.log")
    result = await watch(launched).wait()
    assert result.last_line == "err"  # Airflow's BashOperator reads stderr merged into stdout
    assert (tmp_path / "task.log").read_text().split() == ["out", "err"]


async def test_output_past_the_cap_keeps_the_head_a_marker_and_the_tail_and_memory_stays_bounded(
    tmp_path: Path,
) -> None:
    cap = 16 * 1024
    result = await bash(
        "head -c 5000000 /dev/zero | tr '\\0' 'x'; echo; echo the-end",
        tmp_path,
        header="HEADER\n",
        footer=lambda r: f"FOOTER exit={r.exit_code}\n",
        logs=LogFiles(cap),
    )
    assert result.exit_code == 0 and result.last_line == "the-end"
    log = (tmp_path / "task.log").read_text()
    assert log.startswith("HEADER\nxxx")
    head, reached, rest = log.partition("this log reached logs.max_bytes_per_try (16384 bytes)")
    assert reached and len(head) < cap
    assert "bytes of output were dropped; the last 8192 bytes follow\n" in rest
    assert rest.endswith("x\nthe-end\nFOOTER exit=0\n")
    assert cap < len(log) < cap + 512


async def test_a_log_that_cannot_be_opened_stops_the_command_and_says_why(tmp_path: Path) -> None:
    log_path = tmp_path / ("t" * 300 + ".log")  # a file name longer than 255 bytes
    running = start_command(
        ["/bin/bash", "-c", "echo lost; sleep 1000"], env=ENV, log_path=log_path, kill_grace=0.5
    )
    result = await running.wait()
    assert result.log_error is not None
    assert "cannot write the task log" in result.log_error and "File name too long" in result.log_error
    assert result.exit_code == -15  # stopped, not left running with its output lost


async def test_a_follower_gets_output_as_it_is_written_and_ends_when_the_log_closes(tmp_path: Path) -> None:
    logs = LogFiles()
    gate = tmp_path / "gate"
    log_path = tmp_path / "task.log"
    running = start_command(
        ["/bin/bash", "-c", f"echo first; while [ ! -e {gate} ]; do sleep 0.01; done; echo second"],
        env=ENV,
        log_path=log_path,
        header="H\n",
        footer=lambda r: "F\n",
        logs=logs,
    )
    received = bytearray()
    first_seen = asyncio.Event()

    async def follow() -> None:
        async for chunk in logs.follow(log_path):
            received.extend(chunk)
            if b"first\n" in received:
                first_seen.set()

    follower = asyncio.ensure_future(follow())
    await asyncio.wait_for(first_seen.wait(), 10)
    assert not follower.done() and b"second" not in received  # the command still waits
    gate.touch()
    await running.wait()
    await asyncio.wait_for(follower, 10)  # the follow ends with the log
    assert bytes(received) == b"H\nfirst\nsecond\nF\n" == log_path.read_bytes()


async def test_following_a_log_nobody_writes_ends_after_what_it_holds(tmp_path: Path) -> None:
    log_path = tmp_path / "old.log"
    log_path.write_bytes(b"a" * 200_000)
    chunks = [chunk async for chunk in LogFiles().follow(log_path, 100)]
    assert b"".join(chunks) == b"a" * 199_900 and len(chunks) > 1
