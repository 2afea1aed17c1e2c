"""Who may do what through the API: the three roles, and the role each handler needs.

A request is made by a `Principal` (the token's configured name and role). Roles are ordered:
`viewer` reads, `operator` also triggers, clears, pauses, marks and sends asset events, `admin`
may do everything (backfills, deletions, the configuration). A handler needs `viewer` for GET
and HEAD and `operator` for any other method, unless it says otherwise with `@requires(...)`
(a POST that only reads, such as `dagRuns/list`, says `@requires(Role.VIEWER)`), or is
`@public` (health, webhooks, which authenticate themselves, and the token endpoint).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

#: the attribute a handler's required role is kept in
_ROLE_ATTRIBUTE = "__orchestrator_role__"
_PUBLIC = "public"


class Role(enum.IntEnum):
    """A token's role; a higher role may do everything a lower one may."""

    VIEWER = 1
    OPERATOR = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Role:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise ValueError(f"unknown role {text!r}: use one of {', '.join(r.label for r in cls)}") from None


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made a request: the configured token's name and role, and how they proved it."""

    name: str
    role: Role
    #: "bearer", "basic", "access_token" (a token issued by POST /auth/token) or "replica" (another
    #: replica forwarded the request and vouched for its caller)
    via: str


def requires(role: Role) -> Callable[[F], F]:
    """Declare the role a handler needs (instead of the default for its method)."""

    def mark(handler: F) -> F:
        setattr(handler, _ROLE_ATTRIBUTE, role)
        return handler

    return mark


def public(handler: F) -> F:
    """Declare a handler that needs no credentials (it authenticates itself, or tells nothing)."""
    setattr(handler, _ROLE_ATTRIBUTE, _PUBLIC)
    return handler


def required_role(method: str, handler: Callable[..., Any]) -> Role | None:
    """The role `handler` needs for `method`; None if it is public."""
    declared = getattr(handler, _ROLE_ATTRIBUTE, None)
    if declared == _PUBLIC:
        return None
    if isinstance(declared, Role):
        return declared
    return Role.VIEWER if method in ("GET", "HEAD", "OPTIONS") else Role.OPERATOR
