"""The composition root: builds every part from the configuration and runs them in one process.

Start-up order matters: database (embedded or configured) → migrations → store → executor
and parser workers → active runs recovered → API listening, while the DAG folder is parsed
in the background (a slow DAG file never keeps the API closed). Shutdown
(SIGTERM or SIGINT) is the reverse: the API stops taking runs, running tasks get
`daemon.shutdown_grace` seconds, everything committed is flushed, workers and (if it is
ours) the embedded PostgreSQL stop. All long-running parts live in one anyio task group on
uvloop, so an unexpected failure in one stops the daemon instead of leaving it half alive.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
from aiohttp import web

from orchestrator.api.app import create_app
from orchestrator.api.auth import Authenticator
from orchestrator.api.meta import version
from orchestrator.config import DEPRECATED_LOG_LEVEL_ENV, Config, webhook_secrets
from orchestrator.core.model import DagSpec
from orchestrator.core.serialization import spec_from_dict
from orchestrator.core.template_limits import TemplateLimits
from orchestrator.core.values import xcom_refusal
from orchestrator.daemon_auth import build_authenticator
from orchestrator.dagfolder import DagFolder
from orchestrator.engine.clock import SystemClock
from orchestrator.engine.dispatch import Dispatcher
from orchestrator.engine.engine import Engine
from orchestrator.engine.events import EventBus
from orchestrator.engine.registry import DagRegistry
from orchestrator.engine.supervision import Supervisor
from orchestrator.engine.timers import LoopTimers
from orchestrator.errors import OrchestratorError
from orchestrator.ports import AssetEventSink, Executor, ExecutorEvents, StateStore, TaskLogs
from orchestrator.replicas import Replica
from orchestrator.triggers.assets import AssetTrigger
from orchestrator.triggers.backfill import Backfills
from orchestrator.triggers.scheduler import Scheduler
from orchestrator.triggers.webhooks import DeliveryLog, DeliveryLogPruner, WebhookReceiver, build_webhooks
from storage.filelogs import FileTaskLogs, LogFiles

if TYPE_CHECKING:
    from executors.parser import DagParserPool

log = logging.getLogger("orchestrator.daemon")

#: under the state directory: the source of every parsed DAG version, by hash
DAG_VERSIONS_FOLDER = "dag_versions"


@dataclass(frozen=True)
class Paths:
    state_dir: Path
    logs_dir: Path
    api_url_file: Path

    @classmethod
    def of(cls, config: Config) -> Paths:
        state_dir = Path(config.daemon.state_dir).resolve()
        logs_dir = Path(config.logs.folder).resolve() if config.logs.folder else state_dir / "logs"
        return cls(state_dir, logs_dir, state_dir / "api.url")


def task_base_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment tasks inherit: the daemon's, less its own configuration overrides
    (ORCHESTRATOR_<SECTION>__<KEY>, which may hold the database password) and an API token
    the daemon's environment may hold for the CLI (ORCHESTRATOR_TOKEN)."""
    return {
        name: value
        for name, value in environ.items()
        if not (name.startswith("ORCHESTRATOR_") and "__" in name[len("ORCHESTRATOR_") :])
        and name != "ORCHESTRATOR_TOKEN"
    }


def configure_logging(config: Config) -> None:
    """Log to stderr at daemon.log_level (ORCHESTRATOR_LOG_LEVEL is its deprecated alias)."""
    logging.basicConfig(
        level=config.daemon.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    if DEPRECATED_LOG_LEVEL_ENV in os.environ:
        log.warning("%s is deprecated: set ORCHESTRATOR_DAEMON__LOG_LEVEL instead", DEPRECATED_LOG_LEVEL_ENV)


class DaemonFailed(OrchestratorError):
    """The daemon stopped on an error it could not repair in place: a restart recovers from the database."""


class ApiListenError(OrchestratorError):
    """The REST API cannot listen on its address: choose another api.host / api.port."""


def run_daemon(config: Config) -> int:
    """`orchestrator run`: serve until SIGTERM/SIGINT. Returns the process exit code. A start-up
    failure of ours (OrchestratorError) is raised as itself, not inside an exception group."""
    configure_logging(config)
    try:
        anyio.run(_serve, config, backend="asyncio", backend_options={"use_uvloop": True})
    except DaemonFailed as exc:
        log.critical("the daemon stopped: %s", exc)
        return 1
    except BaseExceptionGroup as group:
        ours = _only_error_of_ours(group)
        if ours is None:
            raise
        raise ours from None
    return 0


def _only_error_of_ours(group: BaseExceptionGroup[BaseException]) -> OrchestratorError | None:
    """The one OrchestratorError a task group failed with (cancellations aside), or None."""
    errors = [exc for exc in _leaves(group) if not isinstance(exc, asyncio.CancelledError)]
    if len(errors) == 1 and isinstance(errors[0], OrchestratorError):
        return errors[0]
    return None


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    leaves: list[BaseException] = []
    for exc in group.exceptions:
        leaves.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return leaves


def build_executors(
    config: Config, events: ExecutorEvents, state_dir: Path, log_files: LogFiles | None = None
) -> dict[str, Executor]:
    """Every configured executor, by name. A new executor adds its construction here (the
    composition root is the one place that knows adapters) and its config table."""
    from executors.local import LocalExecutor

    local = config.executors.local
    return {
        "local": LocalExecutor(
            events,
            slots=local.slots,
            python_workers=local.python_workers,
            kill_grace=local.kill_grace,
            state_dir=state_dir,
            log_files=log_files,
            versions_dir=state_dir / DAG_VERSIONS_FOLDER,
            # Python workers start with what every child gets: no configuration overrides
            worker_env=task_base_environment(os.environ),
        )
    }


def build_parser(
    config: Config, environ: Mapping[str, str] = os.environ, versions_dir: Path | None = None
) -> DagParserPool:
    """The DAG-file parser pool. DAG files see the environment tasks see: without the daemon's
    configuration overrides (the DSN may hold a password)."""
    from executors.parser import DagParserPool

    dags = config.dags
    return DagParserPool(
        dags.parser_processes,
        timeout=dags.parse_timeout,
        memory_mb=dags.parse_memory_mb,
        env=task_base_environment(environ),
        versions_dir=versions_dir,
    )


def migrate_database(config: Config) -> list[int]:
    """`orchestrator db migrate`: apply pending migrations to the configured database."""
    configure_logging(config)

    async def _migrate() -> list[int]:
        from storage.migrate import migrate_dsn

        async with _database(config, owner=False) as dsn:
            return await migrate_dsn(dsn, config.database.connect_timeout)

    return anyio.run(_migrate)


@asynccontextmanager
async def _database(config: Config, *, owner: bool) -> AsyncIterator[str]:
    """The configured DSN, or a private PostgreSQL under the state directory.

    The daemon (`owner`) stops its embedded server when it exits, even one a killed daemon left
    running; a one-off command stops it only if it started it (a daemon may be using it).
    """
    if config.database.dsn:
        yield config.database.dsn
        return
    from storage.embedded import EmbeddedPostgres, embedded_data_dir

    state_dir = Paths.of(config).state_dir
    embedded = EmbeddedPostgres(embedded_data_dir(state_dir), durable=True)
    if embedded.data_dir != state_dir / "postgres":
        log.info(
            "the `postgres` user cannot reach %s: the embedded PostgreSQL of this state directory "
            "lives in %s",
            state_dir,
            embedded.data_dir,
        )
    was_running = await anyio.to_thread.run_sync(embedded.is_running)
    if not was_running:
        log.info("no database.dsn configured: starting the embedded PostgreSQL in %s", embedded.data_dir)
    dsn = await anyio.to_thread.run_sync(embedded.ensure_started)
    try:
        yield dsn
    finally:
        if owner or not was_running:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(embedded.stop)


async def _serve(config: Config) -> None:
    from executors.errors import DagFileParseError
    from storage.migrate import migrate_dsn
    from storage.postgres import PostgresStateStore

    paths = Paths.of(config)
    # read before anything starts: a missing webhook secret stops the daemon at once, naming the key;
    # then gone from the environment, so no task, DAG file or worker inherits a webhook's secret
    secrets = webhook_secrets(config.webhooks, os.environ)
    for webhook in config.webhooks.values():
        for variable in webhook.secret_env:
            os.environ.pop(variable, None)
    # likewise the API's tokens and signing key; no tokens: loopback only, with a generated token
    auth = build_authenticator(config, paths.state_dir, os.environ)
    paths.logs_dir.mkdir(parents=True, exist_ok=True)
    hostname = socket.gethostname()
    daemon_id = config.daemon.daemon_id or f"{hostname}-{os.getpid()}"
    clock = SystemClock()
    timers = LoopTimers(clock)
    stop = anyio.Event()
    supervisor = Supervisor()
    failure: list[str] = []

    def on_fatal(message: str) -> None:
        failure.append(message)
        stop.set()

    supervisor.set_fatal_handler(on_fatal)

    async with AsyncExitStack() as stack:
        dsn = await stack.enter_async_context(_database(config, owner=True))
        applied = await migrate_dsn(dsn, config.database.connect_timeout)
        if applied:
            log.info("applied migrations %s", applied)
        store = await PostgresStateStore.connect(
            dsn,
            min_size=config.database.pool_min_size,
            max_size=config.database.pool_max_size,
            connect_timeout=config.database.connect_timeout,
        )
        stack.push_async_callback(store.close)

        registry = DagRegistry()
        log_files = LogFiles(config.logs.max_bytes_per_try)
        task_logs = FileTaskLogs(paths.logs_dir, log_files)
        engine = Engine(
            store,
            clock,
            timers,
            registry,
            paths.logs_dir,
            daemon_id,
            hostname,
            base_env=task_base_environment(os.environ),
            task_logs=task_logs,
            events=EventBus(),
            supervisor=supervisor,
            check_value=functools.partial(xcom_refusal, max_bytes=config.xcom.max_bytes),
            template_limits=TemplateLimits(
                max_output_bytes=config.templates.max_output_bytes,
                render_timeout=config.templates.render_timeout,
            ),
        )
        engine.set_installation(await store.installation_id())
        replica = Replica(
            store,
            engine,
            clock,
            timers,
            daemon_id=daemon_id,
            hostname=hostname,
            version=version(),
            takeover_after=config.daemon.takeover_after,
        )
        await replica.join()
        # the drain comes first (see below); this hands what is left over to the survivors
        stack.push_async_callback(replica.leave)
        dispatcher = Dispatcher(
            build_executors(config, engine, paths.state_dir, log_files), default=config.executors.default
        )
        engine.attach_executors(dispatcher)
        # asset-triggered runs: told of outlets committed, DAGs loaded and unpaused, external events
        asset_trigger = AssetTrigger(engine, store, clock, timers)
        asset_trigger.attach()
        parser = build_parser(config, versions_dir=paths.state_dir / DAG_VERSIONS_FOLDER)
        await parser.start()
        stack.push_async_callback(parser.close)
        await dispatcher.start()
        stack.push_async_callback(dispatcher.close)
        stack.push_async_callback(supervisor.cancel_all)

        async with anyio.create_task_group() as group:
            group.start_soon(engine.writer.run)
            folder = DagFolder(
                Path(config.daemon.dags_folder),
                parser,
                store,
                registry,
                clock,
                parse_error=DagFileParseError,
                events=engine.events,
                paused_on_creation=config.dags.paused_on_creation,
            )
            scheduler = Scheduler(
                engine, store, clock, timers, supervisor, default_timezone=config.dags.default_timezone
            )
            backfills = Backfills(engine, store, clock, supervisor, config.dags.default_timezone)
            registry.add_listener(scheduler.refresh)
            engine.add_paused_listener(lambda dag_id, _paused: scheduler.refresh([dag_id]))
            stored = await _stored_specs(store)
            # parsed in the background: a slow file must not keep the API closed (runs recover
            # on their recorded DAG versions; a DAG not parsed yet cannot be triggered yet)
            group.start_soon(folder.run, {dag_id: spec.fileloc for dag_id, spec in stored.items()})
            await asset_trigger.recover()
            await replica.start_listening()  # before recovery: no waiting run is missed
            await engine.recover(stored)
            scheduler.start()
            await backfills.start()
            receiver = WebhookReceiver(
                build_webhooks(config.webhooks, secrets),
                engine,
                store,
                clock,
                DeliveryLog(store, supervisor.spawn, events=engine.events),
                assets=asset_trigger,
            )
            pruner = DeliveryLogPruner(
                store, clock, timers, config.webhook_log.retention_days, spawn=supervisor.spawn
            )
            pruner.start()
            asset_trigger.start()
            runner = await _start_api(
                config, paths, store, engine, task_logs, backfills, receiver, asset_trigger, auth
            )
            await replica.advertise(_advertised_url(config, runner))
            group.start_soon(replica.heartbeat)
            group.start_soon(replica.takeovers)
            group.start_soon(replica.keep_listening)
            group.start_soon(_wait_for_stop_signal, stop)
            log.info("orchestrator daemon %s ready", daemon_id)

            await stop.wait()
            log.info("shutting down: waiting up to %.0f s for running tasks", config.daemon.shutdown_grace)
            scheduler.stop()
            backfills.stop()
            await engine.drain(config.daemon.shutdown_grace)
            pruner.stop()
            await runner.cleanup()  # also writes what is left of the webhook delivery log
            paths.api_url_file.unlink(missing_ok=True)
            folder.stop()
            group.cancel_scope.cancel()
    log.info("orchestrator daemon %s stopped", daemon_id)
    if failure:
        raise DaemonFailed(failure[0])


async def _stored_specs(store: StateStore) -> dict[str, DagSpec]:
    """Specs of the DAGs the store knows: runs of a DAG whose file is gone can still finish."""
    specs: dict[str, DagSpec] = {}
    offset = 0
    while True:
        page, total = await store.list_dags(limit=1000, offset=offset, only_active=False)
        for record in page:
            try:
                specs[record.dag_id] = spec_from_dict(record.spec)
            except Exception as exc:  # a spec written by an older version
                log.warning(
                    "stored DAG %s is unreadable (%s); it resumes only once its file loads",
                    record.dag_id,
                    exc,
                )
        offset += len(page)
        if not page or offset >= total:
            return specs


async def _start_api(
    config: Config,
    paths: Paths,
    store: StateStore,
    engine: Engine,
    task_logs: TaskLogs,
    backfills: Backfills,
    webhook_receiver: WebhookReceiver | None = None,
    assets: AssetEventSink | None = None,
    auth: Authenticator | None = None,
) -> web.AppRunner:
    app = create_app(
        store,
        engine,
        paths.logs_dir,
        task_logs,
        config.api,
        backfills=backfills,
        assets=assets,
        webhook_receiver=webhook_receiver,
        auth=auth,
        config=config,
        events=engine.events,
        daemon_id=engine.daemon_id,
    )
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, config.api.host, config.api.port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        address = f"{config.api.host}:{config.api.port}"
        reason = (
            "address already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc)).lower()
        )
        raise ApiListenError(f"cannot listen on {address}: {reason}; set api.port") from None
    port = runner.addresses[0][1] if runner.addresses else config.api.port
    # a wildcard address is not one to connect to: the CLI on this machine uses loopback
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(config.api.host, config.api.host)
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    # written whole then renamed: a reader never sees a half-written URL
    partial = paths.api_url_file.with_suffix(".tmp")
    partial.write_text(url + "\n")
    partial.replace(paths.api_url_file)
    log.info("REST API listening on %s:%s", config.api.host, port)
    return runner


def _advertised_url(config: Config, runner: web.AppRunner) -> str:
    """The URL other replicas reach this one's API at: daemon.advertise_url, else the address
    the API listens on (for a wildcard address, this host's address)."""
    if config.daemon.advertise_url:
        return config.daemon.advertise_url.rstrip("/")
    port = runner.addresses[0][1] if runner.addresses else config.api.port
    host = config.api.host
    if host in ("0.0.0.0", "::", ""):
        try:
            host = socket.gethostbyname(socket.gethostname())
        except OSError:
            host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def _wait_for_stop_signal(stop: anyio.Event) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("received %s", signal.Signals(signum).name)
            stop.set()
            return
