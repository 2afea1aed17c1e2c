"""The CLI's commands that change runs: `orchestrator clear` and `orchestrator runs mark`.

Like every client command they only speak HTTP to the daemon (POST clearTaskInstances, PATCH
dagRuns/{id}), so the engine does the work and the CLI prints what it answered.

`orchestrator runs DAG_ID` lists a DAG's runs, so `runs mark` is told apart by what follows it:
`orchestrator runs mark DAG_ID RUN_ID STATE` marks a run, while `orchestrator runs mark` alone (or
followed by options only, but for --help) still lists the runs of a DAG named "mark".
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from typing import Any

# cli.py imports this module only when it builds its parser, so this import is not circular
from orchestrator.cli import ApiClient, CliError, _print, _print_json, quote

#: the hidden command `runs mark ...` is parsed as
RUNS_MARK = "runs-mark"


def route_subcommands(argv: Sequence[str]) -> list[str]:
    """`runs mark A B ...` becomes the hidden `runs-mark A B ...`; anything else is unchanged."""
    args = list(argv)
    if (
        len(args) > 2
        and args[0] == "runs"
        and args[1] == "mark"
        and (not args[2].startswith("-") or args[2] in ("-h", "--help"))
    ):
        return [RUNS_MARK, *args[2:]]
    return args


def _matching_tasks(client: ApiClient, dag_id: str, pattern: str) -> list[str]:
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise CliError(f"--task-regex {pattern!r} is not a regular expression: {exc}") from None
    tasks = client.get_json(f"/api/v1/dags/{quote(dag_id)}/tasks")["tasks"]
    ids = [task["task_id"] for task in tasks if regex.search(task["task_id"])]
    if not ids:
        known = ", ".join(task["task_id"] for task in tasks)
        raise CliError(f"no task of {dag_id} matches {pattern!r}; its tasks: {known}")
    return ids


def cmd_clear(args: argparse.Namespace, client: ApiClient) -> int:
    """Clear task instances of a DAG so they run again (or, with --dry-run, list them)."""
    body: dict[str, Any] = {
        "dry_run": args.dry_run,
        "only_failed": args.only_failed,
        "include_upstream": args.upstream,
        "include_downstream": args.downstream,
    }
    if args.run is not None:
        body["dag_run_id"] = args.run
    if args.task_regex is not None:
        body["task_ids"] = _matching_tasks(client, args.dag_id, args.task_regex)
    path = f"/api/v1/dags/{quote(args.dag_id)}/clearTaskInstances"
    data = json.loads(client.request("POST", path, body=body))
    tis = data["task_instances"]
    if args.output != "json":
        verb = "would clear" if args.dry_run else "cleared"
        print(f"{verb} {len(tis)} task instance(s) of {args.dag_id}")
    _print(args, data, tis, ["dag_run_id", "task_id", "execution_date"])
    return 0


def cmd_runs_mark(args: argparse.Namespace, client: ApiClient) -> int:
    """Mark a run success or failed (its unfinished tasks too; running ones are stopped)."""
    path = f"/api/v1/dags/{quote(args.dag_id)}/dagRuns/{quote(args.run_id)}"
    run = json.loads(client.request("PATCH", path, body={"state": args.state}))
    if args.output == "json":
        _print_json(run)
    else:
        print(f"{run['dag_id']} run {run['dag_run_id']} is {run['state']}")
    return 0


def add_commands(commands: Any, client_opts: argparse.ArgumentParser) -> None:
    """Register `clear` and the hidden `runs-mark` (see `route_subcommands`) on the subparsers."""
    clear = commands.add_parser(
        "clear", parents=[client_opts], help="clear task instances so they run again (their runs too)"
    )
    clear.add_argument("dag_id")
    clear.add_argument("--run", help="only this run (default: every run of the DAG)")
    clear.add_argument("-t", "--task-regex", help="only the tasks whose id matches this regular expression")
    clear.add_argument("--only-failed", action="store_true", help="only failed and upstream_failed ones")
    clear.add_argument("--downstream", action="store_true", help="also the tasks downstream of those")
    clear.add_argument("--upstream", action="store_true", help="also the tasks upstream of those")
    clear.add_argument("--dry-run", action="store_true", help="only list what would be cleared")
    clear.set_defaults(client=cmd_clear)

    # no help: not listed; reached as `orchestrator runs mark DAG_ID RUN_ID STATE`
    mark = commands.add_parser(RUNS_MARK, parents=[client_opts], prog="orchestrator runs mark")
    mark.add_argument("dag_id")
    mark.add_argument("run_id")
    mark.add_argument("state", choices=["success", "failed"])
    mark.set_defaults(client=cmd_runs_mark)
