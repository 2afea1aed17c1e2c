"""The [dags] keys: documented defaults, environment overrides, and a clear error for bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.config import DagsConfig, load_config
from orchestrator.errors import ConfigError


def test_the_dags_defaults_and_an_environment_override(tmp_path: Path) -> None:
    assert load_config(None, {}, cwd=tmp_path).dags == DagsConfig(
        parser_processes=2, parse_timeout=30.0, parse_memory_mb=2048
    )
    environ = {"ORCHESTRATOR_DAGS__PARSE_TIMEOUT": "5", "ORCHESTRATOR_DAGS__PARSE_MEMORY_MB": "0"}
    assert load_config(None, environ, cwd=tmp_path).dags == DagsConfig(parse_timeout=5.0, parse_memory_mb=0)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("parser_processes = 0", "dags.parser_processes in .* must be at least 1, got 0"),
        ("parse_timeout = 0", "dags.parse_timeout in .* must be a number of seconds above 0, got 0"),
        ("parse_timeout = nan", "dags.parse_timeout in .* must be a finite number, got nan"),
        (
            "parse_memory_mb = 64",
            r"dags.parse_memory_mb in .* must be at least 128 \(MB\), or 0 for no limit",
        ),
        ("parse_memory_mb = '1G'", "dags.parse_memory_mb in .* must be an integer"),
        ("parse_timeot = 3", "did you mean 'dags.parse_timeout'"),
    ],
)
def test_a_bad_dags_value_names_the_key_and_the_file(tmp_path: Path, line: str, expected: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f"[dags]\n{line}\n")
    with pytest.raises(ConfigError, match=expected):
        load_config(path, {}, cwd=tmp_path)
