"""Webhooks: what a delivery to POST /api/v1/webhooks/{name} is checked against and what it creates.

The checks are pure functions of the webhook's configuration, the request's headers and its raw
body, so they are table-tested without a server: the signature (HMAC over the raw bytes, compared
in constant time against every accepted secret, which is how a secret is rotated without
downtime), the filters, the mapping of body fields into the run's conf, and the delivery's key.

The key is what makes a redelivery create nothing: the delivery id header names the run
(`webhook__<name>__<id>`), so the store's uniqueness on (dag_id, run_id) *is* the idempotency;
without an id the body's sha256 claims a row for the webhook's `dedup_window` (the store's
`claim_webhook_body`), and that claim names the run. `WebhookReceiver` strings the checks together
and talks to the engine and the store only through the ports; the HTTP layer
(`orchestrator.api.webhooks`) only reads the request and writes the answer. Every delivery,
accepted or refused, goes to the `DeliveryLog`, written in batches off the accept path.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson

from orchestrator.config import WebhookConfig
from orchestrator.core.ids import check_run_id
from orchestrator.core.records import NewRun
from orchestrator.errors import ConfigError, DagNotFound, OrchestratorError, ShuttingDown
from orchestrator.ports import (
    AssetEventSink,
    Clock,
    EngineApi,
    Events,
    StateStore,
    TimerHandle,
    Timers,
    WebhookDelivery,
    WebhookDeliveryRecorded,
    WebhookStore,
)

log = logging.getLogger("orchestrator.triggers.webhooks")

#: GitHub's signature header and its form, `sha256=<hex>`
GITHUB_SIGNATURE_HEADER = "X-Hub-Signature-256"
#: what the delivery log keeps of a client-chosen delivery id or webhook name
MAX_LOGGED_TEXT = 200
#: what a reason keeps of a value it quotes
MAX_QUOTED_VALUE = 120
HEADER_PREFIX = "headers."

#: case-insensitive header lookup, as aiohttp's request.headers (a CIMultiDictProxy) gives it
Headers = Mapping[str, str]


class DeliveryRefused(OrchestratorError):
    """The delivery is malformed: the message says which field to fix."""


@dataclass(frozen=True)
class Webhook:
    """A configured webhook with the accepted secrets read from the environment at start-up."""

    config: WebhookConfig
    secrets: tuple[bytes, ...] = field(default=(), repr=False)

    @property
    def name(self) -> str:
        return self.config.name


def build_webhooks(
    configs: Mapping[str, WebhookConfig], secrets: Mapping[str, tuple[bytes, ...]]
) -> dict[str, Webhook]:
    """The webhooks by name, each with its secrets (see `orchestrator.config.webhook_secrets`)."""
    return {name: Webhook(config, secrets.get(name, ())) for name, config in configs.items()}


# --- signatures -------------------------------------------------------------------------------


def _signature_scheme(config: WebhookConfig) -> tuple[str, str, str]:
    """(header, prefix, digest) of a signed webhook."""
    if config.auth == "github":
        return GITHUB_SIGNATURE_HEADER, "sha256=", "sha256"
    return config.header, config.prefix, config.algorithm


def sign(secret: bytes, body: bytes, algorithm: str = "sha256") -> str:
    """The hex HMAC of `body` (what a sender puts after the prefix)."""
    return hmac.new(secret, body, algorithm).hexdigest()


def _any_equal(given: bytes, candidates: list[bytes]) -> bool:
    # every candidate is compared, so the time taken does not say which one (or whether one) matched
    matched = False
    for candidate in candidates:
        matched |= hmac.compare_digest(given, candidate)
    return matched


def authentication_problem(webhook: Webhook, headers: Headers, body: bytes) -> str | None:
    """None if the delivery is authentic, else why not (never quoting what was sent)."""
    config = webhook.config
    if config.auth == "none":
        return None
    if config.auth == "token":
        value = headers.get("Authorization")
        if not value:
            return "missing Authorization header: send Authorization: Bearer <token>"
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return "the Authorization header is not of the form Bearer <token>"
        if not _any_equal(token.strip().encode("utf-8", "replace"), list(webhook.secrets)):
            return "the bearer token is not an accepted secret of this webhook"
        return None
    header, prefix, algorithm = _signature_scheme(config)
    value = headers.get(header)
    if value is None:
        return f"missing {header} header: the body must be signed ({prefix}<hex HMAC-{algorithm.upper()}>)"
    if not value.startswith(prefix):
        return f"the {header} header does not start with {prefix!r}"
    given = value[len(prefix) :].strip().lower().encode("utf-8", "replace")
    expected = [sign(secret, body, algorithm).encode() for secret in webhook.secrets]
    if not _any_equal(given, expected):
        return (
            f"the {header} signature does not match the body under any accepted secret "
            "(it is computed over the raw body bytes)"
        )
    return None


# --- fields: filters and the conf mapping -------------------------------------------------------


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


MISSING: Any = _Missing()


def field_value(path: str, headers: Headers, document: Any) -> Any:
    """The value at a dotted path of the JSON body (list items by index), or a header's value for
    "headers.<Name>"; MISSING when there is none."""
    if path.startswith(HEADER_PREFIX):
        return headers.get(path[len(HEADER_PREFIX) :], MISSING)
    value = document
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return MISSING
    return value


def _quoted(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= MAX_QUOTED_VALUE else text[: MAX_QUOTED_VALUE - 3] + "..."


def filter_mismatch(config: WebhookConfig, headers: Headers, document: Any) -> str | None:
    """None if the delivery passes every filter, else the first one it fails (a reason)."""
    for path, accepted in config.filter.items():
        value = field_value(path, headers, document)
        if value is MISSING:
            return f"filter {path}: the delivery has no such field"
        if not any(value == candidate and type(value) is type(candidate) for candidate in accepted):
            return f"filter {path}: {_quoted(value)} is not one of {list(accepted)}"
    return None


def map_conf(config: WebhookConfig, headers: Headers, document: Any) -> dict[str, Any]:
    """The run's conf: the mapped fields, or the whole body when no mapping is configured.
    Raises DeliveryRefused naming a mapped field the delivery lacks."""
    if config.conf is None:
        if not isinstance(document, dict):
            raise DeliveryRefused(
                f"the body is a JSON {type(document).__name__}, not an object, so it cannot be the run's "
                f'conf: map its fields with conf = {{ key = "path" }} in [webhooks.{config.name}]'
            )
        return document
    conf: dict[str, Any] = {}
    for key, path in config.conf.items():
        value = field_value(path, headers, document)
        if value is MISSING:
            raise DeliveryRefused(f"the delivery has no field {path!r}, which conf key {key!r} maps")
        conf[key] = value
    return conf


def parse_body(body: bytes) -> Any:
    """The JSON body; DeliveryRefused when it is not JSON."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise DeliveryRefused(f"the body is not valid JSON: {exc}") from None


# --- delivery keys and run ids ------------------------------------------------------------------


def body_sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def run_id_for_delivery(name: str, delivery_id: str) -> str:
    """`webhook__<name>__<delivery id>`, or the id's hash when the id is not safe in a run id."""
    candidate = f"webhook__{name}__{delivery_id}"
    if check_run_id(candidate) is None:
        return candidate
    return (
        f"webhook__{name}__sha256-{hashlib.sha256(delivery_id.encode('utf-8', 'replace')).hexdigest()[:40]}"
    )


def run_id_for_body(name: str, digest: str, claimed_at: datetime) -> str:
    """The key of a delivery without an id: its body's hash and when that hash was claimed (the
    same body after the window names a new run)."""
    micros = int(claimed_at.timestamp() * 1_000_000)
    return f"webhook__{name}__body~{digest[:32]}~{micros}"


def delivery_id_of(config: WebhookConfig, headers: Headers) -> str | None:
    if config.delivery_id_header is None:
        return None
    value = headers.get(config.delivery_id_header)
    return value.strip() or None if value is not None else None


def _logged(text: str | None) -> str | None:
    return None if text is None else text[:MAX_LOGGED_TEXT]


# --- the answer -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    """What a delivery is answered: 202 created, 200 seen before, 202 filtered out, or a refusal
    (`status` >= 400, `reason` says why)."""

    status: int
    created: bool = False
    dag_run_id: str | None = None
    asset_event_id: int | None = None
    reason: str | None = None

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"created": self.created}
        if self.asset_event_id is not None:
            body["asset_event_id"] = self.asset_event_id
        else:
            body["dag_run_id"] = self.dag_run_id
        if self.reason is not None:
            body["reason"] = self.reason
        return body


# --- the delivery log ----------------------------------------------------------------------------

Spawn = Callable[[Coroutine[Any, Any, Any], str], "asyncio.Task[Any]"]


def _create_task(coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
    return asyncio.get_running_loop().create_task(coro, name=name)


class DeliveryLog:
    """Entries are handed over without waiting and written in batches by one writer task at a
    time (one statement per batch, group-commit style): under load a batch holds every delivery
    that arrived while the previous one was written. `close` writes what is left. Each entry,
    once written, is published on `events` (the API's event stream shows deliveries live)."""

    def __init__(
        self,
        store: WebhookStore,
        spawn: Spawn = _create_task,
        max_batch: int = 1000,
        events: Events | None = None,
    ) -> None:
        self._store = store
        self._events = events
        self._spawn = spawn
        self._max_batch = max_batch
        self._pending: list[WebhookDelivery] = []
        self._writer: asyncio.Task[Any] | None = None
        #: entries recorded and entries written (or given up on) so far, and who waits for which
        self._recorded = 0
        self._done = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    def record(self, delivery: WebhookDelivery) -> None:
        self._pending.append(delivery)
        self._recorded += 1
        if self._writer is None or self._writer.done():
            self._writer = self._spawn(self._write(), "webhook delivery log")

    async def _write(self) -> None:
        while self._pending:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            try:
                await self._store.record_webhook_deliveries(batch)
            except Exception as exc:  # the log must never fail a delivery; say what was lost
                log.warning("%d webhook deliveries could not be written to the log: %s", len(batch), exc)
            else:
                if self._events is not None:
                    for delivery in batch:
                        self._events.publish(WebhookDeliveryRecorded(delivery))
            finally:
                self._done += len(batch)
                self._wake()

    def _wake(self) -> None:
        still = []
        for target, waiter in self._waiters:
            if self._done >= target:
                if not waiter.done():
                    waiter.set_result(None)
            else:
                still.append((target, waiter))
        self._waiters = still

    async def flush(self) -> None:
        """Wait until every entry recorded so far is written (not those recorded meanwhile)."""
        if self._done >= self._recorded:
            return
        if self._writer is None or self._writer.done():  # recorded with no writer running
            await self._write()
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((self._recorded, waiter))
        await waiter

    async def close(self) -> None:
        await self.flush()


class DeliveryLogPruner:
    """Deletes log entries older than the retention, at start and then every `interval` seconds
    (a timer of the Timers port, re-armed after each prune)."""

    def __init__(
        self,
        store: WebhookStore,
        clock: Clock,
        timers: Timers,
        retention_days: float,
        spawn: Spawn = _create_task,
        interval: float = 3600.0,
    ) -> None:
        self._store = store
        self._clock = clock
        self._timers = timers
        self._retention = timedelta(days=retention_days)
        self._spawn = spawn
        self._interval = interval
        self._handle: TimerHandle | None = None
        self._stopped = False

    def start(self) -> None:
        self._tick()

    def stop(self) -> None:
        self._stopped = True
        if self._handle is not None:
            self._handle.cancel()

    def _tick(self) -> None:
        if not self._stopped:
            self._spawn(self._prune_and_rearm(), "webhook delivery log pruning")

    async def _prune_and_rearm(self) -> None:
        try:
            await self.prune()
        except Exception as exc:  # the next tick tries again
            log.warning(
                "pruning the webhook delivery log failed (retried in %.0f s): %s", self._interval, exc
            )
        if not self._stopped:
            self._handle = self._timers.call_later(self._interval, self._tick)

    async def prune(self) -> int:
        now = self._clock.now()
        removed = await self._store.prune_webhook_deliveries(now - self._retention, now)
        if removed:
            log.info("pruned %d webhook deliveries older than %s", removed, self._retention)
        return removed


# --- the receiver ---------------------------------------------------------------------------------


class WebhookReceiver:
    """Checks a delivery and creates its run (or asset event), through the ports only."""

    def __init__(
        self,
        webhooks: Mapping[str, Webhook],
        engine: EngineApi,
        store: StateStore,
        clock: Clock,
        delivery_log: DeliveryLog,
        assets: AssetEventSink | None = None,
    ) -> None:
        self.webhooks = dict(webhooks)
        self._engine = engine
        self._store = store
        #: where deliveries are claimed and listed (the state store's WebhookStore part)
        self.webhook_store: WebhookStore = store
        self.clock = clock
        self.delivery_log = delivery_log
        self._assets = assets
        for webhook in self.webhooks.values():
            if webhook.config.asset_uri is not None and assets is None:
                raise ConfigError(
                    f"webhooks.{webhook.name}.asset_uri: this daemon has no asset event sink to record "
                    "asset events with; use dag_id for now"
                )

    def answer(
        self,
        name: str,
        answer: Answer,
        received_at: datetime,
        delivery_id: str | None = None,
    ) -> Answer:
        """Record the delivery and its answer in the log; returns `answer`."""
        webhook = self.webhooks.get(name)
        config = webhook.config if webhook is not None else None
        self.delivery_log.record(
            WebhookDelivery(
                webhook=_logged(name) or "",
                delivery_id=_logged(delivery_id),
                received_at=received_at,
                status=answer.status,
                created=answer.created,
                dag_id=config.dag_id if config is not None else None,
                run_id=answer.dag_run_id,
                asset_uri=config.asset_uri if config is not None else None,
                asset_event_id=answer.asset_event_id,
                reason=answer.reason,
            )
        )
        return answer

    async def receive(self, webhook: Webhook, headers: Headers, body: bytes, received_at: datetime) -> Answer:
        """The answer to one delivery whose body was read whole (its size already checked)."""
        delivery_id = delivery_id_of(webhook.config, headers)
        try:
            answer = await self._receive(webhook, headers, body, received_at, delivery_id)
        except DeliveryRefused as exc:
            answer = Answer(400, reason=str(exc))
        except DagNotFound as exc:
            answer = Answer(404, reason=str(exc))
        except ShuttingDown as exc:
            answer = Answer(503, reason=str(exc))
        except Exception as exc:  # answered 500 by the API's error middleware, which logs the traceback
            reason = f"internal error ({type(exc).__name__}): see the daemon's log"
            self.answer(webhook.name, Answer(500, reason=reason), received_at, delivery_id)
            raise
        return self.answer(webhook.name, answer, received_at, delivery_id)

    async def _receive(
        self, webhook: Webhook, headers: Headers, body: bytes, received_at: datetime, delivery_id: str | None
    ) -> Answer:
        config = webhook.config
        problem = authentication_problem(webhook, headers, body)
        if problem is not None:
            return Answer(401, reason=problem)
        document = parse_body(body)
        mismatch = filter_mismatch(config, headers, document)
        if mismatch is not None:
            return Answer(202, reason=f"not triggered: {mismatch}")
        conf = map_conf(config, headers, document)
        if config.dag_id is not None and await self._store.paused_dag_ids([config.dag_id]):
            return Answer(
                409,
                reason=f"DAG {config.dag_id!r} is paused, so webhook {webhook.name!r} created nothing: "
                f"unpause it with `orchestrator dags unpause {config.dag_id}`",
            )
        key = await self._key(webhook, delivery_id, body, received_at)
        if config.asset_uri is not None:
            assert self._assets is not None  # checked in __init__
            event_id, created = await self._assets.record_asset_event(
                config.asset_uri, conf, idempotency_key=key
            )
            return Answer(202 if created else 200, created=created, asset_event_id=event_id)
        assert config.dag_id is not None
        note = f"triggered by webhook {webhook.name}" + (f" (delivery {delivery_id})" if delivery_id else "")
        run, created = await self._engine.create_run(
            NewRun(
                dag_id=config.dag_id,
                run_id=key,
                run_type="manual",
                conf=conf,
                logical_date=received_at,
                data_interval_start=received_at,
                data_interval_end=received_at,
                queued_at=received_at,
                external_trigger=True,
                note=note[:1000],
            )
        )
        return Answer(202 if created else 200, created=created, dag_run_id=run.run_id)

    async def _key(
        self, webhook: Webhook, delivery_id: str | None, body: bytes, received_at: datetime
    ) -> str:
        if delivery_id is not None:
            return run_id_for_delivery(webhook.name, delivery_id)
        digest = body_sha256(body)
        expires_at = received_at + timedelta(seconds=webhook.config.dedup_window)
        key, _claimed = await self.webhook_store.claim_webhook_body(
            webhook.name, digest, run_id_for_body(webhook.name, digest, received_at), received_at, expires_at
        )
        return key
