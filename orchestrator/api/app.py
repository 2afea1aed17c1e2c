"""The aiohttp application of the REST API, and the one thing it needs from the engine.

The API reads through the `StateStore` port and asks the engine (the `EngineApi` port)
only to trigger runs and to say whether it is ready, so it can be served — and tested — with
any implementation of both. The daemon mounts this app on its own runner.
"""

from __future__ import annotations

import getpass
import logging
import secrets
from pathlib import Path

from aiohttp import web

from orchestrator.api import (
    actions,
    audit,
    daemons,
    dag_details,
    dags,
    forward,
    lists,
    meta,
    openapi,
    runs,
    sources,
    task_instances,
    tokens,
    v2,
    webhooks,
    xcoms,
)
from orchestrator.api import assets as asset_routes
from orchestrator.api import backfills as backfills_api
from orchestrator.api import events as events_api
from orchestrator.api.auth import Authenticator, Credential, auth_middleware
from orchestrator.api.errors import error_middleware
from orchestrator.api.guards import origin_guard
from orchestrator.api.health import health, ready
from orchestrator.api.keys import (
    BACKFILLS,
    CONFIG,
    DAEMON_ID,
    ENGINE,
    LOGS_DIR,
    SETTINGS,
    SIGNING_KEY,
    STORE,
    TASK_LOGS,
    UNIXNAME,
)
from orchestrator.api.replica_auth import REPLICA_SECRET, ReplicaSecret
from orchestrator.api.roles import Role
from orchestrator.api.v2.errors import v2_error_middleware
from orchestrator.config import ApiConfig, Config
from orchestrator.ports import AssetEventSink, EngineApi, Events, StateStore, TaskLogs
from orchestrator.triggers.backfill import Backfills
from orchestrator.triggers.webhooks import WebhookReceiver

log = logging.getLogger("orchestrator.api")


def settings_authenticator(settings: ApiConfig, secret_key: bytes | None = None) -> Authenticator:
    """An authenticator of the `token_sha256` entries of `settings` (tokens given in the
    environment are read by the daemon, which builds its own), with a random key when None."""
    credentials = [
        Credential(token.name, Role.parse(token.role), bytes.fromhex(token.token_sha256))
        for token in settings.tokens
        if token.token_sha256 is not None
    ]
    return Authenticator.configured(credentials, secret_key or secrets.token_bytes(32), settings)


def _unixname() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


def create_app(
    store: StateStore,
    engine: EngineApi,
    logs_dir: Path,
    task_logs: TaskLogs | None = None,
    settings: ApiConfig | None = None,
    backfills: Backfills | None = None,
    assets: AssetEventSink | None = None,
    webhook_receiver: WebhookReceiver | None = None,
    auth: Authenticator | None = None,
    signing_key: bytes | None = None,
    config: Config | None = None,
    events: Events | None = None,
    daemon_id: str | None = None,
) -> web.Application:
    """The REST API (Airflow's /api/v1 shapes) and /health, reading `store`, triggering via `engine`,
    serving task logs through `task_logs` (default: the files under `logs_dir`), limited by the
    [api] `settings` (defaults if None). External asset events go to `assets` (without it, POST
    /assets/events answers 503); webhooks are answered by `webhook_receiver` (None: none
    configured). The app's cleanup writes what is left of the webhook delivery log. DAG file
    tokens are signed with `signing_key` (None: a key derived from `auth`'s, so tokens outlive a
    restart of the daemon, whose key is kept in its state dir); GET /config shows `config`
    (None: answers 404, the daemon's config is unknown). `events` is the engine's event bus,
    streamed by GET /api/v1/events (None: that answers 503). `daemon_id` is this replica's
    (None: unknown; a log another replica ran is then looked for here first, then there).

    Any replica answers any request: an operation on a run another replica drives is forwarded
    to it (`orchestrator.api.forward`), a log only another replica has is streamed from it
    (`orchestrator.api.remote_logs`), each signed with the replicas' shared secret.

    Every route but the public ones needs credentials that `auth` accepts (default: the
    `token_sha256` entries of `settings.tokens`; with none, nothing but the public routes), and
    every request that changes something is recorded in the audit trail (GET /eventLogs) under
    the name of the token that made it."""
    settings = settings or ApiConfig()
    auth = auth if auth is not None else settings_authenticator(settings)
    app = web.Application(
        middlewares=[
            error_middleware,
            v2_error_middleware,  # /api/v2 answers failures in Airflow 3's shape
            origin_guard(settings.allowed_origins),
            auth_middleware(auth),
            audit.audit_middleware,
            forward.forward_middleware,  # inside auth: the caller is known before it is vouched for
        ]
    )
    app[tokens.AUTH] = auth
    app[STORE] = store
    app[REPLICA_SECRET] = ReplicaSecret(store)
    forward.setup(app)
    if daemon_id is not None:
        app[DAEMON_ID] = daemon_id
    app[ENGINE] = engine
    app[LOGS_DIR] = logs_dir
    if task_logs is None:
        from storage.filelogs import FileTaskLogs

        task_logs = FileTaskLogs(logs_dir)
    app[TASK_LOGS] = task_logs
    app[UNIXNAME] = _unixname()
    app[SETTINGS] = settings
    app[SIGNING_KEY] = signing_key if signing_key is not None else auth.derived_key("dagSources file_token")
    if config is not None:
        app[CONFIG] = config
    if assets is not None:
        app[asset_routes.ASSET_SINK] = assets
    app.router.add_get("/health", health)
    app.router.add_get("/api/v1/health", health)
    app.router.add_get("/ready", ready)
    tokens.add_routes(app.router)
    lists.add_routes(app.router)
    dags.add_routes(app.router)
    dag_details.add_routes(app.router)
    sources.add_routes(app.router)
    xcoms.add_routes(app.router)
    meta.add_routes(app.router)
    runs.add_routes(app.router)
    task_instances.add_routes(app.router)
    actions.add_routes(app.router)
    if backfills is not None:
        app[BACKFILLS] = backfills
        backfills_api.add_routes(app.router)
    asset_routes.add_routes(app.router)
    webhooks.add_routes(app, webhook_receiver)
    events_api.add_routes(app, events)
    audit.add_routes(app.router)
    daemons.add_routes(app.router)
    v2.add_routes(app.router)
    openapi.add_routes(app.router)
    return app
