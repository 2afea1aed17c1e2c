"""The SQL of the state store, kept in .sql files rather than Python strings.

`schema.sql` is the whole current schema; `queries.sql` (the engine's) and one file per
capability (`schedules.sql`, `webhooks.sql`, `assets.sql`, `actions.sql`, `listing.sql`,
`audit.sql`, `replicas.sql`) hold every query the store runs as named blocks
(``-- name: create_run``), loaded once into `QUERIES`; a name is unique across them.
Keeping SQL out of Python means it is read, reviewed and EXPLAINed as SQL, and nothing is ever
assembled from strings at run time.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from importlib import resources
from types import MappingProxyType

_NAME_LINE = re.compile(r"^--\s*name:\s*(?P<name>[a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


def read_sql_file(name: str) -> str:
    """The text of one .sql file of this package (e.g. "schema.sql")."""
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def parse_named_queries(text: str) -> dict[str, str]:
    """Split a file of ``-- name: X`` blocks into {X: sql}. Text before the first name is ignored."""
    matches = list(_NAME_LINE.finditer(text))
    queries: dict[str, str] = {}
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        name = match.group("name")
        if name in queries:
            raise ValueError(f"the store's SQL defines the query {name!r} twice: rename one of them")
        body = text[match.end() : end].strip()
        if not body:
            raise ValueError(f"queries.sql has no SQL under the name {name!r}")
        queries[name] = body
    return queries


#: the files of named queries, in the order they are read
QUERY_FILES = (
    "queries.sql",
    "ownership.sql",
    "schedules.sql",
    "webhooks.sql",
    "assets.sql",
    "actions.sql",
    "listing.sql",
    "audit.sql",
    "replicas.sql",
)

QUERIES: Mapping[str, str] = MappingProxyType(
    parse_named_queries("\n".join(read_sql_file(name) for name in QUERY_FILES))
)
SCHEMA: str = read_sql_file("schema.sql")
