"""The `orchestrator` command: run the daemon, migrate its database, and talk to its REST API.

Client commands (dags, trigger, runs, tasks, logs, assets, daemons) only speak HTTP to a running
daemon — never to the database — so they work from anywhere the API is reachable and see exactly what the UI
sees. They use the stdlib's urllib and import nothing heavy: the command must start fast.

Exit codes: 0 success, 1 the API refused (its "detail" is printed), 2 the daemon is unreachable
(or the command line is wrong, argparse's convention).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, BinaryIO

from orchestrator.config import Config, load_config
from orchestrator.errors import ConfigError, OrchestratorError
from orchestrator.sse import SseMessage, follow

HTTP_TIMEOUT = 30.0
#: loopback hostnames, as urlsplit gives them (no brackets)
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


class CliError(Exception):
    """A failure the command reports on stderr and exits with `exit_code`."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# --- HTTP --------------------------------------------------------------------------------


class ApiClient:
    """A tiny synchronous client of the daemon's REST API."""

    def __init__(self, base_url: str, timeout: float = HTTP_TIMEOUT, token: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.token = token
        host = urllib.parse.urlsplit(self.base_url).hostname or ""
        # A proxy from the environment must not sit between the CLI and a daemon on this machine.
        handlers = [urllib.request.ProxyHandler({})] if host in _LOOPBACK else []
        self._opener = urllib.request.build_opener(*handlers)

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        query: Mapping[str, Any] | None = None,
        accept: str = "application/json",
    ) -> bytes:
        url = self.base_url + path
        if query:
            url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method, headers=self._headers(accept))
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with self._opener.open(req, timeout=self.timeout) as response:
                payload: bytes = response.read()
                return payload
        except urllib.error.HTTPError as exc:
            raise CliError(self._refusal(exc), exit_code=1) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
            raise self.unreachable(exc) from None

    def unreachable(self, exc: BaseException) -> CliError:
        """The error (exit code 2) for a daemon that could not be reached."""
        message = f"cannot reach the orchestrator at {self.base_url}: is `orchestrator run` running?"
        return CliError(f"{message} ({_reason(exc)})", exit_code=2)

    def _headers(self, accept: str) -> dict[str, str]:
        headers = {"Accept": accept}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def _refusal(self, exc: urllib.error.HTTPError) -> str:
        if exc.code == 401 and not self.token:
            return (
                f"the orchestrator at {self.base_url} needs a token and the CLI found none: "
                f"{TOKEN_SOURCES} (on the daemon's machine it also reads <state_dir>/api-token)"
            )
        return _error_detail(exc)

    def copy(self, path: str, out: BinaryIO, *, accept: str, chunk: int = 64 * 1024) -> None:
        """GET `path` and copy the answer to `out` as it arrives (a log can be large)."""
        req = urllib.request.Request(self.base_url + path, method="GET", headers=self._headers(accept))
        try:
            with self._opener.open(req, timeout=self.timeout) as response:
                while data := response.read(chunk):
                    out.write(data)
                    out.flush()
        except urllib.error.HTTPError as exc:
            raise CliError(self._refusal(exc), exit_code=1) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
            raise self.unreachable(exc) from None

    def get_json(self, path: str, **query: Any) -> Any:
        return json.loads(self.request("GET", path, query=query))

    def open_stream(self, path: str, query: Mapping[str, Any], last_event_id: str | None) -> Any:
        """GET a text/event-stream, resuming after `last_event_id`; returns the open response.
        A refusal is a CliError; an unreachable daemon an OSError (the caller may retry)."""
        url = self.base_url + path + "?" + urllib.parse.urlencode(query, doseq=True)
        headers = self._headers("text/event-stream")
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        try:
            return self._opener.open(urllib.request.Request(url, headers=headers), timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            raise CliError(self._refusal(exc), exit_code=1) from None


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", exc)
    return str(getattr(reason, "strerror", None) or reason)


def _error_detail(exc: urllib.error.HTTPError) -> str:
    raw = exc.read()
    try:
        problem = json.loads(raw)
        detail = problem.get("detail") if isinstance(problem, dict) else None
    except ValueError:
        detail = None
    return str(detail or raw.decode(errors="replace").strip() or f"HTTP {exc.code} {exc.reason}")


def quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


# --- base URL ----------------------------------------------------------------------------


def resolve_base_url(url: str | None, config_path: Path | None, environ: Mapping[str, str]) -> str:
    """--url, else $ORCHESTRATOR_URL, else <state_dir>/api.url, else http://{api.host}:{api.port}."""
    if url:
        return url
    if environ.get("ORCHESTRATOR_URL"):
        return environ["ORCHESTRATOR_URL"]
    config = load_config(config_path, environ)
    url_file = config.daemon.state_dir / "api.url"
    try:
        written = url_file.read_text().strip()
    except OSError:
        written = ""
    if written:
        return written
    host = config.api.host
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{config.api.port}"


#: where the CLI looks for its token, in order
TOKEN_SOURCES = "set ORCHESTRATOR_TOKEN, or name a file holding it in api.token_file"
#: the admin token a daemon without api.tokens generates (orchestrator.daemon_auth)
GENERATED_TOKEN_FILE = "api-token"


def resolve_token(base_url: str, config_path: Path | None, environ: Mapping[str, str]) -> str | None:
    """$ORCHESTRATOR_TOKEN, else the file named by api.token_file, else (for a daemon on this
    machine only, so it is never sent elsewhere) the admin token a daemon without api.tokens
    generated into <state_dir>/api-token (readable by its user only), else None."""
    if environ.get("ORCHESTRATOR_TOKEN"):
        return environ["ORCHESTRATOR_TOKEN"].strip()
    config = load_config(config_path, environ)
    named = config.api.token_file
    if named is not None:
        try:
            text = named.read_text().strip()
        except OSError as exc:
            raise CliError(f"cannot read api.token_file {named}: {exc.strerror or exc}") from None
        if not text:
            raise CliError(f"api.token_file {named} is empty: write the API token into it")
        return text
    if urllib.parse.urlsplit(base_url).hostname not in _LOOPBACK:
        return None
    try:
        return (config.daemon.state_dir / GENERATED_TOKEN_FILE).read_text().strip() or None
    except OSError:
        return None


# --- output ------------------------------------------------------------------------------


def render_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """Aligned columns with a header; None shows as empty."""
    cells = [[_cell(row.get(column)) for column in columns] for row in rows]
    widths = [max([len(column), *(len(line[i]) for line in cells)]) for i, column in enumerate(columns)]
    lines = ["  ".join(column.ljust(widths[i]) for i, column in enumerate(columns)).rstrip()]
    lines.append("  ".join("-" * width for width in widths))
    lines.extend("  ".join(value.ljust(widths[i]) for i, value in enumerate(line)).rstrip() for line in cells)
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


def _print(
    args: argparse.Namespace, data: Any, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]
) -> None:
    if args.output == "json":
        _print_json(data)
    elif rows:
        print(render_table(rows, columns))
    else:
        print("(none)")


ClientCommand = Callable[[argparse.Namespace, ApiClient], int]


# --- client commands ---------------------------------------------------------------------


def cmd_dags_list(args: argparse.Namespace, client: ApiClient) -> int:
    data = client.get_json("/api/v1/dags", limit=1000, only_active="true")
    rows = [
        {
            **dag,
            "schedule": _schedule_text(dag),
            "tags": ",".join(tag["name"] for tag in dag.get("tags") or []),
        }
        for dag in data["dags"]
    ]
    _print(args, data, rows, ["dag_id", "is_paused", "schedule", "next_dagrun", "tags", "fileloc"])
    return 0


def _schedule_text(dag: Mapping[str, Any]) -> str | None:
    interval = dag.get("schedule_interval") or {}
    if interval.get("__type") == "TimeDelta":
        days, seconds, micros = interval["days"], interval["seconds"], interval["microseconds"]
        return str(timedelta(days=days, seconds=seconds, microseconds=micros))
    if interval.get("value") is not None:
        return str(interval["value"])
    return "assets" if dag.get("timetable_description") == "Triggered by assets" else None


def cmd_dags_next(args: argparse.Namespace, client: ApiClient) -> int:
    """The DAG's next scheduled run: its logical date, data interval and when it is created."""
    dag = client.get_json(f"/api/v1/dags/{quote(args.dag_id)}")
    if args.output == "json":
        _print_json({key: dag.get(key) for key in _NEXT_RUN_FIELDS})
    elif dag.get("next_dagrun") is None:
        print(f"{dag['dag_id']} has no next scheduled run ({dag.get('timetable_description')})")
    else:
        for key in _NEXT_RUN_FIELDS:
            print(f"{key}: {dag.get(key)}")
    return 0


_NEXT_RUN_FIELDS = (
    "dag_id",
    "is_paused",
    "timetable_description",
    "next_dagrun",
    "next_dagrun_data_interval_start",
    "next_dagrun_data_interval_end",
    "next_dagrun_create_after",
)


def cmd_dags_errors(args: argparse.Namespace, client: ApiClient) -> int:
    data = client.get_json("/api/v1/importErrors", limit=1000)
    if args.output == "json":
        _print_json(data)
    elif not data["import_errors"]:
        print("no import errors")
    else:
        for error in data["import_errors"]:
            print(f"{error['filename']} ({error['timestamp']}):")
            print("    " + error["stack_trace"].rstrip().replace("\n", "\n    "))
    return 0


def _set_paused(args: argparse.Namespace, client: ApiClient, is_paused: bool) -> int:
    path = f"/api/v1/dags/{quote(args.dag_id)}"
    dag = json.loads(client.request("PATCH", path, body={"is_paused": is_paused}))
    if args.output == "json":
        _print_json(dag)
    else:
        print(f"{dag['dag_id']} is {'paused' if dag['is_paused'] else 'unpaused'}")
    return 0


def cmd_dags_pause(args: argparse.Namespace, client: ApiClient) -> int:
    return _set_paused(args, client, True)


def cmd_dags_unpause(args: argparse.Namespace, client: ApiClient) -> int:
    return _set_paused(args, client, False)


def cmd_trigger(args: argparse.Namespace, client: ApiClient) -> int:
    body: dict[str, Any] = {}
    if args.conf is not None:
        try:
            body["conf"] = json.loads(args.conf)
        except ValueError as exc:
            raise CliError(f"--conf is not valid JSON: {exc}") from None
        if not isinstance(body["conf"], dict):
            raise CliError('--conf must be a JSON object, e.g. --conf \'{"key": "value"}\'')
    if args.run_id is not None:
        body["dag_run_id"] = args.run_id
    if args.logical_date is not None:
        body["logical_date"] = args.logical_date
    run = json.loads(client.request("POST", f"/api/v1/dags/{quote(args.dag_id)}/dagRuns", body=body))
    if args.output == "json":
        _print_json(run)
    else:
        print(f"triggered {run['dag_id']} run {run['dag_run_id']} (state {run['state']})")
    return 0


def cmd_backfill(args: argparse.Namespace, client: ApiClient) -> int:
    """Create a backfill (or, with --dry-run, list the logical dates it would run)."""
    body: dict[str, Any] = {
        "dag_id": args.dag_id,
        "from_date": args.from_date,
        "to_date": args.to_date,
        "reprocess_behavior": args.reprocess,
        "run_backwards": args.run_backwards,
    }
    if args.max_active_runs is not None:
        body["max_active_runs"] = args.max_active_runs
    if args.conf is not None:
        try:
            body["dag_run_conf"] = json.loads(args.conf)
        except ValueError as exc:
            raise CliError(f"--conf is not valid JSON: {exc}") from None
    if args.dry_run:
        data = json.loads(client.request("POST", "/api/v1/backfills/dry_run", body=body))
        _print(args, data, data["backfills"], ["logical_date"])
        return 0
    backfill = json.loads(client.request("POST", "/api/v1/backfills", body=body))
    if args.output == "json":
        _print_json(backfill)
    else:
        print(
            f"backfill {backfill['id']} of {backfill['dag_id']} created: {backfill['from_date']} to "
            f"{backfill['to_date']}, at most {backfill['max_active_runs']} runs at a time "
            f"(`orchestrator backfills show {backfill['id']}`)"
        )
    return 0


_BACKFILL_COLUMNS = ["id", "dag_id", "from_date", "to_date", "is_paused", "max_active_runs", "completed_at"]


def cmd_backfills_list(args: argparse.Namespace, client: ApiClient) -> int:
    query: dict[str, Any] = {"limit": 1000}
    if args.dag_id:
        query["dag_id"] = args.dag_id
    data = client.get_json("/api/v1/backfills", **query)
    _print(args, data, data["backfills"], _BACKFILL_COLUMNS)
    return 0


def cmd_backfills_show(args: argparse.Namespace, client: ApiClient) -> int:
    backfill = client.get_json(f"/api/v1/backfills/{args.backfill_id}")
    runs = client.get_json(f"/api/v1/backfills/{args.backfill_id}/dagRuns")
    if args.output == "json":
        _print_json({**backfill, "dag_runs": runs["dag_runs"]})
        return 0
    print(render_table([backfill], _BACKFILL_COLUMNS))
    print()
    _print(args, runs, runs["dag_runs"], ["logical_date", "dag_run_id", "state", "exception_reason"])
    return 0


def _backfill_action(action: str) -> ClientCommand:
    def command(args: argparse.Namespace, client: ApiClient) -> int:
        backfill = json.loads(client.request("PUT", f"/api/v1/backfills/{args.backfill_id}/{action}"))
        if args.output == "json":
            _print_json(backfill)
        else:
            done = {"pause": "paused", "unpause": "resumed", "cancel": "cancelled"}[action]
            print(f"backfill {backfill['id']} of {backfill['dag_id']} {done}")
        return 0

    return command


def _print_runs(args: argparse.Namespace, client: ApiClient) -> None:
    data = client.get_json(f"/api/v1/dags/{quote(args.dag_id)}/dagRuns", limit=args.limit)
    columns = ["dag_run_id", "state", "run_type", "logical_date", "start_date", "end_date"]
    _print(args, data, data["dag_runs"], columns)


def cmd_runs(args: argparse.Namespace, client: ApiClient) -> int:
    if args.follow:
        return _follow_runs(args, client)
    _print_runs(args, client)
    return 0


def event_line(message: SseMessage) -> str | None:
    """One line for a run's or a task instance's state change (None for other events)."""
    if message.event not in ("dag_run", "task_instance"):
        return None
    data = json.loads(message.data)
    if message.event == "dag_run":
        return f"{data['timestamp']}  run {data['dag_run_id']}  {data['state']}"
    index = "" if data["map_index"] == -1 else f"[{data['map_index']}]"
    task = f"{data['dag_run_id']} {data['task_id']}{index}"
    return f"{data['timestamp']}  task {task}  try {data['try_number']}  {data['state'] or 'none'}"


def _follow_runs(args: argparse.Namespace, client: ApiClient) -> int:
    """List the runs, then print their state changes as they are committed, until Ctrl-C. A
    dropped connection is resumed after the last event seen; if the daemon no longer kept what
    was missed, the runs are listed again."""
    query = {"dag_id": args.dag_id}
    try:
        opened: Any = client.open_stream("/api/v1/events", query, None)  # first: nothing is missed
    except OSError as exc:
        raise client.unreachable(exc) from None
    _print_runs(args, client)
    sys.stdout.flush()

    def open_stream(last_event_id: str | None) -> Any:
        nonlocal opened
        response = opened or client.open_stream("/api/v1/events", query, last_event_id)
        opened = None
        with response:
            for raw in response:
                yield raw.decode("utf-8", "replace")

    def on_message(message: SseMessage) -> None:
        if message.event == "reset":
            print("events were missed while disconnected: the runs as they are now", file=sys.stderr)
            _print_runs(args, client)
        elif args.output == "json":
            if message.event in ("dag_run", "task_instance"):
                print(json.dumps({"event": message.event, **json.loads(message.data)}))
        elif (line := event_line(message)) is not None:
            print(line)
        sys.stdout.flush()

    def on_dropped(exc: BaseException | None) -> None:
        reason = "the daemon ended the stream" if exc is None else _reason(exc)
        print(f"connection lost ({reason}): reconnecting", file=sys.stderr)

    try:
        follow(open_stream, on_message, on_dropped=on_dropped)
    except KeyboardInterrupt:
        return 0
    return 0


def cmd_webhooks_deliveries(args: argparse.Namespace, client: ApiClient) -> int:
    path = f"/api/v1/webhooks/{quote(args.name)}/deliveries"
    data = client.get_json(path, limit=args.limit, offset=args.offset)
    columns = ["received_at", "delivery_id", "status", "created", "dag_id", "dag_run_id", "reason"]
    _print(args, data, data["deliveries"], columns)
    return 0


def cmd_tasks(args: argparse.Namespace, client: ApiClient) -> int:
    path = f"/api/v1/dags/{quote(args.dag_id)}/dagRuns/{quote(args.run_id)}/taskInstances"
    data = client.get_json(path, limit=1000)
    rows = [{**ti, "state": ti["state"] or "none"} for ti in data["task_instances"]]
    columns = [
        "task_id",
        "map_index",
        "state",
        "try_number",
        "operator",
        "start_date",
        "end_date",
        "duration",
    ]
    _print(args, data, rows, columns)
    return 0


def cmd_daemons(args: argparse.Namespace, client: ApiClient) -> int:
    """The replicas sharing the daemon's database: heartbeat age, alive or dead, runs owned."""
    data = client.get_json("/api/v1/daemons")
    rows = [
        {
            **daemon,
            "host": daemon["hostname"],
            "heartbeat_age": f"{daemon['heartbeat_age_seconds']:.1f}s",
            "status": "alive" if daemon["alive"] else "dead",
        }
        for daemon in data["daemons"]
    ]
    columns = ["daemon_id", "host", "pid", "version", "heartbeat_age", "status", "owned_runs", "api_url"]
    _print(args, data, rows, columns)
    return 0


def cmd_logs(args: argparse.Namespace, client: ApiClient) -> int:
    ti_path = (
        f"/api/v1/dags/{quote(args.dag_id)}/dagRuns/{quote(args.run_id)}/taskInstances/{quote(args.task_id)}"
    )
    try_number = args.try_number
    if try_number is None:
        ti = client.get_json(ti_path)
        try_number = ti["try_number"]
        if try_number < 1:
            raise CliError(
                f"task {args.task_id!r} has not started yet (state {ti['state'] or 'none'}): no log"
            )
    log_path = f"{ti_path}/logs/{try_number}"
    if args.output == "json":
        content = client.request("GET", log_path, query={"full_content": "true"})
        _print_json(json.loads(content))
    else:
        # streamed by the daemon, copied as it comes: a log of any size in bounded memory
        sys.stdout.flush()
        client.copy(log_path, sys.stdout.buffer, accept="text/plain")
    return 0


def cmd_xcoms(args: argparse.Namespace, client: ApiClient) -> int:
    """A task's XComs in a run with their values, or (--key) the value of one."""
    entries = (
        f"/api/v1/dags/{quote(args.dag_id)}/dagRuns/{quote(args.run_id)}"
        f"/taskInstances/{quote(args.task_id)}/xcomEntries"
    )
    if args.key is not None:
        entry = client.get_json(f"{entries}/{quote(args.key)}", map_index=args.map_index, stringify="false")
        if args.output == "json":
            _print_json(entry)
        else:
            value = entry["value"]
            print(value if isinstance(value, str) else json.dumps(value, indent=2))
        return 0
    listing = client.get_json(entries, limit=1000)
    rows = [
        client.get_json(f"{entries}/{quote(e['key'])}", map_index=e["map_index"], stringify="false")
        for e in listing["xcom_entries"]
    ]
    data = {"xcom_entries": rows, "total_entries": listing["total_entries"]}
    _print(args, data, rows, ["key", "map_index", "timestamp", "value"])
    return 0


def cmd_assets_list(args: argparse.Namespace, client: ApiClient) -> int:
    data = client.get_json("/api/v1/assets", limit=args.limit, uri_pattern=args.pattern)
    rows = [
        {
            **asset,
            "consuming_dags": ",".join(dag["dag_id"] for dag in asset["consuming_dags"]),
            "producing_tasks": ",".join(f"{t['dag_id']}.{t['task_id']}" for t in asset["producing_tasks"]),
        }
        for asset in data["assets"]
    ]
    _print(args, data, rows, ["uri", "updated_at", "consuming_dags", "producing_tasks"])
    return 0


def cmd_assets_events(args: argparse.Namespace, client: ApiClient) -> int:
    data = client.get_json(
        "/api/v1/assets/events", asset_uri=args.uri, limit=args.limit, order_by="-timestamp"
    )
    rows = [
        {
            **event,
            "source": "/".join(
                str(part)
                for part in (event["source_dag_id"], event["source_run_id"], event["source_task_id"])
                if part is not None
            )
            or "external",
            "created_dagruns": ",".join(f"{r['dag_id']}/{r['dag_run_id']}" for r in event["created_dagruns"]),
        }
        for event in data["asset_events"]
    ]
    _print(args, data, rows, ["id", "timestamp", "asset_uri", "source", "extra", "created_dagruns"])
    return 0


# --- daemon commands ---------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from orchestrator.daemon import run_daemon

    return run_daemon(_config(args))


def cmd_db_migrate(args: argparse.Namespace) -> int:
    from orchestrator.daemon import migrate_database

    applied = migrate_database(_config(args))
    if applied:
        print("applied migrations: " + ", ".join(str(version) for version in applied))
    else:
        print("the database is up to date: no migrations to apply")
    return 0


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.config, os.environ)


# --- the parser --------------------------------------------------------------------------


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("orchestrator")
    except metadata.PackageNotFoundError:
        return "0.1.0 (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orchestrator",
        description="An event-driven workflow orchestrator: Airflow's scheduler, executors and REST API "
        "in one daemon.",
    )
    parser.add_argument("--version", action="version", version=f"orchestrator {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    config_opt = argparse.ArgumentParser(add_help=False)
    config_opt.add_argument(
        "--config", type=Path, default=None, help="the TOML config file (default: ./config.toml if it exists)"
    )
    client_opts = argparse.ArgumentParser(add_help=False, parents=[config_opt])
    client_opts.add_argument(
        "--url", help="the daemon's API URL (default: $ORCHESTRATOR_URL, state_dir/api.url)"
    )
    client_opts.add_argument(
        "--output", "-o", choices=["table", "json"], default="table", help="output format"
    )

    run = commands.add_parser("run", parents=[config_opt], help="run the daemon in the foreground")
    run.set_defaults(handler=cmd_run)

    db = commands.add_parser("db", help="database commands")
    db_commands = db.add_subparsers(dest="db_command", metavar="COMMAND", required=True)
    migrate = db_commands.add_parser("migrate", parents=[config_opt], help="apply pending schema migrations")
    migrate.set_defaults(handler=cmd_db_migrate)

    dags = commands.add_parser("dags", help="list, pause and unpause DAGs; list import errors")
    dag_commands = dags.add_subparsers(dest="dags_command", metavar="COMMAND", required=True)
    dag_commands.add_parser("list", parents=[client_opts], help="list the DAGs").set_defaults(
        client=cmd_dags_list
    )
    dag_commands.add_parser("errors", parents=[client_opts], help="list DAG import errors").set_defaults(
        client=cmd_dags_errors
    )
    pause = dag_commands.add_parser("pause", parents=[client_opts], help="hold the DAG's new runs in queued")
    pause.add_argument("dag_id")
    pause.set_defaults(client=cmd_dags_pause)
    unpause = dag_commands.add_parser("unpause", parents=[client_opts], help="start the DAG's held runs")
    unpause.add_argument("dag_id")
    unpause.set_defaults(client=cmd_dags_unpause)
    next_run = dag_commands.add_parser(
        "next", parents=[client_opts], help="the DAG's next scheduled run and its data interval"
    )
    next_run.add_argument("dag_id")
    next_run.set_defaults(client=cmd_dags_next)

    backfill = commands.add_parser(
        "backfill", parents=[client_opts], help="run a DAG for the logical dates of its schedule in a range"
    )
    backfill.add_argument("dag_id")
    backfill.add_argument("--from", dest="from_date", required=True, help="ISO 8601: the first logical date")
    backfill.add_argument("--to", dest="to_date", required=True, help="ISO 8601: the last logical date")
    backfill.add_argument(
        "--reprocess",
        choices=["none", "failed", "completed"],
        default="none",
        help="dates with a run: skip them (none), run failed ones again, or run every finished one again",
    )
    backfill.add_argument("--max-active-runs", type=int, help="runs of the backfill at once (default 10)")
    backfill.add_argument("--run-backwards", action="store_true", help="newest logical date first")
    backfill.add_argument("--conf", help="the conf of every run, as a JSON object")
    backfill.add_argument("--dry-run", action="store_true", help="only list the logical dates it would run")
    backfill.set_defaults(client=cmd_backfill)

    backfills = commands.add_parser("backfills", help="list, show, pause, resume and cancel backfills")
    backfill_commands = backfills.add_subparsers(dest="backfills_command", metavar="COMMAND", required=True)
    listing = backfill_commands.add_parser("list", parents=[client_opts], help="list backfills, newest first")
    listing.add_argument("--dag-id", help="only this DAG's")
    listing.set_defaults(client=cmd_backfills_list)
    show = backfill_commands.add_parser("show", parents=[client_opts], help="a backfill and its runs")
    show.add_argument("backfill_id", type=int)
    show.set_defaults(client=cmd_backfills_show)
    for action, text in (
        ("pause", "stop creating the backfill's runs until resumed"),
        ("unpause", "resume a paused backfill"),
        ("cancel", "stop the backfill for good (its runs already created finish)"),
    ):
        sub = backfill_commands.add_parser(action, parents=[client_opts], help=text)
        sub.add_argument("backfill_id", type=int)
        sub.set_defaults(client=_backfill_action(action))

    trigger = commands.add_parser("trigger", parents=[client_opts], help="trigger a DAG run")
    trigger.add_argument("dag_id")
    trigger.add_argument("--conf", help='the run conf as a JSON object, e.g. \'{"day": "2026-01-01"}\'')
    trigger.add_argument("--run-id", help="the run id (default: generated)")
    trigger.add_argument("--logical-date", help="ISO 8601 logical date (default: now)")
    trigger.set_defaults(client=cmd_trigger)

    runs = commands.add_parser(
        "runs",
        parents=[client_opts],
        help="list a DAG's runs, newest first (`runs mark DAG_ID RUN_ID success|failed` marks one)",
    )
    runs.add_argument("dag_id")
    runs.add_argument("--limit", type=int, default=25, help="how many runs (default 25, at most 1000)")
    runs.add_argument(
        "--follow", "-f", action="store_true", help="then print run and task state changes live, until Ctrl-C"
    )
    runs.set_defaults(client=cmd_runs)

    tasks = commands.add_parser("tasks", parents=[client_opts], help="list the task instances of a run")
    tasks.add_argument("dag_id")
    tasks.add_argument("run_id")
    tasks.set_defaults(client=cmd_tasks)

    xcoms = commands.add_parser("xcoms", parents=[client_opts], help="a task's XComs in a run, or one value")
    xcoms.add_argument("dag_id")
    xcoms.add_argument("run_id")
    xcoms.add_argument("task_id")
    xcoms.add_argument("--key", help="print only the value of this XCom key (e.g. return_value)")
    xcoms.add_argument("--map-index", type=int, default=-1, help="the mapped instance (default: unmapped)")
    xcoms.add_argument("--json", dest="output", action="store_const", const="json", help="same as -o json")
    xcoms.set_defaults(client=cmd_xcoms)

    assets = commands.add_parser("assets", help="list assets and their events")
    asset_commands = assets.add_subparsers(dest="assets_command", metavar="COMMAND", required=True)
    assets_list = asset_commands.add_parser(
        "list", parents=[client_opts], help="list assets, their consumer DAGs and producer tasks"
    )
    assets_list.add_argument("--pattern", help="only assets whose URI contains this text")
    assets_list.add_argument("--limit", type=int, default=100, help="how many assets (default 100)")
    assets_list.set_defaults(client=cmd_assets_list)
    assets_events = asset_commands.add_parser(
        "events", parents=[client_opts], help="list asset events, newest first"
    )
    assets_events.add_argument("--uri", help="only the events of this asset URI")
    assets_events.add_argument("--limit", type=int, default=25, help="how many events (default 25)")
    assets_events.set_defaults(client=cmd_assets_events)

    logs = commands.add_parser("logs", parents=[client_opts], help="print the log of one try of a task")
    logs.add_argument("dag_id")
    logs.add_argument("run_id")
    logs.add_argument("task_id")
    logs.add_argument("--try", dest="try_number", type=int, help="the try number (default: the latest)")
    logs.set_defaults(client=cmd_logs)

    commands.add_parser(
        "daemons",
        parents=[client_opts],
        help="list the replicas (daemons) on the database: heartbeat age, alive or dead, runs owned",
    ).set_defaults(client=cmd_daemons)

    from orchestrator import cli_actions  # it imports this module

    cli_actions.add_commands(commands, client_opts)

    webhooks = commands.add_parser("webhooks", help="webhook deliveries")
    webhook_commands = webhooks.add_subparsers(dest="webhooks_command", metavar="COMMAND", required=True)
    deliveries = webhook_commands.add_parser(
        "deliveries", parents=[client_opts], help="a webhook's deliveries, accepted and refused, newest first"
    )
    deliveries.add_argument("name", help="the webhook's name (its [webhooks.<name>] table)")
    deliveries.add_argument("--limit", type=int, default=25, help="how many (default 25, at most 1000)")
    deliveries.add_argument("--offset", type=int, default=0, help="skip this many of the newest")
    deliveries.set_defaults(client=cmd_webhooks_deliveries)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `orchestrator` console script; returns the exit code."""
    from orchestrator.cli_actions import route_subcommands

    args = build_parser().parse_args(route_subcommands(sys.argv[1:] if argv is None else argv))
    try:
        if hasattr(args, "client"):
            client_command: ClientCommand = args.client
            base_url = resolve_base_url(args.url, args.config, os.environ)
            client = ApiClient(base_url, token=resolve_token(base_url, args.config, os.environ))
            return client_command(args, client)
        handler: Callable[[argparse.Namespace], int] = args.handler
        return handler(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OrchestratorError as exc:  # the daemon could not start: the message says why
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
