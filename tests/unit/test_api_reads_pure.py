"""The pure parts of the v1 reads: order_by parsing, DAG file tokens, and config masking."""

from __future__ import annotations

import pytest

from orchestrator.api.meta import HIDDEN, config_sections, mask_dsn
from orchestrator.api.sources import file_token, read_file_token
from orchestrator.config import ApiConfig, ApiToken, Config, DatabaseConfig
from orchestrator.core.listing import Order

KEY = b"0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    ("text", "order"),
    [
        ("start_date", Order("start_date")),
        ("-start_date", Order("start_date", True)),
        ("-id", Order("id", True)),
    ],
)
def test_order_parse_and_key(text: str, order: Order) -> None:
    assert Order.parse(text) == order
    assert order.key == text


@pytest.mark.parametrize("path", ["/dags/etl.py", "/dags/é ü/with.dots.py", "relative/x.py", ""])
def test_a_file_token_reads_back_to_its_path(path: str) -> None:
    token = file_token(KEY, path)
    assert read_file_token(KEY, token) == path
    assert "/" not in token  # URL-safe: one path segment, the path not readable in it


def test_a_file_token_is_refused_with_another_key_or_when_altered() -> None:
    token = file_token(KEY, "/dags/etl.py")
    assert read_file_token(b"other" * 8, token) is None
    payload, _, signature = token.partition(".")
    other_payload = file_token(KEY, "/etc/passwd").partition(".")[0]
    assert read_file_token(KEY, f"{other_payload}.{signature}") is None
    altered = signature[:-1] + ("B" if signature.endswith("A") else "A")
    assert read_file_token(KEY, f"{payload}.{altered}") is None
    for junk in ("", ".", "abc", "é.é", f"{payload}."):
        assert read_file_token(KEY, junk) is None


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        ("postgresql://u:secret@h:5432/db", f"postgresql://u:{HIDDEN}@h:5432/db"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("postgresql:///db?host=/run/pg", "postgresql:///db?host=/run/pg"),
        ("host=h password=secret dbname=d", f"host=h password={HIDDEN} dbname=d"),
        ("host=h password = 'sec ret' dbname=d", f"host=h password = {HIDDEN} dbname=d"),
    ],
)
def test_mask_dsn(dsn: str, expected: str) -> None:
    assert mask_dsn(dsn) == expected


def test_config_sections_mask_every_secret() -> None:
    config = Config(
        database=DatabaseConfig(dsn="postgresql://u:hunter2@h/db?password=hunter3"),
        api=ApiConfig(tokens=(ApiToken(name="ci", role="viewer", token_sha256="f" * 64),)),
    )
    text = repr(config_sections(config))
    assert "hunter2" not in text and "hunter3" not in text and "f" * 64 not in text
    assert "'ci'" in text or '"ci"' in text
