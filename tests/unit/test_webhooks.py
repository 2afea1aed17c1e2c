"""The pure parts of webhooks: signatures (and rotation), filters, the conf mapping, delivery keys."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from multidict import CIMultiDict

from orchestrator.config import WebhookConfig
from orchestrator.core.ids import check_run_id
from orchestrator.ports import WebhookDelivery
from orchestrator.triggers.webhooks import (
    MISSING,
    Answer,
    DeliveryLog,
    DeliveryRefused,
    Webhook,
    authentication_problem,
    delivery_id_of,
    field_value,
    filter_mismatch,
    map_conf,
    parse_body,
    run_id_for_body,
    run_id_for_delivery,
)

BODY = b'{"ref": "refs/heads/main", "repository": {"full_name": "acme/app"}, "commits": [{"id": "c1"}]}'


def github(*secrets: bytes, **options: Any) -> Webhook:
    return Webhook(WebhookConfig(name="gh", auth="github", dag_id="build", **options), secrets)


def headers(**values: str) -> CIMultiDict[str]:
    return CIMultiDict({name.replace("_", "-"): value for name, value in values.items()})


def gh_signature(secret: bytes, body: bytes = BODY) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def test_a_github_signature_over_the_raw_body_passes() -> None:
    assert (
        authentication_problem(github(b"s3cret"), headers(X_Hub_Signature_256=gh_signature(b"s3cret")), BODY)
        is None
    )


def test_the_header_name_is_case_insensitive() -> None:
    given = CIMultiDict({"x-hub-signature-256": gh_signature(b"k")})
    assert authentication_problem(github(b"k"), given, BODY) is None


@pytest.mark.parametrize(
    ("given", "body", "reason"),
    [
        ({}, BODY, "missing X-Hub-Signature-256 header"),
        ({"X-Hub-Signature-256": "sha1=abc"}, BODY, "does not start with 'sha256='"),
        ({"X-Hub-Signature-256": gh_signature(b"other")}, BODY, "does not match the body"),
        # the same JSON re-serialised is not the raw body that was signed
        ({"X-Hub-Signature-256": gh_signature(b"k", BODY)}, BODY.replace(b": ", b":"), "does not match"),
        ({"X-Hub-Signature-256": "sha256=" + "0" * 64}, BODY, "does not match"),
    ],
)
def test_bad_github_signatures_are_refused_without_quoting_them(
    given: dict[str, str], body: bytes, reason: str
) -> None:
    problem = authentication_problem(github(b"k"), CIMultiDict(given), body)
    assert problem is not None and reason in problem
    for value in given.values():
        assert value.split("=", 1)[-1] not in problem


def test_rotation_accepts_every_listed_secret_and_nothing_else() -> None:
    webhook = github(b"new", b"old")
    assert authentication_problem(webhook, headers(X_Hub_Signature_256=gh_signature(b"new")), BODY) is None
    assert authentication_problem(webhook, headers(X_Hub_Signature_256=gh_signature(b"old")), BODY) is None
    assert authentication_problem(webhook, headers(X_Hub_Signature_256=gh_signature(b"older")), BODY)


@pytest.mark.parametrize("algorithm", ["sha256", "sha1", "sha512"])
def test_generic_hmac_uses_its_header_prefix_and_algorithm(algorithm: str) -> None:
    config = WebhookConfig(
        name="ci", auth="hmac", dag_id="d", header="X-Sig", prefix=f"{algorithm}:", algorithm=algorithm
    )
    webhook = Webhook(config, (b"k",))
    digest = hmac.new(b"k", BODY, algorithm).hexdigest()
    assert authentication_problem(webhook, headers(X_Sig=f"{algorithm}:{digest}"), BODY) is None
    assert authentication_problem(webhook, headers(X_Sig=f"{algorithm}:{digest.upper()}"), BODY) is None
    assert "missing X-Sig header" in (authentication_problem(webhook, headers(), BODY) or "")
    assert authentication_problem(webhook, headers(X_Sig=digest), BODY)  # no prefix


@pytest.mark.parametrize(
    ("authorization", "ok"),
    [
        ("Bearer tok-new", True),
        ("bearer tok-old", True),
        ("Bearer tok-older", False),
        ("Basic dG9rLW5ldw==", False),
        ("Bearer ", False),
        ("tok-new", False),
    ],
)
def test_bearer_tokens(authorization: str, ok: bool) -> None:
    webhook = Webhook(WebhookConfig(name="t", auth="token", dag_id="d"), (b"tok-new", b"tok-old"))
    problem = authentication_problem(webhook, headers(Authorization=authorization), b"{}")
    assert (problem is None) is ok
    if problem is not None:
        assert "tok-" not in problem
    assert "missing Authorization header" in (authentication_problem(webhook, headers(), b"{}") or "")


def test_auth_none_passes_anything() -> None:
    webhook = Webhook(WebhookConfig(name="n", auth="none", dag_id="d", allow_unauthenticated=True))
    assert authentication_problem(webhook, headers(), b"anything") is None


DOC = parse_body(BODY)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("ref", "refs/heads/main"),
        ("repository.full_name", "acme/app"),
        ("commits.0.id", "c1"),
        ("commits.1.id", MISSING),
        ("repository.owner", MISSING),
        ("ref.deeper", MISSING),
        ("headers.X-GitHub-Event", "push"),
        ("headers.x-github-event", "push"),
        ("headers.X-Missing", MISSING),
    ],
)
def test_field_values_by_dotted_path(path: str, value: Any) -> None:
    assert field_value(path, headers(X_GitHub_Event="push"), DOC) == value


@pytest.mark.parametrize(
    ("filters", "event", "mismatch"),
    [
        ({}, "push", None),
        ({"headers.X-GitHub-Event": ("push",), "ref": ("refs/heads/main",)}, "push", None),
        ({"headers.X-GitHub-Event": ("push", "release")}, "release", None),
        (
            {"headers.X-GitHub-Event": ("push",)},
            "ping",
            "filter headers.X-GitHub-Event: 'ping' is not one of ['push']",
        ),
        (
            {"ref": ("refs/heads/dev",)},
            "push",
            "filter ref: 'refs/heads/main' is not one of ['refs/heads/dev']",
        ),
        ({"action": ("opened",)}, "push", "filter action: the delivery has no such field"),
    ],
)
def test_filters(filters: dict[str, tuple[Any, ...]], event: str, mismatch: str | None) -> None:
    config = WebhookConfig(name="gh", auth="github", dag_id="d", filter=filters)
    assert filter_mismatch(config, headers(X_GitHub_Event=event), DOC) == mismatch


def test_a_filter_value_must_have_the_same_type() -> None:
    config = WebhookConfig(name="gh", auth="github", dag_id="d", filter={"n": (1,)})
    assert filter_mismatch(config, headers(), {"n": 1}) is None
    assert filter_mismatch(config, headers(), {"n": True})
    assert filter_mismatch(config, headers(), {"n": "1"})


def test_the_conf_is_the_whole_body_or_the_mapped_fields() -> None:
    whole = WebhookConfig(name="gh", auth="github", dag_id="d")
    assert map_conf(whole, headers(), DOC) == DOC
    mapped = WebhookConfig(
        name="gh",
        auth="github",
        dag_id="d",
        conf={"ref": "ref", "repo": "repository.full_name", "event": "headers.X-GitHub-Event"},
    )
    assert map_conf(mapped, headers(X_GitHub_Event="push"), DOC) == {
        "ref": "refs/heads/main",
        "repo": "acme/app",
        "event": "push",
    }


def test_a_missing_mapped_field_is_refused_naming_it() -> None:
    config = WebhookConfig(name="gh", auth="github", dag_id="d", conf={"sha": "head_commit.id"})
    with pytest.raises(DeliveryRefused, match=r"no field 'head_commit\.id', which conf key 'sha' maps"):
        map_conf(config, headers(), DOC)


def test_a_body_that_is_not_an_object_cannot_be_the_whole_conf() -> None:
    config = WebhookConfig(name="gh", auth="github", dag_id="d")
    with pytest.raises(DeliveryRefused, match="JSON list, not an object"):
        map_conf(config, headers(), [1, 2])


@pytest.mark.parametrize("body", [b"", b"{", b"not json", b'{"a": 1,}', b"\xff\xfe"])
def test_malformed_json_is_refused(body: bytes) -> None:
    with pytest.raises(DeliveryRefused, match="the body is not valid JSON"):
        parse_body(body)


@pytest.mark.parametrize(
    ("delivery_id", "expected"),
    [
        ("72d3162e-cc78-11e3-81ab-4c9367dc0958", "webhook__gh__72d3162e-cc78-11e3-81ab-4c9367dc0958"),
        ("abc", "webhook__gh__abc"),
    ],
)
def test_a_safe_delivery_id_names_the_run(delivery_id: str, expected: str) -> None:
    assert run_id_for_delivery("gh", delivery_id) == expected


@pytest.mark.parametrize("delivery_id", ["with space", "a/b", "ünï", "x" * 300, "new\nline"])
def test_an_unsafe_delivery_id_is_hashed_into_a_valid_run_id(delivery_id: str) -> None:
    run_id = run_id_for_delivery("gh", delivery_id)
    assert check_run_id(run_id) is None
    assert run_id.startswith("webhook__gh__sha256-")
    assert run_id == run_id_for_delivery("gh", delivery_id)  # deterministic
    assert run_id != run_id_for_delivery("gh", delivery_id + "!")


def test_a_body_key_is_a_valid_run_id_that_changes_with_the_claim_time() -> None:
    digest = hashlib.sha256(BODY).hexdigest()
    first = run_id_for_body("gh", digest, datetime(2026, 1, 1, tzinfo=UTC))
    later = run_id_for_body("gh", digest, datetime(2026, 1, 1, 0, 10, tzinfo=UTC))
    assert check_run_id(first) is None and first != later


def test_the_delivery_id_comes_from_the_configured_header() -> None:
    config = WebhookConfig(name="gh", auth="github", dag_id="d", delivery_id_header="X-GitHub-Delivery")
    assert delivery_id_of(config, headers(X_GitHub_Delivery=" id-1 ")) == "id-1"
    assert delivery_id_of(config, headers(X_GitHub_Delivery="")) is None
    assert delivery_id_of(config, headers()) is None
    assert (
        delivery_id_of(WebhookConfig(name="gh", auth="github", dag_id="d"), headers(X_GitHub_Delivery="x"))
        is None
    )


def test_the_answer_body() -> None:
    assert Answer(202, created=True, dag_run_id="r").body() == {"created": True, "dag_run_id": "r"}
    assert Answer(202, reason="not triggered: x").body() == {
        "created": False,
        "dag_run_id": None,
        "reason": "not triggered: x",
    }
    assert Answer(200, asset_event_id=7).body() == {"created": False, "asset_event_id": 7}


def test_the_secrets_never_show_in_the_webhook_repr() -> None:
    assert "s3cret" not in repr(github(b"s3cret"))


class _SlowLogStore:
    """A WebhookStore whose writes wait on a gate (for the delivery log's batching)."""

    def __init__(self) -> None:
        self.batches: list[list[str | None]] = []
        self.gate = asyncio.Event()
        self.writing = asyncio.Event()
        self.fail = False

    async def record_webhook_deliveries(self, deliveries: Sequence[WebhookDelivery]) -> None:
        self.writing.set()
        await self.gate.wait()
        if self.fail:
            raise ConnectionError("database gone")
        self.batches.append([d.delivery_id for d in deliveries])


def _entry(delivery_id: str) -> WebhookDelivery:
    return WebhookDelivery("w", delivery_id, datetime(2026, 1, 1, tzinfo=UTC), 202, True)


@pytest.mark.anyio
async def test_the_delivery_log_batches_what_arrives_while_it_writes() -> None:
    store = _SlowLogStore()
    delivery_log = DeliveryLog(store)  # type: ignore[arg-type]
    delivery_log.record(_entry("a"))
    await store.writing.wait()  # the writer took "a" and waits on the gate
    for name in ("b", "c"):
        delivery_log.record(_entry(name))
    flushed = asyncio.ensure_future(delivery_log.flush())
    store.gate.set()
    await flushed
    assert store.batches == [["a"], ["b", "c"]]
    await delivery_log.close()


@pytest.mark.anyio
async def test_a_failed_log_write_is_given_up_on_and_never_blocks_a_flush() -> None:
    store = _SlowLogStore()
    store.fail = True
    store.gate.set()
    delivery_log = DeliveryLog(store)  # type: ignore[arg-type]
    delivery_log.record(_entry("a"))
    await delivery_log.flush()
    assert store.batches == []
    store.fail = False
    delivery_log.record(_entry("b"))
    await delivery_log.close()
    assert store.batches == [["b"]]
