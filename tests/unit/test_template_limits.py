"""A template cannot exhaust the daemon's memory or time: every size-multiplying operation is
checked before it runs, the output is counted while it streams, and a template that can loop
renders under a deadline. Templates without loops take the fast path, with no tracing."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from orchestrator.core.template_limits import TemplateLimits
from orchestrator.core.templating import TemplateError, is_cheap_template, render_template

LIMITS = TemplateLimits(max_output_bytes=10_000, render_timeout=5.0)
CONTEXT: dict[str, Any] = {"params": {"word": "ab", "words": ["a", "b"]}, "ds": "2026-01-01"}


def counting_clock() -> Callable[[], float]:
    """A clock that advances one second each time it is read: a deadline passes after a few
    dozen checks, whatever the machine's speed."""
    ticks = iter(range(10**9))
    return lambda: float(next(ticks))


def clock_that_must_not_be_read() -> float:
    raise AssertionError("the fast path read the clock")


@pytest.mark.parametrize(
    "template",
    [
        "{{ 'x' * 100000000 }}",
        "{{ 100000000 * 'x' }}",
        "{{ [1] * 100000000 }}",
        "{{ 10 ** 100000000 }}",
        "{{ ('x' * 9000) + ('x' * 9000) }}",
        "{{ 'a' ~ ('x' * 9000) ~ ('x' * 9000) }}",
        "{{ '%100000000d' % 1 }}",
        "{{ '%*d' % (100000000, 1) }}",
        "{{ '{:>100000000}'.format(1) }}",
        "{{ 'x'.ljust(100000000) }}",
        "{{ 'x'.center(100000000) }}",
        "{{ 'x'.zfill(100000000) }}",
        "{{ ('x' * 5000).replace('x', 'yyyy') }}",
        "{{ ('x' * 5000) | replace('x', 'yyyy') }}",
        "{{ 'x' | center(100000000) }}",
        "{{ ('x' * 5000) | indent(100000) }}",
        "{{ ('x' * 5000) | list | join('yyyy') }}",
        "{{ ','.join(('x' * 6000) | list) }}",
        "{{ '%100000000s' | format('x') }}",
        "{{ lipsum(100000) }}",
        "{% set l = [1] * 9000 %}{% do l.extend(l) %}",
        "{{ params.word * 6000 }}",
    ],
)
def test_values_past_max_output_bytes_are_refused_before_they_are_built(template: str) -> None:
    with pytest.raises(TemplateError) as info:
        render_template(template, CONTEXT, LIMITS)
    assert "templates.max_output_bytes (10,000)" in str(info.value)


def test_the_rendered_output_is_limited_while_it_streams() -> None:
    context = {"params": {"big": "x" * 6000}}
    with pytest.raises(TemplateError) as info:
        render_template("{{ params.big }}{{ params.big }}", context, LIMITS)
    assert "the rendered text is longer than templates.max_output_bytes" in str(info.value)


def test_a_template_of_many_expressions_is_measured_while_it_streams() -> None:
    context = {"params": {"part": "x" * 600}}
    with pytest.raises(TemplateError, match=r"the rendered text is longer than templates\.max_output_bytes"):
        render_template("{{ params.part }}" * 20, context, LIMITS)
    assert render_template("{{ params.part }}" * 16, context, LIMITS) == "x" * 9600


def test_the_output_limit_counts_utf8_bytes() -> None:
    context = {"params": {"big": "é" * 6000}}  # 6,000 characters, 12,000 bytes
    with pytest.raises(TemplateError, match="bytes of UTF-8"):
        render_template("{{ params.big }}", context, LIMITS)


@pytest.mark.parametrize(
    "template",
    [
        "{{ 'x' * 9000 }}",
        "{{ '%5d' % 3 }}",
        "{{ '{:>10}'.format(ds) }}",
        "{{ params.words | join(',') }}",
        "{{ 2 ** 64 }}",
        "{{ [1, 2] * 3 }}",
    ],
)
def test_values_within_the_limit_render(template: str) -> None:
    render_template(template, CONTEXT, LIMITS)


@pytest.mark.parametrize(
    "template",
    [
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "{% for i in range(100000) %}{{ i }}{% endfor %}",
        "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
    ],
)
def test_a_template_that_loops_stops_at_the_deadline(template: str) -> None:
    limits = TemplateLimits(max_output_bytes=10**9, render_timeout=50.0)
    with pytest.raises(TemplateError) as info:
        render_template(template, CONTEXT, limits, now=counting_clock())
    assert "templates.render_timeout (50 s)" in str(info.value)


def test_the_deadline_puts_back_the_threads_previous_trace_function() -> None:
    def tracer(frame: Any, event: str, arg: Any) -> None:
        return None

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        assert render_template("{% for i in range(3) %}{{ i }}{% endfor %}", CONTEXT, LIMITS) == "012"
        assert sys.gettrace() is tracer
    finally:
        sys.settrace(previous)


@pytest.mark.parametrize(
    ("template", "cheap"),
    [
        ("echo plain", True),
        ("echo {{ ds }} {{ params.word | upper }} {{ ti.xcom_pull('a') }}", True),
        ("{{ macros.ds_add(ds, 1) }} {{ params.word | shquote }} {{ x | default('') }}", True),
        ("{% if ds %}{{ ds }}{% endif %}", True),
        ("{{ 'x' * 10 }}", True),
        ("{% for i in range(3) %}{% endfor %}", False),
        ("{% macro m() %}{% endmacro %}", False),
        ("{% set x = 1 %}", False),
        ("{% do params.words.append(1) %}", False),
        ("{{ range(5) | list }}", False),
        ("{{ params.words | sort }}", False),
        ("{{ lipsum() }}", False),
        ("{% call m() %}{% endcall %}", False),
        ("{% filter upper %}x{% endfilter %}", False),
        ("{{ unclosed", True),  # fails at once, wherever it is rendered
    ],
)
def test_templates_that_cannot_loop_are_cheap(template: str, cheap: bool) -> None:
    assert is_cheap_template(template, LIMITS) is cheap


def test_a_cheap_template_renders_without_a_deadline() -> None:
    rendered = render_template(
        "echo {{ ds }} {{ params.word }}", CONTEXT, LIMITS, now=clock_that_must_not_be_read
    )
    assert rendered == "echo 2026-01-01 ab"


def test_a_loop_within_the_deadline_renders() -> None:
    def steady() -> Iterator[float]:
        while True:
            yield 0.0

    clock = steady()
    rendered = render_template(
        "{% for w in params.words %}{{ w }}{% endfor %}", CONTEXT, LIMITS, now=lambda: next(clock)
    )
    assert rendered == "ab"
