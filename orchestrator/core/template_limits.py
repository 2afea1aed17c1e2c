"""Limits on what one template may cost: the size of what it builds, and its rendering time.

One daemon renders every user's templates, so a template must not be able to exhaust its
memory or freeze it. Two guards, both enforced inside the render:

- **Size.** Every operation that can multiply the size of a value in one step is checked
  *before* it runs: ``*``, ``**``, ``+``, ``%`` (intercepted binary operators of Jinja's
  sandbox), ``~`` (a code generator that routes concatenation through the environment),
  the string methods and filters that pad, replace or join, ``list.extend``, ``lipsum``.
  The rendered output is counted while it streams. Past ``max_output_bytes`` the render
  stops with `TemplateLimitExceeded`.
- **Time.** A template that can loop (``{% for %}``, macros, call blocks, ``{% set %}``,
  iterating filters, ``range``, ...) is rendered with a deadline: a trace function on the
  rendering thread raises `TemplateLimitExceeded` on the first call or template line after
  it. Templates without any of these are *cheap by construction* (each expression runs once,
  on values bounded by the size guard) and render with no tracing at all: that is the fast
  path every ordinary ``{{ ds }}`` / ``{{ params.x }}`` command takes. The analysis is done
  once per template text, when it is compiled.

Pure: the clock is an argument (`Deadline.now`), no I/O. Which thread a render runs on is the
engine's choice (``orchestrator.engine.launch``).
"""

from __future__ import annotations

import functools
import math
import re
import sys
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import FrameType
from typing import Any, TypeVar

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.sandbox import SandboxedEnvironment

from orchestrator.errors import OrchestratorError

T = TypeVar("T")

#: the code object name Jinja gives compiled template code
TEMPLATE_FILENAME = "<template>"


class TemplateLimitExceeded(OrchestratorError):
    """A template went past a limit (templates.max_output_bytes or templates.render_timeout)."""


@dataclass(frozen=True, slots=True)
class TemplateLimits:
    """How much one template string may build, and how long it may take to render."""

    #: the most characters/bytes any value built by a template, or its output, may have
    max_output_bytes: int = 1_000_000
    #: seconds a template that can loop may take to render (None: the caller sets a deadline)
    render_timeout: float | None = 2.0


DEFAULT_LIMITS = TemplateLimits()


def _too_big(what: str, size: float, limit: int) -> TemplateLimitExceeded:
    shown = f"{size:.3g}" if size >= 1e9 else f"{int(size):,}"
    return TemplateLimitExceeded(
        f"{what} would be {shown} long, more than templates.max_output_bytes ({limit:,}): "
        "build smaller values, or raise the limit in the configuration"
    )


def _size(value: Any) -> int | None:
    return len(value) if isinstance(value, str | bytes | list | tuple) else None


# --- the guarded operations -----------------------------------------------------------------

#: a printf-style conversion's width and precision (the numbers that decide its size)
_PRINTF_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")
#: the numbers in a str.format replacement field's format spec ("{:>100}", "{0:.5}")
_FORMAT_SPEC = re.compile(r"\{[^{}]*?:([^{}]*)\}")
_DIGITS = re.compile(r"\d+")
_PADDING_METHODS = frozenset({"center", "ljust", "rjust", "zfill"})


class LimitedEnvironment(SandboxedEnvironment):
    """Jinja's sandbox, with every size-multiplying operation checked against `max_output_bytes`."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, max_output_bytes: int, **options: Any) -> None:
        super().__init__(**options)
        self.code_generator_class = _LimitedCodeGenerator
        self.max_output_bytes = max_output_bytes
        limit = max_output_bytes
        for name, check in _FILTER_CHECKS.items():
            self.filters[name] = _checked_filter(self.filters[name], check, limit)
        self.globals["lipsum"] = _checked_lipsum(
            typing.cast(Callable[..., str], self.globals["lipsum"]), limit
        )

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any) -> Any:
        limit = self.max_output_bytes
        if operator == "*":
            _check_repeat(left, right, limit)
            _check_repeat(right, left, limit)
            if isinstance(left, int) and isinstance(right, int):
                _check_bits(left.bit_length() + right.bit_length(), limit)
        elif operator == "**":
            if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
                _check_bits(right * math.log2(abs(left)), limit)
        elif operator == "+":
            left_size, right_size = _size(left), _size(right)
            if left_size is not None and right_size is not None and left_size + right_size > limit:
                raise _too_big("the sum", left_size + right_size, limit)
        elif operator == "%" and isinstance(left, str):
            _check_printf(left, right, limit)
        result = self.binop_table[operator](left, right)
        if operator == "%":
            _check_result(result, limit)
        return result

    def checked_concat(self, value: str) -> str:
        """`a ~ b`: the generated code calls this with the joined string."""
        if len(value) > self.max_output_bytes:
            raise _too_big("the concatenation", len(value), self.max_output_bytes)
        return value

    def call(__self, __context: jinja2.runtime.Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        target = getattr(__obj, "__wrapped__", __obj)  # the sandbox wraps str.format
        owner = getattr(target, "__self__", None)
        if isinstance(owner, str | list):
            _check_method(owner, getattr(target, "__name__", ""), args, kwargs, __self.max_output_bytes)
        result = super().call(__context, __obj, *args, **kwargs)
        _check_result(result, __self.max_output_bytes)
        return result


def _check_repeat(sequence: Any, count: Any, limit: int) -> None:
    size = _size(sequence)
    if size is not None and isinstance(count, int) and size * count > limit:
        raise _too_big("the repetition", size * count, limit)


def _check_bits(bits: float, limit: int) -> None:
    # a number's decimal digits are about 0.3 of its bits: its text must fit in the limit too
    if bits * 0.302 > limit:
        raise _too_big("the number", bits * 0.302, limit)


def _check_result(value: Any, limit: int) -> None:
    size = _size(value)
    if size is not None and size > limit:
        raise _too_big("the value", size, limit)


def _star_values(right: Any) -> Iterable[Any]:
    return right if isinstance(right, tuple) else (right,)


def _check_printf(template: str, right: Any, limit: int) -> None:
    numbers = [int(n) for spec in _PRINTF_SPEC.findall(template) for n in spec if n and n != "*"]
    if "*" in template:
        numbers += [abs(v) for v in _star_values(right) if isinstance(v, int)]
    if numbers and max(numbers) > limit:
        raise _too_big("a formatted field", max(numbers), limit)


def _check_format_spec(template: str, limit: int) -> None:
    numbers = [int(n) for spec in _FORMAT_SPEC.findall(template) for n in _DIGITS.findall(spec)]
    if numbers and max(numbers) > limit:
        raise _too_big("a formatted field", max(numbers), limit)


def _check_method(
    owner: str | list[Any], name: str, args: tuple[Any, ...], kwargs: dict[str, Any], limit: int
) -> None:
    if isinstance(owner, list):
        if name == "extend" and args and _size(args[0]) is not None:
            if len(owner) + len(args[0]) > limit:
                raise _too_big("the list", len(owner) + len(args[0]), limit)
        elif name in ("append", "insert") and len(owner) >= limit:
            raise _too_big("the list", len(owner) + 1, limit)
        return
    if name in _PADDING_METHODS:
        width = args[0] if args else kwargs.get("width")
        if isinstance(width, int) and width > limit:
            raise _too_big(f"str.{name}'s result", width, limit)
    elif name == "expandtabs":
        tabsize = args[0] if args else kwargs.get("tabsize", 8)
        if isinstance(tabsize, int):
            _check_length("str.expandtabs's result", len(owner) + owner.count("\t") * tabsize, limit)
    elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        _check_replace(owner, args[0], args[1], limit)
    elif name == "join" and args and isinstance(args[0], list | tuple):
        _check_join(owner, args[0], limit)
    elif name in ("format", "format_map"):
        _check_format_spec(owner, limit)


def _check_length(what: str, size: int, limit: int) -> None:
    if size > limit:
        raise _too_big(what, size, limit)


def _check_replace(text: str, old: str, new: str, limit: int) -> None:
    if len(new) > len(old):
        count = text.count(old) if old else len(text) + 1
        _check_length("the replacement", len(text) + count * (len(new) - len(old)), limit)


def _check_join(separator: str, items: list[Any] | tuple[Any, ...], limit: int) -> None:
    size = len(separator) * max(len(items) - 1, 0)
    for item in items:
        size += len(item) if isinstance(item, str) else 8
        if size > limit:
            raise _too_big("the joined string", size, limit)


# filters: a check of the arguments before the filter runs (the value is the first argument)
_FilterCheck = Callable[[tuple[Any, ...], dict[str, Any], int], None]


def _center_check(args: tuple[Any, ...], kwargs: dict[str, Any], limit: int) -> None:
    width = args[1] if len(args) > 1 else kwargs.get("width", 80)
    if isinstance(width, int) and width > limit:
        raise _too_big("the centred string", width, limit)


def _indent_check(args: tuple[Any, ...], kwargs: dict[str, Any], limit: int) -> None:
    width = args[1] if len(args) > 1 else kwargs.get("width", 4)
    text = args[0] if args else ""
    if isinstance(width, str):
        width = len(width)
    if isinstance(width, int) and isinstance(text, str):
        _check_length("the indented string", len(text) + (text.count("\n") + 1) * width, limit)


def _replace_check(args: tuple[Any, ...], kwargs: dict[str, Any], limit: int) -> None:
    # do_replace(eval_ctx, s, old, new, count)
    values = [a for a in args if isinstance(a, str)]
    if len(values) >= 3:
        _check_replace(values[0], values[1], values[2], limit)


def _join_check(args: tuple[Any, ...], kwargs: dict[str, Any], limit: int) -> None:
    # do_join(eval_ctx, value, d, attribute)
    items = args[1] if len(args) > 1 else None
    separator = args[2] if len(args) > 2 else kwargs.get("d", "")
    if isinstance(items, list | tuple) and isinstance(separator, str):
        _check_join(separator, items, limit)


def _format_check(args: tuple[Any, ...], kwargs: dict[str, Any], limit: int) -> None:
    if args and isinstance(args[0], str):
        _check_printf(args[0], tuple(args[1:]), limit)


_FILTER_CHECKS: dict[str, _FilterCheck] = {
    "center": _center_check,
    "indent": _indent_check,
    "replace": _replace_check,
    "join": _join_check,
    "format": _format_check,
}


def _checked_filter(original: Callable[..., Any], check: _FilterCheck, limit: int) -> Callable[..., Any]:
    @functools.wraps(original)  # keeps jinja_pass_arg: Jinja still passes the eval context
    def checked(*args: Any, **kwargs: Any) -> Any:
        check(args, kwargs, limit)
        result = original(*args, **kwargs)
        _check_result(result, limit)
        return result

    return checked


def _checked_lipsum(original: Callable[..., str], limit: int) -> Callable[..., str]:
    def lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
        if isinstance(n, int) and isinstance(max, int) and n * max * 12 > limit:
            raise _too_big("lipsum's text", n * max * 12, limit)
        return original(n, html, min, max)

    return lipsum


class _LimitedCodeGenerator(CodeGenerator):
    """Jinja's code generator, but `a ~ b` goes through `environment.checked_concat`."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.checked_concat(")
        super().visit_Concat(node, frame)
        self.write(")")


# --- cheap by construction ------------------------------------------------------------------

#: statements that repeat work or rebind names (so a value can grow step by step)
_LOOPING_NODES: tuple[type[nodes.Node], ...] = (
    nodes.For,
    nodes.Macro,
    nodes.CallBlock,
    nodes.FilterBlock,
    nodes.Assign,
    nodes.AssignBlock,
    nodes.ExprStmt,
    nodes.With,
    nodes.Scope,
    nodes.OverlayScope,
)
#: globals whose calls do work proportional to their arguments
_LOOPING_GLOBALS = frozenset({"range", "lipsum", "cycler", "joiner", "namespace", "dict"})
#: filters that iterate over their value
_LOOPING_FILTERS = frozenset(
    {
        "batch", "dictsort", "groupby", "items", "join", "list", "map", "max", "min", "reject",
        "rejectattr", "select", "selectattr", "slice", "sort", "sum", "unique", "wordcount",
        "wordwrap", "xmlattr", "pprint", "urlize", "replace", "indent", "center", "format",
    }
)  # fmt: skip


def is_cheap(tree: nodes.Template) -> bool:
    """True if the parsed template cannot loop: no loop, macro, call block or assignment,
    and no call of a global or filter whose cost grows with its arguments."""
    for node in tree.find_all((nodes.Stmt, nodes.Call, nodes.Filter)):
        if isinstance(node, _LOOPING_NODES):
            return False
        if isinstance(node, nodes.Call) and isinstance(node.node, nodes.Name):
            if node.node.name in _LOOPING_GLOBALS:
                return False
        if isinstance(node, nodes.Filter) and node.name in _LOOPING_FILTERS:
            return False
    return True


#: a cheap template with at most this many expressions in its output is joined in one go and
#: measured after: each expression yields a value the size guard bounds (or a context value,
#: bounded by the request that carried it), so the transient text stays bounded too
JOIN_AT_ONCE_MAX_EXPRESSIONS = 16


def output_expressions(tree: nodes.Template) -> int:
    """How many expressions (not literal text) the template's output holds."""
    return sum(
        1
        for output in tree.find_all(nodes.Output)
        for node in output.nodes
        if not isinstance(node, nodes.TemplateData)
    )


# --- the deadline ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Deadline:
    """When a render must stop, on the clock `now` (seconds, monotonic)."""

    at: float
    now: Callable[[], float]
    timeout: float

    def expired(self) -> TemplateLimitExceeded:
        return TemplateLimitExceeded(
            f"rendering took longer than templates.render_timeout ({self.timeout:g} s): "
            "make the template do less work (loops, ranges), or raise the limit in the configuration"
        )


def run_with_deadline(render: Callable[[], T], deadline: Deadline) -> T:
    """`render()` on this thread, stopped by `TemplateLimitExceeded` once `deadline` passes.

    A trace function checks the clock on every Python call and on every line of template code
    (not on lines of other code: a loop in plain Python code is checked at its calls). The
    thread's previous trace function (a debugger, coverage) is put back afterwards.
    """
    now = deadline.now
    at = deadline.at

    def on_line(frame: FrameType, event: str, arg: Any) -> Any:
        if now() > at:
            raise deadline.expired()
        return on_line

    def on_call(frame: FrameType, event: str, arg: Any) -> Any:
        if now() > at:
            raise deadline.expired()
        return on_line if frame.f_code.co_filename == TEMPLATE_FILENAME else None

    previous = sys.gettrace()
    sys.settrace(on_call)
    try:
        return render()
    finally:
        sys.settrace(previous)
